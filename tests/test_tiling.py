"""Sliding windows and flip test-time augmentation (:mod:`fcn.models.tiling`), on their own and
through ``fcn.evaluate`` and ``fcn.predict``: equal to whole-image scoring where they must be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor, nn

from fcn.data.shapes import ShapesDataset
from fcn.inference import load_model, predict_mask
from fcn.models import FCN
from fcn.models.tiling import TiledScorer, window_starts
from tests.conftest import EVAL, run_train


def _fcn(alignment: str = "same") -> FCN:
    """A tiny FCN-8s whose scores are not zero (score layers drawn, not zeroed), in eval mode."""
    torch.manual_seed(0)
    net = FCN(num_classes=4, alignment=alignment, trunk_width=4, fc_width=8).eval()
    for layer in net.score_layers:
        nn.init.normal_(layer.weight, std=0.5)
    return net


class Pixelwise(nn.Conv2d):
    """A 1x1 conv: each pixel's scores depend on that pixel alone, so any windows, and the
    mirror image, give exactly the whole image's scores."""

    def __init__(self) -> None:
        super().__init__(3, 5, 1)
        self.num_classes = 5
        torch.manual_seed(0)
        nn.init.normal_(self.weight)


class Recorder(nn.Module):
    """``net``, recording the shape of every input it is given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_classes = net.num_classes
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        return self.net(x)


def _by_hand(net: nn.Module, x: Tensor, window: tuple[int, int], rows: list, cols: list) -> Tensor:
    """The windows' scores summed at their places and divided by the windows over each pixel."""
    total = torch.zeros(len(x), net.num_classes, *x.shape[-2:])
    count = torch.zeros(x.shape[-2:])
    h, w = window
    for top in rows:
        for left in cols:
            total[:, :, top : top + h, left : left + w] += net(
                x[:, :, top : top + h, left : left + w]
            )
            count[top : top + h, left : left + w] += 1
    assert count.min() >= 1  # every pixel is covered
    return total / count


def test_window_starts_cover_the_side_with_the_last_window_flush() -> None:
    assert window_starts(100, 48, 32) == [0, 32, 52]
    assert window_starts(96, 64, 32) == [0, 32]
    assert window_starts(80, 48, 48) == [0, 32]
    assert window_starts(64, 64, 5) == [0]


@pytest.mark.parametrize("alignment", ["caffe", "same"])
@torch.inference_mode()
def test_a_window_covering_the_image_is_whole_image_scoring(alignment: str) -> None:
    net = _fcn(alignment)
    x = torch.randn(2, 3, 40, 56)
    whole = net(x)
    for window in (None, [40, 56], 56, 500, [40, 1000]):
        assert torch.equal(TiledScorer(net, window)(x), whole), window
    # Covering one side only: windows along the other, the covered side scored whole (no pad).
    rows_whole = TiledScorer(net, [500, 32], [1, 16])(x)
    assert torch.allclose(rows_whole, _by_hand(net, x, (40, 32), [0], [0, 16, 24]), atol=1e-5)


@pytest.mark.parametrize(
    ("window", "stride", "window_batch", "flip"),
    [(64, 32, 4, False), (16, 5, 3, True), ([20, 33], [7, 33], 1, True), (1, 1, 64, False)],
)
def test_windows_of_a_pixelwise_net_give_the_whole_image_scores(
    window, stride, window_batch: int, flip: bool
) -> None:
    net = Pixelwise()
    x = torch.randn(2, 3, 30, 41)
    with torch.no_grad():
        tiled = TiledScorer(net, window, stride, flip, window_batch)(x)
        assert torch.allclose(tiled, net(x), atol=1e-5)


@torch.inference_mode()
def test_overlapping_windows_of_the_fcn_are_averaged() -> None:
    net = _fcn()
    x = torch.randn(1, 3, 56, 72)
    expected = _by_hand(net, x, (32, 32), [0, 21, 24], [0, 21, 40])
    for window_batch in (1, 4, 64):
        tiled = TiledScorer(net, 32, 21, window_batch=window_batch)(x)
        assert tiled.shape == (1, 4, 56, 72)
        assert torch.allclose(tiled, expected, atol=1e-5), window_batch
    assert not torch.allclose(expected, net(x), atol=1e-2)  # windows do change the scores
    # Batches of images: each image is tiled as it would be alone.
    two = torch.cat([x, torch.randn(1, 3, 56, 72)])
    assert torch.allclose(TiledScorer(net, 32, 21)(two)[:1], expected, atol=1e-5)
    # The default stride is 2/3 of the window, rounded: 32 -> 21.
    assert torch.allclose(TiledScorer(net, 32)(x), expected, atol=1e-5)


