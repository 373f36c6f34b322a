"""The paper's segmentation metrics from one confusion matrix accumulated over a whole split.

``hist[i, j]`` counts pixels of true class ``i`` predicted as ``j``; labels outside
``0..C-1`` (void, 255) are left out. From it (docs/paper.md#metrics):

- pixel accuracy  = diag.sum() / hist.sum()
- mean accuracy   = nanmean(diag / hist.sum(1))            (classes absent from the labels left out)
- mean IU         = nanmean(diag / (hist.sum(1) + hist.sum(0) - diag))
                    (a class absent from labels and predictions is left out; predicted-only is 0)
- frequency-weighted IU = sum over freq > 0 of freq * IU, freq = hist.sum(1) / hist.sum()

Plain torch, used by evaluation, inference and figures alike; training's accumulating metric is
:class:`fcn.training.metrics.SegmentationMetrics`.
"""

from __future__ import annotations

from torch import Tensor

METRIC_NAMES = ("pixel_acc", "mean_acc", "mIoU", "fwIoU")


def predicted_classes(scores: Tensor, dim: int = 1) -> Tensor:
    """The class of highest score along ``dim`` (the first one on ties, as ``argmax``).

    ``max(dim).indices``: on CPU, torch's ``argmax`` over the channel dimension of an NCHW map
    is about 8x slower (31 ms against 4 ms for 21 x 375 x 500), which made it the main cost of
    evaluation's metric update (bench/model_speed.py).
    """
    return scores.max(dim).indices


def scores_from_confusion(hist: Tensor) -> dict[str, Tensor]:
    """Pixel accuracy, mean accuracy, mean IU, frequency-weighted IU and per-class IoU.

    Per-class IoU is NaN for a class absent from both labels and predictions.
    """
    hist = hist.double()
    diag = hist.diag()
    gt = hist.sum(1)
    pred = hist.sum(0)
    total = hist.sum()
    iou = diag / (gt + pred - diag)  # NaN where the class is absent from both
    freq = gt / total
    seen = freq > 0
    return {
        "pixel_acc": diag.sum() / total,
        "mean_acc": (diag / gt).nanmean(),
        "mIoU": iou.nanmean(),
        "fwIoU": (freq[seen] * iou[seen]).sum() if total > 0 else total * float("nan"),
        "IoU": iou,
    }
