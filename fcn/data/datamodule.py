"""The LightningDataModule: any pair of (image, label) datasets, transformed and batched."""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from fcn.data.labels import default_colors
from fcn.data.transforms import ToTensor, pad_collate
from fcn.errors import DataError

log = logging.getLogger(__name__)


BAD_FILE_POLICIES = ("error", "skip")
#: With on_bad_file=skip, a training item tries at most this many neighbours for a readable one.
MAX_SUBSTITUTES = 10


class TransformedDataset(Dataset):
    """Applies an albumentations transform and :class:`ToTensor` to ``(image, label)`` items.

    ``on_bad_file="skip"`` turns an unreadable file (a :class:`DataError`) into a logged warning
    and a count in :attr:`skipped`, shared by the loader workers: a training item is replaced by
    the next readable one (batches keep their size, so DDP processes stay in step), a validation
    item is dropped (counting nothing twice).
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable | None,
        to_tensor: ToTensor,
        on_bad_file: str = "error",
        substitute: bool = False,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.to_tensor = to_tensor
        self.on_bad_file = on_bad_file
        self.substitute = substitute
        self.skipped = multiprocessing.Value("i", 0)  # shared with forked loader workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | None:
        tries = MAX_SUBSTITUTES if self.substitute else 1
        for attempt in range(tries):
            try:
                image, label = self.raw((index + attempt) % len(self.dataset))
            except DataError as err:
                if self.on_bad_file == "error":
                    raise
                with self.skipped.get_lock():
                    self.skipped.value += 1
                log.warning("skipped (data.on_bad_file=skip): %s", err)
                continue
            return self.to_tensor(image, label)
        if self.substitute:
            raise DataError(
                f"{tries} files in a row from item {index} on could not be read: "
                "the data looks broken beyond skipping (see the warnings above)"
            )
        return None

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` transformed but not yet a tensor: (HxWx3 uint8 image, HxW label)."""
        image, label = self.dataset[index]
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        return image, label

    def pop_skipped(self) -> int:
        """Files skipped since the last call (across all workers), and reset the count."""
        with self.skipped.get_lock():
            count, self.skipped.value = self.skipped.value, 0
        return count


class UnpaddedDistributedSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r + w, ...``: every sample once over all ranks.

    torch's DistributedSampler repeats samples to even out the ranks, which would count them
    twice in the validation confusion matrix.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


#: An item's (height, width) before its transform; None where its file's header cannot be read.
Size = tuple[int, int] | None


def image_sizes(dataset: Dataset, indices: Sequence[int]) -> list[Size] | None:
    """Each item's (height, width) from the dataset's optional ``image_size(index)`` (image
    headers only, no pixel decoded); None when the dataset (or the one a
    :class:`TransformedDataset` wraps) has no such method. An item whose header cannot be read
    gets None: reading it in the loader reports it as it always does."""
    inner = dataset.dataset if isinstance(dataset, TransformedDataset) else dataset
    size_of = getattr(inner, "image_size", None)
    if size_of is None:
        return None
    sizes: list[Size] = []
    for index in indices:
        try:
            sizes.append(tuple(size_of(index)))
        except DataError:
            sizes.append(None)
    return sizes


class SizeGroupedBatchSampler(Sampler[list[int]]):
    """Batches of up to ``batch_size`` of ``indices`` whose images all have one size: nothing to
    pad. Each size's indices keep their order; the batches come in the order of their first
    index in ``indices`` (the first batch holds the first index). Items of unknown size (None)
    form a group of their own, padded and scored one by one as before."""

    def __init__(self, indices: Sequence[int], sizes: Sequence[Size], batch_size: int) -> None:
        if len(indices) != len(sizes):
            raise ValueError(f"{len(indices)} indices but {len(sizes)} sizes")
        groups: dict[Size, list[int]] = {}
        for index, size in zip(indices, sizes, strict=True):
            groups.setdefault(size, []).append(index)
        place = {index: n for n, index in enumerate(indices)}
        batches = [
            g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)
        ]
        self.batches = sorted(batches, key=lambda batch: place[batch[0]])
        self.num_sizes = len(groups)

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(batch) for batch in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


