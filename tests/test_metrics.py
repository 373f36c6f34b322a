"""The paper's metrics against hand-worked confusion matrices."""

from __future__ import annotations

import math

import pytest
import torch

from fcn.scores import scores_from_confusion
from fcn.training.metrics import SegmentationMetrics


def _pixels(pairs: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, prediction, count) triples -> flat label and prediction tensors."""
    labels, preds = [], []
    for label, pred, count in pairs:
        labels += [label] * count
        preds += [pred] * count
    return torch.tensor(labels)[None], torch.tensor(preds)[None]


def test_hand_worked_matrix_with_absent_and_predicted_only_classes() -> None:
    # 4 classes. Class 2 never appears (neither label nor prediction): left out of the means.
    # Class 3 is only predicted: its IoU counts as 0 in mean IU. 255 pixels are ignored.
    labels, preds = _pixels([(0, 0, 6), (0, 1, 2), (1, 1, 3), (1, 3, 1), (255, 2, 5), (255, 0, 4)])
    metric = SegmentationMetrics(num_classes=4)
    metric.update(preds, labels)
    out = metric.compute()
    # hist = [[6,2,0,0],[0,3,0,1],[0,0,0,0],[0,0,0,0]]
    assert metric.confmat.tolist() == [[6, 2, 0, 0], [0, 3, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert out["pixel_acc"].item() == pytest.approx(9 / 12)
    assert out["mean_acc"].item() == pytest.approx((6 / 8 + 3 / 4) / 2)
    iou0, iou1 = 6 / (8 + 6 - 6), 3 / (4 + 5 - 3)
    assert out["mIoU"].item() == pytest.approx((iou0 + iou1 + 0.0) / 3)
    assert out["fwIoU"].item() == pytest.approx(8 / 12 * iou0 + 4 / 12 * iou1)
    iou = out["IoU"].tolist()
    assert iou[0] == pytest.approx(iou0) and iou[1] == pytest.approx(iou1)
    assert math.isnan(iou[2]) and iou[3] == 0.0


def test_perfect_and_all_wrong_predictions() -> None:
    labels, _ = _pixels([(0, 0, 5), (1, 1, 3), (2, 2, 2)])
    metric = SegmentationMetrics(num_classes=3)
    metric.update(labels, labels)
    out = metric.compute()
    for key in ("pixel_acc", "mean_acc", "mIoU", "fwIoU"):
        assert out[key].item() == pytest.approx(1.0), key
    metric.reset()
    metric.update((labels + 1) % 3, labels)
    out = metric.compute()
    for key in ("pixel_acc", "mean_acc", "mIoU", "fwIoU"):
        assert out[key].item() == 0.0, key


def test_accumulates_one_matrix_over_batches_not_a_mean_of_batches() -> None:
    # Batch A: class 0 all right (IoU 1). Batch B: one class-1 pixel predicted 0.
    a_labels, a_preds = _pixels([(0, 0, 10)])
    b_labels, b_preds = _pixels([(1, 0, 1), (1, 1, 1)])
    metric = SegmentationMetrics(num_classes=2)
    metric.update(a_preds, a_labels)
    metric.update(b_preds, b_labels)
    out = metric.compute()
    hist = torch.tensor([[10, 0], [1, 1]])
    expected = scores_from_confusion(hist)
    assert out["mIoU"].item() == pytest.approx(((10 / 11) + (1 / 2)) / 2)
    for key in ("pixel_acc", "mean_acc", "mIoU", "fwIoU"):
        assert out[key].item() == pytest.approx(expected[key].item()), key


def test_scores_are_argmaxed_and_jaccard_index_agrees_with_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 5, 9, 11, generator=g)
    labels = torch.randint(0, 5, (4, 9, 11), generator=g)
    labels[:, :2] = 255
    labels[labels == 3] = 4  # class 3 absent from the labels, maybe predicted
    metric = SegmentationMetrics(num_classes=5)
    metric.update(scores, labels)
    out = metric.compute()
    formula = scores_from_confusion(metric.confmat)
    assert out["mIoU"].item() == pytest.approx(formula["mIoU"].item(), abs=1e-6)
    preds = scores.argmax(1)
    valid = labels != 255
    assert out["pixel_acc"].item() == pytest.approx((preds[valid] == labels[valid]).float().mean())


def test_merged_states_equal_one_process() -> None:
    """What DDP does: sum the matrices of two shards, then take ratios."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (6, 8, 8), generator=g)
    preds = torch.randint(0, 4, (6, 8, 8), generator=g)
    whole, part_a, part_b = (SegmentationMetrics(num_classes=4) for _ in range(3))
    whole.update(preds, labels)
    part_a.update(preds[:2], labels[:2])
    part_b.update(preds[2:], labels[2:])
    part_a.merge_state(part_b)
    for key in ("pixel_acc", "mean_acc", "mIoU", "fwIoU"):
        assert part_a.compute()[key].item() == pytest.approx(whole.compute()[key].item()), key


def test_predicted_classes_equal_argmax_ties_included() -> None:
    from fcn.scores import predicted_classes

    scores = torch.randn(2, 21, 37, 50)
    scores[:, 3] = scores[:, 7] = 100.0  # a tie everywhere: the first class wins, as argmax
    scores[0, :, :5] = 0.0  # all equal: class 0
    assert torch.equal(predicted_classes(scores), scores.argmax(1))
    assert torch.equal(predicted_classes(scores[0], 0), scores[0].argmax(0))
    assert (predicted_classes(scores)[1] == 3).all() and (
        predicted_classes(scores)[0, :5] == 0
    ).all()
