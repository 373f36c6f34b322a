"""The validation metric of training: one confusion matrix over a whole split, summed across
processes under DDP before any ratio is taken (the formulas: :mod:`fcn.scores`); the matrix
itself is returned too (:mod:`fcn.confusion` writes and draws it).

:class:`SegmentationMetrics` is torchmetrics' ``MulticlassJaccardIndex`` (whose macro average is
the paper's mean IU), its matrix counted with ``torch.bincount`` (deterministic without weights,
on GPUs too). :class:`LossMean` is the training loss's running mean, with no read by the host per
update.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex

from fcn.data.labels import IGNORE_INDEX
from fcn.scores import predicted_classes, scores_from_confusion


def confusion_counts(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """The (C, C) int64 confusion matrix of class indices ``preds`` against ``target`` (rows true
    class, columns predicted); labels outside ``0..C-1`` (void, 255) are left out.

    One ``torch.bincount`` without weights over ``target * C + pred``, the left-out pixels in an
    extra bin dropped at the end: deterministic (``torch.use_deterministic_algorithms`` refuses
    bincount on CUDA only with weights), and no intermediate larger than the pixels. torchmetrics'
    own update switches, under deterministic algorithms, to a comparison of every pixel with
    every bin, an (N, C^2) int64 tensor: 15 GB for 16 images of 512x512 with 21 classes.
    """
    target = target.reshape(-1).long()
    preds = preds.reshape(-1).long()
    kept = (target >= 0) & (target < num_classes)
    bins = num_classes * num_classes
    index = torch.where(kept, target * num_classes + preds, bins)
    return torch.bincount(index, minlength=bins + 1)[:bins].reshape(num_classes, num_classes)


class SegmentationMetrics(MulticlassJaccardIndex):
    """Confusion-matrix metrics over a split; ``compute()`` returns :func:`scores_from_confusion`
    with ``mIoU`` taken from torchmetrics' JaccardIndex (they agree; a test checks it)."""

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(
            num_classes=num_classes,
            average="macro",
            ignore_index=IGNORE_INDEX,
            validate_args=False,
            **kwargs,
        )

    def update(self, scores: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add a batch: ``scores`` (N, C, H, W) logits or (N, H, W) class indices."""
        preds = predicted_classes(scores) if scores.ndim == target.ndim + 1 else scores
        self.confmat += confusion_counts(preds, target, self.num_classes)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """All metrics from the (synchronised) confusion matrix, and that matrix itself as
        ``confusion`` (a copy: under DDP the sum over processes, which torchmetrics holds only
        inside ``compute``; rows true class, columns predicted class, void left out)."""
        out = scores_from_confusion(self.confmat)
        out["mIoU"] = super().compute().double()
        out["confusion"] = self.confmat.detach().clone()
        return out


class LossMean(Metric):
    """The weighted mean of values (``sum(value * weight) / sum(weight)``), as torchmetrics'
    ``MeanMetric`` computes it, without its NaN check: that check reads a flag on the host at
    every update (a GPU synchronisation per training step). A NaN value makes the mean NaN;
    :class:`fcn.training.module.FCNModule` stops a run whose loss is not finite."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        dtype = torch.get_default_dtype()
        self.add_state("mean_value", torch.tensor(0.0, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0, dtype=dtype), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: Tensor) -> None:  # type: ignore[override]
        """Add ``value`` (any shape) counted ``weight`` times (broadcast to ``value``)."""
        value = value.to(self.mean_value.dtype)
        weight = torch.broadcast_to(weight, value.shape).to(self.mean_value.dtype)
        self.mean_value += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> Tensor:  # type: ignore[override]
        """The mean (NaN when no weight was added)."""
        return self.mean_value / self.weight