class SegmentationDataModule(pl.LightningDataModule):
    """Serves a training and a validation dataset of ``(HxWx3 uint8, HxW uint8)`` items.

    Args:
        train_set, val_set: the datasets (e.g. ``ShapesDataset``, ``SeedVOC``); ``train_set``
            may be None when only validating (``fcn.evaluate``, ``fcn.figure``).
        num_classes, class_names: the label set; the model and the metrics take them from here
            (``class_names`` None: the validation dataset's own ``class_names``).
        class_colors: one ``[r, g, b]`` (0-255) per class for masks and overlays (None: the
            validation dataset's own ``class_colors``, else the VOC colour map's).
        train_transform, val_transform: albumentations transforms (``image=``, ``mask=``), or
            None to keep images as they are; batches of different sizes are padded bottom/right
            (label 255) by :func:`pad_collate`.
        batch_size: images per batch on each process.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        normalization: the input normalisation preset (``torchvision``, ``caffe``, ``keras``).
        on_bad_file: ``error`` (stop, naming the file) or ``skip`` (warn, count, go on).
        seed: seeds the training shuffle (None: a fresh shuffle every run on one process).
        group_val_by_size: batch validation images of one size together
            (:class:`SizeGroupedBatchSampler`, sizes read from the image headers), so that no
            batch is padded; for images kept at their own size (``val_transform`` null). Needs
            the dataset's ``image_size(index)``: without it, plain batches.
    """

    def __init__(
        self,
        train_set: Dataset | None,
        val_set: Dataset,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        train_transform: Callable | None = None,
        val_transform: Callable | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        normalization: str = "torchvision",
        seed: int | None = 0,
        on_bad_file: str = "error",
        class_colors: Sequence[Sequence[int]] | None = None,
        group_val_by_size: bool = False,
    ) -> None:
        super().__init__()
        if not class_names:  # the datasets name their classes
            class_names = getattr(val_set, "class_names", None)
        if not class_colors:
            class_colors = getattr(val_set, "class_colors", None)
        check_data_args(num_classes, class_names, batch_size, on_bad_file, num_workers)
        self.class_colors = check_class_colors(class_colors, num_classes)
        for split, dataset in (("train", train_set), ("val", val_set)):
            if dataset is not None and len(dataset) == 0:
                where = getattr(dataset, "source", None) or type(dataset).__name__
                raise DataError(f"the {split} split is empty: no image is listed in {where}")
        warn_about_ids(train_set, val_set)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        to_tensor = ToTensor(normalization)
        self.train_set = (
            TransformedDataset(train_set, train_transform, to_tensor, on_bad_file, substitute=True)
            if train_set is not None
            else None
        )
        self.val_set = TransformedDataset(val_set, val_transform, to_tensor, on_bad_file)
        self.batch_size = batch_size
        self.group_val_by_size = group_val_by_size
        self._val_sizes: dict[int, Size] = {}  # read once, for every later validation
        self.loader_kwargs = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
            "collate_fn": pad_collate,
        }
        self.seed = seed
        # One generator for the whole fit, its state saved in checkpoints: a resumed run draws
        # the same shuffles (and loader worker seeds) as an uninterrupted one.
        self.shuffle_generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def state_dict(self) -> dict:
        if self.shuffle_generator is None:
            return {}
        return {"shuffle_generator": self.shuffle_generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.shuffle_generator is not None and "shuffle_generator" in state_dict:
            self.shuffle_generator.set_state(state_dict["shuffle_generator"])

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def check_processes(self, world: int) -> None:
        """Refuse ``world`` training processes that would each get fewer images than a batch
        (``drop_last`` would leave them no batch at all); ``fcn.train`` asks before it starts
        the processes."""
        if self.train_set is None or world <= 1:
            return
        per_process = math.ceil(len(self.train_set) / world)  # as DistributedSampler pads
        if per_process < self.batch_size:
            raise DataError(
                f"the training set's {len(self.train_set)} images give each of {world} "
                f"processes {per_process}, fewer than data.batch_size={self.batch_size}: "
                "use fewer processes or a smaller batch"
            )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise DataError("this datamodule was built without a training set")
        rank, world = self._world()
        if world > 1:
            # every process must draw the same permutation: without a seed, use 0
            seed = self.seed if self.seed is not None else 0
            self.check_processes(world)
            sampler = DistributedSampler(
                self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed
            )
            return DataLoader(
                self.train_set, self.batch_size, sampler=sampler, drop_last=True,
                worker_init_fn=_seed_worker, **self.loader_kwargs,
            )  # fmt: skip
        return DataLoader(
            self.train_set, self.batch_size, shuffle=True, drop_last=False,
            generator=self.shuffle_generator,
            worker_init_fn=_seed_worker, **self.loader_kwargs,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        rank, world = self._world()
        sampler = UnpaddedDistributedSampler(len(self.val_set), rank, world)
        batches = self.val_batch_sampler(sampler.indices)
        if batches is not None:
            return DataLoader(
                self.val_set, batch_sampler=batches, worker_init_fn=_seed_worker,
                **self.loader_kwargs,
            )  # fmt: skip
        return DataLoader(
            self.val_set, self.batch_size, sampler=sampler, worker_init_fn=_seed_worker,
            **self.loader_kwargs,
        )  # fmt: skip

    def val_batch_sampler(self, indices: Sequence[int]) -> SizeGroupedBatchSampler | None:
        """Batches of one image size each over this process's validation ``indices`` with
        ``group_val_by_size`` (and a batch of more than one image); None for plain batches."""
        if not self.group_val_by_size or self.batch_size == 1:
            return None
        missing = [i for i in indices if i not in self._val_sizes]
        sizes = image_sizes(self.val_set, missing)
        if sizes is None:
            log.info("validation in plain batches: the dataset cannot tell its image sizes")
            return None
        self._val_sizes.update(zip(missing, sizes, strict=True))
        batches = SizeGroupedBatchSampler(
            indices, [self._val_sizes[i] for i in indices], self.batch_size
        )
        log.info(
            "validation: %d images of %d sizes in %d batches of one size each (at most %d)",
            len(indices), batches.num_sizes, len(batches), self.batch_size,
        )  # fmt: skip
        return batches


def warn_about_ids(train_set: Dataset | None, val_set: Dataset) -> None:
    """Log a warning, with the count, for ids listed twice in a split or in both splits."""
    train_ids, val_ids = getattr(train_set, "ids", None), getattr(val_set, "ids", None)
    for name, ids in (("train", train_ids), ("val", val_ids)):
        if ids and len(ids) != len(set(ids)):
            seen: set[str] = set()
            repeated = [i for i in ids if i in seen or seen.add(i)]
            log.warning(
                "%d id(s) are listed more than once in the %s split, e.g. %s",
                len(repeated), name, ", ".join(repeated[:5]),
            )  # fmt: skip
    if train_ids and val_ids:
        shared = sorted(set(train_ids) & set(val_ids))
        if shared:
            log.warning(
                "%d id(s) are in both the train and the val split, e.g. %s: validation "
                "metrics will be optimistic", len(shared), ", ".join(shared[:5]),
            )  # fmt: skip


def check_data_args(
    num_classes: int,
    class_names: Sequence[str] | None,
    batch_size: int,
    on_bad_file: str = "error",
    num_workers: int = 0,
) -> None:
    """Raise ValueError whose message starts with the name of the argument that cannot work."""
    for name, value, minimum in (
        ("num_classes", num_classes, 2), ("batch_size", batch_size, 1),
        ("num_workers", num_workers, 0),
    ):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ValueError(
            f"on_bad_file must be one of {list(BAD_FILE_POLICIES)}, got {on_bad_file!r}"
        )


def check_class_colors(
    class_colors: Sequence[Sequence[int]] | None, num_classes: int
) -> list[list[int]]:
    """``class_colors`` as lists of three ints 0-255, one per class (None: the VOC colour map's
    first ``num_classes``); raise ValueError naming what is wrong."""
    if class_colors is None:
        return default_colors(num_classes)
    colors = [list(c) for c in class_colors]
    if len(colors) != num_classes:
        raise ValueError(f"class_colors has {len(colors)} colours for {num_classes} classes")
    for i, color in enumerate(colors):
        if len(color) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color
        ):
            raise ValueError(f"class_colors[{i}] must be [r, g, b] with ints 0-255, got {color}")
    return colors


#: OpenCV threads in each loader worker: 0 runs its functions in the worker's own thread.
WORKER_CV2_THREADS = 0


def _seed_worker(worker_id: int) -> None:
    """Set up each loader worker: its own numpy stream derived from torch's per-worker seed,
    and OpenCV without threads of its own (:data:`WORKER_CV2_THREADS`).

    The workers already decode and transform in parallel, one process each; OpenCV's default
    pool of one thread per core in every worker would put workers x cores threads on the cores
    (beside the training process's own). torch's worker loop already sets
    ``torch.set_num_threads(1)`` in each worker.
    """
    np.random.seed(torch.initial_seed() % 2**32)
    cv2.setNumThreads(WORKER_CV2_THREADS)
