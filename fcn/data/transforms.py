"""Image/label transforms (albumentations, declared in the ``transforms`` config group) and the
conversion to normalised tensors. Labels are only ever resized with nearest neighbour, and every
pad or out-of-image area of a label is void (255)."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from fcn.data.labels import IGNORE_INDEX

#: Input normalisation per weight source (docs/paper.md#input-normalisation): (channel order,
#: mean, std), mean and std in 0-255 units of that channel order. Mixing a weight source with
#: another's normalisation fails silently, so the weights config names its preset.
NORMALIZATIONS = {
    "torchvision": ("rgb", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "caffe": ("bgr", (104.00698793, 116.66876762, 122.67891434), (1.0, 1.0, 1.0)),
    "keras": ("bgr", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
}


#: How every pad is filled: image 0, label void (so the loss and the metrics ignore it).
VOID_PAD = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": IGNORE_INDEX}


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def resize_and_pad(size: int) -> A.Compose:
    """The Keras seed's input pipeline (docs/seed.md#input-pipeline): scale the longer side to
    ``size`` (labels nearest), then pad both sides equally to ``size x size`` (image 0, label 255
    so that the pad is ignored)."""
    _positive("size", size)
    return A.Compose(
        [
            A.LongestMaxSize(
                max_size=size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST
            ),
            A.PadIfNeeded(min_height=size, min_width=size, position="center", **VOID_PAD),
        ]
    )


def augment(
    crop_size: int = 320,
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.0,
) -> A.Compose:
    """Training augmentation: random scale, random ``crop_size`` crop (padded with label 255
    where the scaled image is smaller), horizontal flip and photometric jitter."""
    _positive("crop_size", crop_size)
    low, high = scale
    if not 0 < low <= high:
        raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {list(scale)}")
    if not 0 <= hflip <= 1:
        raise ValueError(f"hflip must be a probability, got {hflip}")
    steps = [
        # RandomScale draws the factor as 1 + uniform(scale_limit)
        A.RandomScale(
            scale_limit=(low - 1, high - 1),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
        A.RandomCrop(
            height=crop_size, width=crop_size, pad_if_needed=True, pad_position="random", **VOID_PAD
        ),
        A.HorizontalFlip(p=hflip),
    ]
    if brightness or contrast or saturation or hue:
        steps.append(
            A.ColorJitter(
                brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=1.0
            )
        )
    return A.Compose(steps)


class ToTensor:
    """Normalise an HxWx3 uint8 RGB image into a float CHW tensor; labels become int64 HxW.

    ``normalization`` names a preset of :data:`NORMALIZATIONS` (the weights' own).
    """

    def __init__(self, normalization: str = "torchvision") -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}"
            )
        order, mean, std = NORMALIZATIONS[normalization]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.bgr = order == "bgr"

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.image(image), torch.from_numpy(np.ascontiguousarray(label)).long()

    def image(self, image: np.ndarray) -> Tensor:
        """The normalised CHW float tensor of an HxWx3 uint8 RGB image."""
        # Reorder to CHW while still uint8 (a quarter of the bytes), then normalise in place:
        # about 3x faster than converting the strided HWC view to float.
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        x = (x.flip(0) if self.bgr else x).contiguous().float()
        return x.sub_(self.mean).mul_(self.inv_std)


def pad_collate(
    batch: Sequence[tuple[Tensor, Tensor] | None],
) -> tuple[Tensor, Tensor, Tensor]:
    """Stack images of different sizes: pad each at the bottom and right to the largest height
    and width in the batch (image 0 after normalisation, label 255). Returns ``(images, labels,
    sizes)``, ``sizes`` the (N, 2) heights and widths before padding, so that evaluation can
    score each image at its own size. Skipped items (None) are left out; a batch of nothing but
    skipped items is empty."""
    batch = [item for item in batch if item is not None]
    if not batch:
        empty = torch.empty(0, 0, 0, dtype=torch.long)
        return torch.empty(0, 3, 0, 0), empty, torch.empty(0, 2, dtype=torch.long)
    sizes = torch.tensor([tuple(image.shape[-2:]) for image, _ in batch], dtype=torch.long)
    height, width = sizes.max(0).values.tolist()
    images = torch.zeros(len(batch), batch[0][0].shape[0], height, width)
    labels = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.long)
    for i, (image, label) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
        labels[i, : label.shape[-2], : label.shape[-1]] = label
    return images, labels, sizes
