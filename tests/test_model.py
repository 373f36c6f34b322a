"""The network: sizes, the reference computation, initialisation and fixed upsamplers."""

from __future__ import annotations

import itertools

import pytest
import torch

from fcn.models import FCN, bilinear_kernel
from fcn.training.optim import build_optimizer
from tests.reference_port import ReferenceFCN

VARIANTS = {
    "fcn32s": {"skips": ()},
    "fcn16s": {"skips": ("pool4",)},
    "fcn8s": {"skips": ("pool4", "pool3")},
    "fcn8s_atonce": {"skips": ("pool4", "pool3"), "skip_scaling": True},
}
TINY = {"trunk_width": 2, "fc_width": 4, "num_classes": 3}
SIZES = [1, 2, 3, 5, 7, 16, 31, 32, 33, 47, 63, 64, 65, 97, 100, 127, 129, 255]


def _randomise(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero weights everywhere (score layers start at zero) so outputs are informative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("alignment", ["caffe", "same"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_output_has_input_size_for_every_size(variant: str, alignment: str) -> None:
    net = FCN(**VARIANTS[variant], alignment=alignment, **TINY).eval()
    pairs = list(zip(SIZES, reversed(SIZES), strict=True)) + [(h, h) for h in SIZES]
    with torch.no_grad():
        for h, w in pairs:
            out = net(torch.randn(2, 3, h, w))
            assert out.shape == (2, 3, h, w), (h, w)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_caffe_alignment_matches_reference_port(variant: str) -> None:
    ref = ReferenceFCN(variant, n_class=5, w=4, fc=16).eval()
    ours = FCN(**VARIANTS[variant], alignment="caffe", num_classes=5, trunk_width=4, fc_width=16)
    ours.eval()
    _randomise(ref, seed=1)
    # The reference's own state dict loads into ours by name, strictly: the names are the port's.
    ours.load_state_dict(ref.state_dict(), strict=True)
    # In float64: on a CPU fc6/fc7 are matrix products, whose sums are ordered otherwise than
    # the port's convolutions (float32 agrees to 4e-7 of the scores' scale, rounding alone).
    ref.double(), ours.double()
    with torch.no_grad():
        for h, w in [(1, 1), (37, 53), (64, 64), (101, 75), (150, 33)]:
            x = torch.randn(1, 3, h, w, dtype=torch.float64)
            expected = ref(x)
            got = ours(x)
            assert got.shape == expected.shape == (1, 5, h, w)
            scale = expected.abs().max().item()
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12 * scale)


def test_state_dict_names_are_the_reference_ports() -> None:
    expected_heads = {
        "fcn32s": {"score_fr", "upscore"},
        "fcn16s": {"score_fr", "score_pool4", "upscore2", "upscore16"},
        "fcn8s": {
            "score_fr",
            "score_pool4",
            "score_pool3",
            "upscore2",
            "upscore_pool4",
            "upscore8",
        },
    }
    stages = zip(range(1, 6), (2, 2, 3, 3, 3), strict=True)
    trunk = {f"conv{s}_{i}" for s, n in stages for i in range(1, n + 1)}
    for variant, heads in expected_heads.items():
        keys = set(FCN(**VARIANTS[variant], **TINY).state_dict())
        layers = {k.rsplit(".", 1)[0] for k in keys}
        assert layers == trunk | {"fc6", "fc7"} | heads
        assert not any(k.startswith("upscore") and k.endswith("bias") for k in keys)


def test_full_width_parameter_counts_match_the_paper() -> None:
    counts = {"fcn32s": 134_346_581, "fcn16s": 134_357_354, "fcn8s": 134_362_751}
    for variant, count in counts.items():
        with torch.device("meta"):  # shapes only: no 0.5 GB of weights to initialise
            net = FCN(**VARIANTS[variant], num_classes=21)
        assert sum(p.numel() for p in net.parameters() if p.requires_grad) == count
    assert net.fc6.weight.shape == (4096, 512, 7, 7)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 16, 32, 64])
