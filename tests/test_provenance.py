"""Every run records where it comes from (``provenance`` in metrics.json and in the loggers'
hyperparameters): the git state of the code, library versions, devices and fingerprints of its
data; a resumed run appends its start's record; ``provenance_warnings`` says what differs."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from fcn.provenance import (
    PACKAGES,
    code_provenance,
    data_fingerprint,
    provenance_warnings,
    start_differences,
)
from tests.conftest import REPO, TINY, compose_train, run_train
from tests.folder_tree import folder_tree
from tests.wandb_records import records

#: the tests share a module-scoped fixture: one pytest-xdist worker runs them all (loadgroup)
pytestmark = pytest.mark.xdist_group("provenance")

HEX40, HEX64 = r"[0-9a-f]{40}", r"[0-9a-f]{64}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One TINY run (wandb offline and CSV) and the same run resumed in its folder for a second
    epoch with two more validation scenes: both metrics.json documents and the run folder."""
    workdir = tmp_path_factory.mktemp("provenance")
    run = workdir / "run"
    proc = run_train([*TINY, "logger=[wandb,csv]", f"hydra.run.dir={run}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((run / "metrics.json").read_text())
    args = [str(run), "trainer.max_epochs=2", "data.val_set.num_images=6"]
    proc = run_train(args, workdir, entry="resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    return {"run": run, "first": first, "resumed": resumed}


def _sha256_json(obj: object) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def test_a_run_records_the_commit_versions_devices_and_data(runs: dict) -> None:
    record = runs["first"]["provenance"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    code = record["code"]
    assert code["git_commit"] == head
    assert isinstance(code["git_dirty"], bool) and not code["untracked_counted"]
    assert len(code["git_diff_sha256"]) == 64 and code["fcn_version"] == "0.1.0"
    assert record["start_epoch"] == 0 and runs["first"]["provenance_resumed"] == []

    expected = {"python": platform.python_version()}
    expected.update({name: importlib.metadata.version(name) for name in PACKAGES})
    assert {k: v for k, v in record["versions"].items() if k != "cuda"} == expected

    devices = record["devices"]
    assert devices["accelerator"] == "cpu" and devices["precision"] == "32-true"
    assert (devices["devices"], devices["num_nodes"], devices["world_size"]) == (1, 1, 1)
    assert len(devices["names"]) == 1 and devices["names"][0]

    # the shapes scenes have no files: their generation parameters are fingerprinted
    datamodule = instantiate(compose_train(TINY).data)
    for split in ("train", "val"):
        shapes = getattr(datamodule, f"{split}_set").dataset
        parameters = {"dataset": "fcn.data.shapes.ShapesDataset", "num_images": len(shapes)}
        for key in ("seed", "min_size", "max_size", "max_objects", "void_width"):
            parameters[key] = getattr(shapes, key)
        assert record["data"][split] == {
            "of": "generation parameters", "count": len(shapes),
            "sha256": _sha256_json(parameters), "parameters": parameters,
        }  # fmt: skip
    assert record["data"]["train"]["sha256"] != record["data"]["val"]["sha256"]


def _logged_config(run_file: Path) -> dict:
    """The run's wandb config as last written to its offline run file."""
    config: dict = {}
    for record in records(run_file):
        if record.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update if i.key})
    return config


def test_the_loggers_hold_the_provenance(runs: dict) -> None:
    offline = sorted((runs["run"] / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # the first start's wandb run, and the resumed one
    first = _logged_config(next(offline[0].glob("run-*.wandb")))
    assert first["provenance"] == runs["first"]["provenance"]
    assert "provenance_resumed" not in first
    resumed = _logged_config(next(offline[1].glob("run-*.wandb")))
    assert resumed["provenance"] == runs["first"]["provenance"]
    assert resumed["provenance_resumed"] == runs["resumed"]["provenance_resumed"]
    hparams = yaml.safe_load((runs["run"] / "csv" / "hparams.yaml").read_text())
    assert hparams["provenance"] == runs["first"]["provenance"]


def test_a_resumed_run_keeps_its_first_record_and_appends_its_start(runs: dict) -> None:
    first, resumed = runs["first"], runs["resumed"]
    assert resumed["provenance"] == first["provenance"]
    (later,) = resumed["provenance_resumed"]
    assert later["start_epoch"] == 1 and [e["epoch"] for e in resumed["history"]] == [0, 1]
    assert later["code"] == first["provenance"]["code"]
    assert later["data"]["train"] == first["provenance"]["data"]["train"]
    assert later["data"]["val"]["count"] == 6
    # the start differing from the first is logged, and said by provenance_warnings
    log = (runs["run"] / "train.log").read_text()
    assert "this resumed start differs from the run's first start" in log
    assert "validation data differs: 4 generated images" in log
    (line,) = provenance_warnings({"fcn8": resumed})
    assert line.startswith("validation data differs within fcn8: 4 generated images")
    assert line.endswith("when it resumed at epoch 1")


def _git(repo: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_the_git_state_of_a_work_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    package = repo / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    clean = code_provenance(package)
    assert clean["git_commit"] == _git(repo, "rev-parse", "HEAD")
    assert clean["git_dirty"] is False and clean["git_untracked_files"] == 0
    assert clean["git_diff_sha256"] == hashlib.sha256(b"").hexdigest()

    (repo / "notes.txt").write_text("untracked\n")  # not counted, only reported
    assert code_provenance(package)["git_dirty"] is False
    assert code_provenance(package)["git_untracked_files"] == 1

    (package / "__init__.py").write_text("x = 2\n")
    one = code_provenance(package)
    (package / "__init__.py").write_text("x = 3\n")
    other = code_provenance(package)
    assert one["git_dirty"] is other["git_dirty"] is True
    assert one["git_commit"] == other["git_commit"] == clean["git_commit"]
    assert len({clean["git_diff_sha256"], one["git_diff_sha256"], other["git_diff_sha256"]}) == 3
    _git(repo, "add", "pkg")  # staged changes are changes against HEAD all the same
    assert code_provenance(package)["git_diff_sha256"] == other["git_diff_sha256"]

    # a package inside a work tree that does not track it (e.g. a virtual environment's)
    installed = repo / "venv" / "site-packages" / "pkg"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("x = 1\n")
    assert code_provenance(installed)["git_commit"] is None
    assert code_provenance(tmp_path)["git_commit"] is None  # not a work tree


def test_without_git_the_git_fields_are_null(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    record = code_provenance(REPO / "fcn")
    assert record["fcn_version"] == importlib.metadata.version("fcn")
    nulls = ("git_commit", "git_dirty", "git_diff_sha256", "git_untracked_files")
    assert all(record[k] is None for k in nulls)


def test_ids_are_fingerprinted_as_a_list_file_of_them(tmp_path: Path) -> None:
    from fcn.data.datamodule import SegmentationDataModule
    from fcn.data.folder import FolderDataset

    root = folder_tree(tmp_path / "data")
    train, val = (FolderDataset(root, split, 3) for split in ("train", "val"))
    datamodule = SegmentationDataModule(train, val, num_classes=3, batch_size=2)
    record = data_fingerprint(datamodule.val_set)
    listed = "".join(f"{i}\n" for i in val.ids).encode()
    assert record == {"of": "ids", "count": 4, "sha256": hashlib.sha256(listed).hexdigest()}
    assert data_fingerprint(datamodule.train_set)["count"] == 8


def _doc(**changes: object) -> dict:
    """A metrics.json document with a made-up provenance; ``changes`` maps dotted keys of the
    provenance to their new values."""
    record = {
        "start_epoch": 0,
        "time": "2025-01-31T12:00:00Z",
        "code": {"fcn_version": "0.1.0", "git_commit": "a1b2c3d" + "0" * 33, "git_dirty": False,
                 "git_diff_sha256": "e3b0" + "0" * 60, "untracked_counted": False,
                 "git_untracked_files": 0},
        "versions": {"python": "3.11.7", **dict.fromkeys(PACKAGES, "1.0"), "cuda": None},
        "devices": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "world_size": 1,
                    "strategy": "single_device", "precision": "32-true", "names": ["AMD EPYC"]},
        "data": {"train": {"of": "ids", "count": 8, "sha256": "1" * 64},
                 "val": {"of": "ids", "count": 4, "sha256": "2" * 64}},
    }  # fmt: skip
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        target = record
        for key in path:
            target = target[key]
        target[last] = value
    return {"status": "finished", "history": [], "provenance": record, "provenance_resumed": []}


def test_provenance_warnings_name_each_differing_field() -> None:
    same = {"a": _doc(), "b": _doc(time="2025-02-01T00:00:00Z")}
    assert provenance_warnings(same) == []  # when a run started is no difference

    cases = {
        "code.git_commit": ("0f9e8d7" + "1" * 33, "git commit differs: a1b2c3d in a; 0f9e8d7 in b"),
        "versions.torch": ("2.0", "torch version differs: 1.0 in a; 2.0 in b"),
        "devices.names": (["NVIDIA H100"], "devices differ (timings are not comparable): "
                          "1 x cpu (AMD EPYC), world size 1 in a; 1 x cpu (NVIDIA H100)"),
        "devices.precision": ("bf16-mixed", "precision differs: 32-true in a; bf16-mixed in b"),
        "data.val.sha256": ("3" * 64, "validation ids differ: 4 ids, sha256 222222222222 in a; "
                            "4 ids, sha256 333333333333 in b"),
        "data.train.count": (9, "training ids differ: 8 ids"),
    }  # fmt: skip
    for key, (value, expected) in cases.items():
        lines = provenance_warnings({"a": _doc(), "b": _doc(**{key: value})})
        assert len(lines) == 1 and lines[0].startswith(expected), (key, lines)

    # the same commit: a dirty tree warns when its diff differs, not when it is the same
    dirty = {"code.git_dirty": True, "code.git_diff_sha256": "5e6f" + "0" * 60}
    (line,) = provenance_warnings({"a": _doc(), "b": _doc(**dirty), "c": _doc(**dirty)})
    assert line == (
        "uncommitted changes differ: a1b2c3d clean in a; "
        "a1b2c3d dirty, diff 5e6f00000000 in b and c"
    )
    assert provenance_warnings({"b": _doc(**dirty), "c": _doc(**dirty)}) == []
    lines = provenance_warnings({"a": _doc(), "b": _doc(**dirty, **{"code.git_commit": "f" * 40})})
    assert lines == ["git commit differs: a1b2c3d in a; fffffff (dirty, diff 5e6f00000000) in b"]

    # an installed package has no commit: its version tells
    lines = provenance_warnings({"a": _doc(), "w": _doc(**{"code.git_commit": None})})
    assert lines == ["git commit differs: a1b2c3d in a; no git commit (fcn 0.1.0) in w"]

    # runs without provenance are named once and left out
    old = {"status": "finished", "history": []}
    lines = provenance_warnings({"a": _doc(), "b": _doc(), "fcn8,seed=0": old})
    assert lines == [
        "no provenance recorded by fcn8,seed=0 (not compared): written by an older fcn, "
        "or the run stopped before its fit started"
    ]


def test_a_resumed_start_that_differs_is_said_apart_from_the_other_runs() -> None:
    doc = _doc()
    later = copy.deepcopy(doc["provenance"])
    later.update(start_epoch=3)
    later["versions"]["torch"] = "2.0"
    doc["provenance_resumed"] = [later, copy.deepcopy(doc["provenance"])]
    assert provenance_warnings({"a": doc, "b": _doc()}) == [
        "torch version differs within a: 1.0 at its first start, 2.0 when it resumed at epoch 3"
    ]
    assert start_differences(_doc()["provenance"], later) == [
        "torch version differs: 1.0 at the first start, 2.0 now"
    ]
