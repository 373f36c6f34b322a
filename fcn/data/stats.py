"""Dataset statistics from one pass over each split: ``python -m fcn.data.prepare --check
data=<option>`` prints them, ``module.class_weights=median_frequency`` is computed from them.

Works on any dataset whose item ``i`` is ``(image HxWx3 uint8, label HxW)`` with classes
``0..num_classes-1`` and 255 for void; ``ids`` (a list of str) and ``source`` (the list files)
are used when the dataset has them. Per split: the images read, the unreadable ones (the
:class:`DataError` message naming the file), the image sizes, the pixels of each class, the void
pixels and any label value that is neither a class nor void; across splits: the ids in both.

A class's frequency in a split is its pixels over the split's labelled (class) pixels: void
pixels count in the void fraction only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fcn.data.labels import IGNORE_INDEX
from fcn.errors import DataError, first_few

#: How many shared ids, unreadable files and common sizes the text report names.
SHOWN = 5


@dataclass
class SplitStats:
    """What one pass over a split found (``read`` of its ``num_images`` items)."""

    name: str
    num_classes: int
    num_images: int = 0
    read: int = 0
    class_pixels: list[int] = field(default_factory=list)
    images_with_class: list[int] = field(default_factory=list)
    void_pixels: int = 0
    foreign: dict[int, int] = field(default_factory=dict)  # label value -> pixels
    sizes: Counter = field(default_factory=Counter)  # (height, width) -> images
    unreadable: list[str] = field(default_factory=list)
    ids: list[str] | None = None
    source: list[str] | None = None

    def __post_init__(self) -> None:
        self.class_pixels = self.class_pixels or [0] * self.num_classes
        self.images_with_class = self.images_with_class or [0] * self.num_classes

    @property
    def labelled_pixels(self) -> int:
        """Pixels of a class (neither void nor a foreign value)."""
        return sum(self.class_pixels)

    @property
    def total_pixels(self) -> int:
        return self.labelled_pixels + self.void_pixels + sum(self.foreign.values())

    @property
    def frequencies(self) -> list[float]:
        """Each class's share of the labelled pixels (0 for all when none is labelled)."""
        total = self.labelled_pixels
        return [count / total if total else 0.0 for count in self.class_pixels]

    @property
    def void_fraction(self) -> float:
        return self.void_pixels / self.total_pixels if self.total_pixels else 0.0

    @property
    def absent(self) -> list[int]:
        """The classes with no pixel in the images read."""
        return [c for c, count in enumerate(self.class_pixels) if count == 0]

    def size_summary(self) -> dict[str, dict[str, float]]:
        """Min, median and max of the heights and the widths of the images read."""
        if not self.sizes:
            return {}
        counts = list(self.sizes.values())
        summary = {}
        for axis, name in ((0, "height"), (1, "width")):
            values = np.repeat([size[axis] for size in self.sizes], counts)
            summary[name] = {
                "min": int(values.min()),
                "median": float(np.median(values)),
                "max": int(values.max()),
            }
        return summary

    def common_sizes(self, count: int = SHOWN) -> list[tuple[int, int, int]]:
        """The ``count`` most common ``(height, width, images)``."""
        return [(h, w, n) for (h, w), n in self.sizes.most_common(count)]

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Plain containers for JSON; the per-class lists follow ``class_names``."""
        return {
            "images": self.num_images,
            "read": self.read,
            "unreadable": list(self.unreadable),
            "pixels": self.total_pixels,
            "labelled_pixels": self.labelled_pixels,
            "void_pixels": self.void_pixels,
            "void_fraction": self.void_fraction,
            "foreign_label_values": {str(k): v for k, v in sorted(self.foreign.items())},
            "class_pixels": list(self.class_pixels),
            "class_frequency": self.frequencies,
            "images_with_class": list(self.images_with_class),
            "absent_classes": [class_names[c] for c in self.absent],
            "image_size": self.size_summary(),
            "distinct_sizes": len(self.sizes),
            "common_sizes": [
                {"height": h, "width": w, "images": n} for h, w, n in self.common_sizes(10)
            ],
            "source": self.source,
        }


@dataclass
class DatasetStats:
    """The statistics of a data option's splits, and the ids they share."""

    num_classes: int
    class_names: list[str]
    splits: list[SplitStats]
    shared_ids: list[str] | None  # None: the datasets do not name their items
    data: str | None = None  # the data option, for the report's title
    limit: int | None = None

    @property
    def ok(self) -> bool:
        """True when every item was read and every label value is a class or void."""
        return not any(s.unreadable or s.foreign for s in self.splits)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers for JSON."""
        return {
            "data": self.data,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "limit": self.limit,
            "splits": {s.name: s.to_dict(self.class_names) for s in self.splits},
            "shared_ids": None
            if self.shared_ids is None
            else {"count": len(self.shared_ids), "ids": list(self.shared_ids)},
            "ok": self.ok,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _item_counts(label: np.ndarray, num_classes: int) -> tuple[np.ndarray, dict[int, int]]:
    """``(pixels per class, {other label value: pixels})`` of one label; void (255) is one of
    the other values."""
    if label.dtype == np.uint8:
        counts = np.bincount(label.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        found = zip(values.tolist(), counts[values].tolist(), strict=True)
    else:
        values, counts = np.unique(label, return_counts=True)
        found = zip(values.tolist(), counts.tolist(), strict=True)
    classes = np.zeros(num_classes, np.int64)
    others = {}
    for value, count in found:
        if 0 <= value < num_classes:
            classes[value] = count
        else:
            others[int(value)] = int(count)
    return classes, others


def item_problem(image: Any, label: Any) -> str | None:
    """What breaks the item contract (HxWx3 image, HxW integer label of the same size), or
    None."""
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim != 3 or image.shape[2] != 3 or label.ndim != 2:
        shapes = f"image of shape {image.shape} and label of shape {label.shape}"
        return f"{shapes}: expected HxWx3 and HxW"
    if image.shape[:2] != label.shape:
        (h, w), (lh, lw) = image.shape[:2], label.shape
        return f"image of {h}x{w} but label of {lh}x{lw}"
    if label.dtype.kind not in "iu":
        return f"label of dtype {label.dtype}: expected integer class ids"
    return None


class _Counted(Dataset):
    """Item ``k`` is ``(index, counts or None, error message or None)`` for ``indices[k]``:
    loader workers send the counts, never the pixels."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], num_classes: int) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.num_classes = num_classes
        self.ids = getattr(dataset, "ids", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, Any, str | None]:
        index = self.indices[k]
        try:
            image, label = self.dataset[index]
        except DataError as err:  # the dataset's message names the file
            return index, None, str(err)
        problem = item_problem(image, label)
        if problem is not None:
            return index, None, f"{self._name(index)}: {problem}"
        label = np.asarray(label)
        size = (int(label.shape[0]), int(label.shape[1]))
        return index, (size, *_item_counts(label, self.num_classes)), None

    def _name(self, index: int) -> str:
        if self.ids is not None and index < len(self.ids):
            return f"item {index} (id {self.ids[index]})"
        return f"item {index}"


