"""Scoring in sliding windows and with flip test-time augmentation (plain PyTorch).

:class:`TiledScorer` wraps a network that returns per-pixel scores at its input's size (the
FCN) and returns the same ``(N, C, H, W)`` scores, computed

- in windows (``window``, ``stride``): windows of ``window`` pixels, ``stride`` apart, the last
  of each row and column flush with the image's edge so that every pixel is covered, are scored
  separately and their scores (logits) averaged where they overlap. Only ``window_batch``
  windows go through the network at a time, on the network's device; the sums are kept on the
  input's device. A side shorter than the window is scored whole (the window shrinks to it),
  never padded: a pad changes the scores near it, and a window covering the image is then
  exactly whole-image scoring.
- with ``flip``: every window (the whole image without ``window``) is also scored mirrored left
  to right, and the mirror's scores, flipped back, are averaged with the window's.

Scores are averaged as logits, before any softmax: the argmax of the average is the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fcn.models.precision import PRECISIONS, autocast_for, cast_for_inference

#: Windows (mirrors included) scored in one forward pass, per image of a batch.
WINDOW_BATCH = 4
#: Stride of ``stride=None``, as a fraction of the window: a third of each window overlaps its
#: neighbour (mmsegmentation's slide inference: 512-pixel crops 341 apart).
STRIDE_FRACTION = 2 / 3


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def as_pair(value: Any, name: str) -> tuple[int, int]:
    """``(height, width)`` from an integer or a pair of integers >= 1; ValueError naming
    ``name`` otherwise."""
    if _is_size(value):
        return value, value
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(_is_size(v) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(
        f"{name} must be a positive integer or [height, width] of positive integers, got {value!r}"
    )


def check_tiling_args(
    window: Any = None, stride: Any = None, flip: Any = False, window_batch: Any = WINDOW_BATCH
) -> None:
    """Raise ValueError whose message starts with the name of the argument that cannot work."""
    if window is None:
        if stride is not None:
            raise ValueError(
                f"stride={stride!r} needs a window (window=null scores whole images): set "
                "window too, or leave stride null"
            )
    else:
        win = as_pair(window, "window")
        if stride is not None:
            step = as_pair(stride, "stride")
            if step[0] > win[0] or step[1] > win[1]:
                raise ValueError(
                    f"stride must be no larger than the window ({win[0]}x{win[1]}) so that "
                    f"every pixel is scored, got {stride!r}"
                )
    if not isinstance(flip, bool):
        raise ValueError(f"flip must be true or false, got {flip!r}")
    if not _is_size(window_batch):
        raise ValueError(f"window_batch must be a positive integer, got {window_batch!r}")


def default_stride(window: tuple[int, int]) -> tuple[int, int]:
    """``window * 2/3``, rounded (at least 1)."""
    return max(1, round(window[0] * STRIDE_FRACTION)), max(1, round(window[1] * STRIDE_FRACTION))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along a side of ``length`` pixels: ``0, stride, 2*stride, ...``
    and a last one flush with the end (``window <= length``)."""
    last = length - window
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def _coverage(starts: list[int], window: int, length: int) -> Tensor:
    """How many windows cover each pixel along a side."""
    count = torch.zeros(length)
    for start in starts:
        count[start : start + window] += 1
    return count


