"""FCN-32s / FCN-16s / FCN-8s on a VGG16 trunk (Shelhamer, Long and Darrell, PAMI 2016).

One class; the variant is its list of skips:

    FCN-32s      skips=()                    score_fr -> upscore (x32)
    FCN-16s      skips=("pool4",)            score_fr -> upscore2 + score_pool4 -> upscore16 (x16)
    FCN-8s       skips=("pool4", "pool3")    ... -> upscore_pool4 + score_pool3 -> upscore8 (x8)
    at-once      as FCN-8s with skip_scaling=True (pool4 * 0.01, pool3 * 0.0001)

Two alignments:

- ``caffe``: the reference computation. conv1_1 pads by 100, pools round up, fc6 is a 7x7 conv
  without padding, and every upsampled map is cropped from the top left at a fixed offset
  (pool4 5, pool3 9; final 19 / 27 / 31; docs/paper.md#crop-offsets). Parameter names are those
  of the reference PyTorch port, so its ``*_from_caffe.pth`` state dicts load as they are.
- ``same``: the Keras seed's design (docs/seed.md#network). Every conv pads to keep its size
  (fc6 pads 3), pools round down, the input is padded internally to a multiple of 32 and every
  transposed conv is an exact 2x / 8x / 16x / 32x upsampling; the output is cropped back to the
  input size. About half the FLOPs of ``caffe`` on VOC-sized images.

Both give scores with exactly the input's height and width, for every input size.

Under autocast (``trainer.precision=bf16-mixed`` / ``16-mixed``) the trunk and the 1x1 score
layers run in reduced precision; the score fusion and the fixed bilinear upsamplers (with the
scaling and scoring of at-once's scaled skips) run in fp32, so the scores are fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALIGNMENTS = ("caffe", "same")
SKIP_ORDER = ("pool4", "pool3")  # a variant's skips are a prefix of this
#: Scale of each skip's input under at-once training (the reference's fixed constants;
#: docs/paper.md#forward-pass).
SKIP_SCALES = {"pool4": 0.01, "pool3": 0.0001}
#: Final upsampler per number of skips: (layer name, stride).
FINAL_UPSCORE = {0: ("upscore", 32), 1: ("upscore16", 16), 2: ("upscore8", 8)}
#: 2x upsamplers that bring the running score map to each skip's resolution.
FUSE_UPSCORE = {"pool4": "upscore2", "pool3": "upscore_pool4"}
#: Caffe alignment: top-left crop offsets of the skip scores and of the final output
#: (derived in docs/paper.md#crop-offsets).
CAFFE_SKIP_OFFSET = {"pool4": 5, "pool3": 9}
CAFFE_FINAL_OFFSET = {0: 19, 1: 27, 2: 31}
#: VGG16 stages: number of 3x3 convs, channels as a multiple of the trunk width (64 in VGG16).
VGG16_STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weight of a transposed conv that upsamples each channel bilinearly (no cross-channel mix;
    docs/paper.md#bilinear-upsampling).

    ``w[c, c, i, j] = (1 - |i - center| / factor) * (1 - |j - center| / factor)`` with
    ``factor = (k + 1) // 2`` and ``center = factor - 1`` (k odd) or ``factor - 0.5`` (k even).
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


def _crop(x: Tensor, offset: int, height: int, width: int, what: str) -> Tensor:
    """Slice ``x[..., o:o+h, o:o+w]``, refusing to return a short tensor."""
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise RuntimeError(
            f"FCN crop of {what} at offset {offset} to {height}x{width} needs at least "
            f"{offset + height}x{offset + width}, got {tuple(x.shape[-2:])}"
        )
    return x[:, :, offset : offset + height, offset : offset + width]


class FCN(nn.Module):
    """Fully convolutional network on a VGG16 trunk.

    Args:
        num_classes: number of output classes (VOC: 21, background included).
        skips: skip connections, a prefix of ``("pool4", "pool3")``: () is FCN-32s,
            ("pool4",) FCN-16s, ("pool4", "pool3") FCN-8s.
        skip_scaling: scale pool4 by 0.01 and pool3 by 0.0001 before scoring (FCN-8s at-once).
        alignment: ``"caffe"`` (the reference computation) or ``"same"`` (the Keras seed's design).
        trunk_width: channels of conv1 (VGG16: 64); later stages use 2x, 4x, 8x, 8x this.
        fc_width: channels of fc6 and fc7 (VGG16: 4096).
        dropout: dropout rate after fc6 and fc7 (paper 0.5, Keras seed 0.2).
    """

    def __init__(
        self,
        num_classes: int = 21,
        skips: Sequence[str] = ("pool4", "pool3"),
        skip_scaling: bool = False,
        alignment: str = "caffe",
        trunk_width: int = 64,
        fc_width: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        skips = tuple(skips)
        check_fcn_args(num_classes, skips, alignment, trunk_width, fc_width, dropout)
        self.num_classes = num_classes
        self.skips = skips
        self.skip_scaling = bool(skip_scaling)
        self.alignment = alignment
        caffe = alignment == "caffe"

        # VGG16 trunk: conv{stage}_{i} + ReLU, then a 2x2 max-pool per stage.
        in_ch = 3
        self.stage_names: list[list[str]] = []
        for stage, (n_convs, mult) in enumerate(VGG16_STAGES, start=1):
            out_ch = trunk_width * mult
            names = []
            for i in range(1, n_convs + 1):
                name = f"conv{stage}_{i}"
                pad = 100 if (caffe and name == "conv1_1") else 1
                setattr(self, name, nn.Conv2d(in_ch, out_ch, 3, padding=pad))
                names.append(name)
                in_ch = out_ch
            self.stage_names.append(names)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=caffe)
        pool_channels = {"pool3": trunk_width * 4, "pool4": trunk_width * 8}

        # Fully connected layers as convolutions.
        self.fc6 = nn.Conv2d(in_ch, fc_width, 7, padding=0 if caffe else 3)
        self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
        self.drop = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)

        # Skip scores and upsamplers, under the reference port's names.
        for skip in skips:
            setattr(self, f"score_{skip}", nn.Conv2d(pool_channels[skip], num_classes, 1))
            setattr(self, FUSE_UPSCORE[skip], self._upsampler(2))
        final_name, final_stride = FINAL_UPSCORE[len(skips)]
        setattr(self, final_name, self._upsampler(final_stride))
        self.final_upscore = final_name

        self.reset_parameters()

    def _upsampler(self, stride: int) -> nn.ConvTranspose2d:
        pad = 0 if self.alignment == "caffe" else stride // 2
        c = self.num_classes
        return nn.ConvTranspose2d(c, c, 2 * stride, stride=stride, padding=pad, bias=False)

    @property
    def variant(self) -> str:
        """The paper's name: FCN-32s, FCN-16s, FCN-8s or FCN-8s at-once."""
        name = {0: "FCN-32s", 1: "FCN-16s", 2: "FCN-8s"}[len(self.skips)]
        return f"{name} at-once" if self.skip_scaling else name

    @property
    def upsamplers(self) -> list[nn.ConvTranspose2d]:
        """The transposed convs: bilinear and fixed (never trained)."""
        return [m for m in self.modules() if isinstance(m, nn.ConvTranspose2d)]

    @property
    def score_layers(self) -> list[nn.Conv2d]:
        """score_fr and the skip scores: they start at zero."""
        return [self.score_fr] + [getattr(self, f"score_{s}") for s in self.skips]

    def reset_parameters(self) -> None:
        """Trunk and fc: Kaiming (He) init; score convs: zero; upsamplers: fixed bilinear."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in self.score_layers:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        for m in self.upsamplers:
            m.weight.data.copy_(bilinear_kernel(self.num_classes, m.kernel_size[0]))
            m.weight.requires_grad_(False)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Run the trunk and fc6/fc7; return ``pool3``, ``pool4`` and ``fc7``."""
        out: dict[str, Tensor] = {}
        h = x
        for stage, names in enumerate(self.stage_names, start=1):
            for name in names:
                h = F.relu(getattr(self, name)(h), inplace=True)
            h = self.pool(h)
            if stage in (3, 4):
                out[f"pool{stage}"] = h
        h = self.drop(F.relu(_fully_connected(self.fc6, h), inplace=True))
        out["fc7"] = self.drop(F.relu(_fully_connected(self.fc7, h), inplace=True))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(N, num_classes, H, W)`` for images ``(N, 3, H, W)`` of any size.

        Under autocast (mixed precision) the trunk and the 1x1 score layers run in reduced
        precision, but the fusion (skip additions) and the fixed bilinear upsamplers run in fp32
        (:meth:`_fuse`), so the scores come out in fp32. Without autocast every layer runs in the
        input's dtype.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FCN expects images of shape (N, 3, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if self.alignment == "same":  # pad bottom/right to a multiple of 32: strides divide
            x = F.pad(x, (0, (-width) % 32, 0, (-height) % 32))
        feats = self.features(x)
        skip_scores = [self._skip_score(skip, feats[skip]) for skip in self.skips]
        return self._fuse(self.score_fr(feats["fc7"]), skip_scores, height, width)

    def _skip_score(self, skip: str, pool: Tensor) -> Tensor:
        """``score_<skip>`` of a pool's features, scaled first under at-once training.

        Under autocast a scaled skip (x0.01, x0.0001) is scaled and scored in fp32: in float16
        most of pool3 x 0.0001 would be subnormal or zero. Unscaled skips use autocast's dtype.
        """
        layer = getattr(self, f"score_{skip}")
        if not self.skip_scaling:
            return layer(pool)
        region, full = _full_precision(pool)
        with region:
            return layer(full(pool) * SKIP_SCALES[skip])

    def _fuse(
        self, score: Tensor, skip_scores: Sequence[Tensor], height: int, width: int
    ) -> Tensor:
        """Upsample the coarse scores, adding each skip's scores on the way, to ``height`` x
        ``width`` (the input's size).

        Under autocast this runs in fp32 (autocast off, inputs cast to float32): the 16x and
        32x bilinear kernels are not representable in bfloat16 (nor 32x in float16), a 0.0001
        scaled skip added to bfloat16 scores would vanish, and bfloat16 scores tie in the argmax.
        """
        caffe = self.alignment == "caffe"
        region, full = _full_precision(score)
        with region:
            score = full(score)
            for skip, skip_score in zip(self.skips, skip_scores, strict=True):
                score = getattr(self, FUSE_UPSCORE[skip])(score)
                if caffe:
                    skip_score = _crop(
                        skip_score, CAFFE_SKIP_OFFSET[skip], *score.shape[-2:], f"score_{skip}"
                    )
                elif skip_score.shape[-2:] != score.shape[-2:]:
                    raise RuntimeError(
                        f"score_{skip} {tuple(skip_score.shape)} != {tuple(score.shape)}"
                    )
                score = score + full(skip_score)
            score = getattr(self, self.final_upscore)(score)
        offset = CAFFE_FINAL_OFFSET[len(self.skips)] if caffe else 0
        # A compact copy: a view would keep the whole uncropped map alive through the loss
        # (30 MB more at the peak of a 500x500 training step; bench/model_speed.py --memory).
        score = _crop(score, offset, height, width, self.final_upscore).contiguous()
        assert score.shape[-2:] == (height, width), "FCN output size differs from the input's"
        return score


def _fully_connected(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for fc6 (7x7) and fc7 (1x1), on a CPU as one matrix product of the weight
    and the input's unfolded patches.

    These layers hold 87% of the weights but see few positions (12x16 for a 375x500 image), and
    oneDNN's convolution runs them far below the machine's matmul rate: on a 2-core AVX-512
    CPU a bf16 training step of the paper-sized FCN-8s took 2.17 s with convolutions and 1.72 s
    with products (docs/performance.md#fc6-and-fc7). Same weights, same result to float rounding.
    Elsewhere (GPUs, the meta device) and in an ONNX export (a graph for any runtime) the
    convolution runs as it is.
    """
    if x.device.type != "cpu" or torch.onnx.is_in_onnx_export():
        return conv(x)
    n, channels, height, width = x.shape
    (k, _), (pad, _) = conv.kernel_size, conv.padding
    out_h, out_w = height + 2 * pad - k + 1, width + 2 * pad - k + 1
    # (n, channels * k * k, positions), channel-major
    cols = x.reshape(n, channels, height * width) if k == 1 else F.unfold(x, k, padding=pad)
    weight = conv.weight
    if weight.is_contiguous():
        matrix = weight.view(conv.out_channels, -1)
    else:  # channels-last weights: (out, k, k, in) in memory; order the patches to match
        matrix = weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        if k > 1:
            cols = cols.view(n, channels, k * k, -1).transpose(1, 2).reshape(n, -1, cols.shape[-1])
    out = torch.matmul(matrix, cols)  # bf16 under autocast, as the convolution's output
    if conv.bias is not None:
        out = out + conv.bias.to(out.dtype)[:, None]
    return out.view(n, conv.out_channels, out_h, out_w)


def _full_precision(like: Tensor) -> tuple[AbstractContextManager, Callable[[Tensor], Tensor]]:
    """Under autocast on ``like``'s device: a context that turns autocast off, and a cast to
    float32. Otherwise nothing changes and the cast is the identity (fp32, fp64 and bf16-true
    weights keep their dtype)."""
    device = like.device.type  # "meta" (shape and cost tracing) has no autocast
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False), _to_float32
    return nullcontext(), _identity


def _identity(t: Tensor) -> Tensor:
    return t


def _to_float32(t: Tensor) -> Tensor:
    return t.float()


def check_fcn_args(
    num_classes: int,
    skips: Sequence[str],
    alignment: str,
    trunk_width: int,
    fc_width: int,
    dropout: float,
) -> None:
    """Raise ValueError whose message starts with the name of the argument that cannot work."""
    skips = tuple(skips)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if skips != SKIP_ORDER[: len(skips)]:
        raise ValueError(
            f"skips must be a prefix of {list(SKIP_ORDER)} ([] FCN-32s, [pool4] FCN-16s, "
            f"[pool4, pool3] FCN-8s), got {list(skips)}"
        )
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {list(ALIGNMENTS)}, got {alignment!r}")
    for name, value in (("trunk_width", trunk_width), ("fc_width", fc_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
