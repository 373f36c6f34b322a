"""Readers for the files of Pascal VOC and SBD; every failure names the file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat

from fcn.errors import DataError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def open_failure(path: Path, what: str, err: OSError) -> str:
    """Why reading ``path`` (an ``image`` or ``label`` file) failed with ``err``, in words: a
    folder, a symbolic link loop, a broken symbolic link, a missing file, else ``err``."""
    path = Path(path)
    try:
        os.stat(path)
        reason = None
    except OSError as stat_err:
        reason = stat_err.errno
    if path.is_symlink() and reason == errno.ELOOP:
        return f"{what} {path} is a symbolic link loop"
    if path.is_symlink() and reason == errno.ENOENT:
        return f"{what} {path} is a broken symbolic link to {os.readlink(path)}"
    if path.is_dir():
        return f"{what} {path} is a folder, not {'an' if what[0] in 'aeiou' else 'a'} {what} file"
    if reason == errno.ENOENT:
        return f"{what} file not found: {path}"
    return f"cannot read {what} {path}: {err}"


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn the errors of reading ``path`` into a DataError naming it."""
    try:
        yield
    except OSError as err:  # PIL's UnidentifiedImageError too
        raise DataError(open_failure(path, what, err)) from None
    except (ValueError, SyntaxError) as err:  # PIL's errors for broken files
        raise DataError(f"cannot read {what} {path}: {err}") from None


def read_image(path: Path) -> np.ndarray:
    """An RGB image as an HxWx3 uint8 array (writable)."""
    with _reading(path, "image"), Image.open(path) as img:
        return np.array(img.convert("RGB"))


def read_image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header alone: no pixel is decoded."""
    with _reading(path, "image"), Image.open(path) as img:
        width, height = img.size
    return height, width


def read_png_label(path: Path) -> np.ndarray:
    """A VOC label: the palette indices of a "P" (or greyscale "L") PNG, never its colours."""
    with _reading(path, "label"), Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise DataError(
                f"label {path} is a {img.mode!r} image; VOC labels are palette ('P') PNGs "
                "whose indices are the classes"
            )
        return np.asarray(img, dtype=np.uint8)


def read_mat_label(path: Path) -> np.ndarray:
    """An SBD label: ``GTcls.Segmentation`` of a ``cls/<id>.mat`` file (uint8, 0..20)."""
    try:
        seg = loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
    except OSError as err:
        raise DataError(open_failure(path, "label", err)) from None
    except (KeyError, AttributeError, IndexError) as err:
        raise DataError(f"{path} has no GTcls.Segmentation (not an SBD cls file?): {err}") from None
    except Exception as err:  # scipy raises several types for corrupt files
        raise DataError(f"cannot read label {path}: {err}") from None
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise DataError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected 2-D")
    return seg.astype(np.uint8)


VOC_LISTS_HINT = "python -m fcn.data.prepare downloads VOC2012 and SBD with their lists"


def read_ids(path: Path, hint: str = VOC_LISTS_HINT) -> list[str]:
    """Image ids of a split list file, one per line (blank lines ignored); ``hint`` ends the
    message when the file cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"split list {path} is not UTF-8 text (byte {err.start} is {err.object[err.start]:#x}):"
            " a split list holds one image id per line"
        ) from None
    except OSError as err:
        raise DataError(f"cannot read split list {path}: {err.strerror or err} ({hint})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_label(
    label: np.ndarray, image: np.ndarray, label_path: Path, image_path: Path, num_classes: int
) -> None:
    """Refuse a label whose size differs from its image's or whose values are not classes or
    255, naming the file and what is wrong."""
    if label.shape != image.shape[:2]:
        raise DataError(
            f"label {label_path} is {label.shape[0]}x{label.shape[1]} but its image "
            f"{image_path} is {image.shape[0]}x{image.shape[1]}"
        )
    counts = np.bincount(label.ravel(), minlength=256)  # uint8: faster than np.unique's sort
    counts[255] = 0
    bad = np.flatnonzero(counts[num_classes:]) + num_classes
    if bad.size:
        raise DataError(
            f"label {label_path} has values {bad.tolist()} outside the classes "
            f"0..{num_classes - 1} and void (255)"
        )


def read_voc_sample(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its VOC label (a ``.mat`` SBD file or a palette ``.png``), checked against
    each other and the 21 classes."""
    image = read_image(image_path)
    if label_path.suffix == ".mat":
        label = read_mat_label(label_path)
    else:
        label = read_png_label(label_path)
    check_label(label, image, label_path, image_path, len(VOC_CLASSES))
    return image, label
