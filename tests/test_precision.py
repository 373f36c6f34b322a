"""Mixed precision that cannot fail silently.

Under autocast the network's score fusion and fixed bilinear upsamplers run in fp32 (the 16x and
32x kernels are not representable in bfloat16); float16 with the summed loss is refused before
training; and every optimiser step a grad scaler skips is logged. On a CPU, bf16 autocast and
float16 autocast with a CPU grad scaler run the same code paths a GPU's 16-mixed / bf16-mixed do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import Tensor, nn

from fcn.config_checks import check_config
from fcn.errors import ConfigError
from fcn.models import FCN, bilinear_kernel
from fcn.training.callbacks import MetricsFile
from fcn.training.module import FCNModule
from fcn.training.skipped_steps import METRIC, SkippedSteps
from tests.conftest import EVAL, TINY, compose_train, run_train

VARIANTS = {
    "fcn32s": {"skips": ()},
    "fcn16s": {"skips": ("pool4",)},
    "fcn8s": {"skips": ("pool4", "pool3")},
    "fcn8s_atonce": {"skips": ("pool4", "pool3"), "skip_scaling": True},
}
SMALL = {"trunk_width": 4, "fc_width": 8, "num_classes": 5, "dropout": 0.0}


def _scoring(seed: int = 0, **kwargs) -> FCN:
    """An FCN in eval mode: the trunk's He init, and random score layers (they start at zero),
    so the scores are of order 1 as a trained network's."""
    torch.manual_seed(seed)
    net = FCN(**{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for layer in net.score_layers:
            layer.weight.normal_(0.0, 0.5)
            layer.bias.normal_(0.0, 0.5)
    return net


# --- the problem is real ---------------------------------------------------------------------


def test_16x_and_32x_bilinear_kernels_are_not_representable_in_bfloat16() -> None:
    inexact = {}
    for stride in (2, 8, 16, 32):
        kernel = bilinear_kernel(1, 2 * stride)
        inexact[stride] = int((kernel.bfloat16().float() != kernel).sum())
    assert inexact[2] == inexact[8] == 0
    assert inexact[16] == 408 and inexact[32] == 3128  # of 32x32 and 64x64 values
    # float16 keeps 11 bits: the 16x kernel is exact, the 32x one is not
    assert (bilinear_kernel(1, 64).half().float() != bilinear_kernel(1, 64)).any()


def test_a_bfloat16_upsampler_and_a_bfloat16_sum_lose_what_fp32_keeps() -> None:
    upscore = FCN(**SMALL, skips=()).upscore  # the 32x bilinear transposed conv
    scores = torch.randn(1, 5, 4, 4) * 3
    exact = upscore(scores)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast runs it in bfloat16
        reduced = upscore(scores)
    assert reduced.dtype == torch.bfloat16
    assert (reduced.float() - exact).abs().max() > 1e-2
    # at-once's pool3 skip scores are ~1e-4 of the coarse scores: a bfloat16 sum drops them
    coarse, skip = torch.full((4,), 3.0), torch.full((4,), 3e-4)
    assert torch.equal(coarse.bfloat16() + skip.bfloat16(), coarse.bfloat16())
    assert not torch.equal(coarse + skip, coarse)


# --- the network under autocast --------------------------------------------------------------


@contextlib.contextmanager
def _dtypes_seen(net: FCN) -> Iterator[dict[str, tuple]]:
    """Per layer: (input dtype, output dtype, autocast on) of its last call."""
    seen: dict[str, tuple] = {}
    handles = [
        module.register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(
                name, (args[0].dtype, out.dtype, torch.is_autocast_enabled("cpu"))
            )
        )
        for name, module in net.named_children()
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("alignment", ["caffe", "same"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fusion_and_upsampling_run_in_fp32_under_bf16_autocast(
    variant: str, alignment: str
) -> None:
    net = _scoring(**VARIANTS[variant], alignment=alignment)
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        expected = net(x)
        with _dtypes_seen(net) as seen, torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(x)
    fp32, bf16 = torch.float32, torch.bfloat16
    for layer in net.upsamplers:
        name = next(n for n, m in net.named_children() if m is layer)
        assert seen[name] == (fp32, fp32, False), name  # autocast off, fp32 in and out
    # the trunk, fc7 (score_fr's input: on a CPU fc6/fc7 are matrix products, not module calls)
    # and the score
    assert seen["conv1_1"][1] == seen["score_fr"][0] == seen["score_fr"][1] == bf16
    for skip in net.skips:  # scaled skips are scored in fp32, unscaled ones in bfloat16
        assert seen[f"score_{skip}"] == ((fp32, fp32, False) if net.skip_scaling else
                                         (bf16, bf16, True))  # fmt: skip
    assert got.dtype == fp32 and got.shape == expected.shape
    # the trunk's bfloat16 rounding (8 significant bits) is all that is left
    assert (got - expected).norm() / expected.norm() < 0.03


def test_at_once_skips_reach_the_scores_under_bf16_autocast() -> None:
    """pool3 x 0.0001 changes the scores by ~1e-4 of their size: lost in a bfloat16 sum, kept by
    the fp32 fusion (within the trunk's bfloat16 rounding)."""
    net = _scoring(**VARIANTS["fcn8s_atonce"], alignment="caffe")
    x = torch.randn(1, 3, 64, 64)

    def with_and_without_pool3() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            full = net(x)
            saved = net.score_pool3.weight.clone()
            net.score_pool3.weight.zero_()
            without = net(x)
            net.score_pool3.weight.copy_(saved)
        return full, without

    full, without = with_and_without_pool3()
    effect = full - without
    assert 0 < effect.abs().max() < 1e-3 * full.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full16, without16 = with_and_without_pool3()
    assert (full16 - without16 - effect).norm() / effect.norm() < 0.05  # measured: 0.3%
    summed16 = without.bfloat16() + effect.bfloat16()  # a bfloat16 fusion would lose it
    assert (summed16.float() - without.bfloat16().float() - effect).norm() / effect.norm() > 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_without_autocast_every_layer_keeps_the_inputs_dtype(dtype: torch.dtype) -> None:
    # 64-true and bf16-true: no autocast, so nothing is cast (bf16-true's kernels stay inexact)
    net = _scoring(**VARIANTS["fcn8s_atonce"], alignment="same").to(dtype)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 40, 40, dtype=dtype)).dtype == dtype


# --- a trained checkpoint evaluated under bf16-mixed -----------------------------------------


def _evaluate(
    ckpt: Path, workdir: Path, precision: str, *extra: str
) -> tuple[dict, Tensor, Tensor]:
    """``python -m fcn.evaluate`` at Lightning's ``precision`` (and ``extra`` overrides): its
    metrics, and the scores and predicted classes of every pixel (from a forward hook on the
    network, which asserts fp32 scores)."""
    scores: list[Tensor] = []

    def keep(module: nn.Module, args: tuple, out: Tensor) -> None:
        if isinstance(module, FCN):
            assert out.dtype == torch.float32
            scores.append(out.detach().flatten(2).transpose(1, 2).reshape(-1, out.shape[1]))

    handle = nn.modules.module.register_module_forward_hook(keep)
    try:
        args = [*EVAL, f"ckpt_path={ckpt}", f"trainer.precision={precision}", *extra]
        name = "_".join([precision, *extra]).replace("=", "-")
        proc = run_train([*args, f"hydra.run.dir={name}"], workdir, entry="evaluate")
    finally:
        handle.remove()
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((workdir / name / "evaluation.json").read_text())["metrics"]
    all_scores = torch.cat(scores)
    return metrics, all_scores, all_scores.argmax(1)


def test_bf16_mixed_evaluation_matches_fp32(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    fp32, scores32, classes32 = _evaluate(ckpt, tmp_path, "32-true")
    bf16, scores16, classes16 = _evaluate(ckpt, tmp_path, "bf16-mixed")
    assert len(scores32) == len(scores16) > 20_000
    # Measured: every pixel's class agrees, every score is within 0.28% of its pixel's score
    # spread, the metrics are equal and val/loss differs by 4e-4 of itself. (This short run
    # predicts mostly background; the README gives the numbers of the quickstart's FCN-8s.)
    assert (classes16 == classes32).float().mean() >= 0.999
    spread = scores32.amax(1) - scores32.amin(1)
    assert ((scores16 - scores32).abs().amax(1) / spread).max() < 0.02
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU"):
        assert bf16[key] == pytest.approx(fp32[key], abs=1e-3), key
    assert bf16["val/loss"] == pytest.approx(fp32["val/loss"], rel=2e-3)


# --- float16 with the summed loss is refused ---------------------------------------------------


@pytest.mark.parametrize("experiment", ["paper_atonce", "paper_staged"])
def test_the_papers_recipes_refuse_float16(experiment: str) -> None:
    model = ["model=fcn16"] if experiment == "paper_staged" else []
    for precision in ("16-mixed", "16", 16):
        cfg = compose_train([f"experiment={experiment}", *model, f"trainer.precision={precision}"])
        with pytest.raises(ConfigError, match=r"trainer\.precision=16.*module\.loss_reduction="):
            check_config(cfg)
        check_config(cfg, training=False)  # evaluation has no loss: fine
    for fine in (["trainer.precision=bf16-mixed"], ["trainer.precision=16-mixed",
                                                     "module.loss_reduction=mean"]):  # fmt: skip
        check_config(compose_train([f"experiment={experiment}", *model, *fine]))


def test_float16_with_the_summed_loss_ends_with_one_line(workdir: Path) -> None:
    args = [*TINY, "trainer.precision=16-mixed", "module.loss_reduction=sum", "hydra.run.dir=r"]
    proc = run_train(args, workdir)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "trainer.precision=16-mixed" in errors[0] and "module.loss_reduction=sum" in errors[0]
    assert "use trainer.precision=bf16-mixed" in errors[0]
    assert not (workdir / "r" / "checkpoints").exists()  # refused before training


# --- skipped optimiser steps -----------------------------------------------------------------


class _StepWatch(pl.Callback):
    """Whether each optimiser step changed the weights (a skipped one does not)."""

    def __init__(self) -> None:
        self.changed: list[bool] = []
        self._before: Tensor | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._before = pl_module.net.score_fr.weight.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._before is not None:
            self.changed.append(not torch.equal(self._before, pl_module.net.score_fr.weight))
            self._before = None


def _fit_float16(loss_reduction: str, scaler: torch.amp.GradScaler, folder: Path) -> tuple:
    """Fit TINY under float16 autocast with a CPU grad scaler (Lightning's MixedPrecision
    plugin, as 16-mixed builds it on a GPU), writing ``folder/metrics.json``; returns (trainer,
    SkippedSteps, _StepWatch)."""
    cfg = compose_train([*TINY, "data.train_set.num_images=16", "trainer.max_epochs=2"])
    datamodule = instantiate(cfg.data)
    torch.manual_seed(0)
    module = FCNModule(
        instantiate(cfg.model), optimizer=instantiate(cfg.optimizer),
        loss_reduction=loss_reduction, class_names=datamodule.class_names,
    )  # fmt: skip
    skipped, watch = SkippedSteps(), _StepWatch()
    trainer = pl.Trainer(
        accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[skipped, watch, MetricsFile(folder / "metrics.json")], max_epochs=2,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return trainer, skipped, watch


def test_every_skipped_step_is_counted_and_named(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # growth_interval=1: the scale doubles after each step taken, so skips and steps alternate
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=1)
    with caplog.at_level(logging.WARNING, logger="fcn.training.skipped_steps"):
        trainer, skipped, watch = _fit_float16("mean", scaler, tmp_path)
    assert len(watch.changed) == trainer.global_step == 8
    skips = [i + 1 for i, changed in enumerate(watch.changed) if not changed]
    assert 0 < len(skips) < 8  # some of each, found by the weights alone
    assert skipped.skipped == len(skips)
    assert trainer.callback_metrics[METRIC] == len(skips)
    warned = [r.getMessage() for r in caplog.records if "was skipped" in r.getMessage()]
    assert [int(m.split()[2]) for m in warned] == skips  # "optimiser step N (..."
    assert "lowered its scale from" in warned[0] and f"({len(skips)} steps skipped" in warned[-1]
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert len(history) == 2  # one entry an epoch, with the count at its end
    assert [e[METRIC] for e in history] == [sum(s <= e["step"] for s in skips) for e in history]


def test_the_summed_loss_in_float16_skips_every_step(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """What the refusal prevents: the weights never change, and now it shows."""
    with caplog.at_level(logging.WARNING, logger="fcn.training.skipped_steps"):
        trainer, skipped, watch = _fit_float16("sum", torch.amp.GradScaler("cpu"), tmp_path)
    assert watch.changed == [False] * 8 and skipped.skipped == 8
    assert trainer.callback_metrics[METRIC] == 8
    assert trainer.callback_metrics["train/loss"] == pytest.approx(math.log(6), abs=1e-4)
    assert "scale from 65536 to 32768" in caplog.records[0].getMessage()


def test_without_a_grad_scaler_nothing_is_logged(workdir: Path) -> None:
    # bf16-mixed (and 16-mixed on a CPU, run as bf16-mixed) has no scaler: no metric, no warning
    proc = run_train([*TINY, "trainer.precision=bf16-mixed", "logger=none", "hydra.run.dir=r"],
                     workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was skipped" not in proc.stdout + proc.stderr
    history = json.loads((workdir / "r" / "metrics.json").read_text())["history"]
    assert history and all(METRIC not in entry for entry in history)


def test_the_count_survives_a_resume() -> None:
    callback = SkippedSteps()
    callback.skipped = 3
    resumed = SkippedSteps()
    resumed.load_state_dict(callback.state_dict())
    assert resumed.skipped == 3