def _unchanged(item: Any) -> Any:
    return item


def _counts(counted: _Counted, num_workers: int) -> Iterator[tuple[int, Any, str | None]]:
    """The items of ``counted``, read in this process or by ``num_workers`` loader workers (in
    order; their seeds come from a generator of their own, not from torch's global stream)."""
    if num_workers <= 0:
        yield from (counted[k] for k in range(len(counted)))
        return
    yield from DataLoader(
        counted, batch_size=None, num_workers=num_workers, collate_fn=_unchanged,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def sample_indices(length: int, limit: int | None) -> list[int]:
    """All indices of a split, or ``limit`` of them spread evenly over it (first and last
    included), so a split sorted by city or scene is still sampled throughout."""
    if limit is None or limit >= length:
        return list(range(length))
    if limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    return sorted({int(i) for i in np.linspace(0, length - 1, limit).round()})


def split_stats(
    dataset: Dataset,
    num_classes: int,
    name: str = "train",
    limit: int | None = None,
    num_workers: int = 0,
    on_error: str = "collect",
    progress: bool = True,
) -> SplitStats:
    """Read every item of ``dataset`` (or ``limit`` of them) once and count.

    ``on_error``: ``collect`` lists the items that cannot be read (the :class:`DataError`
    message, which names the file) or break the item contract in
    :attr:`SplitStats.unreadable` and goes on; ``raise`` raises the first as a DataError.
    ``num_workers`` > 0 reads with that many loader workers.
    """
    if on_error not in ("collect", "raise"):
        raise ValueError(f"on_error must be collect or raise, got {on_error!r}")
    ids = getattr(dataset, "ids", None)
    source = getattr(dataset, "source", None)
    if source is not None and not isinstance(source, list | tuple):
        source = [source]
    stats = SplitStats(
        name, num_classes, num_images=len(dataset),
        ids=list(ids) if ids is not None else None,
        source=[str(s) for s in source] if source is not None else None,
    )  # fmt: skip
    counted = _Counted(dataset, sample_indices(len(dataset), limit), num_classes)
    class_pixels = np.zeros(num_classes, np.int64)
    images_with_class = np.zeros(num_classes, np.int64)
    bar = tqdm(total=len(counted), desc=name, unit="image", leave=False, disable=not progress)
    with bar:
        for _, counts, error in _counts(counted, min(num_workers, len(counted))):
            bar.update(1)
            if error is not None:
                if on_error == "raise":
                    raise DataError(error)
                stats.unreadable.append(error)
                continue
            size, classes, others = counts
            stats.read += 1
            stats.sizes[size] += 1
            class_pixels += classes
            images_with_class += classes > 0
            stats.void_pixels += others.pop(IGNORE_INDEX, 0)
            for value, count in others.items():
                stats.foreign[value] = stats.foreign.get(value, 0) + count
    stats.class_pixels = class_pixels.tolist()
    stats.images_with_class = images_with_class.tolist()
    return stats


def shared_ids(first: Dataset | None, second: Dataset | None) -> list[str] | None:
    """The ids in both datasets, sorted (None when either names no ids)."""
    a, b = getattr(first, "ids", None), getattr(second, "ids", None)
    if a is None or b is None:
        return None
    return sorted(set(a) & set(b))


def class_names_for(
    num_classes: int, names: Sequence[str] | None, *datasets: Dataset | None
) -> list[str]:
    """``names``, else the first dataset's ``class_names`` of the right length, else
    ``class_0``, ``class_1``, ..."""
    for candidate in (names, *(getattr(d, "class_names", None) for d in datasets)):
        if candidate is not None and len(candidate) == num_classes:
            return [str(n) for n in candidate]
    return [f"class_{i}" for i in range(num_classes)]


def dataset_stats(
    splits: Mapping[str, Dataset | None],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    limit: int | None = None,
    num_workers: int = 0,
    data: str | None = None,
    progress: bool = True,
) -> DatasetStats:
    """:func:`split_stats` of each split given (None: left out), and the ids the first two
    share."""
    present = {name: ds for name, ds in splits.items() if ds is not None}
    results = [
        split_stats(ds, num_classes, name, limit, num_workers, progress=progress)
        for name, ds in present.items()
    ]
    datasets = list(present.values())
    shared = shared_ids(datasets[0], datasets[1]) if len(datasets) >= 2 else None
    names = class_names_for(num_classes, class_names, *reversed(datasets))
    return DatasetStats(num_classes, names, results, shared, data, limit)


def median_frequency_weights(class_pixels: Sequence[int]) -> list[float]:
    """Median frequency balancing: ``median(freq) / freq_c``, the median taken over the classes
    present; a class with no pixel gets 0 (no pixel of the split carries its weight, so the loss
    is the same whatever it is).

    ``freq_c`` is class ``c``'s share of the labelled pixels. Raises :class:`DataError` when no
    pixel is labelled.
    """
    counts = np.asarray(class_pixels, np.float64)
    total = counts.sum()
    if total <= 0:
        raise DataError("the training split has no labelled pixel: no class weight can be computed")
    freq = counts / total
    median = float(np.median(freq[freq > 0]))
    return [median / f if f > 0 else 0.0 for f in freq.tolist()]


def format_report(stats: DatasetStats) -> str:
    """The statistics as text: counts, image sizes, pixels per class and split, absent classes,
    shared ids, and what could not be read."""
    splits = stats.splits
    title = f"data={stats.data}: " if stats.data else ""
    lines = [f"{title}{stats.num_classes} classes"]
    if stats.limit is not None:
        lines[0] += f" (at most {stats.limit} images per split read, spread over each split)"
    lines += ["", f"{'split':<10}{'images':>9}{'read':>9}{'unreadable':>12}{'pixels':>16}"
              f"{'void':>9}"]  # fmt: skip
    for s in splits:
        lines.append(
            f"{s.name:<10}{s.num_images:>9,}{s.read:>9,}{len(s.unreadable):>12,}"
            f"{s.total_pixels:>16,}{s.void_fraction:>9.2%}"
        )
    lines += ["", f"{'sizes':<10}{'height min/median/max':>24}{'width min/median/max':>24}"
              "   most common (HxW: images)"]  # fmt: skip
    for s in splits:
        summary = s.size_summary()
        if not summary:
            lines.append(f"{s.name:<10}{'-':>24}{'-':>24}")
            continue
        h, w = summary["height"], summary["width"]
        common = ", ".join(f"{a}x{b}: {n}" for a, b, n in s.common_sizes(3))
        lines.append(
            f"{s.name:<10}{h['min']:>10} /{h['median']:>6g} /{h['max']:>5}"
            f"{w['min']:>10} /{w['median']:>6g} /{w['max']:>5}   {common}"
        )
    width = max(12, *(len(n) for n in stats.class_names)) + 5
    header = f"{'class':<{width}}"
    for s in splits:
        header += f"{s.name + ' pixels':>16}{'freq':>9}"
    lines += ["", header]
    for c, name in enumerate(stats.class_names):
        row = f"{c:>3} {name:<{width - 4}}"
        for s in splits:
            row += f"{s.class_pixels[c]:>16,}{s.frequencies[c]:>9.2%}"
        lines.append(row)
    lines.append("")
    for s in splits:
        absent = [f"{c} {stats.class_names[c]}" for c in s.absent]
        lines.append(
            f"absent from {s.name}: {len(absent)} class(es): {first_few(absent, 20)}"
            if absent
            else f"absent from {s.name}: none"
        )
    if stats.shared_ids is None:
        lines.append("ids in both splits: not known (the datasets do not name their images)")
    elif stats.shared_ids:
        shown = first_few(stats.shared_ids, SHOWN)
        lines.append(
            f"ids in both splits: {len(stats.shared_ids)}, e.g. {shown} "
            "(validation metrics will be optimistic)"
        )
    else:
        lines.append("ids in both splits: none")
    for s in splits:
        if s.foreign:
            values = ", ".join(f"{v} ({n:,} pixels)" for v, n in sorted(s.foreign.items()))
            lines.append(
                f"label values in {s.name} that are neither a class (0..{stats.num_classes - 1}) "
                f"nor void ({IGNORE_INDEX}): {values}"
            )
        if s.unreadable:
            lines.append(f"unreadable in {s.name}: {len(s.unreadable)}")
            lines += [f"    {message}" for message in s.unreadable[:SHOWN]]
            if len(s.unreadable) > SHOWN:
                lines.append(f"    ... and {len(s.unreadable) - SHOWN} more")
    return "\n".join(lines)
