"""Small image/mask trees in the layouts ``fcn.data.folder`` reads, made by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def scene(seed: int, size: tuple[int, int], values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its mask of raw values: vertical bands, one per value, each band's
    colour derived from its value (so a network can learn them)."""
    height, width = size
    mask = np.zeros(size, dtype=np.int32)
    edges = np.linspace(0, width, len(values) + 1).astype(int)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 30, (height, width, 3)).astype(np.uint8)
    for value, (start, end) in zip(values, zip(edges[:-1], edges[1:], strict=True), strict=True):
        mask[:, start:end] = value
        image[:, start:end] += np.array([(value * 70) % 200, (value * 40) % 200, 90], np.uint8)
    return image, mask


def save_mask(mask: np.ndarray, path: Path, mode: str = "L") -> None:
    """Write raw mask values as a PNG: ``L`` (8-bit), ``P`` (palette), ``I;16`` or ``1``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(mask.astype(np.uint16)).save(path)
        return
    if mode == "1":
        Image.fromarray(mask.astype(bool)).save(path)
        return
    img = Image.fromarray(mask.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([(i * 37) % 256 for i in range(768)])  # colours that are not the ids
    img.save(path)


def save_image(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_pairs(
    root: Path,
    ids: list[str],
    values: list[int],
    images: str = "images",
    masks: str = "masks",
    image_suffix: str = ".jpg",
    mask_suffix: str = ".png",
    size: tuple[int, int] = (40, 56),
    mode: str = "L",
) -> None:
    """One image and mask per id (an id may hold sub-folders), masks banded with ``values``
    (rotated per id so every value appears at several places)."""
    for n, id_ in enumerate(ids):
        rotated = values[n % len(values) :] + values[: n % len(values)]
        image, mask = scene(n, size, rotated)
        save_image(image, root / images / f"{id_}{image_suffix}")
        save_mask(mask, root / masks / f"{id_}{mask_suffix}", mode)


def folder_tree(root: Path, num_classes: int = 3, classes_file: bool = True) -> Path:
    """``images/{train,val}/`` and ``masks/{train,val}/`` with sub-folders, values 0..C-1 and
    some 255, and a classes file with colours."""
    values = [*range(num_classes), 255]
    train = [f"{i:02d}" for i in range(6)] + ["b/00", "b/01"]
    write_pairs(root, train, values, "images/train", "masks/train")
    write_pairs(root, ["90", "b/91", "b/92", "b/93"], values, "images/val", "masks/val")
    if classes_file:
        colors = ["#000000", "#ff0000", "#00ff00", "#0000ff", "#ffff00"]
        lines = [f"class {i} {colors[i % len(colors)]}" for i in range(num_classes)]
        (root / "classes.txt").write_text("// my classes\n" + "\n".join(lines) + "\n")
    return root


def cityscapes_tree(root: Path) -> Path:
    """A two-city Cityscapes layout whose masks hold label ids (road 7, car 26, sky 23, an
    ignored id 4)."""
    values = [7, 26, 23, 4]
    for split, cities in (("train", ["aachen", "bochum"]), ("val", ["frankfurt"])):
        ids = [f"{city}/{city}_000000_{n:06d}" for city in cities for n in range(3)]
        write_pairs(root, ids, values, f"leftImg8bit/{split}", f"gtFine/{split}",
                    "_leftImg8bit.png", "_gtFine_labelIds.png")  # fmt: skip
    return root


def ade20k_tree(root: Path) -> Path:
    """An ADEChallengeData2016 layout whose masks hold 0 (other) and classes 1..150 as 1..150."""
    values = [0, 1, 5, 150]
    for split, count in (("training", 8), ("validation", 4)):
        ids = [f"ADE_{split[:5]}_{n:08d}" for n in range(count)]
        write_pairs(root, ids, values, f"images/{split}", f"annotations/{split}")
    return root