def test_bilinear_kernel_equals_formula(k: int) -> None:
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    w = bilinear_kernel(3, k)
    assert w.shape == (3, 3, k, k)
    for c_out, c_in, i, j in itertools.product(range(3), range(3), range(k), range(k)):
        value = (1 - abs(i - center) / factor) * (1 - abs(j - center) / factor)
        expected = value if c_out == c_in else 0.0
        assert w[c_out, c_in, i, j].item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_upsamplers_start_bilinear_and_stay_fixed(alignment: str) -> None:
    net = FCN(**VARIANTS["fcn8s"], alignment=alignment, **TINY)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if n.startswith("upscore")}
    assert set(before) == {"upscore2.weight", "upscore_pool4.weight", "upscore8.weight"}
    for name, w in before.items():
        assert torch.equal(w, bilinear_kernel(3, w.shape[-1])), name
    for algorithm, extra in [("torch.optim.SGD", {"momentum": 0.9}), ("torch.optim.Adam", {})]:
        opt = build_optimizer(net, algorithm, lr=0.1, weight_decay=0.1, **extra)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert not any(id(getattr(net, n.split(".")[0]).weight) in in_opt for n in before)
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(2, 3, 40, 40)).square().mean().backward()
            opt.step()
    for name, p in net.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), f"{name} changed"
    assert net.conv1_1.weight.grad is not None  # the rest did train


def test_same_alignment_upsamplers_are_exact_multiples() -> None:
    net = FCN(**VARIANTS["fcn8s"], alignment="same", **TINY)
    for up, stride in [(net.upscore2, 2), (net.upscore_pool4, 2), (net.upscore8, 8)]:
        out = up(torch.ones(1, 3, 5, 7))
        assert out.shape[-2:] == (5 * stride, 7 * stride)
    # Bilinear upsampling of a constant map is constant away from the border.
    inner = net.upscore8(torch.ones(1, 3, 6, 6))[0, 0, 8:-8, 8:-8]
    torch.testing.assert_close(inner, torch.ones_like(inner))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_score_layers_start_at_zero(variant: str) -> None:
    net = FCN(**VARIANTS[variant], **TINY)
    names = ["score_fr"] + [f"score_{s}" for s in VARIANTS[variant]["skips"]]
    assert [m for m in net.score_layers] == [getattr(net, n) for n in names]
    for m in net.score_layers:
        assert not m.weight.any() and not m.bias.any()
    assert not net(torch.randn(1, 3, 33, 45)).any()


def test_at_once_scales_the_skips() -> None:
    plain = FCN(**VARIANTS["fcn8s"], **TINY).eval()
    atonce = FCN(**VARIANTS["fcn8s_atonce"], **TINY).eval()
    _randomise(plain)
    atonce.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 50, 50)
    with torch.no_grad():
        assert not torch.allclose(plain(x), atonce(x))
        plain.score_pool4.weight.mul_(0.01)
        plain.score_pool3.weight.mul_(0.0001)
        torch.testing.assert_close(plain(x), atonce(x), rtol=1e-4, atol=1e-5)


def test_dropout_rate_and_widths_are_configurable() -> None:
    net = FCN(dropout=0.37, trunk_width=3, fc_width=10, num_classes=4)
    assert net.drop.p == 0.37
    assert net.conv1_1.out_channels == 3 and net.conv5_3.out_channels == 24
    assert net.fc6.out_channels == 10 and net.fc7.out_channels == 10


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"trunk_width": 0}, "trunk_width"),
        ({"fc_width": -4}, "fc_width"),
        ({"alignment": "valid"}, "alignment"),
        ({"skips": ("pool3",)}, "skips"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        FCN(**kwargs)


def test_rejects_non_image_input() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        FCN(**TINY)(torch.randn(1, 1, 32, 32))


def _gmac(alignment: str, height: int, width: int) -> float:
    """Multiply-accumulates of a full-width FCN-8s forward, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = FCN(**VARIANTS["fcn8s"], num_classes=21, alignment=alignment).eval()
        x = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 2e9


def test_compute_cost_is_the_papers_and_same_alignment_is_cheaper() -> None:
    # 181 GMAC: docs/paper.md#size-and-compute
    assert _gmac("caffe", 500, 500) == pytest.approx(181, rel=0.01)
    caffe, same = _gmac("caffe", 375, 500), _gmac("same", 375, 500)
    assert same / caffe < 0.6  # 147 vs 83 GMAC on a VOC-sized image
