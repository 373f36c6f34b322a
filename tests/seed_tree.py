"""Writes a tiny tree in the Keras seed's layout with real files: JPEG images, SBD ``GTcls`` .mat
labels and VOC palette PNG labels (with 255 borders), plus split files of its ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from fcn.data.labels import voc_palette

SPLITS = {"train_mat": 6, "train_png": 2, "val_mat": 3}


def _scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    cls = int(rng.integers(1, 21))
    y0, x0 = h // 4, w // 4
    label[y0 : h - y0, x0 : w - x0] = cls
    image[label == cls] = (np.array([cls * 12, 255 - cls * 12, 128])).astype(np.uint8)
    return image, label


def write_seed_tree(root: Path, seed: int = 0) -> Path:
    """Create ``root/voc_seed/...`` and ``root/splits/*.txt``; return the split folder."""
    rng = np.random.default_rng(seed)
    data = root / "voc_seed"
    splits = root / "splits"
    for d in ("images_mat", "labels_mat", "images_png", "labels_png"):
        (data / d).mkdir(parents=True, exist_ok=True)
    splits.mkdir(parents=True, exist_ok=True)
    n = 0
    for split, count in SPLITS.items():
        kind = split.rsplit("_", 1)[1]
        ids = [f"2008_{n + i:06d}" for i in range(count)]
        n += count
        (splits / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for id_ in ids:
            h, w = (int(v) for v in rng.integers(40, 90, size=2))
            image, label = _scene(rng, h, w)
            Image.fromarray(image).save(data / f"images_{kind}" / f"{id_}.jpg", quality=95)
            if kind == "mat":
                struct = {
                    "Segmentation": label,
                    "Boundaries": np.zeros((20, 1), object),
                    "CategoriesPresent": np.unique(label[label > 0]).astype(np.uint8),
                }
                savemat(data / "labels_mat" / f"{id_}.mat", {"GTcls": struct})
            else:
                label = label.copy()
                label[label.shape[0] // 4, :] = 255  # a void band, as VOC has
                png = Image.fromarray(label, mode="P")
                png.putpalette(voc_palette())
                png.save(data / "labels_png" / f"{id_}.png")
    return splits


def _write_voc(root: Path, id_: str, rng: np.random.Generator, size: tuple[int, int]) -> None:
    image, label = _scene(rng, *size)
    label[0, :] = 255  # a void band, as VOC has
    Image.fromarray(image).save(root / "JPEGImages" / f"{id_}.jpg", quality=95)
    png = Image.fromarray(label, mode="P")
    png.putpalette(voc_palette())
    png.save(root / "SegmentationClass" / f"{id_}.png")


def _write_sbd(root: Path, id_: str, rng: np.random.Generator, size: tuple[int, int]) -> None:
    image, label = _scene(rng, *size)
    Image.fromarray(image).save(root / "img" / f"{id_}.jpg", quality=95)
    struct = {"Segmentation": label, "Boundaries": np.zeros((20, 1), object)}
    savemat(root / "cls" / f"{id_}.mat", {"GTcls": struct})


def write_pascal_tree(
    root: Path, splits: dict[str, list[str]], extra_voc: list[str] = (), size=(40, 56), seed=0
) -> Path:
    """VOCdevkit/VOC2012 and benchmark_RELEASE/dataset under ``root`` with real files.

    ``splits`` maps ``voc_train``, ``voc_val``, ``sbd_train``, ``sbd_val`` to ids; every VOC id
    (and ``extra_voc``) gets a JPEG and a palette PNG, every SBD id a JPEG and a GTcls .mat.
    """
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    for d in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation"):
        d.mkdir(parents=True, exist_ok=True)
    for d in (sbd / "img", sbd / "cls"):
        d.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        dataset, part = name.split("_")
        folder = voc / "ImageSets" / "Segmentation" if dataset == "voc" else sbd
        (folder / f"{part}.txt").write_text("".join(f"{i}\n" for i in ids))
        for id_ in ids:
            (_write_voc if dataset == "voc" else _write_sbd)(
                voc if dataset == "voc" else sbd, id_, rng, size
            )
    for id_ in extra_voc:
        _write_voc(voc, id_, rng, size)
    return root
