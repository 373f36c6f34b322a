"""``python -m fcn.evaluate`` on a checkpoint of a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import EVAL, run_train


def test_evaluation_of_a_checkpoint_reproduces_its_validation(
    trained: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    args = [*EVAL, "transforms=resize_pad", "transforms.size=48", f"ckpt_path={ckpt}"]
    proc = run_train(  # the one real command line of fcn.evaluate
        [*args, f"hydra.run.dir={out}"], tmp_path, entry="evaluate", in_process=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "evaluation.json").read_text())["metrics"]
    final = json.loads((trained / "metrics.json").read_text())["final"]
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU", "val/IoU/disc"):
        assert result[key] == pytest.approx(final[key], abs=1e-6), key
    for row in ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "background", "dot"):
        assert row in proc.stdout
    assert "litlogger" not in proc.stdout + proc.stderr  # no advertisement


def test_original_resolution_is_the_default(trained: Path, tmp_path: Path) -> None:
    """Without options, evaluation scores each image at its own size, one at a time: the same
    numbers as asking for it, and not those of the training resolution (48 px)."""
    ckpt = trained / "checkpoints" / "last.ckpt"
    runs = {
        "default": [],
        "original": ["transforms=original", "batch_size=1"],
        "resized": ["transforms=resize_pad", "transforms.size=48"],
    }
    metrics = {}
    for name, extra in runs.items():
        proc = run_train(
            [*EVAL, f"ckpt_path={ckpt}", *extra, f"hydra.run.dir={name}"], tmp_path,
            entry="evaluate",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics[name] = json.loads((tmp_path / name / "evaluation.json").read_text())["metrics"]
    assert metrics["default"] == metrics["original"]
    assert metrics["default"]["val/loss"] != metrics["resized"]["val/loss"]


def test_mismatched_model_and_missing_checkpoint_are_named(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    proc = run_train([*EVAL, "model=fcn32", f"ckpt_path={ckpt}"], tmp_path, entry="evaluate")
    assert proc.returncode == 1 and "not in this model: score_pool3.bias" in proc.stderr
    proc = run_train(EVAL, tmp_path, entry="evaluate")
    assert proc.returncode == 1 and "error: ckpt_path must name" in proc.stderr


def test_a_checkpoint_describes_its_own_model_and_data(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["fcn_config"]
    assert stored["model"]["trunk_width"] == 4 and stored["data"]["num_classes"] == 6
    # No model=, data= or experiment=: both come from the checkpoint. Keys given with + are set
    # over the stored data config.
    args = [f"ckpt_path={ckpt}", "hydra.run.dir=alone", "+data.num_workers=0"]
    proc = run_train(args, tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_train(
        [*EVAL, f"ckpt_path={ckpt}", "hydra.run.dir=given"], tmp_path, entry="evaluate"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone, given = (
        json.loads((tmp_path / d / "evaluation.json").read_text())["metrics"]
        for d in ("alone", "given")
    )
    assert alone == given


def test_a_bare_state_dict_needs_the_model_named(trained: Path, tmp_path: Path) -> None:
    state = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    bare = tmp_path / "bare.pth"
    torch.save({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}, bare)
    proc = run_train([f"ckpt_path={bare}", "data=shapes"], tmp_path, entry="evaluate")
    assert proc.returncode == 1 and "stores no model config" in proc.stderr
    proc = run_train([*EVAL, f"ckpt_path={bare}", "hydra.run.dir=out"], tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_ddp_evaluation_on_two_processes_equals_one(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    # 5 images at their own sizes, batch 2: the ranks get 3 and 2, in padded batches.
    args = [*EVAL, f"ckpt_path={ckpt}", "data.val_set.num_images=5", "batch_size=2"]
    ddp = [*args, "trainer.devices=2", "trainer.strategy=ddp", "hydra.run.dir=ddp"]
    proc = run_train(ddp, tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    proc = run_train([*args, "hydra.run.dir=one"], tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_metrics, one = (
        json.loads((tmp_path / d / "evaluation.json").read_text())["metrics"]
        for d in ("ddp", "one")
    )
    for key, value in one.items():
        assert ddp_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    # the confusion matrix written is the one summed over both processes
    ddp_counts, one_counts = (
        json.loads((tmp_path / d / "evaluation.confusion.json").read_text())["counts"]
        for d in ("ddp", "one")
    )
    assert ddp_counts == one_counts
    assert not (tmp_path / "outputs").exists()  # the second process made no folder of its own
