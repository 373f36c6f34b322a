"""The LightningModule: an FCN, its loss, its metrics and its optimiser."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric

from fcn.checkpoint import CONFIG_KEY, RNG_KEY, rng_states, set_rng_states
from fcn.data.labels import IGNORE_INDEX
from fcn.errors import FCNError
from fcn.scores import METRIC_NAMES
from fcn.training.metrics import SegmentationMetrics

LOSS_REDUCTIONS = ("mean", "sum")
#: ``module.class_weights`` computed by ``fcn.train`` from the training split's pixel counts.
MEDIAN_FREQUENCY = "median_frequency"


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
    """
    valid_mask = target != IGNORE_INDEX
    valid = valid_mask.sum()
    if weight is None:
        total = F.cross_entropy(scores, target, ignore_index=IGNORE_INDEX, reduction="sum")
        if reduction == "sum":
            return total, valid
        return total / valid.clamp(min=1), valid
    per_pixel = F.cross_entropy(scores, target, ignore_index=IGNORE_INDEX, reduction="none")
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
    ) -> None:
        super().__init__()
        check_loss_reduction(loss_reduction)
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
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_metrics = SegmentationMetrics(num_classes)
        #: The confusion matrix of the last validation (int64, on the CPU; rows true class,
        #: columns predicted class; under DDP summed over processes), or None before any.
        self.last_val_confusion: Tensor | None = None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels, _ = batch  # padded images train as they are (pads are void)
        scores = self.net(images.contiguous(memory_format=self.memory_format))
        loss, valid = segmentation_loss(scores, labels, self.loss_reduction, self.class_weights)
        self._stop_if_diverged(loss)
        if self.class_weights is not None:  # logged unweighted, as without class weights
            with torch.no_grad():
                per_pixel, _ = segmentation_loss(scores.detach(), labels, "mean")
        else:
            per_pixel = loss / valid.clamp(min=1) if self.loss_reduction == "sum" else loss
        per_pixel = per_pixel.detach()
        self.train_loss.update(per_pixel, weight=valid)
        self.log("train/loss_step", per_pixel, prog_bar=True, batch_size=len(images))
        return loss

    def _stop_if_diverged(self, loss: Tensor) -> None:
        """Raise :class:`TrainingDiverged` on every process when any process's loss is NaN or
        infinite (one all-reduce of a flag per step under DDP, so no process is left waiting)."""
        bad = not bool(torch.isfinite(loss.detach()))
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else None
            raise TrainingDiverged(
                diverged_message(loss.detach().item(), self.global_step, self.current_epoch, lr,
                                 self.loss_reduction)
            )  # fmt: skip

    def on_train_epoch_end(self) -> None:
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
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:  # a resumed run continues the random streams it saved
            set_rng_states(checkpoint[RNG_KEY])

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
