"""The training core on GPUs, tested through the same code on CPU: random states of every
process and of CUDA in checkpoints (exact resume under DDP), deterministic loss and confusion
matrix, no host read per training step (the divergence check meets once per logging interval),
and ``torch.compile`` with dynamic shapes where the input sizes vary."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

import fcn.training.module as module_py
from fcn.checkpoint import (
    RNG_KEY,
    load_file,
    rank_rng_states,
    rng_states,
    rng_states_for_rank,
    set_rng_states,
)
from fcn.models import FCN
from fcn.training.metrics import LossMean, SegmentationMetrics
from fcn.training.module import FCNModule, TrainingDiverged, segmentation_loss
from fcn.training.optim import build_optimizer
from tests.conftest import TINY, compose_train, run_train


def _module(**kwargs) -> FCNModule:
    net = FCN(skips=("pool4",), num_classes=3, trunk_width=2, fc_width=4, alignment="same")
    return FCNModule(net, optimizer=build_optimizer, **kwargs)


# --- random states: CUDA and every process -------------------------------------------------


def test_cuda_random_states_are_saved_and_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mocked machine with 2 GPUs: their states travel through a weights-only checkpoint."""
    saved = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in saved])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    module = _module()
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    expected = torch.rand(3)  # the CPU stream after the save

    module.on_load_checkpoint(load_file(tmp_path / "c.ckpt"))  # weights-only
    assert len(restored) == 1 and all(map(torch.equal, restored[0], saved))
    assert torch.equal(torch.rand(3), expected)


