"""The Keras seed's data: SBD plus the 676 VOC2012 images SBD lacks (10,831 train / 1,200 val;
docs/seed.md#split).

Layout under ``root`` (the Keras seed's ``data/`` folder)::

    images_mat/<id>.jpg   labels_mat/<id>.mat    SBD images and GTcls labels
    images_png/<id>.jpg   labels_png/<id>.png    VOC2012 images and palette labels

Split files (``train_mat.txt``, ``train_png.txt``, ``val_mat.txt``) ship with the package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from fcn.data.readers import VOC_CLASSES, read_ids, read_image_size, read_voc_sample
from fcn.errors import DataError

SPLITS_DIR = Path(__file__).parent / "splits" / "voc_seed"
#: split -> list files, each of ids whose files are in (images_<kind>, labels_<kind>)
SPLIT_FILES = {"train": ("train_mat", "train_png"), "val": ("val_mat",)}
LABEL_SUFFIX = {"mat": ".mat", "png": ".png"}
KINDS = ("mat", "png")
LAYOUT = ("images_mat", "labels_mat", "images_png", "labels_png")


class SeedVOC(Dataset):
    """One split of the Keras seed's data; item ``i`` is ``(image HxWx3 uint8, label HxW uint8)``.

    Raises :class:`DataError` at construction when the folder or any listed file is missing.
    """

    class_names = VOC_CLASSES

    def __init__(
        self, root: str | Path, split: str = "train", splits_dir: str | Path | None = None
    ):
        if split not in SPLIT_FILES:
            raise DataError(
                f"unknown split {split!r} of the Keras seed's data: use one of {list(SPLIT_FILES)}"
            )
        self.root = Path(root).expanduser().resolve()
        self.split = split
        splits_dir = Path(splits_dir) if splits_dir else SPLITS_DIR
        if not self.root.is_dir():
            raise DataError(
                f"the Keras seed's VOC data was not found: expected the folder {self.root} holding "
                f"{', '.join(d + '/' for d in LAYOUT)}. Download and build it with "
                f"`python -m fcn.data.prepare --root {self.root.parent} --layout seed`, point "
                "paths.data_dir (or FCN_DATA_DIR) at its parent, or try the built-in data: "
                "python -m fcn.train experiment=quickstart"
            )
        ids, kinds = [], []
        self.list_files = [splits_dir / f"{name}.txt" for name in SPLIT_FILES[split]]
        for list_file in self.list_files:
            listed = read_ids(list_file)
            ids += listed
            kinds += [list_file.stem.rsplit("_", 1)[1]] * len(listed)
        # Flat arrays, not a list of paths: loader workers share them without copying.
        self._ids = np.array([i.encode() for i in ids], dtype=np.bytes_)
        self._kinds = np.array([KINDS.index(k) for k in kinds], dtype=np.uint8)
        missing = [str(p) for s in self.samples for p in s[:2] if not p.is_file()]
        if missing:
            shown = "\n  ".join(missing[:5])
            raise DataError(
                f"{len(missing)} file(s) of the Keras seed's {split} split are missing under "
                f"{self.root}, e.g.:\n  {shown}"
            )

    @property
    def source(self) -> str:
        """Where the split's ids come from (its list files)."""
        return ", ".join(map(str, self.list_files))

    @property
    def ids(self) -> list[str]:
        """The split's image ids, in order."""
        return [i.decode() for i in self._ids]

    @property
    def samples(self) -> list[tuple[Path, Path, str]]:
        """(image, label, kind) of every item; kind is ``mat`` (SBD) or ``png`` (VOC)."""
        return [self._paths(i) for i in range(len(self))]

    def _paths(self, index: int) -> tuple[Path, Path, str]:
        id_, kind = self._ids[index].decode(), KINDS[self._kinds[index]]
        return (
            self.root / f"images_{kind}" / f"{id_}.jpg",
            self.root / f"labels_{kind}" / f"{id_}{LABEL_SUFFIX[kind]}",
            kind,
        )

    def __len__(self) -> int:
        return len(self._ids)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index`` from its image file's header (nothing decoded)."""
        return read_image_size(self._paths(index)[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path, _ = self._paths(index)
        return read_voc_sample(image_path, label_path)