@torch.inference_mode()
def test_window_batch_bounds_the_network_inputs() -> None:
    net = Recorder(_fcn())
    TiledScorer(net, 32, 24, flip=True, window_batch=3)(torch.randn(1, 3, 48, 72))
    # 2 x 3 windows and their mirrors, at most 3 at a time, each 32x32.
    assert sum(shape[0] for shape in net.shapes) == 12
    assert all(shape[0] <= 3 and shape[-2:] == (32, 32) for shape in net.shapes)
    net.shapes.clear()
    TiledScorer(net, 32, 24, window_batch=3)(torch.randn(5, 3, 48, 72))
    assert all(shape[0] == 5 for shape in net.shapes)  # one window of each image at least


@torch.inference_mode()
def test_flip_averages_the_scores_of_the_mirror_image() -> None:
    net = _fcn("caffe")
    half = torch.randn(1, 3, 32, 24)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    assert torch.equal(symmetric, symmetric.flip(-1))
    s = net(symmetric)
    # The FCN is not flip-equivariant (caffe alignment crops from the top left), so flip test-time
    # augmentation of a symmetric image is (s + flip(s)) / 2, not s.
    assert not torch.allclose(s, s.flip(-1), atol=1e-3)
    tta = TiledScorer(net, flip=True)(symmetric)
    assert torch.allclose(tta, (s + s.flip(-1)) / 2, atol=1e-5)
    assert torch.allclose(tta, tta.flip(-1), atol=1e-5)  # symmetric scores for a symmetric image
    # Any image: the mean of its scores and its mirror's flipped back; in windows too, whose
    # grid (64 wide, 32 windows 16 apart) is its own mirror.
    x = torch.randn(1, 3, 40, 64)
    expected = (net(x) + net(x.flip(-1)).flip(-1)) / 2
    assert torch.allclose(TiledScorer(net, flip=True, window_batch=1)(x), expected, atol=1e-5)
    tiled = TiledScorer(net, 32, 16)
    expected = (tiled(x) + tiled(x.flip(-1)).flip(-1)) / 2
    assert torch.allclose(TiledScorer(net, 32, 16, flip=True)(x), expected, atol=1e-5)
    # A flip-equivariant network: test-time flipping changes nothing.
    pixelwise = Pixelwise()
    assert torch.allclose(TiledScorer(pixelwise, flip=True)(x), pixelwise(x), atol=1e-5)


def test_the_wrapper_speaks_for_the_network() -> None:
    net = _fcn()
    scorer = TiledScorer(net, [64, 48], flip=True)
    assert (scorer.num_classes, scorer.variant) == (4, "FCN-8s")
    assert scorer.settings() == {
        "window": [64, 48], "stride": [43, 32], "flip": True, "window_batch": 4,
        "precision": "fp32",
    }  # fmt: skip
    assert scorer.describe() == "64x48 windows 43x32 apart, with flip"
    assert TiledScorer(net).describe() == "whole images"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"window": 0}, "window must be a positive integer or [height, width]"),
        ({"window": [64, 64, 3]}, "window must be"),
        ({"window": 64.5}, "window must be"),
        ({"window": True}, "window must be"),
        ({"stride": 32}, "stride=32 needs a window"),
        ({"window": 64, "stride": 0}, "stride must be a positive integer"),
        ({"window": [64, 32], "stride": 48}, "stride must be no larger than the window (64x32)"),
        ({"flip": "yes"}, "flip must be true or false"),
        ({"window_batch": 0}, "window_batch must be a positive integer"),
    ],
)
def test_bad_options_are_refused_naming_them(options: dict, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        TiledScorer(Pixelwise(), **options)
    assert str(info.value).startswith(expected.split(" ")[0]) and expected in str(info.value)


def _evaluate(ckpt: Path, cwd: Path, name: str, *options: str) -> dict:
    proc = run_train(
        [*EVAL, f"ckpt_path={ckpt}", *options, f"hydra.run.dir={name}"], cwd, entry="evaluate"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cwd / name / "evaluation.json").read_text())


