"""The wandb report of a sweep, from job folders made here (the report of a real sweep, and its
refusal without a login, are tested on the sweep of tests/test_sweeps.py)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fcn.errors import FCNError
from fcn.wandb_report import build_sweep_report, save_sweep_report, sweep_runs, variant_name

#: wandb-workspaces' own models still use pydantic's V1 validators
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic V1 style")


def _job(sweep: Path, name: str, run_ids: list[str], synced: bool = False) -> SimpleNamespace:
    """A job folder of ``sweep`` with its config and one wandb run folder per id."""
    folder = sweep / str(len(list(sweep.glob("*"))) if sweep.exists() else 0)
    for t, run_id in enumerate(run_ids):
        run = folder / "wandb" / f"offline-run-20260101_00000{t}-{run_id}"
        run.mkdir(parents=True)
        (run / f"run-{run_id}.wandb").touch()
        if synced:
            (run / f"run-{run_id}.wandb.synced").touch()
    config = {"logger": {"wandb": {"project": "proj"}}, "data": {"class_names": ["bg", "dot"]}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    best = {"val/mIoU": 0.5, "epoch": 1}
    return SimpleNamespace(folder=folder, name=name, status="finished", metrics={"best": best})


def test_variants_are_run_names_without_the_seed() -> None:
    assert variant_name("fcn8,seed=1") == "fcn8"
    assert variant_name("seed=2,lr=0.001") == "lr=0.001"
    assert variant_name("seed=3") == "all seeds"


def test_a_variant_holds_its_seeds_and_resumed_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "seeds"
    jobs = [_job(sweep, "fcn8,seed=0", ["a1", "a2"]), _job(sweep, "fcn8,seed=1", ["b1"]),
            _job(sweep, "fcn32,seed=0", ["c1"])]  # fmt: skip
    runs = sweep_runs(sweep, jobs)
    assert runs.variants == {"fcn8": ["a1", "a2", "b1"], "fcn32": ["c1"]}
    assert (runs.group, runs.project, runs.class_names) == ("seeds", "proj", ["bg", "dot"])

    def refused(*args, **kwargs):
        raise AssertionError("the network was asked")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)
    report = build_sweep_report(sweep, jobs, entity="team")  # an entity given: still no request
    assert report.entity == "team" and report.project == "proj"
    grid = report.blocks[-1]
    assert [(rs.name, rs.entity) for rs in grid.runsets] == [("fcn8", "team"), ("fcn32", "team")]
    assert "'a1', 'a2', 'b1'" in grid.runsets[0].filters


def test_saving_asks_for_the_sync_of_offline_runs_even_after_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    sweep = tmp_path / "sweep"
    jobs = [_job(sweep, "fcn8", ["a1"], synced=True), _job(sweep, "fcn32", ["b1"])]
    with pytest.raises(FCNError) as err:
        save_sweep_report(sweep, jobs)
    assert "wandb login" not in str(err.value)
    assert f"wandb sync {jobs[1].folder}/wandb/offline-run-20260101_000000-b1" in str(err.value)


def test_saving_needs_wandb_runs_and_the_report_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path / "sweep", "fcn8", [])
    with pytest.raises(FCNError, match="no wandb runs"):
        save_sweep_report(tmp_path / "sweep", [job])
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)  # not installed
    with pytest.raises(FCNError, match=r'pip install "fcn\[report\]"'):
        save_sweep_report(tmp_path / "sweep", [job])
