"""Pascal VOC 2012 and SBD in their own folder layouts, and the standard splits over them.

Under ``root`` (``paths.data_dir``)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png          palette PNGs, 255 = void
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    benchmark_RELEASE/dataset/img/<id>.jpg
    benchmark_RELEASE/dataset/cls/<id>.mat                 GTcls.Segmentation, no 255
    benchmark_RELEASE/dataset/{train,val}.txt

Splits (docs/paper.md#splits):

    voc2012_train / voc2012_val   1,464 / 1,449   VOC labels
    sbd_train / sbd_val           8,498 / 2,857   SBD labels
    aug_train                     10,582          (VOC train + SBD train + SBD val) - VOC val;
                                                  VOC labels where VOC has one, else SBD's
    seg11valid                    736             the paper's evaluation split (VOC2011 val not in
                                                  SBD train), VOC labels; list shipped with fcn

or any list file of ids (``ids_file``), labelled from VOC where it has the id, else from SBD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from fcn.data.readers import VOC_CLASSES, read_ids, read_image_size, read_voc_sample
from fcn.errors import DataError

VOC_DIR = Path("VOCdevkit") / "VOC2012"
SBD_DIR = Path("benchmark_RELEASE") / "dataset"
PAPER_SPLITS = Path(__file__).parent / "splits" / "paper"
SPLITS = ("voc2012_train", "voc2012_val", "sbd_train", "sbd_val", "aug_train", "seg11valid")
SOURCES = ("voc", "sbd")
#: source -> (label folder, label suffix, image folder)
LABELS = {
    "voc": (VOC_DIR / "SegmentationClass", ".png", VOC_DIR / "JPEGImages"),
    "sbd": (SBD_DIR / "cls", ".mat", SBD_DIR / "img"),
}


class PascalDataset(Dataset):
    """One split of VOC2012 / SBD; item ``i`` is ``(image HxWx3 uint8, label HxW uint8)``.

    Args:
        root: the folder holding ``VOCdevkit/`` and/or ``benchmark_RELEASE/``.
        split: one of :data:`SPLITS`, or None with ``ids_file``.
        ids_file: a text file of image ids, one per line (your own split).

    Raises :class:`DataError` at construction when a folder, a split list or a listed file is
    missing, naming it.
    """

    class_names = VOC_CLASSES

    def __init__(
        self, root: str | Path, split: str | None = None, ids_file: str | Path | None = None
    ) -> None:
        if (split is None) == (ids_file is None):
            raise DataError("give a PascalDataset either split or ids_file (not both)")
        if split is not None and split not in SPLITS:
            raise DataError(f"unknown split {split!r}: use one of {list(SPLITS)} or ids_file")
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(
                f"data folder not found: {self.root} (expected {VOC_DIR}/ and/or {SBD_DIR}/ in "
                f"it). Download them with `python -m fcn.data.prepare --root {self.root}`, set "
                "paths.data_dir or FCN_DATA_DIR, or try the built-in data: "
                "python -m fcn.train experiment=quickstart"
            )
        self.split = split or str(ids_file)
        self.list_files: list[Path] = []  # the split lists read, named when the split is empty
        ids, sources = self._ids_and_sources(split, ids_file)
        located = [self._locate(i, sources) for i in ids]
        missing = [i for i, source in zip(ids, located, strict=True) if source is None]
        if missing:
            where = " or ".join(str(self.root / LABELS[s][0]) for s in sources)
            raise DataError(
                f"{len(missing)} of {len(ids)} ids of split {self.split} have no label in "
                f"{where}, e.g. {', '.join(missing[:5])}"
            )
        # Two flat arrays, not a list of paths: workers share them without copying, so a split of
        # 100,000 ids costs each loader worker no more than one of 1,000 (bench/loader_memory.py).
        self._ids = np.array([i.encode() for i in ids], dtype=np.bytes_)
        self._sources = np.array([SOURCES.index(s) for s in located], dtype=np.uint8)

    @property
    def ids(self) -> list[str]:
        """The split's image ids, in order."""
        return [i.decode() for i in self._ids]

    @property
    def samples(self) -> list[tuple[Path, Path]]:
        """(image, label) paths of every item."""
        return [self._paths(i) for i in range(len(self))]

    def _paths(self, index: int) -> tuple[Path, Path]:
        id_ = self._ids[index].decode()
        labels, label_suffix, images = LABELS[SOURCES[self._sources[index]]]
        return self.root / images / f"{id_}.jpg", self.root / labels / f"{id_}{label_suffix}"

    @property
    def source(self) -> str:
        """Where the split's ids come from (its list files)."""
        return ", ".join(map(str, self.list_files))

    def _list(self, path: Path) -> list[str]:
        path = self.root / path  # an absolute path stays as it is
        self.list_files.append(path)
        return read_ids(path)

    def _ids_and_sources(
        self, split: str | None, ids_file: str | Path | None
    ) -> tuple[list[str], tuple[str, ...]]:
        voc_sets = VOC_DIR / "ImageSets" / "Segmentation"
        if split in ("voc2012_train", "voc2012_val"):
            return self._list(voc_sets / f"{split.split('_')[1]}.txt"), ("voc",)
        if split in ("sbd_train", "sbd_val"):
            return self._list(SBD_DIR / f"{split.split('_')[1]}.txt"), ("sbd",)
        if split == "aug_train":
            val = set(self._list(voc_sets / "val.txt"))
            merged = self._list(voc_sets / "train.txt")
            merged += self._list(SBD_DIR / "train.txt") + self._list(SBD_DIR / "val.txt")
            ids = [i for i in dict.fromkeys(merged) if i not in val]  # ordered, unique
            return ids, ("voc", "sbd")
        if split == "seg11valid":
            return self._list(PAPER_SPLITS / "seg11valid.txt"), ("voc",)
        return self._list(Path(ids_file).expanduser().resolve()), ("voc", "sbd")

    def _locate(self, id_: str, sources: tuple[str, ...]) -> str | None:
        """The first source that has a label for ``id_`` (its image must be there too)."""
        for source in sources:
            labels, label_suffix, images = LABELS[source]
            label = self.root / labels / f"{id_}{label_suffix}"
            if label.is_file():
                image = self.root / images / f"{id_}.jpg"
                if not image.is_file():
                    raise DataError(f"image file not found: {image} (its label is {label})")
                return source
        return None

    def __len__(self) -> int:
        return len(self._ids)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index`` from its image file's header (nothing decoded)."""
        return read_image_size(self._paths(index)[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_voc_sample(*self._paths(index))