def test_cuda_states_restore_onto_fewer_gpus_or_none(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    states = {**rng_states(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}
    restored: list = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    set_rng_states(states)
    assert restored == [] and "no GPU is available" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    set_rng_states(states)
    assert len(restored[0]) == 1 and "the first 1 restored" in caplog.text


def test_each_rank_restores_its_own_states_and_a_different_world_size_warns() -> None:
    per_rank = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        per_rank.append(rng_states())
    stored = rank_rng_states(per_rank)
    for rank in (0, 1):
        states, warning = rng_states_for_rank(stored, rank, 2)
        assert states is per_rank[rank] and warning is None
    states, warning = rng_states_for_rank(stored, 2, 3)
    assert states is None and "saved by 2 process(es)" in warning and "[2]" in warning
    states, warning = rng_states_for_rank(stored, 0, 1)
    assert states is per_rank[0] and "resumes with 1" in warning
    # saved while handling an exception: only the saving process's states
    states, warning = rng_states_for_rank(rank_rng_states([per_rank[0], None]), 1, 2)
    assert states is None and "rank(s) [1]" in warning


def test_checkpoints_of_the_single_process_format_still_restore() -> None:
    torch.manual_seed(3)
    old = rng_states()  # what checkpoints stored under RNG_KEY before per-rank states
    expected = torch.rand(4)
    _module().on_load_checkpoint({RNG_KEY: old})
    assert torch.equal(torch.rand(4), expected)
    assert rng_states_for_rank(old, 1, 2)[1] == (
        "the checkpoint holds the random states of one process; all 2 processes restore them"
    )


# --- deterministic algorithms ---------------------------------------------------------------


@pytest.fixture
def deterministic() -> Iterator[None]:
    """Deterministic algorithms on for the test (as ``trainer.deterministic=true`` sets them),
    torch's flags as they were after it."""
    enabled, benchmark = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled)
        torch.backends.cudnn.benchmark = benchmark


def _refuse_torchmetrics_bincount(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torchmetrics' _bincount was called")

    for name in ("torchmetrics.functional.classification.confusion_matrix",
                 "torchmetrics.utilities.data"):  # fmt: skip
        monkeypatch.setattr(importlib.import_module(name), "_bincount", refuse)


def test_the_loss_sums_per_pixel_terms_equal_to_torchs_reduction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On CUDA, nll_loss2d refuses deterministic mode for reduction sum/mean (not for none):
    every cross-entropy the loss takes is per pixel, and the sum is torch's own."""
    reductions: list[str] = []
    real = F.cross_entropy

    def spy(*args, **kwargs):
        reductions.append(kwargs["reduction"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module_py.F, "cross_entropy", spy)
    g = torch.Generator().manual_seed(0)
    for shape in [(2, 4, 5, 6), (4, 21, 96, 128)]:
        scores = torch.randn(*shape, generator=g, requires_grad=True)
        labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
        labels[:, :3] = 255
        for reduction in ("sum", "mean"):
            loss, valid = segmentation_loss(scores, labels, reduction)
            old = real(scores, labels, ignore_index=255, reduction="sum")
            old = old if reduction == "sum" else old / valid
            if shape[-1] == 6:
                assert loss.item() == old.item()  # bit for bit
            torch.testing.assert_close(loss, old, rtol=2e-7, atol=0)  # float rounding at most
            (grad,) = torch.autograd.grad(loss, scores)
            (old_grad,) = torch.autograd.grad(old, scores)
            assert torch.equal(grad, old_grad)  # the same gradient: training is unchanged
    assert set(reductions) == {"none"}


def test_the_confusion_matrix_under_deterministic_algorithms(
    deterministic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchmetrics' deterministic bincount (an (N, C^2) comparison) is never called, and the
    matrix equals torchmetrics' own (non-deterministic mode) one."""
    _refuse_torchmetrics_bincount(monkeypatch)
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 21, 40, 50, generator=g)
    labels = torch.randint(0, 21, (3, 40, 50), generator=g)
    labels[0, :10] = 255
    ours = SegmentationMetrics(num_classes=21)
    ours.update(scores, labels)
    ours.update(scores[:1], labels[:1])
    out = ours.compute()
    monkeypatch.undo()
    torch.use_deterministic_algorithms(False)
    theirs = MulticlassConfusionMatrix(num_classes=21, ignore_index=255)
    theirs.update(scores.argmax(1), labels)
    theirs.update(scores[:1].argmax(1), labels[:1])
    assert torch.equal(out["confusion"], theirs.compute())
    assert out["confusion"].sum() == 4 * 40 * 50 - 2 * 10 * 50


def test_a_run_with_trainer_deterministic_true(
    workdir: Path, deterministic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real entry point in deterministic mode (on CPU: only a GPU has the kernels that
    refuse it), its validation never in torchmetrics' deterministic bincount."""
    _refuse_torchmetrics_bincount(monkeypatch)
    proc = run_train([*TINY, "trainer.deterministic=true", "logger=none", "hydra.run.dir=run"],
                     workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((workdir / "run" / "metrics.json").read_text())["status"] == "finished"
    assert torch.are_deterministic_algorithms_enabled()  # Lightning set it for the run


# --- no host read per step; the divergence check ----------------------------------------------

HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class _Batches(torch.utils.data.Dataset):
    """``n`` batches of 2 random images (32 x 32) and labels, ``nan_at``'s images NaN."""

    def __init__(self, n: int, nan_at: int | None = None) -> None:
        self.n, self.nan_at = n, nan_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        images = torch.randn(2, 3, 32, 32, generator=g)
        if i == self.nan_at:
            images = images * float("nan")
        labels = torch.randint(0, 3, (2, 32, 32), generator=g)
        return images, labels, torch.tensor([[32, 32], [32, 32]])


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: a tiny network's steps take milliseconds, not seconds, when other
    processes keep the cores busy (OpenMP workers waiting on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(module: FCNModule, batches: _Batches, every: int) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, log_every_n_steps=every, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)


class _HostReads:
    """Counts the reads of a tensor's value by Python code (``.item()``, ``bool(t)``, ...) while
    ``on`` is set: on a GPU each is a device-to-host copy that waits for the queued work. Reads
    inside torch's C++ code (boolean-mask indexing, ``nonzero``, ...) are not seen: the steps
    use none."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on, self.count = False, 0
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, real):
        def read(tensor, *args, **kwargs):
            self.count += self.on
            return real(tensor, *args, **kwargs)

        return read

    def during(self, function):
        def counted(*args, **kwargs):
            self.on = True
            try:
                return function(*args, **kwargs)
            finally:
                self.on = False

        return counted


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_training_steps_read_nothing_back_and_meet_once_per_interval(
    monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    reads = _HostReads(monkeypatch)
    module = _module()
    per_step: list[int] = []  # host reads in each step's training_step and on_train_batch_end
    step, batch_end = module.training_step, module.on_train_batch_end

    def training_step(*args):
        per_step.append(reads.count)
        return reads.during(step)(*args)

    def on_train_batch_end(*args):
        reads.during(batch_end)(*args)
        per_step[-1] = reads.count - per_step[-1]

    module.training_step = training_step  # type: ignore[method-assign]
    module.on_train_batch_end = on_train_batch_end  # type: ignore[method-assign]
    collectives: list[int] = []  # the number of steps taken at each (a no-op on one process)
    real_reduce = pl.strategies.SingleDeviceStrategy.reduce

    def reduce(strategy, tensor, *args, **kwargs):
        collectives.append(len(per_step))
        return real_reduce(strategy, tensor, *args, **kwargs)

    monkeypatch.setattr(pl.strategies.SingleDeviceStrategy, "reduce", reduce)
    _fit(module, _Batches(10), every=4)
    # The loss, its check, the running mean and self.log stay on the device; the processes'
    # records are compared (and read, once) after batches 4 and 8, and after the epoch's last.
    assert per_step == [0, 0, 0, 1, 0, 0, 0, 1, 0, 1]
    assert collectives == [0, 0, 4, 8, 10]  # Lightning's first two: the loaders' lengths

    # The test sees host reads: torchmetrics' MeanMetric reads NaN flags at every update.
    mean = MeanMetric()
    reads.during(mean.update)(torch.tensor(1.0), weight=torch.tensor(2))
    assert reads.count - sum(per_step) >= 1


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_a_nan_loss_stops_the_run_at_the_interval_naming_its_step(one_thread: None) -> None:
    module = _module()
    steps: list[int] = []
    step = module.training_step

    def training_step(*args):
        steps.append(module.global_step)
        return step(*args)

    module.training_step = training_step  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match=r"^the training loss is nan at step 5 \(epoch 0\)"):
        _fit(module, _Batches(20, nan_at=5), every=4)
    assert steps[-1] == 7  # stopped after the interval that saw it (steps 4-7), not later


def test_the_running_loss_mean_equals_meanmetric() -> None:
    ours, theirs = LossMean(), MeanMetric()
    for value, weight in [(0.5, 3), (2.0, 1), (1.25, 0)]:
        ours.update(torch.tensor(value), torch.tensor(weight))
        theirs.update(torch.tensor(value), weight=torch.tensor(weight))
    assert torch.equal(ours.compute(), theirs.compute())


# --- torch.compile: dynamic shapes where sizes vary -----------------------------------------


@pytest.mark.parametrize(
    ("transforms", "expected"),
    [("original", True), ("resize_pad", False), ("augment", None), ("cityscapes", False)],
)
def test_compile_is_dynamic_when_the_transforms_keep_the_images_sizes(
    transforms: str, expected: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real configs' transforms; torch.compile is spied on (nothing is compiled)."""
    calls: list[dict] = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (calls.append(kw), fn)[1])
    cfg = compose_train([*TINY, f"transforms={transforms}", "module.compile=true"])
    assert cfg.module.compile_dynamic == "auto"
    run_config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "transforms")}
    module = _module(run_config=run_config, compile=True, compile_dynamic="auto")
    assert calls == [{"dynamic": expected}] and module.compile_dynamic is expected
    module.net(torch.randn(1, 3, 32, 32))  # the spy left the forward as it was


def test_compile_dynamic_given_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (calls.append(kw), fn)[1])
    original = {"transforms": {"train": None, "val": None}}  # no fixed_size (older configs)
    crops = {"transforms": {"train": {"_target_": "fcn.data.transforms.augment"}, "val": None}}
    _module(run_config=original, compile=True)
    _module(run_config=crops, compile=True)
    _module(run_config=original, compile=True, compile_dynamic=False)
    _module(compile=True)  # no run config: torch's default
    _module(run_config=original)  # not compiled
    assert calls == [{"dynamic": True}, {"dynamic": None}, {"dynamic": False}, {"dynamic": None}]
    with pytest.raises(ValueError, match="^compile_dynamic must be auto"):
        _module(compile_dynamic="yes")


# --- DDP on 2 CPU processes -------------------------------------------------------------------

#: Loaded by every process of a test's run (PYTHONPATH): ranks seeded apart (as each GPU's
#: dropout would draw its own masks) and NaN images on rank 1 at one step, as the test asks.
HOOKS = """
import os
import torch
from fcn.training import module as _m

_rank = int(os.environ.get("LOCAL_RANK", "0"))
_setup, _step = _m.FCNModule.setup, _m.FCNModule.training_step

def setup(self, stage):
    torch.manual_seed(1000 + _rank)  # before a checkpoint's states are restored
    return _setup(self, stage)

def training_step(self, batch, batch_idx):
    with open(os.environ["FCN_TEST_STEPS"], "a") as f:
        f.write(f"{_rank} {self.global_step}\\n")
    if os.environ.get("FCN_TEST_NAN_AT") == str(self.global_step) and _rank == 1:
        images, labels, sizes = batch
        batch = (images * float("nan"), labels, sizes)
    return _step(self, batch, batch_idx)

_m.FCNModule.setup, _m.FCNModule.training_step = setup, training_step
"""

DDP = [*TINY, "trainer.devices=2", "trainer.strategy=ddp", "logger=none"]


def _hooked_env(workdir: Path, **extra: str) -> dict[str, str]:
    hooks = workdir / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOKS)
    steps = str(workdir / "steps.txt")
    # one thread a process: two processes of two threads on a busy CPU wait on each other
    return {"PYTHONPATH": str(hooks), "FCN_TEST_STEPS": steps, "OMP_NUM_THREADS": "1", **extra}


