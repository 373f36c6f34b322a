"""``fcn.evaluate`` batches images of one size together (no padding, the same confusion matrix
as batch 1) and decodes them in loader workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, Dataset

from fcn.confusion import read_confusion
from fcn.data.datamodule import (
    SegmentationDataModule,
    SizeGroupedBatchSampler,
    image_sizes,
)
from fcn.data.folder import FolderDataset
from fcn.data.shapes import ShapesDataset
from fcn.errors import ConfigError
from fcn.evaluate import loader_workers
from fcn.models import FCN
from fcn.training.module import FCNModule
from tests.conftest import run_train
from tests.folder_tree import write_pairs

#: (height, width) of the validation images, in file order: three sizes, interleaved.
SIZES = [(40, 56), (56, 40), (40, 56), (48, 48), (40, 56), (56, 40), (40, 56), (48, 48), (40, 56)]
VALUES = [0, 1, 2, 255]
TINY_FCN = {"skips": ["pool4", "pool3"], "alignment": "same", "trunk_width": 4, "fc_width": 8}


def mixed_tree(root: Path) -> Path:
    """A folder dataset whose validation images have the :data:`SIZES` (ids ``v0``.. ``v8``)."""
    write_pairs(root, ["t0", "t1"], VALUES, "images/train", "masks/train")
    for n, size in enumerate(SIZES):
        write_pairs(root, [f"v{n}"], VALUES[n % 3 :] + VALUES[: n % 3], "images/val",
                    "masks/val", size=size)  # fmt: skip
    return root


def datamodule(val_set: Dataset, batch_size: int = 3) -> SegmentationDataModule:
    return SegmentationDataModule(
        None, val_set, num_classes=3, batch_size=batch_size, group_val_by_size=True
    )


def test_batches_hold_one_size_and_cover_every_index_once(tmp_path: Path) -> None:
    dataset = FolderDataset(mixed_tree(tmp_path), "val", num_classes=3)
    assert [dataset.image_size(i) for i in range(len(dataset))] == SIZES
    for world in (1, 2):
        seen = []
        for rank in range(world):
            dm = datamodule(dataset)
            dm._world = lambda rank=rank, world=world: (
                rank,
                world,
            )  # as a DDP process of that rank
            loader = dm.val_dataloader()
            assert isinstance(loader.batch_sampler, SizeGroupedBatchSampler)
            batches = list(loader.batch_sampler)
            assert batches[0][0] == rank  # the first batch holds the process's first image
            for indices, (images, labels, sizes) in zip(batches, loader, strict=True):
                assert 1 <= len(indices) <= 3 and len({SIZES[i] for i in indices}) == 1
                assert images.shape[-2:] == labels.shape[-2:] == SIZES[indices[0]]
                assert sizes.tolist() == [list(SIZES[indices[0]])] * len(indices)  # no pad
            mine = [i for batch in batches for i in batch]
            assert all(i % world == rank for i in mine)  # this process's shard only
            seen += mine
        assert sorted(seen) == list(range(len(SIZES)))


def test_sampler_orders_batches_by_their_first_index() -> None:
    sizes = [(1, 1), (2, 2), (1, 1), None, (2, 2), (1, 1), None]
    batches = list(SizeGroupedBatchSampler([10, 11, 12, 13, 14, 15, 16], sizes, 2))
    assert batches == [[10, 12], [11, 14], [13, 16], [15]]
    shapes = ShapesDataset(6, seed=3, cache=False)
    assert image_sizes(shapes, range(6)) == [shapes[i][0].shape[:2] for i in range(6)]


def test_unreadable_headers_and_datasets_without_sizes(tmp_path: Path) -> None:
    dataset = FolderDataset(mixed_tree(tmp_path), "val", num_classes=3)
    dataset.paths(1)[0].write_bytes(b"not an image")
    assert image_sizes(dataset, [0, 1]) == [(40, 56), None]  # read (and reported) in the loader

    class NoSizes(Dataset):  # a dataset that cannot tell its sizes without decoding
        def __len__(self) -> int:
            return 5

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            side = 8 + 4 * index
            return np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.uint8)

    loader = datamodule(NoSizes(), batch_size=2).val_dataloader()
    assert isinstance(loader.batch_sampler, BatchSampler) and loader.batch_size == 2
    assert [b[2].tolist() for b in loader][0] == [[8, 8], [12, 12]]  # padded, as before
    plain = datamodule(dataset, batch_size=1).val_dataloader()  # batch 1: nothing to group
    assert isinstance(plain.batch_sampler, BatchSampler)


def test_auto_workers_take_the_cores_the_network_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert loader_workers("auto", device="cuda") == 1 and loader_workers("auto") == 0
    assert loader_workers("auto", processes=2, device="cuda") == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert loader_workers("auto", device="cuda") == 4 and loader_workers("auto") == 4
    monkeypatch.setattr(torch, "get_num_threads", lambda: 30)
    assert loader_workers("auto") == 2 and loader_workers(0) == 0 and loader_workers(None) is None
    for bad in (-1, "many", True):
        with pytest.raises(ConfigError, match="num_workers must be auto"):
            loader_workers(bad)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A bare state dict of a tiny FCN-8s with random weights whose scores vary by pixel."""
    torch.manual_seed(0)
    net = FCN(num_classes=3, **TINY_FCN)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0, 0.5)
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    return path


def _evaluate(
    weights: Path, root: Path, cwd: Path, name: str, extra: list[str], batches: list
) -> tuple[dict, np.ndarray]:
    """Run ``fcn.evaluate`` on the mixed tree; record each batch's image shape and sizes."""
    model = [f"model.{k}={v}".replace("'", "") for k, v in TINY_FCN.items()]
    args = ["model=fcn8", *model, "data=folder", "data.num_classes=3",
            f"data.train_set.root={root}", "trainer.accelerator=cpu", f"ckpt_path={weights}",
            f"hydra.run.dir={name}", *extra]  # fmt: skip
    batches.clear()
    proc = run_train(args, cwd, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((cwd / name / "evaluation.json").read_text())
    counts, _, _ = read_confusion(cwd / name / "evaluation.confusion.json")
    return doc, counts


def test_batches_of_four_with_workers_score_as_batch_one(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = mixed_tree(tmp_path / "tree")
    batches: list[tuple[tuple[int, int], list[list[int]]]] = []
    step = FCNModule.validation_step

    def recording_step(self, batch, batch_idx):  # noqa: ANN001, ANN202
        batches.append((tuple(batch[0].shape[-2:]), batch[2].tolist()))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(FCNModule, "validation_step", recording_step)
    one, counts_one = _evaluate(weights, root, tmp_path, "one", ["num_workers=0"], batches)
    assert len(batches) == len(SIZES)
    four, counts_four = _evaluate(
        weights, root, tmp_path, "four", ["batch_size=4", "num_workers=2"], batches
    )
    assert sorted(len(sizes) for _, sizes in batches) == [1, 2, 2, 4]  # 5 + 2 + 2 images
    assert all(sizes == [list(shape)] * len(sizes) for shape, sizes in batches)  # no pad
    assert (one["timing"]["workers"], four["timing"]["workers"]) == (0, 2)
    assert four["timing"]["images"] == len(SIZES) and four["timing"]["images_per_second"] > 0

    assert counts_one.sum() > 0 and (counts_one.sum(0) > 0).sum() >= 2  # varied predictions
    np.testing.assert_array_equal(counts_four, counts_one)
    for key, value in one["metrics"].items():
        assert four["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key

    # a fixed-size transform: every image already has one size, plain batches of four
    _evaluate(weights, root, tmp_path, "resized",
              ["transforms=resize_pad", "transforms.size=48", "batch_size=4"], batches)  # fmt: skip
    assert [len(sizes) for _, sizes in batches] == [4, 4, 1]
