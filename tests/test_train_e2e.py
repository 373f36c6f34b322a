"""``python -m fcn.train`` end to end in subprocesses: the real Hydra, Lightning and wandb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY, run_train
from tests.seed_tree import write_seed_tree


def _assert_finished_run(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["final"]["epoch"] == metrics["epochs_completed"] - 1
    for key in ("train/loss", "val/loss", "val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU"):
        assert key in metrics["final"] and key in metrics["best"], key
    assert 0.0 <= metrics["best"]["val/mIoU"] <= 1.0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = Path(metrics["best_checkpoint"])
    assert best.is_file() and best.parent == run / "checkpoints"
    assert yaml.safe_load((run / "config.yaml").read_text())["paths"]["output_dir"] == str(run)
    return metrics


def test_built_in_job_trains_validates_and_leaves_its_run_folder(workdir: Path) -> None:
    run = workdir / "run"
    proc = run_train([*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _assert_finished_run(run)
    assert [e["epoch"] for e in metrics["history"]] == [0, 1]
    assert "val/IoU/dot" in metrics["final"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "net.score_pool3.weight" in ckpt["state_dict"] and ckpt["epoch"] == 1
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "wandb must run offline without credentials"


def test_seed_is_honoured_including_zero(workdir: Path) -> None:
    finals = []
    for i, seed in enumerate([0, 0, 1]):
        run = workdir / f"run{i}"
        args = [*TINY, "logger=none", f"seed={seed}", "model.dropout=0.5", f"hydra.run.dir={run}"]
        proc = run_train(args, workdir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        finals.append(json.loads((run / "metrics.json").read_text())["final"])
    assert finals[0]["train/loss"] == finals[1]["train/loss"]
    assert finals[0]["val/loss"] == finals[1]["val/loss"]
    assert finals[0]["train/loss"] != finals[2]["train/loss"]


def test_seed_layout_tree_trains_with_the_default_caffe_network(workdir: Path) -> None:
    splits = write_seed_tree(workdir / "data")
    run = workdir / "run"
    args = [
        "model.trunk_width=4", "model.fc_width=8", "data.image_size=64", "data.batch_size=4",
        "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false",
        f"data.train_set.splits_dir={splits}",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=csv",
        "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run}",
    ]  # fmt: skip
    proc = run_train(args, workdir)  # data under ./data (paths.data_dir's default)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _assert_finished_run(run)
    assert "val/IoU/aeroplane" in metrics["final"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["alignment"] == "caffe" and config["data"]["num_classes"] == 21
    assert (run / "csv" / "metrics.csv").is_file()


def test_missing_data_stops_at_once_naming_the_folder(workdir: Path) -> None:
    proc = run_train(["hydra.run.dir=run"], workdir)
    assert proc.returncode == 1
    assert str(workdir / "data" / "voc_seed") in proc.stderr
    assert "python -m fcn.train experiment=quickstart" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "run" / "checkpoints").exists()


def test_bad_value_is_one_message_naming_the_key(workdir: Path) -> None:
    proc = run_train([*TINY, "optimizer.lr=-1", "hydra.run.dir=run"], workdir)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: optimizer.lr must be a positive number, got -1"
    )
    assert "Traceback" not in proc.stderr


def test_unknown_variant_gets_hydras_error(workdir: Path) -> None:
    proc = run_train(["model=fcn4"], workdir)
    assert proc.returncode == 1
    assert "Could not find 'model/fcn4'" in proc.stderr and "fcn8_atonce" in proc.stderr


@pytest.mark.slow
def test_multirun_over_variants_gives_three_jobs_and_three_wandb_runs(workdir: Path) -> None:
    sweep = workdir / "sweep"
    proc = run_train(["-m", *TINY, "model=fcn32,fcn16,fcn8", f"hydra.sweep.dir={sweep}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2"]
    run_ids = set()
    for job, model in zip(jobs, ["fcn32", "fcn16", "fcn8"], strict=True):
        _assert_finished_run(job)
        assert (
            yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[-1] == f"model={model}"
        )
        offline = list((job / "wandb").glob("offline-run-*"))
        assert len(offline) == 1
        run_ids.add(offline[0].name.rsplit("-", 1)[1])
    assert len(run_ids) == 3, "each job must be its own wandb run"


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_one_run_folder(workdir: Path) -> None:
    run = workdir / "run"
    args = [*TINY, "trainer.devices=2", "trainer.strategy=ddp", "data.val_set.num_images=5",
            "logger=csv", f"hydra.run.dir={run}"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # two processes really joined
    _assert_finished_run(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert not list(workdir.glob("outputs"))  # the second process did not make its own folder


def test_multirun_with_ddp_is_refused_at_once(workdir: Path) -> None:
    proc = run_train(["-m", *TINY, "trainer.devices=2", "model=fcn32,fcn8"], workdir)
    assert proc.returncode == 1
    assert "trainer.devices=2 cannot be combined with a multirun" in proc.stderr
