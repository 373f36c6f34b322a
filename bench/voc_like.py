"""VOC-like files for the benches: smooth colour fields with a few labelled ellipses, saved as
a JPEG image and a palette PNG label, as Pascal VOC stores them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fcn.data.labels import voc_palette


def voc_like_scene(
    rng: np.random.Generator, height: int, width: int, void_rings: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """An HxWx3 uint8 image and its HxW label: three ellipses of classes 1-20 on background,
    each ringed by 3 pixels of void (255) when ``void_rings``, as VOC outlines its objects."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([np.sin(xx / rng.uniform(20, 80) + c) * 80 + 120 for c in range(3)], -1)
    label = np.zeros((height, width), np.uint8)
    for _ in range(3):
        cy, cx = rng.uniform(50, height - 50), rng.uniform(50, width - 50)
        r = rng.uniform(20, 80)
        dist = (yy - cy) ** 2 + (xx - cx) ** 2
        if void_rings:
            label[dist < (r + 3) ** 2] = 255
        label[dist < r * r] = rng.integers(1, 21)
        image[dist < r * r] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def save_scene(image: np.ndarray, label: np.ndarray, jpg: Path, png: Path) -> None:
    """``image`` as a JPEG (quality 90) and ``label`` as a VOC palette PNG."""
    Image.fromarray(image).save(jpg, quality=90)
    mask = Image.fromarray(label, mode="P")
    mask.putpalette(voc_palette())
    mask.save(png)
