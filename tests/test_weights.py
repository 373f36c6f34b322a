"""Weights into an FCN: the reference port's files, checkpoints, staged training, ImageNet VGG16,
mismatches named, and no code ever run from a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from fcn.errors import DataError
from fcn.models import FCN, bilinear_kernel
from fcn.models.weights import VGG16_FILE, init_weights, load_fcn_weights, load_vgg16_imagenet
from tests.conftest import TINY, run_train
from tests.reference_port import ReferenceFCN

SMALL = {"num_classes": 5, "trunk_width": 4, "fc_width": 16}
SKIPS = {"fcn32s": (), "fcn16s": ("pool4",), "fcn8s": ("pool4", "pool3")}


def _random_state(net: torch.nn.Module, seed: int = 0) -> dict:
    """Random weights, with bilinear upsamplers as in every released FCN file."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: bilinear_kernel(v.shape[0], v.shape[-1])
        if k.startswith("upscore")
        else torch.randn(v.shape, generator=g) * 0.3
        for k, v in net.state_dict().items()
    }


@pytest.mark.parametrize("wrap", ["bare", "model_state_dict", "lightning"])
def test_reference_port_files_and_checkpoints_load_and_compute_the_same(
    wrap: str, tmp_path: Path
) -> None:
    ref = ReferenceFCN("fcn8s", n_class=5, w=4, fc=16).eval()
    ref.load_state_dict(_random_state(ref))
    state = ref.state_dict()
    obj = {
        "bare": state,
        "model_state_dict": {"model_state_dict": state, "epoch": 3},
        "lightning": {"state_dict": {f"net.{k}": v for k, v in state.items()}, "epoch": 1},
    }[wrap]
    torch.save(obj, tmp_path / "w.pth")
    ours = FCN(skips=SKIPS["fcn8s"], alignment="caffe", **SMALL).eval()
    assert load_fcn_weights(ours, tmp_path / "w.pth") == []
    # in float64: on a CPU fc6/fc7 are matrix products, summed in another order than the port's
    # convolutions (in float32 they agree to rounding, about 1e-6 of the scores)
    ours.double(), ref.double()
    x = torch.randn(1, 3, 45, 61, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("start", "target", "new"),
    [("fcn32s", "fcn16s", ["score_pool4.bias", "score_pool4.weight"]),
     ("fcn16s", "fcn8s", ["score_pool3.bias", "score_pool3.weight"])],
)  # fmt: skip
def test_staged_training_adds_exactly_the_new_skip(start, target, new, tmp_path: Path) -> None:
    previous = FCN(skips=SKIPS[start], **SMALL)
    previous.load_state_dict(_random_state(previous))
    torch.save(previous.state_dict(), tmp_path / "prev.pth")
    net = FCN(skips=SKIPS[target], **SMALL)
    assert load_fcn_weights(net, tmp_path / "prev.pth") == new
    assert torch.equal(net.fc7.weight, previous.fc7.weight)
    assert torch.equal(net.score_fr.weight, previous.score_fr.weight)
    assert not getattr(net, new[0].split(".")[0]).weight.any()  # the new skip starts at zero


def test_mismatches_are_named(tmp_path: Path) -> None:
    torch.save(FCN(skips=(), num_classes=21, trunk_width=4, fc_width=16).state_dict(),
               tmp_path / "voc.pth")  # fmt: skip
    with pytest.raises(DataError, match=r"score_fr\.weight: file \(21, 16, 1, 1\) vs model \(5"):
        load_fcn_weights(FCN(skips=(), **SMALL), tmp_path / "voc.pth")
    eight = FCN(skips=SKIPS["fcn8s"], **SMALL)
    torch.save(eight.state_dict(), tmp_path / "8s.pth")
    with pytest.raises(DataError, match=r"not in this model: score_pool3\.bias"):
        load_fcn_weights(FCN(skips=SKIPS["fcn16s"], **SMALL), tmp_path / "8s.pth")
    with pytest.raises(DataError, match="weights file not found"):
        load_fcn_weights(eight, tmp_path / "none.pth")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_runs_code_from_a_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model_state_dict": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(DataError, match="weights-only"):
        load_fcn_weights(FCN(skips=(), **SMALL), tmp_path / "evil.pth")
    assert not marker.exists()


def test_imagenet_vgg16_fills_trunk_and_reshaped_fc_layers(tmp_path: Path) -> None:
    vgg = torchvision.models.vgg16(weights=None).state_dict()
    torch.save(vgg, tmp_path / VGG16_FILE)
    net = FCN(skips=SKIPS["fcn8s"], num_classes=21)
    init_weights(net, "imagenet", tmp_path / VGG16_FILE)
    assert torch.equal(net.conv1_1.weight, vgg["features.0.weight"])
    assert torch.equal(net.conv5_3.bias, vgg["features.28.bias"])
    assert torch.equal(net.fc6.weight, vgg["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(net.fc7.weight.flatten(1), vgg["classifier.3.weight"])
    assert not net.score_fr.weight.any()  # heads untouched
    with pytest.raises(DataError, match="full-width"):
        load_vgg16_imagenet(FCN(skips=(), **SMALL), tmp_path / VGG16_FILE)


def test_missing_imagenet_file_says_what_to_put_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the file and without a network (here: a closed port on the loopback address
    standing in for torchvision's server), one error names the URL and the exact path."""
    import dataclasses

    from fcn.models import weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    offline = dataclasses.replace(weights.TORCHVISION_VGG16, url=f"http://127.0.0.1:9/{VGG16_FILE}")
    monkeypatch.setattr(weights, "TORCHVISION_VGG16", offline)
    with pytest.raises(DataError) as err:
        load_vgg16_imagenet(FCN(skips=(), num_classes=21, trunk_width=64, fc_width=4096))
    message = str(err.value)
    assert f"cannot download http://127.0.0.1:9/{VGG16_FILE}" in message
    assert f"put the file at {tmp_path / 'hub' / 'checkpoints' / VGG16_FILE}" in message


def test_staged_run_through_the_entry_point(workdir: Path) -> None:
    first = workdir / "fcn32"
    proc = run_train([*TINY, "model=fcn32", "logger=none", f"hydra.run.dir={first}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = first / "checkpoints" / "last.ckpt"
    second = workdir / "fcn16"
    args = [*TINY, "model=fcn16", "weights=fcn", f"weights.path={ckpt}", "logger=none"]
    proc = run_train([*args, f"hydra.run.dir={second}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (second / "train.log").read_text()
    assert "layers new to this model" in log and "score_pool4.bias, score_pool4.weight" in log
    assert json.loads((second / "metrics.json").read_text())["status"] == "finished"
    proc = run_train([*TINY, "weights=fcn", "hydra.run.dir=x"], workdir)
    assert proc.returncode == 1 and "error: weights.path must name" in proc.stderr
