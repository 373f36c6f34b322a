"""``python -m fcn.evaluate`` on a checkpoint of a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY, run_train

#: TINY's model and data, without its training-only settings.
EVAL = [a for a in TINY if not a.startswith(("trainer.max_epochs", "callbacks."))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("trained")
    run = workdir / "run"
    proc = run_train(
        [*TINY, "trainer.max_epochs=2", "logger=none", f"hydra.run.dir={run}"], workdir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_evaluation_of_a_checkpoint_reproduces_its_validation(
    trained: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    args = [*EVAL, "transforms=resize_pad", "transforms.size=48", f"ckpt_path={ckpt}"]
    proc = run_train([*args, f"hydra.run.dir={out}"], tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "evaluation.json").read_text())["metrics"]
    final = json.loads((trained / "metrics.json").read_text())["final"]
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU", "val/IoU/disc"):
        assert result[key] == pytest.approx(final[key], abs=1e-6), key
    for row in ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "background", "dot"):
        assert row in proc.stdout


def test_original_resolution_is_the_default(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    proc = run_train([*EVAL, f"ckpt_path={ckpt}", "hydra.run.dir=out"], tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "evaluation.json").read_text())["metrics"]
    assert 0.0 <= metrics["val/mIoU"] <= 1.0


def test_mismatched_model_and_missing_checkpoint_are_named(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    proc = run_train([*EVAL, "model=fcn32", f"ckpt_path={ckpt}"], tmp_path, entry="evaluate")
    assert proc.returncode == 1 and "not in this model: score_pool3.bias" in proc.stderr
    proc = run_train(EVAL, tmp_path, entry="evaluate")
    assert proc.returncode == 1 and "error: ckpt_path must name" in proc.stderr
