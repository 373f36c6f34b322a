"""The validation metric of training: one confusion matrix over a whole split, summed across
processes under DDP before any ratio is taken (the formulas: :mod:`fcn.scores`); the matrix
itself is returned too (:mod:`fcn.confusion` writes and draws it).

:class:`SegmentationMetrics` is torchmetrics' ``MulticlassJaccardIndex`` (whose macro average is
the paper's mean IU).
"""

from __future__ import annotations

from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from fcn.data.labels import IGNORE_INDEX
from fcn.scores import predicted_classes, scores_from_confusion


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
        super().update(preds, target)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """All metrics from the (synchronised) confusion matrix, and that matrix itself as
        ``confusion`` (a copy: under DDP the sum over processes, which torchmetrics holds only
        inside ``compute``; rows true class, columns predicted class, void left out)."""
        out = scores_from_confusion(self.confmat)
        out["mIoU"] = super().compute().double()
        out["confusion"] = self.confmat.detach().clone()
        return out
