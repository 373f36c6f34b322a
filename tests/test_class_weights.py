"""``module.class_weights``: the weighted loss, its unweighted logged loss, median frequency
balancing computed by a real run and recorded with it, and the values refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from fcn.checkpoint import CONFIG_KEY
from fcn.config_checks import check_config
from fcn.data.shapes import ShapesDataset
from fcn.errors import ConfigError
from fcn.models import FCN
from fcn.training.module import FCNModule, segmentation_loss
from fcn.training.optim import build_optimizer
from tests.conftest import TINY, compose_train, run_train


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 4, 5, generator=g)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, 0] = 255
    labels[1, :, 0] = 255
    return scores, labels


def test_weighted_loss_equals_a_hand_computation_and_torchs_weighted_mean() -> None:
    scores, labels = _batch()
    weight = torch.tensor([0.5, 2.0, 0.0])
    weighted_sum, weight_sum, plain, count = 0.0, 0.0, 0.0, 0
    for b, y, x in np.ndindex(*labels.shape):
        label = int(labels[b, y, x])
        if label == 255:
            continue
        logits = scores[b, :, y, x].tolist()
        term = -(logits[label] - math.log(sum(math.exp(v) for v in logits)))
        weighted_sum += float(weight[label]) * term
        weight_sum += float(weight[label])
        plain += term
        count += 1
    mean, valid = segmentation_loss(scores, labels, "mean", weight)
    total, valid_sum = segmentation_loss(scores, labels, "sum", weight)
    assert int(valid) == int(valid_sum) == count
    assert mean.item() == pytest.approx(weighted_sum / weight_sum, rel=1e-5)
    assert total.item() == pytest.approx(weighted_sum, rel=1e-5)
    torch.testing.assert_close(
        mean, F.cross_entropy(scores, labels, weight=weight, ignore_index=255)
    )
    # no weights: exactly the unweighted loss; all weights 1: the same numbers
    unweighted, _ = segmentation_loss(scores, labels, "mean")
    assert unweighted.item() == pytest.approx(plain / count, rel=1e-5)
    ones, _ = segmentation_loss(scores, labels, "mean", torch.ones(3))
    torch.testing.assert_close(ones, unweighted)


def test_batch_of_zero_weight_pixels_gives_zero_loss_not_nan() -> None:
    scores = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.tensor([[[2, 2], [255, 2]]])
    loss, valid = segmentation_loss(scores, labels, "mean", torch.tensor([1.0, 1.0, 0.0]))
    assert int(valid) == 3 and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(scores.grad).all()


def test_training_step_optimises_the_weighted_loss_and_logs_it_unweighted() -> None:
    torch.manual_seed(0)
    net = FCN(skips=(), num_classes=3, trunk_width=2, fc_width=4, alignment="same")
    weights = [0.2, 1.0, 3.0]
    module = FCNModule(net, optimizer=build_optimizer, class_weights=weights)
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    images = torch.randn(2, 3, 20, 20)
    labels = torch.randint(0, 3, (2, 20, 20))
    labels[:, :2] = 255
    loss = module.training_step((images, labels, torch.tensor([[20, 20], [20, 20]])), 0)
    with torch.no_grad():
        scores = net(images)
    weighted, _ = segmentation_loss(scores, labels, "mean", torch.tensor(weights))
    plain, _ = segmentation_loss(scores, labels, "mean")
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-5)
    assert logged["train/loss_step"] == pytest.approx(plain.item(), rel=1e-5)
    assert module.train_loss.compute().item() == pytest.approx(plain.item(), rel=1e-5)
    assert "class_weights" not in module.state_dict()  # the run's config records them


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1,2,3]", "module.class_weights has 3 values for 6 classes"),
        ("[1,1,-0.5,1,1,1]", r"module.class_weights\[2\] must be a non-negative number, got -0.5"),
        ("[0,0,0,0,0,0]", "module.class_weights are all 0"),
        ("[1,1,1,1,1,nan]", r"module.class_weights\[5\] must be a non-negative number"),
        ("median", "module.class_weights must be null .*, median_frequency or a list of 6"),
        ("3", "module.class_weights must be null"),
    ],
)
def test_bad_class_weights_are_refused_naming_the_key(value: str, message: str) -> None:
    cfg = compose_train([*TINY, f"module.class_weights={value}"])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_fine_class_weights_pass_the_checks() -> None:
    for value in ("null", "median_frequency", "[1,2,0,1.5,1,1]"):
        check_config(compose_train([*TINY, f"module.class_weights={value}"]))


def test_bad_class_weights_stop_the_run_with_one_line(workdir: Path) -> None:
    proc = run_train([*TINY, "module.class_weights=[1,2]", "logger=none"], workdir)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: module.class_weights has 2 values for 6 classes: give null (unweighted), "
        "median_frequency or a list of 6 non-negative numbers (one per class)"
    )
    assert not list(workdir.glob("outputs/**/checkpoints"))


def _median_frequency_of_the_tiny_training_split() -> list[float]:
    """Median frequency balancing, counted here from TINY's training scenes."""
    dataset = ShapesDataset(num_images=8, seed=0, cache=False)
    counts = np.zeros(6, np.int64)
    for i in range(len(dataset)):
        _, label = dataset[i]
        counts += np.bincount(label[label != 255], minlength=6)[:6]
    freq = counts / counts.sum()
    median = np.median(freq[freq > 0])
    return [median / f if f > 0 else 0.0 for f in freq]


def test_median_frequency_is_computed_recorded_and_kept_on_resume(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = workdir / "run"
    args = [*TINY, "module.class_weights=median_frequency", "logger=none", f"hydra.run.dir={run}"]
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _median_frequency_of_the_tiny_training_split()
    recorded = yaml.safe_load((run / "config.yaml").read_text())["module"]["class_weights"]
    assert recorded == pytest.approx(expected, rel=1e-12)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint[CONFIG_KEY]["module"]["class_weights"] == recorded
    log = (run / "train.log").read_text()
    assert "module.class_weights=median_frequency from the pixels of 8 training images" in log

    # resumed: the recorded numbers, not counted again
    import fcn.training.class_weights

    def counting(*args, **kwargs):
        raise AssertionError("a resumed run counted the pixels again")

    monkeypatch.setattr(fcn.training.class_weights, "split_stats", counting)
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = run_train([*args, "trainer.max_epochs=2", f"ckpt_path={ckpt}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = yaml.safe_load((run / "config.yaml").read_text())["module"]["class_weights"]
    assert again == recorded
    assert "the weights recorded in" in (run / "train.log").read_text()