class TiledScorer(nn.Module):
    """``net``'s scores computed in sliding windows and/or averaged with those of the mirror
    image (see the module's doc).

    Args:
        net: a network whose ``net(x)`` gives scores ``(N, C, H, W)`` for inputs
            ``(N, 3, H, W)`` of any size, with ``num_classes`` (and ``variant``).
        window: window height and width (an integer: square), or None for whole images.
        stride: offset between neighbouring windows, no larger than the window; None:
            ``window * 2/3`` rounded (:data:`STRIDE_FRACTION`). Needs a window.
        flip: also score each window mirrored left to right and average.
        window_batch: windows (mirrors included) per forward pass and image of the batch: it
            bounds the memory a window size needs, whatever the image's size.
        precision: ``fp32``, or ``bf16``: the network scores under bfloat16 autocast, its
            weights cast once and kept channels-last, as its inputs (faster in bf16;
            :mod:`fcn.models.precision`); ``net`` is changed in place.

    With neither window nor flip it is ``net`` itself: ``forward`` returns ``net(x)``; so it does
    when one window covers the image and ``flip`` is off.
    """

    def __init__(
        self,
        net: nn.Module,
        window: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        flip: bool = False,
        window_batch: int = WINDOW_BATCH,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        check_tiling_args(window, stride, flip, window_batch)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.net = cast_for_inference(net, precision)
        self.memory_format = torch.contiguous_format
        if precision == "bf16":
            self.memory_format = torch.channels_last
            self.net.to(memory_format=self.memory_format)
        self.window = as_pair(window, "window") if window is not None else None
        self.stride: tuple[int, int] | None = None
        if self.window is not None and stride is not None:
            self.stride = as_pair(stride, "stride")
        elif self.window is not None:
            self.stride = default_stride(self.window)
        self.flip = flip
        self.window_batch = window_batch

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def variant(self) -> str:
        return self.net.variant

    def settings(self) -> dict[str, Any]:
        """The options in effect (the stride resolved), as plain values for a record."""
        return {
            "window": list(self.window) if self.window else None,
            "stride": list(self.stride) if self.stride else None,
            "flip": self.flip,
            "window_batch": self.window_batch,
            "precision": self.precision,
        }

    def describe(self) -> str:
        """E.g. ``64x64 windows 32x32 apart, with flip``, or ``whole images``."""
        if self.window is None:
            text = "whole images"
        else:
            (wh, ww), (sh, sw) = self.window, self.stride
            text = f"{wh}x{ww} windows {sh}x{sw} apart"
        text += ", with flip" if self.flip else ""
        return text + (", in bf16" if self.precision == "bf16" else "")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings().items())

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(N, C, H, W)`` for images ``(N, 3, H, W)``, on ``x``'s device."""
        param = next(self.net.parameters(), None)
        device = param.device if param is not None else x.device
        with autocast_for(self.precision, device.type):
            return self._scores(x, device)

    def _net(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))

    def _scores(self, x: Tensor, device: torch.device) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"TiledScorer expects images (N, 3, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if self.window is None:
            win_h, win_w, rows, cols = height, width, [0], [0]
        else:
            win_h, win_w = min(self.window[0], height), min(self.window[1], width)
            rows = window_starts(height, win_h, self.stride[0])
            cols = window_starts(width, win_w, self.stride[1])
        if len(rows) == len(cols) == 1 and not self.flip:
            return self._net(x.to(device)).to(x.device)  # (no copies on one device)
        mirrors = (False, True) if self.flip else (False,)
        crops = [(top, left, m) for top in rows for left in cols for m in mirrors]
        per_pass = max(1, self.window_batch // max(1, len(x)))
        total: Tensor | None = None
        dtype = x.dtype
        for first in range(0, len(crops), per_pass):
            chunk = crops[first : first + per_pass]
            inputs = torch.cat([
                x[:, :, top : top + win_h, left : left + win_w].flip(-1) if mirrored
                else x[:, :, top : top + win_h, left : left + win_w]
                for top, left, mirrored in chunk
            ])  # fmt: skip
            scores = self._net(inputs.to(device)).to(x.device)
            if total is None:  # sums in float32 at least, whatever the network's precision
                dtype = scores.dtype
                total = scores.new_zeros(
                    (len(x), scores.shape[1], height, width),
                    dtype=torch.promote_types(dtype, torch.float32),
                )
            for i, (top, left, mirrored) in enumerate(chunk):
                part = scores[i * len(x) : (i + 1) * len(x)]
                total[:, :, top : top + win_h, left : left + win_w] += (
                    part.flip(-1) if mirrored else part
                )
            del inputs, scores
        count = _coverage(rows, win_h, height)[:, None] * _coverage(cols, win_w, width)[None, :]
        count = (count * len(mirrors)).to(device=total.device, dtype=total.dtype)
        return total.div_(count).to(dtype)
