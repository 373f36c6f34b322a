"""The LightningModule: an FCN, its loss, its metrics and its optimiser."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerStatus
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric

from fcn.checkpoint import (
    CONFIG_KEY,
    RNG_KEY,
    rank_rng_states,
    rng_states,
    rng_states_for_rank,
    set_rng_states,
)
from fcn.data.labels import IGNORE_INDEX
from fcn.errors import FCNError
from fcn.scores import METRIC_NAMES
from fcn.training.metrics import LossMean, SegmentationMetrics

log = logging.getLogger(__name__)

LOSS_REDUCTIONS = ("mean", "sum")
#: ``module.class_weights`` computed by ``fcn.train`` from the training split's pixel counts.
MEDIAN_FREQUENCY = "median_frequency"
#: ``module.compile_dynamic``: choose from the run's transforms (:func:`compile_dynamic_for`).
AUTO = "auto"
#: The non-finite loss record of a process that saw none (larger than any step's code).
_ALL_FINITE = 2**62
#: The non-finite values a loss can take, by their code in that record (``step * 4 + code``).
_NONFINITE = (float("nan"), float("inf"), float("-inf"))


def segmentation_loss(
    scores: Tensor, target: Tensor, reduction: str, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Cross-entropy over pixels whose label is not 255.

    Returns ``(loss, valid)``: the loss reduced as asked (``mean`` over valid pixels as the Keras
    seed, ``sum`` as the paper) and the number of valid pixels. With no valid pixel the loss is 0
    (with a gradient graph), not NaN.

    ``weight`` (one per class): each pixel's cross-entropy is multiplied by its class's weight;
    ``mean`` then divides by the sum of the valid pixels' weights (as torch's weighted mean
    does; 0 when that sum is 0), ``sum`` adds the weighted terms.

    The cross-entropy is taken per pixel (``reduction="none"``) and summed here: on CUDA, torch's
    own ``sum`` and ``mean`` reductions of a 2-d NLL loss add with atomics, and
    ``torch.use_deterministic_algorithms`` (``trainer.deterministic=true``) refuses them.
    """
    valid_mask = target != IGNORE_INDEX
    valid = valid_mask.sum()
    per_pixel = F.cross_entropy(scores, target, ignore_index=IGNORE_INDEX, reduction="none")
    if weight is None:
        total = per_pixel.sum()  # void pixels are 0
        if reduction == "sum":
            return total, valid
        return total / valid.clamp(min=1), valid
    pixel_weight = weight.to(per_pixel.dtype)[torch.where(valid_mask, target, 0)] * valid_mask
    total = (per_pixel * pixel_weight).sum()
    if reduction == "sum":
        return total, valid
    weight_sum = pixel_weight.sum()
    return total / torch.where(weight_sum > 0, weight_sum, torch.ones_like(weight_sum)), valid


def check_class_weights(class_weights: Any, num_classes: int) -> None:
    """Raise ValueError (its message starts with ``class_weights``) unless ``class_weights`` is
    None, ``median_frequency`` or ``num_classes`` non-negative finite numbers, not all 0."""
    if class_weights is None or (
        isinstance(class_weights, str) and class_weights == MEDIAN_FREQUENCY
    ):
        return
    expected = (
        f"null (unweighted), {MEDIAN_FREQUENCY} or a list of {num_classes} non-negative numbers "
        "(one per class)"
    )
    if isinstance(class_weights, str | bytes) or not isinstance(class_weights, Sequence):
        raise ValueError(f"class_weights must be {expected}, got {class_weights!r}")
    values = list(class_weights)
    if len(values) != num_classes:
        raise ValueError(
            f"class_weights has {len(values)} values for {num_classes} classes: give {expected}"
        )
    for i, value in enumerate(values):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"class_weights[{i}] must be a non-negative number, got {value!r}: give {expected}"
            )
    if not any(values):
        raise ValueError(f"class_weights are all 0: no pixel would count; give {expected}")


def check_loss_reduction(loss_reduction: str) -> None:
    """Raise ValueError unless ``loss_reduction`` is ``mean`` or ``sum``."""
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(
            f"loss_reduction must be one of {list(LOSS_REDUCTIONS)}, got {loss_reduction!r}"
        )


