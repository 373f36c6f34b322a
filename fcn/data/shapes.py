"""Built-in synthetic segmentation data: textured scenes of coloured shapes, made on the fly.

Every image is a pure function of ``(seed, index)``, so the dataset needs no download and no disk,
and a split is reproducible on any machine. It is built to make the FCN variants differ the way
they do on VOC: objects of several classes on textured backgrounds, images of varied sizes, thin
bars (thin parts) and small dots (small objects) that a 32x-coarse output cannot outline, and a
void (255) band around every object's border, as VOC has.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from torch.utils.data import Dataset

from fcn.data.labels import IGNORE_INDEX

SHAPES_CLASSES = ("background", "disc", "box", "triangle", "bar", "dot")
#: Mean RGB colour of each object class; each object jitters around it.
CLASS_COLOURS = {
    "disc": (200, 60, 50),
    "box": (60, 170, 70),
    "triangle": (60, 80, 210),
    "bar": (220, 200, 40),
    "dot": (200, 60, 200),
}


class ShapesDataset(Dataset):
    """Deterministic synthetic scenes; item ``i`` is ``(image HxWx3 uint8, label HxW uint8)``.

    Args:
        num_images: number of images in the split.
        seed: split seed; different seeds give disjoint random streams (use one per split).
        min_size, max_size: image height and width are drawn independently in this range.
        max_objects: each image holds 1 to ``max_objects`` discs, boxes and triangles, plus
            some bars and dots.
        void_width: width in pixels of the void band drawn outside each object's border.
        cache: keep each scene once made (about 30 KB each; copies are handed out), so epochs
            after the first cost no drawing; each loader worker keeps its own.
    """

    class_names = SHAPES_CLASSES

    def __init__(
        self,
        num_images: int = 800,
        seed: int = 0,
        min_size: int = 64,
        max_size: int = 112,
        max_objects: int = 4,
        void_width: int = 1,
        cache: bool = True,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be positive, got {num_images}")
        if not 16 <= min_size <= max_size:
            raise ValueError(f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
        self.num_images = num_images
        self.seed = seed
        self.min_size = min_size
        self.max_size = max_size
        self.max_objects = max_objects
        self.void_width = void_width
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        if self._cache is None:
            return self._draw(index)
        if index not in self._cache:
            self._cache[index] = self._draw(index)
        image, label = self._cache[index]
        return image.copy(), label.copy()

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of scene ``index``, its first draw: nothing else is drawn."""
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        return self._size(np.random.default_rng([self.seed, index]))

    def _size(self, rng: np.random.Generator) -> tuple[int, int]:
        """A scene's (height, width): the first draw of its ``rng``."""
        h, w = rng.integers(self.min_size, self.max_size + 1, size=2)
        return int(h), int(w)

    def _draw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene ``index``: a pure function of ``(seed, index)``."""
        rng = np.random.default_rng([self.seed, index])
        h, w = self._size(rng)
        image = _background(rng, h, w)
        label = np.zeros((h, w), np.uint8)
        void = np.zeros((h, w), bool)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

        objects = ["disc", "box", "triangle"]
        kinds = list(rng.choice(objects, size=rng.integers(1, self.max_objects + 1)))
        kinds += ["bar"] * int(rng.integers(0, 3)) + ["dot"] * int(rng.integers(0, 5))
        for kind in kinds:
            mask = _shape_mask(kind, rng, yy, xx, h, w)
            if not mask.any():
                continue
            _paint(image, mask, CLASS_COLOURS[kind], rng)
            label[mask] = SHAPES_CLASSES.index(kind)
            void &= ~mask  # a later object covers earlier borders
            if self.void_width > 0:
                border = ndimage.binary_dilation(mask, iterations=self.void_width) & ~mask
                void |= border
        label[void] = IGNORE_INDEX
        return image, label


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A greyish texture: a few random plane waves plus pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(70, 170)
    field = np.full((h, w), base, np.float32)
    for _ in range(3):
        freq = rng.uniform(0.02, 0.25)
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        field += rng.uniform(10, 35) * np.sin(
            freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase
        )
    tint = rng.uniform(-15, 15, size=3).astype(np.float32)
    image = field[..., None] + tint + rng.normal(0, 8, size=(h, w, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_mask(
    kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, h: int, w: int
) -> np.ndarray:
    """Boolean mask of one object of ``kind`` placed at random."""
    size = min(h, w)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    if kind == "disc":
        ry, rx = rng.uniform(0.08, 0.25, size=2) * size
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    if kind == "dot":
        r = rng.uniform(2.5, 4.5)
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind in ("box", "bar"):
        if kind == "box":
            half_l, half_t = rng.uniform(0.08, 0.25, size=2) * size
        else:  # long and thin: 3 to 5 pixels wide
            half_l, half_t = rng.uniform(0.25, 0.45) * size, rng.uniform(1.5, 2.5)
        angle = rng.uniform(0, np.pi)
        u = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)
        v = -np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)
        return (np.abs(u) <= half_l) & (np.abs(v) <= half_t)
    if kind == "triangle":
        radius = rng.uniform(0.12, 0.3) * size
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        py, px = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
        inside = np.ones_like(yy, bool)
        for i in range(3):
            j = (i + 1) % 3
            cross = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
            inside &= cross >= 0
        return inside
    raise ValueError(f"unknown shape kind {kind!r}")


def _paint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, ...], rng) -> None:
    """Fill ``mask`` with a jittered class colour, lightly textured."""
    rgb = np.asarray(colour, np.float32) + rng.normal(0, 18, size=3)
    n = int(mask.sum())
    pixels = rgb + rng.normal(0, 10, size=(n, 3)) * rng.uniform(0.5, 1.5)
    image[mask] = np.clip(pixels, 0, 255).astype(np.uint8)
