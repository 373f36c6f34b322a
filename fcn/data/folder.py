"""A dataset of one's own: images and masks in two folders (``data=folder``), and the layouts of
Cityscapes and ADE20K over the same machinery (``data=cityscapes``, ``data=ade20k``).

Under ``root``::

    <images>/[<split folder>/]<id><image_suffix>     e.g. images/train/street/0001.jpg
    <masks>/[<split folder>/]<id><mask_suffix>       e.g. masks/train/street/0001.png

An image and a mask pair up by their path under their folder without the suffix
(``street/0001``); the dataset's ``ids`` are paths under ``<images>`` (``train/street/0001``).
Masks are palette ("P"), single-channel ("L", 16-bit "I;16") or 1-bit ("1") PNGs whose pixel
values are the class ids (a palette's colours are never read). The split comes from
``split_by``:

- ``folders``: sub-folders of ``<images>`` and ``<masks>`` (``split_folders``, by default
  ``train`` and ``val``);
- ``lists``: text files of ids, one per line (``split_lists``, paths relative to ``root``);
- ``fraction``: every pair under ``<images>`` and ``<masks>``, a fraction ``val_fraction``
  drawn for validation with ``split_seed`` (the same files and seed draw the same split;
  ``fcn.train`` writes the drawn lists into its run folder as ``splits/{train,val}.txt``).

Mask values become classes in this order: ``ignore_index`` (a raw value meaning void) becomes
255; then ``label_map`` (``{raw id: class}``; 255 for void; every id present must be mapped) or
``reduce_zero_label`` (0 becomes void, every other value one less, as ADE20K needs); any value
that is then neither a class (0..num_classes-1) nor 255 is an error naming the mask.

Class names and colours: the data config's ``class_names`` / ``class_colors``, else a
``classes_file`` in ``root`` (one class per line in id order: a name, optionally followed by
``#rrggbb``; blank lines and lines starting with ``//`` are skipped).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from fcn.data.labels import IGNORE_INDEX
from fcn.data.readers import open_failure, read_ids, read_image, read_image_size
from fcn.errors import DataError, first_few

SPLIT_BY = ("folders", "lists", "fraction")
SPLITS = ("train", "val")
#: Mask pixel values above this are refused (16-bit PNGs hold ids up to 65535).
MAX_ID = 65535
_UNMAPPED, _OUTSIDE = 256, 257  # look-up results that are errors
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


def find_files(folder: Path, suffix: str) -> dict[str, Path]:
    """``{id: path}`` of every file under ``folder`` (any depth) whose name ends in ``suffix``;
    the id is the path under ``folder`` without the suffix."""
    found = {}
    for path in folder.rglob(f"*{suffix}"):
        if path.is_file() or path.is_symlink():
            found[path.relative_to(folder).as_posix()[: -len(suffix)]] = path
    return found


def read_classes_file(path: Path) -> tuple[list[str], list[list[int]] | None]:
    """``(names, colours)`` of a classes file; colours None unless every class has one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read classes file {path}: {err}") from None
    names, colors = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2 and _COLOR.match(parts[1]):
            name, hex_color = parts[0], parts[1]
            colors.append([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
        elif _COLOR.match(line):
            raise DataError(f"{path}, line {number}: a colour without a class name")
        else:
            name = line
        names.append(name)
    if not names:
        raise DataError(f"classes file {path} names no class")
    if colors and len(colors) != len(names):
        raise DataError(
            f"classes file {path}: {len(colors)} of its {len(names)} classes have a colour; "
            "give every class one (#rrggbb after its name) or none"
        )
    return names, colors or None


def label_table(
    num_classes: int,
    ignore_index: int | None = IGNORE_INDEX,
    reduce_zero_label: bool = False,
    label_map: Mapping[int, int] | None = None,
) -> np.ndarray:
    """The look-up table from raw mask values (0..65535) to classes or 255 (void); entries
    :data:`_UNMAPPED` (an id ``label_map`` lacks) and :data:`_OUTSIDE` (not a class) are errors.
    """
    raw = np.arange(MAX_ID + 1)
    if label_map is not None:
        table = np.full(MAX_ID + 1, _UNMAPPED, dtype=np.int64)
        for key, value in label_map.items():
            table[int(key)] = int(value)
    elif reduce_zero_label:
        table = raw - 1
        table[0] = IGNORE_INDEX
    else:
        table = raw.copy()
    if ignore_index is not None:
        table[ignore_index] = IGNORE_INDEX
    outside = (
        (table != IGNORE_INDEX) & (table != _UNMAPPED) & ((table < 0) | (table >= num_classes))
    )
    table[outside] = _OUTSIDE
    return table.astype(np.uint16)


def read_mask(path: Path) -> np.ndarray:
    """The pixel values of an index mask (palette, 8-bit or 16-bit single channel)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "L", "1"):  # "1": a two-class mask, 0 and 1
                return np.asarray(img, dtype=np.uint8)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.asarray(img)
                if values.min() < 0 or values.max() > MAX_ID:
                    raise DataError(f"mask {path} has values outside 0..{MAX_ID}")
                return values.astype(np.int32)
            raise DataError(
                f"mask {path} is a {img.mode!r} image: masks are palette ('P') or single-channel "
                "('L', 'I;16') PNGs whose pixel values are the class ids, not colours"
            )
    except OSError as err:
        raise DataError(open_failure(path, "mask", err)) from None
    except (ValueError, SyntaxError) as err:
        raise DataError(f"cannot read mask {path}: {err}") from None


class FolderDataset(Dataset):
    """One split of images and masks in two folders; item ``i`` is ``(image HxWx3 uint8,
    label HxW uint8)`` with classes 0..num_classes-1 and 255 for void. See the module's text for
    the layout and the options; everything about the files is checked at construction except
    their contents, which are checked as each item is read (a :class:`DataError` naming the
    file: unreadable, sizes that differ, values that are not classes)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_classes: int,
        images: str = "images",
        masks: str = "masks",
        image_suffix: str = ".jpg",
        mask_suffix: str = ".png",
        split_by: str = "folders",
        split_folders: Mapping[str, str] | None = None,
        split_lists: Mapping[str, str] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        classes_file: str | None = "classes.txt",
        ignore_index: int | None = IGNORE_INDEX,
        reduce_zero_label: bool = False,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        _check_options(split, split_by, num_classes, val_fraction, ignore_index, label_map)
        if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
            raise DataError(f"split_seed must be an integer >= 0, got {split_seed!r}")
        if reduce_zero_label and label_map is not None:
            raise DataError("give a FolderDataset reduce_zero_label or label_map, not both")
        self.root = Path(root).expanduser().resolve()
        self.split, self.split_by, self.num_classes = split, split_by, num_classes
        self.image_suffix, self.mask_suffix = image_suffix, mask_suffix
        if not self.root.is_dir():
            raise DataError(
                f"data folder not found: {self.root} (expected {images}/ and {masks}/ in it; "
                "set data.train_set.root)"
            )
        self.list_files: list[Path] = []
        self.drawn = split_by == "fraction"
        folder = ""
        if split_by == "folders":
            folder = dict({"train": "train", "val": "val"}, **(split_folders or {}))[split]
        self.image_dir = self.root / images / folder
        self.mask_dir = self.root / masks / folder
        ids = self._find_ids(split_lists, val_fraction, split_seed)
        self._ids = np.array([i.encode() for i in ids], dtype=np.bytes_)
        # ids name files under <images>: train/0001 and val/0001 are two images, not one
        self._prefix = f"{folder}/" if folder else ""
        self.table = label_table(num_classes, ignore_index, reduce_zero_label, label_map)
        self.class_names, self.class_colors = self._classes(classes_file)

    @property
    def ids(self) -> list[str]:
        """The split's ids, in order: paths under ``<images>`` without the suffix (with
        ``split_by=folders``, the split folder included)."""
        return [self._prefix + i.decode() for i in self._ids]

    @property
    def source(self) -> str:
        """Where the split's ids come from (its list file, or its folders)."""
        if self.list_files:
            return ", ".join(map(str, self.list_files))
        return f"{self.image_dir} and {self.mask_dir}"

    def _find_ids(
        self, split_lists: Mapping[str, str] | None, val_fraction: float, split_seed: int
    ) -> list[str]:
        for what, folder in (("image", self.image_dir), ("mask", self.mask_dir)):
            if not folder.is_dir():
                raise DataError(f"{what} folder not found: {folder}")
        if self.split_by == "lists":
            lists = dict({"train": "train.txt", "val": "val.txt"}, **(split_lists or {}))
            path = self.root / Path(lists[self.split]).expanduser()
            self.list_files.append(path)
            ids = read_ids(path, "data.train_set.split_lists names the lists, relative to root")
            missing = [
                str(folder / f"{i}{suffix}")
                for i in ids
                for folder, suffix in (
                    (self.image_dir, self.image_suffix),
                    (self.mask_dir, self.mask_suffix),
                )  # fmt: skip
                if not (folder / f"{i}{suffix}").is_file()
            ]
            if missing:
                raise DataError(
                    f"{len(missing)} file(s) of the ids listed in {path} are missing: "
                    f"{first_few(missing)}"
                )
            return ids
        images = find_files(self.image_dir, self.image_suffix)
        masks = find_files(self.mask_dir, self.mask_suffix)
        lonely = [
            (f"image(s) without a mask ({self.mask_dir}/<id>{self.mask_suffix})",
             sorted(str(images[i]) for i in images.keys() - masks.keys())),
            (f"mask(s) without an image ({self.image_dir}/<id>{self.image_suffix})",
             sorted(str(masks[i]) for i in masks.keys() - images.keys())),
        ]  # fmt: skip
        problems = [f"{len(paths)} {what}: {first_few(paths)}" for what, paths in lonely if paths]
        if problems:
            raise DataError("; ".join(problems))
        ids = sorted(images)
        if not ids:
            raise DataError(
                f"no image ending in {self.image_suffix} under {self.image_dir} (data."
                "train_set.image_suffix and .images name them)"
            )
        if self.split_by == "folders":
            return ids
        order = np.random.default_rng(split_seed).permutation(len(ids))
        count = min(len(ids) - 1, max(1, math.ceil(val_fraction * len(ids))))
        chosen = set(order[:count].tolist()) if self.split == "val" else set(order[count:].tolist())
        return [i for n, i in enumerate(ids) if n in chosen]

    def _classes(self, classes_file: str | None) -> tuple[list[str], list[list[int]] | None]:
        path = self.root / classes_file if classes_file else None
        if path is None or not path.is_file():
            return [f"class_{i}" for i in range(self.num_classes)], None
        names, colors = read_classes_file(path)
        if len(names) != self.num_classes:
            raise DataError(
                f"classes file {path} names {len(names)} classes but data.num_classes is "
                f"{self.num_classes}"
            )
        return names, colors

    def paths(self, index: int) -> tuple[Path, Path]:
        """(image, mask) of item ``index``."""
        id_ = self._ids[index].decode()
        return (
            self.image_dir / f"{id_}{self.image_suffix}",
            self.mask_dir / f"{id_}{self.mask_suffix}",
        )

    def __len__(self) -> int:
        return len(self._ids)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index`` from its image file's header (nothing decoded)."""
        return read_image_size(self.paths(index)[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.paths(index)
        image = read_image(image_path)
        raw = read_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"mask {mask_path} is {raw.shape[0]}x{raw.shape[1]} but its image {image_path} "
                f"is {image.shape[0]}x{image.shape[1]}"
            )
        label = self.table[raw]
        if (label > IGNORE_INDEX).any():
            unmapped = np.unique(raw[label == _UNMAPPED]).tolist()
            outside = np.unique(raw[label == _OUTSIDE]).tolist()
            if unmapped:
                raise DataError(
                    f"mask {mask_path} has ids {unmapped[:20]} that data.label_map does not map "
                    "(map every id the masks hold; 255 for void)"
                )
            raise DataError(
                f"mask {mask_path} has values {outside[:20]} that are not classes "
                f"0..{self.num_classes - 1} (nor void) after the ignore_index / "
                "reduce_zero_label / label_map settings"
            )
        return image, label.astype(np.uint8)


def _check_options(
    split: str,
    split_by: str,
    num_classes: int,
    val_fraction: float,
    ignore_index: int | None,
    label_map: Mapping[int, int] | None,
) -> None:
    """Refuse option values that cannot work, naming the option."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if split_by not in SPLIT_BY:
        raise DataError(f"split_by must be one of {list(SPLIT_BY)}, got {split_by!r}")
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not (2 <= num_classes <= IGNORE_INDEX)
    ):
        raise DataError(f"num_classes must be an integer 2..255, got {num_classes!r}")
    if split_by == "fraction" and not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if ignore_index is not None and not 0 <= ignore_index <= MAX_ID:
        raise DataError(f"ignore_index must be 0..{MAX_ID} or null, got {ignore_index}")
    for key, value in (label_map or {}).items():
        if not 0 <= int(key) <= MAX_ID:
            raise DataError(f"label_map: id {key} is outside 0..{MAX_ID}")
        if not (0 <= int(value) < num_classes or int(value) == IGNORE_INDEX):
            raise DataError(
                f"label_map maps {key} to {value}, which is neither a class 0..{num_classes - 1} "
                "nor 255 (void)"
            )