def _plain(obj: Any) -> Any:
    """Nested mappings and sequences (DictConfig, ListConfig included) as dicts and lists, so a
    checkpoint holding them stays loadable weights-only."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [_plain(v) for v in obj]
    return obj


def compile_dynamic_for(run_config: Mapping[str, Any] | None) -> bool | None:
    """``torch.compile``'s ``dynamic`` for a run's config (``module.compile_dynamic=auto``).

    True (shapes dynamic from the start) when training batches may differ in size (images at
    their own sizes, as ``transforms=original``); None (torch's default: static, dynamic once a
    size changes) when only validation's do (``transforms=augment``: fixed training crops);
    False (static) when every batch has one size (``transforms=resize_pad``); None without a
    config. The sizes: :func:`fcn.training.autotuning.fixed_sizes`, as for cuDNN autotuning.
    """
    if run_config is None:
        return None
    from fcn.training.autotuning import fixed_sizes

    train, val = fixed_sizes(run_config.get("transforms") or {})
    if not train:
        return True
    return False if val else None


def check_compile_dynamic(compile_dynamic: Any) -> None:
    """Raise ValueError (its message starts with ``compile_dynamic``) unless it is ``auto``,
    true, false or null."""
    allowed = compile_dynamic is None or isinstance(compile_dynamic, bool)
    if not allowed and compile_dynamic != AUTO:
        raise ValueError(
            f"compile_dynamic must be {AUTO} (from the transforms), true (dynamic shapes), false "
            f"(static) or null (torch's default), got {compile_dynamic!r}"
        )


class TrainingDiverged(FCNError):
    """The training loss became NaN or infinite."""


def diverged_message(
    loss: float, step: int, epoch: int, lr: float | None, loss_reduction: str
) -> str:
    """What happened, where, and the likely cause (docs/paper.md#loss-normalisation)."""
    where = f"the training loss is {loss} at step {step} (epoch {epoch})"
    setting = f"optimizer.lr={lr:g} with module.loss_reduction={loss_reduction}" if lr else ""
    if loss_reduction == "sum" and lr is not None and lr > 1e-8:
        cause = (
            "a summed loss grows with the number of pixels in a batch, so it needs the paper's "
            "tiny learning rates (1e-10, 1e-12, 1e-14): lower optimizer.lr, or use "
            "module.loss_reduction=mean with rates like the Keras seed's 1e-4"
        )
    elif lr is not None and lr > 1e-2:
        cause = "the learning rate is high even for a mean loss (the Keras seed uses Adam at 1e-4)"
    else:
        cause = (
            "look for NaN or infinite values in the data, or try a lower optimizer.lr or "
            "trainer.precision=32-true"
        )
    return f"{where}; {setting}: {cause}"


class FCNModule(pl.LightningModule):
    """Trains an FCN with cross-entropy; validates with the paper's metrics.

    Args:
        net: the network (:class:`fcn.models.FCN`).
        optimizer: ``net -> Optimizer`` (``fcn.training.optim.build_optimizer``, settings bound).
        scheduler: ``Optimizer -> LRScheduler`` stepped once per epoch, or None for a fixed rate.
        loss_reduction: ``"mean"`` over valid pixels (Keras seed) or ``"sum"`` (paper).
        class_weights: one weight per class multiplying its pixels' cross-entropy in the
            training loss (a weighted ``mean`` divides by the sum of the valid pixels' weights),
            or None for the unweighted loss. ``fcn.train`` turns ``median_frequency`` into the
            list before building this module.
        class_names: names used in the per-class IoU metrics ``val/IoU/<name>``.
        run_config: the run's resolved config (plain containers), stored in every checkpoint so
            that ``fcn.evaluate`` / ``fcn.predict`` rebuild the network and data without options.
        channels_last: keep the network's weights and inputs in channels-last memory format
            (faster convolutions on many GPUs and recent CPUs; same results within float error).
        compile: compile the network's forward with ``torch.compile`` (in place: checkpoints keep
            the plain parameter names).
        compile_dynamic: ``torch.compile``'s ``dynamic``: true, false, null (torch's default) or
            ``auto``, chosen from ``run_config``'s transforms by :func:`compile_dynamic_for`
            (dynamic when the training images keep their own sizes).

    A non-finite training loss stops the run with :class:`TrainingDiverged` on every process,
    naming the first step where any process saw one. It is noted on the device at every step;
    the processes compare notes (one all-reduce, one read by the host) every
    ``trainer.log_every_n_steps`` batches, at the end of each epoch's training batches, before
    validation and before a checkpoint is written, so a step never waits for the host.

    Checkpoints carry the random states (CPU, numpy, Python and CUDA) of every process, gathered
    when the checkpoint is made; a resumed process restores its own.

    Logged per epoch: ``train/loss``, ``val/loss`` (both the mean cross-entropy per valid pixel,
    unweighted, whatever reduction and class weights are optimised, so runs compare),
    ``val/mIoU``, ``val/pixel_acc``, ``val/mean_acc``, ``val/fwIoU`` and ``val/IoU/<class>``;
    per step: ``train/loss_step`` (the same unweighted mean). The confusion matrix behind the
    validation metrics is kept in :attr:`last_val_confusion` until the next validation.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[nn.Module], Optimizer],
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        loss_reduction: str = "mean",
        class_names: Sequence[str] | None = None,
        run_config: Mapping[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        class_weights: Sequence[float] | None = None,
        compile_dynamic: bool | str | None = AUTO,
    ) -> None:
        super().__init__()
        check_loss_reduction(loss_reduction)
        check_compile_dynamic(compile_dynamic)
        num_classes = net.num_classes
        if isinstance(class_weights, str) and class_weights == MEDIAN_FREQUENCY:
            raise ValueError(
                f"class_weights={MEDIAN_FREQUENCY} is computed by fcn.train from the training "
                "split: give FCNModule the list of weights"
            )
        check_class_weights(class_weights, num_classes)
        names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(
                f"class_names has {len(names)} names for {num_classes} classes: {names}"
            )
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss_reduction = loss_reduction
        weights = None
        if class_weights is not None:
            weights = torch.tensor([float(w) for w in class_weights], dtype=torch.float32)
        # moves with the module; not in the state dict (the run's config records the numbers)
        self.register_buffer("class_weights", weights, persistent=False)
        self.class_names = names
        self.run_config = _plain(run_config) if run_config is not None else None
        self.train_loss = LossMean()  # no host read per step (MeanMetric checks for NaN)
        self.val_loss = MeanMetric()
        self.val_metrics = SegmentationMetrics(num_classes)
        #: The confusion matrix of the last validation (int64, on the CPU; rows true class,
        #: columns predicted class; under DDP summed over processes), or None before any.
        self.last_val_confusion: Tensor | None = None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        #: Per step, on the device: the first non-finite loss since the start, as
        #: ``step * 4 + kind`` (kind: index in ``_NONFINITE``), or ``_ALL_FINITE``.
        self._nonfinite: Tensor | None = None
        self._unchecked_steps = 0
        #: the learning rate of each step since the last check (host floats: no read back), so
        #: a divergence names the rate it happened at, not one a scheduler has changed since
        self._step_lrs: dict[int, float] = {}
        #: ``torch.compile``'s ``dynamic`` for the network (``compile_dynamic``, ``auto`` resolved).
        self.compile_dynamic = (
            compile_dynamic_for(self.run_config) if compile_dynamic == AUTO else compile_dynamic
        )
        if compile:
            self.net.compile(dynamic=self.compile_dynamic)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels, _ = batch  # padded images train as they are (pads are void)
        scores = self.net(images.contiguous(memory_format=self.memory_format))
        loss, valid = segmentation_loss(scores, labels, self.loss_reduction, self.class_weights)
        self._note_nonfinite(loss.detach())
        if self.class_weights is not None:  # logged unweighted, as without class weights
            with torch.no_grad():
                per_pixel, _ = segmentation_loss(scores.detach(), labels, "mean")
        else:
            per_pixel = loss / valid.clamp(min=1) if self.loss_reduction == "sum" else loss
        per_pixel = per_pixel.detach()
        self.train_loss.update(per_pixel, weight=valid)
        self.log("train/loss_step", per_pixel, prog_bar=True, batch_size=len(images))
        return loss

    def _note_nonfinite(self, loss: Tensor) -> None:
        """Record on the device whether ``loss`` is NaN or infinite (no read by the host)."""
        kind = torch.where(loss.isnan(), 0, torch.where(loss > 0, 1, 2))
        code = torch.where(loss.isfinite(), _ALL_FINITE, self.global_step * 4 + kind)
        self._nonfinite = code if self._nonfinite is None else torch.minimum(self._nonfinite, code)
        self._unchecked_steps += 1
        if self._trainer is not None and self.trainer.optimizers:
            self._step_lrs[self.global_step] = self.trainer.optimizers[0].param_groups[0]["lr"]

    def _stop_if_diverged(self) -> None:
        """Raise :class:`TrainingDiverged` on every process when any process saw a NaN or
        infinite training loss since the last check, naming the first such step: one all-reduce
        (the minimum of the processes' records) and one read by the host. Every process calls it
        at the same points (its step counts are the same), so none is left waiting."""
        if self._unchecked_steps == 0 or self._nonfinite is None:
            return
        self._unchecked_steps = 0
        step_lrs, self._step_lrs = self._step_lrs, {}
        code = self._nonfinite.clone()
        if self._trainer is not None:
            code = self.trainer.strategy.reduce(code, reduce_op="min")
        first = int(code)
        if first >= _ALL_FINITE:
            return
        step, kind = divmod(first, 4)
        lr = step_lrs.get(step)
        raise TrainingDiverged(
            diverged_message(_NONFINITE[kind], step, self.current_epoch, lr, self.loss_reduction)
        )

    def on_fit_start(self) -> None:
        self._nonfinite = None
        self._unchecked_steps = 0
        self._step_lrs = {}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.trainer.log_every_n_steps
        last = batch_idx + 1 >= self.trainer.num_training_batches
        if last or (every > 0 and self._unchecked_steps >= every):
            self._stop_if_diverged()

    def on_validation_start(self) -> None:
        self._stop_if_diverged()  # not after a non-finite step (a no-op outside training)

    def on_train_epoch_end(self) -> None:
        self._stop_if_diverged()
        self.log("train/loss", self.train_loss.compute(), sync_dist=False)
        self.train_loss.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        images, labels, sizes = batch
        if len(images) == 0:  # every file of the batch was skipped (data.on_bad_file=skip)
            return
        if bool((sizes == torch.tensor(images.shape[-2:], device=sizes.device)).all()):
            self._validate(images, labels)
            return
        # Images of different sizes, padded to one: a pad changes the scores near it (the
        # receptive field sees it), so each image is scored at its own size, as with batch 1.
        for i, (height, width) in enumerate(sizes.tolist()):
            self._validate(
                images[i : i + 1, :, :height, :width], labels[i : i + 1, :height, :width]
            )

    def _validate(self, images: Tensor, labels: Tensor) -> None:
        scores = self.net(images.contiguous(memory_format=self.memory_format))
        loss, valid = segmentation_loss(scores, labels, "mean")
        self.val_loss.update(loss, weight=valid)
        self.val_metrics.update(scores, labels)

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        logged = {"val/loss": self.val_loss.compute()}
        logged.update({f"val/{k}": scores[k].float() for k in METRIC_NAMES if k != "mIoU"})
        logged.update(
            {
                f"val/IoU/{n}": v.float()
                for n, v in zip(self.class_names, scores["IoU"], strict=True)
            }
        )
        # Values are already reduced over every process (torchmetrics state sync).
        self.log_dict(logged)
        self.log("val/mIoU", scores["mIoU"].float(), prog_bar=True)
        self.last_val_confusion = scores["confusion"].to("cpu", torch.int64)
        self.val_metrics.reset()
        self.val_loss.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the run config and the random states of every process (Lightning makes a
        checkpoint on every process and rank zero writes it: the states are gathered here;
        while an exception is handled, when other processes may not be saving, only this
        process's own states are stored). Never after a non-finite loss: that stops the run."""
        interrupted = self._trainer is not None and self.trainer.state.status == (
            TrainerStatus.INTERRUPTED
        )
        if not interrupted:
            self._stop_if_diverged()
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config
        checkpoint[RNG_KEY] = rank_rng_states(self._rng_states_of_every_rank(interrupted))

    def _rng_states_of_every_rank(self, own_only: bool) -> list[dict[str, Any] | None]:
        """:func:`fcn.checkpoint.rng_states` of every process, by rank (one all-gather)."""
        own = rng_states()
        if self._trainer is None or self.trainer.world_size == 1:
            return [own]
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        if own_only or not (dist.is_available() and dist.is_initialized()):
            return [own if r == rank else None for r in range(world_size)]
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, own)
        return gathered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run continues the random streams it saved, each process its own."""
        if RNG_KEY not in checkpoint:
            return
        rank, world_size = 0, 1
        if self._trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        states, warning = rng_states_for_rank(checkpoint[RNG_KEY], rank, world_size)
        if warning and rank == 0:
            log.warning("resuming: %s", warning)
        if states is not None:
            set_rng_states(states)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
