"""Image/label transforms (albumentations) and conversion to tensors."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from fcn.data.labels import IGNORE_INDEX

#: torchvision's ImageNet statistics, in 0-255 RGB units.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def resize_and_pad(size: int) -> A.Compose:
    """The seed's input pipeline: scale the longer side to ``size`` (labels nearest), then pad
    both sides equally to ``size x size`` (image 0, label 255 so that the pad is ignored)."""
    return A.Compose(
        [
            A.LongestMaxSize(
                max_size=size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST
            ),
            A.PadIfNeeded(
                min_height=size,
                min_width=size,
                position="center",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
            ),
        ]
    )


class ToTensor:
    """Normalise an HxWx3 uint8 RGB image into a float CHW tensor; labels become int64 HxW.

    ``mean`` and ``std`` are in 0-255 units of the channel order given by ``channel_order``
    (``"rgb"`` for torchvision weights, ``"bgr"`` for Caffe's VGG16).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channel_order: str = "rgb",
    ) -> None:
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.bgr = channel_order == "bgr"

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        if self.bgr:
            x = x.flip(0)
        x = (x - self.mean) / self.std
        y = torch.from_numpy(np.ascontiguousarray(label)).long()
        return x, y
