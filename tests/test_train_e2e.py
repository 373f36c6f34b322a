"""``python -m fcn.train`` end to end in subprocesses: the real Hydra, Lightning and wandb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.utils import instantiate

from tests.conftest import TINY, compose_train, run_train
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
    proc = run_train(  # the one real command line of fcn.train
        [*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run}"], workdir, in_process=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _assert_finished_run(run)
    assert [e["epoch"] for e in metrics["history"]] == [0, 1]
    assert "val/IoU/dot" in metrics["final"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "net.score_pool3.weight" in ckpt["state_dict"] and ckpt["epoch"] == 1
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "wandb must run offline without credentials"
    # The end of the run says what happened and where to go on; no advertisement.
    best = metrics["best"]
    out = proc.stdout
    assert f"best val/mIoU {best['val/mIoU']:.4f} at epoch {best['epoch'] + 1}" in out
    assert f"final val/mIoU {metrics['final']['val/mIoU']:.4f} at epoch 2" in out
    assert f"run folder:      {run}" in out
    assert f"last checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in out
    assert f"python -m fcn.evaluate ckpt_path={metrics['best_checkpoint']}" in out
    assert "Tip" not in out + proc.stderr and "litlogger" not in out + proc.stderr


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
        "debug=tiny", "transforms.size=64", f"data.train_set.splits_dir={splits}",
        "logger=csv", f"hydra.run.dir={run}",
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
    assert "python -m fcn.data.prepare" in proc.stderr and "--layout seed" in proc.stderr
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
def test_ddp_on_cpu_processes_validates_like_one_process(workdir: Path) -> None:
    # Four processes (the other DDP tests run two): 5 validation images give them 2, 1, 1, 1
    processes = 4
    run = workdir / "run"
    overrides = [*TINY, "data.val_set.num_images=5", "logger=[wandb,csv]",
                 f"data.train_set.num_images={4 * processes}"]  # fmt: skip
    # trainer.devices alone, as a user types it: on a machine without GPUs, DDP over processes
    args = [*overrides, f"trainer.devices={processes}", f"hydra.run.dir={run}"]
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"MEMBER: {processes}/{processes}" in proc.stdout + proc.stderr  # all joined
    final = _assert_finished_run(run)["final"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert not list(workdir.glob("outputs"))  # the second process did not make its own folder
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # rank zero logs, once

    # The same weights validated by one process give the same metrics: no sample was dropped
    # or counted twice, and the confusion matrices were summed, not the ratios averaged.
    cfg = compose_train(overrides, workdir / "single")
    datamodule = instantiate(cfg.data)
    module = instantiate(
        cfg.module, net=instantiate(cfg.model), optimizer=instantiate(cfg.optimizer)
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    module.load_state_dict(ckpt["state_dict"])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    single = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU", "val/loss"):
        assert single[key] == pytest.approx(final[key], rel=1e-5, abs=1e-6), key


def test_too_few_images_for_the_processes_is_refused_before_they_start(workdir: Path) -> None:
    args = [*TINY, "trainer.devices=4", "logger=none"]  # 8 images: 2 a process, batch 4
    # in this process: the refusal comes before Lightning starts the other three
    proc = run_train([*args, "hydra.run.dir=run"], workdir, in_process=True)
    assert proc.returncode == 1
    assert "MEMBER:" not in proc.stdout + proc.stderr  # no process group was formed
    assert not (workdir / "run" / "checkpoints").exists()
    assert "give each of 4 processes 2, fewer than data.batch_size=4" in proc.stderr


def test_multirun_with_ddp_is_refused_at_once(workdir: Path) -> None:
    args = ["-m", *TINY, "trainer.devices=2", "model=fcn32,fcn8"]
    proc = run_train(args, workdir, in_process=True)  # refused before any process starts
    assert proc.returncode == 1
    assert "trainer.devices=2 cannot be combined with a multirun" in proc.stderr
    assert "hydra/launcher=slurm" in proc.stderr


def test_slurm_launcher_gives_each_job_its_devices(tmp_path: Path) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from fcn.train import _refuse_multirun_ddp

    args = [*TINY, "hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2"]
    cfg = compose_train(args, tmp_path)
    launcher = cfg.hydra.launcher
    assert "SlurmLauncher" in launcher._target_
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    _refuse_multirun_ddp(cfg)  # allowed: SLURM starts each job's processes


def test_corrupt_file_read_in_a_loader_worker_is_named(workdir: Path) -> None:
    splits = write_seed_tree(workdir / "data")
    first = (splits / "val_mat.txt").read_text().split()[0]
    broken = workdir / "data" / "voc_seed" / "images_mat" / f"{first}.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    args = [
        "model.trunk_width=2", "model.fc_width=4", "transforms.size=32", "data.num_workers=1",
        f"data.train_set.splits_dir={splits}", "trainer.accelerator=cpu", "logger=none",
        "hydra.run.dir=run",
    ]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot read image {broken}")
    assert json.loads((workdir / "run" / "metrics.json").read_text())["status"] == "failed"


#: Lightning's EarlyStopping with only a threshold: the run ends after the first validation
#: that reaches the README's promise (patience never runs out within 20 epochs).
UNTIL_PROMISE = [
    "+callbacks.promise._target_=pytorch_lightning.callbacks.EarlyStopping",
    "+callbacks.promise.monitor=val/mIoU", "+callbacks.promise.mode=max",
    "+callbacks.promise.stopping_threshold=0.8", "+callbacks.promise.patience=1000",
]  # fmt: skip


@pytest.mark.slow
def test_quickstart_reaches_its_promised_mIoU(workdir: Path) -> None:
    """The README's built-in job, unchanged: FCN-8s reaches a validation mIoU of 0.8 within its
    20 epochs. The run stops at the first epoch that does: a callback that only reads the
    metrics changes nothing before it (same config, seed, data order and poly schedule over 20
    epochs), so those epochs are the unchanged job's, whose best can only be higher."""
    run = workdir / "run"
    args = ["experiment=quickstart", "trainer.accelerator=cpu", "logger=none", *UNTIL_PROMISE]
    proc = run_train([*args, f"hydra.run.dir={run}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _assert_finished_run(run)
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 20
    mious = [epoch["val/mIoU"] for epoch in metrics["history"]]
    assert len(mious) <= 20 and mious[-1] >= 0.8, mious
    assert all(m <= 0.8 for m in mious[:-1]), mious  # it stopped at the first to pass 0.8
    assert metrics["best"]["val/mIoU"] == mious[-1]


def test_a_run_resumes_from_its_last_checkpoint(workdir: Path) -> None:
    first, second = workdir / "first", workdir / "second"
    proc = run_train([*TINY, "logger=none", f"hydra.run.dir={first}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = first / "checkpoints" / "last.ckpt"
    args = [*TINY, "logger=none", "trainer.max_epochs=2", f"ckpt_path={last}"]
    proc = run_train([*args, f"hydra.run.dir={second}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((second / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["history"]] == [1]  # epoch 0 was not trained again
    ckpt = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4


@pytest.mark.parametrize("transforms", ["original", "augment"])
def test_train_with_each_transform_pipeline(transforms: str, workdir: Path) -> None:
    run = workdir / "run"
    args = [*TINY, f"transforms={transforms}", "transforms.crop=40", "logger=none"]
    if transforms == "original":
        args.remove("transforms.crop=40")
    proc = run_train([*args, f"hydra.run.dir={run}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


def test_skip_policy_skips_counts_and_reports_bad_files(workdir: Path) -> None:
    splits = write_seed_tree(workdir / "data")
    train_id = (splits / "train_mat.txt").read_text().split()[2]
    val_id = (splits / "val_mat.txt").read_text().split()[0]
    broken_image = workdir / "data" / "voc_seed" / "images_mat" / f"{train_id}.jpg"
    broken_image.write_bytes(b"\xff\xd8 truncated")
    broken_label = workdir / "data" / "voc_seed" / "labels_mat" / f"{val_id}.mat"
    broken_label.write_bytes(b"MATLAB 5.0 but not really")
    run = workdir / "run"
    args = [
        "model.trunk_width=2", "model.fc_width=4", "transforms.size=32", "data.num_workers=2",
        "data.on_bad_file=skip", f"data.train_set.splits_dir={splits}", "trainer.max_epochs=2",
        "trainer.accelerator=cpu", "logger=csv", "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert log.count("1 unreadable file(s) skipped in this train epoch") == 2  # once per epoch
    assert log.count("1 unreadable file(s) skipped in this val epoch") == 2
    assert str(broken_image) in proc.stderr + log and str(broken_label) in proc.stderr + log
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert final["data/skipped_val"] == 1.0
