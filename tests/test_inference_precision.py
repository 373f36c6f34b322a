"""Scoring in bf16 (``precision=`` of fcn.evaluate and fcn.predict) and fc6/fc7 as matrix
products on a CPU: faster, and computing what the plain layers compute."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from fcn import train
from fcn.inference import load_model, predict_mask
from fcn.models import FCN
from fcn.models import precision as precision_module
from fcn.models.fcn import _fully_connected
from fcn.models.precision import autocast_for, cast_for_inference, native_bf16, resolve_precision
from fcn.models.tiling import TiledScorer
from tests.conftest import TINY, compose_train, run_train
from tests.test_precision import SMALL, VARIANTS, _evaluate

# --- fc6 / fc7 as matrix products ---------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "padding"), [(7, 3), (7, 0), (1, 0)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fc_layers_as_matrix_products_match_the_convolution(
    kernel: int, padding: int, channels_last: bool
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, kernel, padding=padding).double()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    expected, ours = conv(x), _fully_connected(conv, x)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(expected)
    wanted = torch.autograd.grad(expected, (x, conv.weight, conv.bias), grad)
    got = torch.autograd.grad(ours, (x, conv.weight, conv.bias), grad)
    for a, b in zip(got, wanted, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_the_network_with_products_scores_as_with_convolutions(
    alignment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    net = FCN(**SMALL, alignment=alignment).double()
    for layer in net.score_layers:
        nn.init.normal_(layer.weight, std=0.1)
    x = torch.randn(2, 3, 70, 90, dtype=torch.float64)
    ours = net(x)
    monkeypatch.setattr("fcn.models.fcn._fully_connected", lambda conv, h: conv(h))
    torch.testing.assert_close(ours, net(x), rtol=1e-10, atol=1e-10)


# --- bf16 scoring -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_weights_cast_once_score_exactly_as_autocast(variant: str, alignment: str) -> None:
    """Casting the weights once changes nothing autocast computes: the same bf16 products, the
    same fp32 fusion; at-once's skip scores keep fp32 weights (scored in fp32)."""
    torch.manual_seed(0)
    net = FCN(**SMALL, **VARIANTS[variant], alignment=alignment).eval()
    for layer in net.score_layers:
        nn.init.normal_(layer.weight, std=0.1)
    x = torch.randn(2, 3, 64, 80)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(x)
    cast = cast_for_inference(copy.deepcopy(net), "bf16")
    assert cast.conv1_1.weight.dtype == cast.fc6.weight.dtype == torch.bfloat16
    assert all(up.weight.dtype == torch.float32 for up in cast.upsamplers)
    scaled = VARIANTS[variant].get("skip_scaling", False)
    for skip in net.skips:
        wanted = torch.float32 if scaled else torch.bfloat16
        assert getattr(cast, f"score_{skip}").weight.dtype == wanted
    with torch.inference_mode(), autocast_for("bf16", "cpu"):
        got = cast(x)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_the_scorer_in_bf16_is_channels_last_and_close_to_fp32() -> None:
    torch.manual_seed(0)
    net = FCN(**SMALL, alignment="same").eval()
    for layer in net.score_layers:
        nn.init.normal_(layer.weight, std=0.1)
    x = torch.randn(1, 3, 72, 96)
    with torch.inference_mode():
        fp32 = TiledScorer(copy.deepcopy(net), window=48, flip=True)(x)
        scorer = TiledScorer(net, window=48, flip=True, precision="bf16")
        bf16 = scorer(x)
    assert net.conv2_1.weight.is_contiguous(memory_format=torch.channels_last)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    assert scorer.settings()["precision"] == "bf16" and scorer.describe().endswith("in bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        TiledScorer(net, precision="fp16")


def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_units(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for avx512_bf16, amx, expected in [(True, False, "bf16"), (False, True, "bf16"),
                                       (False, False, "fp32")]:  # fmt: skip
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert native_bf16("cpu") is (expected == "bf16")
        assert resolve_precision("auto", "cpu") == expected
        assert resolve_precision("fp32", "cpu") == "fp32"
    assert not native_bf16("meta")
    assert precision_module.PRECISIONS == ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        resolve_precision("16-mixed")


# --- the entry points ---------------------------------------------------------------------------


def test_evaluate_in_bf16_matches_fp32(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    fp32, scores32, classes32 = _evaluate(ckpt, tmp_path, "32-true")
    bf16, scores16, classes16 = _evaluate(ckpt, tmp_path, "32-true", "precision=bf16")
    record = json.loads((tmp_path / "32-true_precision-bf16" / "evaluation.json").read_text())
    assert record["scoring"]["precision"] == "bf16"
    assert len(classes16) == len(classes32) > 20_000
    assert (classes16 == classes32).float().mean() >= 0.999
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU"):
        assert bf16[key] == pytest.approx(fp32[key], abs=1e-3), key


def test_a_precision_that_does_not_exist_is_named(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    proc = run_train(
        [f"ckpt_path={ckpt}", f"input={tmp_path}", "precision=fp16", f"hydra.run.dir={tmp_path}"],
        tmp_path, entry="predict",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "precision must be one of fp32, bf16, auto; got 'fp16'" in proc.stderr


def test_predict_in_bf16_agrees_with_fp32(trained: Path, tmp_path: Path) -> None:
    """``precision=bf16`` masks, written by fcn.predict, against fp32 masks of the same images."""
    ckpt = trained / "checkpoints" / "last.ckpt"
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(48, 64), (75, 50), (33, 97)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    proc = run_train(
        [f"ckpt_path={ckpt}", f"input={images}", "precision=bf16", f"hydra.run.dir={out}"],
        tmp_path, entry="predict",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = OmegaConf.create({"model": None, "data": {"num_classes": None, "normalization": None}})
    model = load_model(cfg, str(ckpt))
    same = total = 0
    for path in sorted(images.iterdir()):
        image = np.array(Image.open(path).convert("RGB"))
        fp32 = predict_mask(model, image, torch.device("cpu"))
        with Image.open(out / "masks" / path.name) as mask:
            bf16 = np.asarray(mask)
        assert bf16.shape == fp32.shape
        same, total = same + int((bf16 == fp32).sum()), total + fp32.size
    assert same / total >= 0.995


@pytest.mark.parametrize(("bf16_units", "precision", "said"), [
    (True, "32-true", True), (True, "bf16-mixed", False), (False, "32-true", False),
])  # fmt: skip
def test_fp32_training_on_bf16_hardware_names_the_faster_settings(
    bf16_units: bool, precision: str, said: bool, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr(train, "native_bf16", lambda device: bf16_units)
    cfg = compose_train([*TINY, f"trainer.precision={precision}"])
    with caplog.at_level("INFO", logger="fcn.train"):
        train._suggest_bf16(cfg)
    hint = "trainer.precision=bf16-mixed module.channels_last=true"
    assert (hint in caplog.text) is said


def test_an_onnx_export_keeps_fc6_and_fc7_as_convolutions() -> None:
    """The matrix-product form is for torch on a CPU; an exported graph has plain Conv nodes
    (13 trunk convs, fc6, fc7 and 3 score layers)."""
    net = FCN(**SMALL, alignment="same").eval()
    program = torch.onnx.export(net, (torch.randn(1, 3, 64, 64),), dynamo=True, verbose=False)
    ops = [node.op_type for node in program.model_proto.graph.node]
    assert ops.count("Conv") == 18 and "MatMul" not in ops
