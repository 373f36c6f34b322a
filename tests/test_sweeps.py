"""Sweeps end to end: a multirun over the variants through ``python -m fcn.train``, its wandb
runs (read back from the offline run files), other loggers, ``python -m fcn.compare``, the staged
paper experiment and the Optuna sweeper."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fcn.compare import read_sweep
from fcn.training.tracking import run_name
from tests.conftest import TINY, run_train
from tests.wandb_records import records, summary

#: the tests share a module-scoped fixture: one pytest-xdist worker runs them all (loadgroup)
pytestmark = pytest.mark.xdist_group("sweeps")

MODELS = ["fcn32", "fcn16", "fcn8"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-job sweep over the variants, logging to wandb, CSV and TensorBoard."""
    workdir = tmp_path_factory.mktemp("sweep")
    folder = workdir / "variants"
    args = ["-m", *TINY, "model=fcn32,fcn16,fcn8", "logger=[wandb,csv,tensorboard]",
            "callbacks.validation_masks.num_images=2", "trainer.log_every_n_steps=1",
            f"hydra.sweep.dir={folder}"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def _compare(folder: Path, command_line: bool = False) -> subprocess.CompletedProcess:
    """``python -m fcn.compare FOLDER``: as a command, or its ``main`` in this process."""
    if command_line:
        return subprocess.run(
            [sys.executable, "-m", "fcn.compare", str(folder)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    return run_train([str(folder)], folder.parent, entry="compare")


@pytest.mark.slow
def test_a_sweep_is_one_wandb_group_of_one_run_per_job(sweep: Path) -> None:
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2"]
    run_ids = set()
    for job, model in zip(jobs, MODELS, strict=True):
        assert json.loads((job / "metrics.json").read_text())["status"] == "finished"
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"model={model}" in overrides
        offline = list((job / "wandb").glob("offline-run-*"))
        assert len(offline) == 1
        run_ids.add(offline[0].name.rsplit("-", 1)[1])
        logged = summary(next(offline[0].glob("run-*.wandb")))
        assert logged["name"] == model and logged["group"] == "variants"
        assert set(logged["tags"]) == {"quickstart", model, "shapes"}
        expected = {"train/loss_step", "train/loss", "val/mIoU", "val/IoU/dot", "val/masks"}
        assert expected <= logged["history_keys"]
        assert logged["masks"]["val/masks"] == {"prediction", "ground_truth"}
        # The masks of 2 fixed validation images (prediction and truth), each validation.
        media = offline[0] / "files" / "media" / "images"
        assert len(list(media.glob("val/masks_*.png"))) == 2
        # mask files are stored once per content: two different truths at least
        assert len(list((media / "mask").rglob("*.mask.png"))) >= 2
        assert (job / "csv" / "metrics.csv").read_text().count("val/mIoU") == 1  # the header
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
    assert len(run_ids) == 3, "each job must be its own wandb run"


@pytest.mark.slow
def test_compare_writes_the_table_and_the_curves(sweep: Path) -> None:
    proc = _compare(sweep, command_line=True)
    assert proc.returncode == 0, proc.stderr
    table = (sweep / "comparison.md").read_text()
    assert "python -m fcn.train -m" in table and "model=fcn32,fcn16,fcn8" in table
    rows = [line for line in table.splitlines() if line.startswith("| fcn")]
    assert [r.split("|")[1].strip() for r in rows[:3]] == MODELS
    best = {j.name: j.metrics["best"]["val/mIoU"] for j in read_sweep(sweep)}
    assert f"**{best['fcn8']:.4f}**" in rows[2]
    for png in ("loss.png", "miou.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "did not finish" not in table


@pytest.mark.slow
def test_compare_names_failed_and_incomplete_jobs(sweep: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sweep, broken, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    metrics = json.loads((broken / "1" / "metrics.json").read_text())
    (broken / "1" / "metrics.json").write_text(json.dumps({**metrics, "status": "failed"}))
    (broken / "2" / "metrics.json").unlink()
    proc = _compare(broken)
    assert proc.returncode == 0  # one job finished
    table = (broken / "comparison.md").read_text()
    assert "- fcn16 (1/): failed after 1/1 epochs" in table
    assert "- fcn8 (2/): no metrics.json: it failed before its first epoch" in table
    assert "fcn16" in proc.stderr and "fcn8" in proc.stderr
    proc = _compare(tmp_path / "nowhere")
    assert proc.returncode == 1 and "sweep folder not found" in proc.stderr


def test_run_names_come_from_the_swept_overrides() -> None:
    groups = ["model", "data", "experiment"]
    overrides = ["experiment=quickstart", "model=fcn8", "optimizer.lr=0.001"]
    assert run_name(overrides, groups, {"model"}) == "fcn8"
    assert run_name(overrides, groups, {"model", "optimizer.lr"}) == "fcn8,lr=0.001"
    assert run_name(overrides, groups, None) == "quickstart,fcn8,lr=0.001"
    assert run_name([], groups, None) is None


@pytest.mark.slow
def test_paper_staged_chains_each_stage_from_the_previous(tmp_path: Path) -> None:
    folder = tmp_path / "staged"
    tiny = [a for a in TINY if not a.startswith("experiment=")]
    args = ["-m", "experiment=paper_staged", "model=fcn32,fcn16,fcn8", *tiny, "data=shapes",
            "transforms=resize_pad", "stages.fcn32.weights=none", "data.batch_size=4",
            "model.alignment=same", "logger=none", f"hydra.sweep.dir={folder}"]  # fmt: skip
    proc = run_train(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(MODELS)
    logs = {m: (folder / m / "train.log").read_text() for m in MODELS}
    assert "layers new to this model" not in logs["fcn32"]
    assert "score_pool4.bias, score_pool4.weight" in logs["fcn16"]
    assert f"{folder}/fcn32/checkpoints/last.ckpt" in logs["fcn16"]
    assert "score_pool3.bias, score_pool3.weight" in logs["fcn8"]
    config = yaml.safe_load((folder / "fcn8" / "config.yaml").read_text())
    assert config["optimizer"]["lr"] == 1e-14 and config["module"]["loss_reduction"] == "sum"


@pytest.mark.slow
def test_optuna_sweeper_maximises_the_returned_mIoU(tmp_path: Path) -> None:
    folder = tmp_path / "optuna"
    args = ["-m", *TINY, "hydra/sweeper=optuna_lr_wd", "hydra.sweeper.n_trials=2",
            "logger=none", f"hydra.sweep.dir={folder}"]  # fmt: skip
    proc = run_train(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"optimizer.lr", "optimizer.weight_decay"}
    jobs = read_sweep(folder)
    assert len(jobs) == 2 and {j.name.split(",")[0].split("=")[0] for j in jobs} == {"lr"}
    assert result["best_value"] == pytest.approx(max(j.metrics["best"]["val/mIoU"] for j in jobs))


def test_checkpoints_become_wandb_artifacts_on_request(tmp_path: Path) -> None:
    args = [*TINY, "logger.wandb.log_model=true", "hydra.run.dir=run"]
    proc = run_train(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_file = next((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    artifacts = [r.artifact for r in records(run_file) if r.WhichOneof("record_type") == "artifact"]
    artifacts = [a for a in artifacts if a.type == "model"]  # not the confusion chart's table
    assert artifacts
    assert all([e.path for e in a.manifest.contents] == ["model.ckpt"] for a in artifacts)


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refused(*args, **kwargs):
        raise AssertionError("the network was asked")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Pydantic V1 style")  # wandb-workspaces' own models
def test_the_wandb_report_shows_only_keys_the_sweep_logged(
    sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb_workspaces.reports.v2 as wr

    from fcn.wandb_report import build_sweep_report

    jobs = read_sweep(sweep)
    _no_network(monkeypatch)
    report = build_sweep_report(sweep, jobs)
    monkeypatch.undo()
    [grid] = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    keys = set()
    for panel in grid.panels:
        if isinstance(panel, wr.LinePlot):
            keys |= {panel.x, *panel.y}
        elif isinstance(panel, wr.BarPlot):
            keys |= set(panel.metrics)
        elif isinstance(panel, wr.MediaBrowser):
            keys |= set(panel.media_keys)
    for runset in grid.runsets:
        keys |= {c.removeprefix("summary:") for c in runset.visible_columns}
    logged = set.intersection(
        *(summary(f)["history_keys"] for j in jobs for f in j.folder.glob("wandb/*/run-*.wandb"))
    )
    assert keys <= logged, keys - logged
    assert {"val/mIoU", "train/loss_step", "val/IoU/dot", "val/masks"} <= keys
    # One run set per variant, holding its job's run (the runs' ids, the sweep's group).
    assert [rs.name for rs in grid.runsets] == MODELS
    for runset, job in zip(grid.runsets, jobs, strict=True):
        [folder] = job.folder.glob("wandb/offline-run-*")
        assert folder.name.rsplit("-", 1)[1] in runset.filters
    assert (report.project, report.entity) == ("fcn", "")
    assert "variants" in report.title


@pytest.mark.slow
def test_a_wandb_report_without_login_names_the_login_and_the_sync(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shlex

    from fcn.errors import FCNError
    from fcn.wandb_report import save_sweep_report

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("*")}
    _no_network(monkeypatch)
    with pytest.raises(FCNError) as err:
        save_sweep_report(sweep, read_sweep(sweep))
    message = str(err.value)
    assert "wandb login" in message
    [command] = [line.strip() for line in message.splitlines() if "wandb sync" in line]
    offline = sorted(str(p) for p in sweep.glob("*/wandb/offline-run-*"))
    assert sorted(shlex.split(command)[2:]) == offline and len(offline) == 3
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("*")} == before  # nothing written
