"""Speed options through the real entry point on CPU: mixed precision, channels-last, gradient
accumulation and torch.compile; each trains, and the exact ones give the baseline's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fcn.models import FCN
from fcn.training.module import FCNModule
from fcn.training.optim import build_optimizer
from tests.conftest import TINY, compiled_graphs, run_train

#: the tests share a module-scoped fixture: one pytest-xdist worker runs them all (loadgroup)
pytestmark = pytest.mark.xdist_group("speed_options")

ARGS = [*TINY, "trainer.max_epochs=2", "logger=none"]


def _train(workdir: Path, name: str, *extra: str) -> dict:
    proc = run_train([*ARGS, *extra, f"hydra.run.dir={name}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((workdir / name / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    return metrics


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _train(tmp_path_factory.mktemp("baseline"), "run")


def _close(a: dict, b: dict, rel: float) -> None:
    for key in ("train/loss", "val/loss", "val/pixel_acc"):
        assert a["final"][key] == pytest.approx(b["final"][key], rel=rel), key


def test_bf16_mixed_precision_trains_on_cpu(workdir: Path, baseline: dict) -> None:
    # (fp16 autocast is for GPUs: on a CPU Lightning runs 16-mixed as bf16-mixed.)
    metrics = _train(workdir, "run", "trainer.precision=bf16-mixed")
    losses = [e["val/loss"] for e in metrics["history"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < math.log(6)  # it learned
    assert metrics["final"]["val/loss"] != baseline["final"]["val/loss"]  # not 32-bit after all


def test_channels_last_trains_to_the_same_place(workdir: Path, baseline: dict) -> None:
    # Float reordering grows through Adam's first steps: close after two epochs, not equal.
    _close(_train(workdir, "run", "module.channels_last=true"), baseline, rel=1e-2)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_channels_last_computes_the_same_step() -> None:
    torch.manual_seed(0)
    images, labels = torch.randn(2, 3, 40, 56), torch.randint(0, 3, (2, 40, 56))
    results = []
    for channels_last in (False, True):
        torch.manual_seed(1)
        net = FCN(num_classes=3, alignment="same", trunk_width=4, fc_width=8, dropout=0.0)
        module = FCNModule(net, optimizer=build_optimizer, channels_last=channels_last)
        sizes = torch.tensor([[40, 56], [40, 56]])
        loss = module.training_step((images, labels, sizes), 0)
        loss.backward()
        assert net.conv1_1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        results.append((loss.detach(), net.conv1_1.weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_takes_one_step_per_two_batches(
    workdir: Path, baseline: dict
) -> None:
    metrics = _train(workdir, "run", "trainer.accumulate_grad_batches=2")
    assert [e["step"] for e in baseline["history"]] == [2, 4]  # 2 batches an epoch
    assert [e["step"] for e in metrics["history"]] == [1, 2]


def test_torch_compile_trains_and_keeps_plain_checkpoints(
    workdir: Path, baseline: dict, compile_without_codegen: str
) -> None:
    before = compiled_graphs()
    metrics = _train(workdir, "run", "module.compile=true")
    assert compiled_graphs() > before  # the network did run compiled
    _close(metrics, baseline, rel=1e-2)
    state = torch.load(workdir / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "net.conv1_1.weight" in state["state_dict"]  # no _orig_mod. prefixes
