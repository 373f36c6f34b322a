"""Dataset statistics (fcn.data.stats) and ``python -m fcn.data.prepare --check data=...``,
checked against counts made here from the datasets' own items or the label files themselves."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn.data.prepare import main
from fcn.data.shapes import SHAPES_CLASSES, ShapesDataset
from fcn.data.stats import (
    format_report,
    median_frequency_weights,
    sample_indices,
    split_stats,
)
from fcn.errors import DataError
from tests.conftest import run_train
from tests.seed_tree import write_pascal_tree

SHAPES = ["data=shapes", "data.train_set.num_images=6", "data.val_set.num_images=3"]
VOC_SPLITS = {  # 2007_000003 is in both VOC splits
    "voc_train": ["2007_000001", "2007_000002", "2007_000003"],
    "voc_val": ["2007_000003", "2007_000010"],
}


def _expected(items: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict:
    """The statistics of ``items``, counted here with np.unique."""
    pixels, images_with = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    void, sizes = 0, Counter()
    for image, label in items:
        assert image.shape[:2] == label.shape
        sizes[label.shape] += 1
        values, counts = np.unique(label, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            if value == 255:
                void += count
            else:
                pixels[value] += count
                images_with[value] += 1
    heights = [h for (h, _), n in sizes.items() for _ in range(n)]
    widths = [w for (_, w), n in sizes.items() for _ in range(n)]
    return {
        "images": len(items),
        "read": len(items),
        "class_pixels": pixels.tolist(),
        "images_with_class": images_with.tolist(),
        "void_pixels": void,
        "pixels": int(pixels.sum()) + void,
        "class_frequency": (pixels / pixels.sum()).tolist(),
        "image_size": {
            "height": {
                "min": min(heights),
                "median": float(np.median(heights)),
                "max": max(heights),
            },
            "width": {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)},
        },  # fmt: skip
        "distinct_sizes": len(sizes),
    }


def _shapes_items(num_images: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    dataset = ShapesDataset(num_images=num_images, seed=seed, cache=False)
    return [dataset[i] for i in range(num_images)]


def test_check_reports_shapes_statistics_equal_to_counts_made_from_the_items(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "stats.json"
    assert main(["--check", *SHAPES, "--output", str(out)]) == 0
    report = capsys.readouterr().out
    stats = json.loads(out.read_text())
    assert stats["data"] == "shapes" and stats["class_names"] == list(SHAPES_CLASSES)
    assert stats["shared_ids"] is None and stats["ok"] is True
    for split, num_images, seed in (("train", 6, 0), ("val", 3, 1)):
        expected = _expected(_shapes_items(num_images, seed), 6)
        got = stats["splits"][split]
        for key, value in expected.items():
            assert got[key] == value, (split, key)
        assert got["absent_classes"] == [
            SHAPES_CLASSES[c] for c in range(6) if expected["class_pixels"][c] == 0
        ]
        assert got["void_fraction"] == pytest.approx(expected["void_pixels"] / expected["pixels"])
        assert sum(s["images"] for s in got["common_sizes"]) <= num_images
        pixels = f"{expected['pixels']:,}"
        assert f"{split:<10}{num_images:>9}{num_images:>9}{0:>12}{pixels:>16}" in report
        background = f"{expected['class_pixels'][0]:,}"
        assert background in report.split("0 background")[1].splitlines()[0]
    assert "data=shapes: 6 classes" in report
    assert "ids in both splits: not known" in report

    # loader workers read the same numbers; --limit reads the first and the last item
    workers = tmp_path / "workers.json"
    assert main(["--check", *SHAPES, "--workers", "2", "--output", str(workers)]) == 0
    assert json.loads(workers.read_text()) == stats
    limited = tmp_path / "limited.json"
    assert main(["--check", *SHAPES, "--limit", "2", "--output", str(limited)]) == 0
    items = _shapes_items(6, 0)
    got = json.loads(limited.read_text())["splits"]["train"]
    assert got["images"] == 6 and got["read"] == 2
    assert got["class_pixels"] == _expected([items[0], items[5]], 6)["class_pixels"]


def test_check_of_a_voc_tree_names_the_shared_id_and_counts_the_label_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_pascal_tree(tmp_path / "data", VOC_SPLITS, size=(20, 24))
    voc = root / "VOCdevkit" / "VOC2012"
    out = tmp_path / "stats.json"
    args = ["--check", "data=voc2012", f"paths.data_dir={root}", "--output", str(out)]
    assert main([*args, "--workers", "0"]) == 0
    report = capsys.readouterr().out
    stats = json.loads(out.read_text())
    assert stats["shared_ids"] == {"count": 1, "ids": ["2007_000003"]}
    assert "ids in both splits: 1, e.g. 2007_000003" in report
    for split, key in (("train", "voc_train"), ("val", "voc_val")):
        labels = [np.array(Image.open(voc / "SegmentationClass" / f"{i}.png"))
                  for i in VOC_SPLITS[key]]  # fmt: skip
        expected = _expected([(np.zeros((*x.shape, 3), np.uint8), x) for x in labels], 21)
        got = stats["splits"][split]
        for name in ("images", "class_pixels", "void_pixels", "image_size"):
            assert got[name] == expected[name], (split, name)
        absent = [c for c in range(21) if expected["class_pixels"][c] == 0]
        assert len(got["absent_classes"]) == len(absent) > 0
        assert f"absent from {split}: {len(absent)} class(es): {absent[0]} " in report
    # --root sets paths.data_dir; the same numbers, and the option after the overrides
    again = tmp_path / "again.json"
    args = ["data=voc2012", "--check", "--root", str(root), "--output", str(again), "--workers=0"]
    assert main(args) == 0
    assert json.loads(again.read_text()) == stats


def test_check_names_unreadable_files_goes_on_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_pascal_tree(tmp_path / "data", VOC_SPLITS, size=(20, 24))
    label = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000002.png"
    label.write_bytes(label.read_bytes()[:30])
    out = tmp_path / "stats.json"
    args = ["--check", "data=voc2012", f"paths.data_dir={root}", "--output", str(out)]
    assert main(args) == 1
    report = capsys.readouterr().out
    assert "unreadable in train: 1" in report and f"cannot read label {label}" in report
    stats = json.loads(out.read_text())
    train = stats["splits"]["train"]
    assert (train["images"], train["read"]) == (3, 2) and stats["ok"] is False
    assert str(label) in train["unreadable"][0]


def test_output_is_never_replaced_unasked_and_options_need_check(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "stats.json"
    out.write_text("mine")
    assert main(["--check", *SHAPES, "--output", str(out)]) == 1
    assert f"--output {out} already exists: add --overwrite" in capsys.readouterr().err
    assert out.read_text() == "mine"
    assert main(["--check", *SHAPES, "--output", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["data"] == "shapes"
    assert not list(tmp_path.glob("*.part"))
    assert main(["data=shapes"]) == 1
    assert "go with --check data=<option>" in capsys.readouterr().err
    assert main(["--check", "data=nothing_like_it"]) == 1
    err = capsys.readouterr().err
    assert "Could not find 'data/nothing_like_it'" in err and "shapes" in err
    assert main(["--check", "data=shapes", "data.train_set.num_images=0"]) == 1
    assert "num_images must be positive" in capsys.readouterr().err
    assert main(["--check", "data=shapes", "--limit", "0"]) == 1
    assert "--limit must be a positive number" in capsys.readouterr().err


class _Items:
    """A dataset of given items, with ids."""

    def __init__(self, items: list, ids: list[str] | None = None) -> None:
        self.items, self.ids = items, ids

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if isinstance(self.items[i], Exception):
            raise self.items[i]
        return self.items[i]


def test_foreign_values_contract_breaks_and_unreadable_items_are_reported() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    good = np.array([[0, 1, 255], [7, 7, 1]], np.uint8)
    dataset = _Items(
        [(image, good), (image, good[:1]), DataError("cannot read image /x/c.jpg: truncated")],
        ids=["a", "b", "c"],
    )
    stats = split_stats(dataset, 3, "train", progress=False)
    assert stats.read == 1 and stats.class_pixels == [1, 2, 0]
    assert stats.void_pixels == 1 and stats.foreign == {7: 2} and stats.absent == [2]
    assert stats.unreadable == [
        "item 1 (id b): image of 2x3 but label of 1x3",
        "cannot read image /x/c.jpg: truncated",
    ]
    with pytest.raises(DataError, match="item 1 \\(id b\\)"):
        split_stats(dataset, 3, progress=False, on_error="raise")
    from fcn.data.stats import DatasetStats

    report = format_report(DatasetStats(3, ["bg", "a", "b"], [stats], None))
    assert "neither a class (0..2) nor void (255): 7 (2 pixels)" in report
    assert "absent from train: 1 class(es): 2 b" in report


def test_median_frequency_and_sampling() -> None:
    # freq 0.1, 0, 0.3, 0.6: median over the classes present is 0.3
    assert median_frequency_weights([10, 0, 30, 60]) == pytest.approx([3.0, 0.0, 1.0, 0.5])
    with pytest.raises(DataError, match="no labelled pixel"):
        median_frequency_weights([0, 0])
    assert sample_indices(5, None) == [0, 1, 2, 3, 4]
    assert sample_indices(10, 3) == [0, 4, 9]  # 4.5 rounds to even
    assert sample_indices(3, 10) == [0, 1, 2]


def test_check_composes_its_data_config_from_another_folder(tmp_path: Path) -> None:
    args = ["--check", "data=shapes", "data.train_set.num_images=2", "data.val_set.num_images=2"]
    proc = run_train(args, tmp_path, entry="data.prepare")  # its main, launched from tmp_path
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data=shapes: 6 classes" in proc.stdout and "absent from val" in proc.stdout