def test_evaluate_in_windows_and_with_flip(trained: Path, tmp_path: Path) -> None:
    """The built-in scenes are 64 to 112 pixels a side: 112-pixel windows cover every one, and
    give the whole-image numbers; smaller windows and flips give others, and are recorded."""
    ckpt = trained / "checkpoints" / "last.ckpt"
    whole = _evaluate(ckpt, tmp_path, "whole")
    assert whole["scoring"] == {
        "window": None, "stride": None, "flip": False, "window_batch": 4, "precision": "fp32"
    }  # fmt: skip
    covering = _evaluate(ckpt, tmp_path, "covering", "window=112")
    assert covering["metrics"] == whole["metrics"]
    assert covering["scoring"]["window"] == [112, 112]
    tiled = _evaluate(ckpt, tmp_path, "tiled", "window=[48,40]", "stride=24", "flip=true")
    assert tiled["scoring"] == {"window": [48, 40], "stride": [24, 24], "flip": True,
                                "window_batch": 4, "precision": "fp32"}  # fmt: skip
    # The loss is that of the windows' averaged scores (the 4 scenes EVAL validates on).
    cfg = OmegaConf.create({"model": None, "data": {"num_classes": None, "normalization": None}})
    model = load_model(cfg, str(ckpt))
    scorer = TiledScorer(model.net, [48, 40], 24, flip=True)
    total, valid = 0.0, 0
    with torch.inference_mode():
        for image, label in ShapesDataset(num_images=4, seed=1):
            target = torch.from_numpy(label).long()[None]
            scores = scorer(model.to_tensor.image(image)[None])
            total += F.cross_entropy(scores, target, ignore_index=255, reduction="sum").item()
            valid += int((target != 255).sum())
    assert tiled["metrics"]["val/loss"] == pytest.approx(total / valid, rel=1e-5)
    assert tiled["metrics"]["val/loss"] != pytest.approx(whole["metrics"]["val/loss"], rel=1e-3)


def test_predict_in_windows_with_flip_writes_masks_of_the_images_size(
    trained: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    sizes = {"a.png": (37, 53), "dot.png": (1, 1), "tall.png": (90, 17), "b.png": (48, 72)}
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    options = ["window=32", "stride=[16,24]", "flip=true", "window_batch=2"]
    for extra in ([], ["max_size=64"]):
        out = tmp_path / f"out{len(extra)}"
        proc = run_train(
            [f"ckpt_path={ckpt}", f"input={images}", *options, *extra, f"hydra.run.dir={out}"],
            tmp_path, entry="predict",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        for name, (h, w) in sizes.items():
            with Image.open(out / "masks" / name) as mask:
                assert mask.size == (w, h), name
    # The masks (of the run without max_size) are those of the windows' averaged scores.
    cfg = OmegaConf.create({"model": None, "data": {"num_classes": None, "normalization": None}})
    model = load_model(cfg, str(ckpt))
    scorer = TiledScorer(model.net, 32, [16, 24], flip=True)
    for name in sizes:
        image = np.array(Image.open(images / name).convert("RGB"))
        expected = predict_mask(model, image, torch.device("cpu"), scorer=scorer)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out0" / "masks" / name)), expected)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("window=0", "error: window must be a positive integer"),
        ("window=[64,64,64]", "error: window must be"),
        ("stride=16", "error: stride=16 needs a window"),
        ("window=[32,64] stride=48", "error: stride must be no larger than the window (32x64)"),
        ("flip=sometimes", "error: flip must be true or false"),
        ("window=64 window_batch=0", "error: window_batch must be a positive integer"),
    ],
)
@pytest.mark.parametrize("entry", ["evaluate", "predict"])
def test_bad_options_end_with_one_line_naming_them(
    option: str, expected: str, entry: str, trained: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    where = [f"input={tmp_path / 'none'}"] if entry == "predict" else EVAL
    proc = run_train([*where, f"ckpt_path={ckpt}", *option.split()], tmp_path, entry=entry)
    assert proc.returncode == 1
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr
