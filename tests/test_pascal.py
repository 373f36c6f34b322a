"""VOC2012 / SBD in their own layouts: every standard split, your own id lists, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn.data.datamodule import SegmentationDataModule
from fcn.data.labels import voc_palette
from fcn.data.pascal import PAPER_SPLITS, PascalDataset
from fcn.data.voc_seed import SPLITS_DIR
from fcn.errors import DataError
from tests.conftest import run_train
from tests.seed_tree import write_pascal_tree

#: the tests share a module-scoped fixture: one pytest-xdist worker runs them all (loadgroup)
pytestmark = pytest.mark.xdist_group("pascal")

SPLITS = {
    "voc_train": ["2007_000001", "2007_000002", "2007_000003"],
    "voc_val": ["2007_000010", "2007_000011"],
    "sbd_train": ["2008_000001", "2008_000002", "2008_000003", "2007_000001"],
    "sbd_val": ["2008_000004", "2007_000010"],
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pascal_tree(tmp_path_factory.mktemp("pascal"), SPLITS)


def _sources(ds: PascalDataset) -> dict[str, str]:
    return {i: label.suffix for i, (_, label) in zip(ds.ids, ds.samples, strict=True)}


def test_voc2012_and_sbd_splits_use_their_own_lists_and_labels(tree: Path) -> None:
    for split, key, suffix in [("voc2012_train", "voc_train", ".png"),
                               ("voc2012_val", "voc_val", ".png"),
                               ("sbd_train", "sbd_train", ".mat"),
                               ("sbd_val", "sbd_val", ".mat")]:  # fmt: skip
        ds = PascalDataset(tree, split)
        assert ds.ids == SPLITS[key]
        assert set(_sources(ds).values()) == {suffix}
        image, label = ds[0]
        assert image.shape[:2] == label.shape and image.dtype == np.uint8


def test_aug_train_is_voc_train_plus_sbd_minus_voc_val(tree: Path) -> None:
    ds = PascalDataset(tree, "aug_train")
    expected = ["2007_000001", "2007_000002", "2007_000003",
                "2008_000001", "2008_000002", "2008_000003", "2008_000004"]  # fmt: skip
    assert ds.ids == expected  # VOC val's 2007_000010 left out, 2007_000001 once
    sources = _sources(ds)
    assert sources["2007_000001"] == ".png"  # VOC's label where VOC has one
    assert sources["2008_000004"] == ".mat"


def test_own_id_list_takes_voc_labels_first_then_sbd(tree: Path, tmp_path: Path) -> None:
    ids = tmp_path / "mine.txt"
    ids.write_text("2008_000002\n\n2007_000011\n")
    ds = PascalDataset(tree, ids_file=ids)
    assert _sources(ds) == {"2008_000002": ".mat", "2007_000011": ".png"}


def test_shipped_seg11valid_is_the_papers_list() -> None:
    ids = (PAPER_SPLITS / "seg11valid.txt").read_text().split()
    assert len(ids) == len(set(ids)) == 736
    seed_train = set((SPLITS_DIR / "train_mat.txt").read_text().split())
    seed_train |= set((SPLITS_DIR / "train_png.txt").read_text().split())
    # docs/paper.md#overlaps: never evaluate a model trained on the Keras seed's split on it
    assert len(seed_train & set(ids)) == 610


def test_missing_root_and_split_list_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="experiment=quickstart") as err:
        PascalDataset(tmp_path / "nowhere", "voc2012_train")
    assert str(tmp_path / "nowhere") in str(err.value)
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/train\.txt") as err:
        PascalDataset(tmp_path, "voc2012_train")
    assert "python -m fcn.data.prepare" in str(err.value)


def test_missing_labels_are_counted_and_named(tree: Path, tmp_path: Path) -> None:
    ids = tmp_path / "mine.txt"
    ids.write_text("2008_000002\n2099_000001\n2099_000002\n")
    with pytest.raises(DataError, match="2 of 3 ids") as err:
        PascalDataset(tree, ids_file=ids)
    assert "2099_000001" in str(err.value) and "SegmentationClass" in str(err.value)


def test_label_with_foreign_values_or_wrong_size_is_named(tmp_path: Path) -> None:
    root = write_pascal_tree(tmp_path, {"voc_train": ["a", "b"]})
    label_dir = root / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    bad = np.zeros((40, 56), np.uint8)
    bad[3, 3] = 37
    png = Image.fromarray(bad, mode="P")
    png.putpalette(voc_palette())
    png.save(label_dir / "a.png")
    png.resize((20, 20)).save(label_dir / "b.png")
    ds = PascalDataset(root, "voc2012_train")
    with pytest.raises(DataError, match=r"a\.png has values \[37\]"):
        ds[0]
    with pytest.raises(DataError, match=r"b\.png is 20x20 but its image .* is 40x56"):
        ds[1]


def test_repeated_and_shared_ids_are_warned_with_counts(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_list, val_list = tmp_path / "train.txt", tmp_path / "val.txt"
    train_list.write_text("2008_000001\n2008_000001\n2008_000002\n2007_000010\n")
    val_list.write_text("2007_000010\n2007_000011\n")
    train = PascalDataset(tree, ids_file=train_list)
    val = PascalDataset(tree, ids_file=val_list)
    with caplog.at_level(logging.WARNING):
        SegmentationDataModule(train, val, num_classes=21)
    text = caplog.text
    assert "1 id(s) are listed more than once in the train split, e.g. 2008_000001" in text
    assert "1 id(s) are in both the train and the val split, e.g. 2007_000010" in text


@pytest.mark.parametrize("data", ["voc2012", "sbd", "voc_aug", "seg11valid"])
def test_train_runs_on_each_split_config(data: str, tmp_path: Path) -> None:
    seg11 = (PAPER_SPLITS / "seg11valid.txt").read_text().split() if data == "seg11valid" else []
    write_pascal_tree(tmp_path / "data", SPLITS, extra_voc=seg11, size=(24, 32))
    run = tmp_path / "run"
    args = [
        f"data={data}", "debug=tiny", "model.trunk_width=2", "model.fc_width=4",
        "transforms.size=32", "data.batch_size=8", "logger=none", f"hydra.run.dir={run}",
    ]  # fmt: skip
    proc = run_train(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and "val/IoU/aeroplane" in metrics["final"]