def _steps(workdir: Path) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {0: [], 1: []}
    for line in (workdir / "steps.txt").read_text().split("\n"):
        if line:
            rank, step = map(int, line.split())
            steps[rank].append(step)
    return steps


@pytest.mark.slow
def test_ddp_a_nan_on_one_rank_stops_every_rank_within_an_interval(workdir: Path) -> None:
    env = _hooked_env(workdir, FCN_TEST_NAN_AT="5")
    args = [*DDP, "data.train_set.num_images=128", "trainer.log_every_n_steps=4",
            "hydra.run.dir=run"]  # fmt: skip
    proc = run_train(args, workdir, env=env)
    assert proc.returncode != 0
    message = "the training loss is nan at step 5 (epoch 0)"
    assert proc.stderr.count(f"error: {message}") == 2, proc.stderr[-3000:]  # both ranks
    # Both stopped together, after the interval holding step 5 (steps 4-7 of 16 an epoch).
    assert _steps(workdir) == {0: list(range(8)), 1: list(range(8))}


@pytest.mark.slow
def test_ddp_resume_from_epoch_one_reproduces_the_uninterrupted_run(workdir: Path) -> None:
    """Ranks with different dropout streams: each must get its own back from the checkpoint."""
    args = [*DDP, "data.train_set.num_images=32", "model.dropout=0.5", "trainer.max_epochs=2"]
    keep = "callbacks.model_checkpoint.save_top_k=-1"  # every epoch's checkpoint
    proc = run_train([*args, keep, "hydra.run.dir=reference"], workdir, env=_hooked_env(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (first,) = (workdir / "reference" / "checkpoints").glob("epoch000-*.ckpt")
    stored = load_file(first)[RNG_KEY]
    assert stored["world_size"] == 2
    assert not torch.equal(stored["ranks"][0]["torch"], stored["ranks"][1]["torch"])

    proc = run_train(
        [*args, f"ckpt_path={first}", "hydra.run.dir=resumed"], workdir, env=_hooked_env(workdir)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    def last_epoch(run: str) -> dict:
        history = json.loads((workdir / run / "metrics.json").read_text())["history"]
        return {k: v for k, v in history[-1].items() if k != "seconds"}

    assert last_epoch("resumed")["epoch"] == 1
    assert last_epoch("resumed") == last_epoch("reference")  # bit for bit
    weights = [load_file(workdir / r / "checkpoints" / "last.ckpt")["state_dict"]
               for r in ("reference", "resumed")]  # fmt: skip
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
