"""A user's own data (data=folder), Cityscapes and ADE20K: layouts, label conventions, bad input,
and training, evaluation and the other commands on small trees the tests make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn.data.folder import FolderDataset
from fcn.errors import DataError
from tests.conftest import compose_train, run_train
from tests.folder_tree import (
    ade20k_tree,
    cityscapes_tree,
    folder_tree,
    save_image,
    save_mask,
    scene,
    write_pairs,
)


def test_folders_layout_pairs_files_by_id_and_reads_the_classes_file(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "data")
    train = FolderDataset(root, "train", num_classes=3)
    val = FolderDataset(root, "val", num_classes=3)
    names = ["00", "01", "02", "03", "04", "05", "b/00", "b/01"]
    assert train.ids == [f"train/{n}" for n in names]  # paths under images/: no false overlap
    assert val.ids == ["val/90", "val/b/91", "val/b/92", "val/b/93"]
    assert train.class_names == ["class 0", "class 1", "class 2"]
    assert train.class_colors == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    image, label = train[6]
    expected = np.array(Image.open(root / "masks/train/b/00.png"))
    assert image.shape == (40, 56, 3) and label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)  # values 0..2 and 255 kept as they are


def test_lists_layout_reads_ids_and_names_a_missing_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_pairs(root, ["x1", "x2", "sub/x3"], [0, 1])
    (root / "train.txt").write_text("x1\nsub/x3\n")
    (root / "val.txt").write_text("x2\n")
    train = FolderDataset(root, "train", 2, split_by="lists")
    assert train.ids == ["x1", "sub/x3"] and train.source == str(root / "train.txt")
    assert FolderDataset(root, "val", 2, split_by="lists").ids == ["x2"]
    (root / "val.txt").write_text("x2\nnot_there\n")
    with pytest.raises(DataError, match=r"2 file\(s\) of the ids listed in .*val.txt.*not_there"):
        FolderDataset(root, "val", 2, split_by="lists")


def test_a_drawn_split_is_disjoint_complete_and_the_same_for_the_same_seed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    ids = [f"img{n:02d}" for n in range(20)]
    write_pairs(root, ids, [0, 1], size=(8, 8))
    draw = {s: FolderDataset(root, s, 2, split_by="fraction", val_fraction=0.25) for s in
            ("train", "val")}  # fmt: skip
    train, val = draw["train"].ids, draw["val"].ids
    assert len(val) == 5 and not set(train) & set(val) and sorted(train + val) == ids
    with pytest.raises(DataError, match="split_seed must be an integer >= 0, got None"):
        FolderDataset(root, "val", 2, split_by="fraction", split_seed=None)
    again = FolderDataset(root, "val", 2, split_by="fraction", val_fraction=0.25)
    other = FolderDataset(root, "val", 2, split_by="fraction", val_fraction=0.25, split_seed=1)
    assert again.ids == val and other.ids != val and draw["val"].drawn


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "1"])
def test_masks_are_read_as_indices_whatever_their_png_mode(mode: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    values = {"I;16": [0, 1, 300], "1": [0, 1]}.get(mode, [0, 1, 2])
    write_pairs(root, ["a"], values, "images/train", "masks/train", mode=mode)
    label_map = {0: 0, 1: 1, 300: 2} if mode == "I;16" else None
    _, label = FolderDataset(root, "train", 3, label_map=label_map)[0]
    assert set(np.unique(label).tolist()) == set(range(len(values)))


def test_ignore_index_reduce_zero_label_and_label_map(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_pairs(root, ["a"], [0, 1, 2, 99], "images/train", "masks/train")
    raw = np.array(Image.open(root / "masks/train/a.png")).astype(int)

    def label(**options) -> np.ndarray:
        return FolderDataset(root, "train", 3, **options)[0][1].astype(int)

    np.testing.assert_array_equal(label(ignore_index=99), np.where(raw == 99, 255, raw))
    reduced = label(reduce_zero_label=True, ignore_index=99)  # 0 void, 1->0, 2->1, 99 void
    np.testing.assert_array_equal(reduced, np.select([raw == 0, raw == 99], [255, 255], raw - 1))
    mapped = label(label_map={0: 255, 1: 2, 2: 0, 99: 1})
    table = {0: 255, 1: 2, 2: 0, 99: 1}
    np.testing.assert_array_equal(mapped, np.vectorize(table.get)(raw))


def test_a_binary_mask_saved_as_0_and_255_maps_as_docs_data_says(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_pairs(root, ["a"], [0, 255], "images/train", "masks/train")
    void = FolderDataset(root, "train", 2)[0][1]  # the default: 255 is void
    assert set(np.unique(void).tolist()) == {0, 255}
    mapped = FolderDataset(root, "train", 2, ignore_index=None, label_map={0: 0, 255: 1})[0][1]
    assert set(np.unique(mapped).tolist()) == {0, 1}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_mask", r"2 image\(s\) without a mask .*images/train/a.jpg, .*images/train/b.jpg"),
        ("no_image", r"1 mask\(s\) without an image .*masks/train/c.png"),
        ("empty", r"no image ending in .jpg under .*images/train"),
        ("classes", r"classes file .*classes.txt names 2 classes but data.num_classes is 3"),
        ("colors", r"classes file .*classes.txt: 1 of its 3 classes have a colour"),
        ("root", r"data folder not found: .*nowhere"),
    ],
)
def test_a_bad_tree_is_refused_at_construction_naming_the_files(
    damage: str, message: str, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_pairs(root, ["a", "b", "c"], [0, 1], "images/train", "masks/train")
    if damage == "no_mask":
        for name in ("a", "b"):
            (root / f"masks/train/{name}.png").unlink()
    elif damage == "no_image":
        (root / "images/train/c.jpg").unlink()
    elif damage == "empty":
        for name in ("a", "b", "c"):
            (root / f"images/train/{name}.jpg").unlink()
            (root / f"masks/train/{name}.png").unlink()
    elif damage == "classes":
        (root / "classes.txt").write_text("sky\nground\n")
    elif damage == "colors":
        (root / "classes.txt").write_text("sky #0000ff\nground\nwater\n")
    else:
        root = tmp_path / "nowhere"
    with pytest.raises(DataError, match=message):
        FolderDataset(root, "train", 3)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("values", r"mask .*a.png has values \[7\] that are not classes 0..2"),
        ("unmapped", r"mask .*a.png has ids \[2\] that data.label_map does not map"),
        ("size", r"mask .*a.png is 20x20 but its image .*a.jpg is 40x56"),
        ("rgb", r"mask .*a.png is a 'RGB' image: masks are palette \('P'\) or single-channel"),
        ("unreadable", r"cannot read mask .*a.png|mask .*a.png"),
    ],
)
def test_a_bad_file_is_named_when_read(damage: str, message: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_pairs(root, ["a"], [0, 1, 2], "images/train", "masks/train")
    mask = root / "masks/train/a.png"
    options: dict = {}
    if damage == "values":
        save_mask(scene(0, (40, 56), [0, 7])[1], mask)
    elif damage == "unmapped":
        options["label_map"] = {0: 0, 1: 1}
    elif damage == "size":
        save_mask(np.zeros((20, 20)), mask)
    elif damage == "rgb":
        save_image(np.zeros((40, 56, 3), np.uint8), mask)
    else:
        mask.write_bytes(b"not a png")
    dataset = FolderDataset(root, "train", 3, **options)
    with pytest.raises(DataError, match=message):
        dataset[0]


def test_the_cityscapes_config_agrees_with_the_official_label_table() -> None:
    from cityscapesscripts.helpers.labels import labels

    data = compose_train(["data=cityscapes"]).data
    official = sorted((lb for lb in labels if 0 <= lb.trainId < 255), key=lambda lb: lb.trainId)
    assert data.num_classes == len(official) == 19
    assert list(data.class_names) == [lb.name for lb in official]
    assert [list(c) for c in data.class_colors] == [list(lb.color) for lb in official]
    stored = dict(data.train_set.label_map)
    assert stored == {lb.id: lb.trainId for lb in labels if lb.id >= 0}  # every id, 255 = void
    assert compose_train(["data=cityscapes"]).transforms.crop == 512


def test_the_ade20k_config_has_150_named_classes_and_ignores_zero() -> None:
    cfg = compose_train(["data=ade20k"])
    assert cfg.data.num_classes == 150 and len(set(cfg.data.class_names)) == 150
    assert cfg.data.class_names[0] == "wall" and cfg.data.class_names[-1] == "flag"
    assert cfg.data.val_set.reduce_zero_label and cfg.data.val_set.split_folders.val == "validation"


TREES = {
    "folders": (folder_tree, ["data=folder", "data.num_classes=3"]),
    "lists": (None, ["data=folder", "data.num_classes=2", "data.train_set.split_by=lists"]),
    "fraction": (None, ["data=folder", "data.num_classes=2", "data.train_set.split_by=fraction",
                        "data.train_set.val_fraction=0.3"]),
    "cityscapes": (cityscapes_tree, ["data=cityscapes"]),
    "ade20k": (ade20k_tree, ["data=ade20k"]),
}  # fmt: skip


def _flat_tree(root: Path) -> Path:
    write_pairs(root, [f"p{n}" for n in range(10)], [0, 1])
    (root / "train.txt").write_text("\n".join(f"p{n}" for n in range(7)))
    (root / "val.txt").write_text("p7\np8\np9\n")
    return root


@pytest.mark.parametrize("layout", list(TREES))
def test_each_layout_trains_and_evaluates(layout: str, workdir: Path) -> None:
    make, args = TREES[layout]
    root = (make or _flat_tree)(workdir / "tree")
    run = workdir / "run"
    args = [*args, f"data.train_set.root={root}", "debug=tiny", "logger=none",
            "trainer.limit_val_batches=null", f"hydra.run.dir={run}"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    config = (run / "config.yaml").read_text()
    assert "class_colors" in config
    if layout == "fraction":  # the drawn split is kept with the run, reusable as lists
        train = (run / "splits" / "train.txt").read_text().split()
        val = (run / "splits" / "val.txt").read_text().split()
        assert len(val) == 3 and sorted(train + val) == sorted(f"p{n}" for n in range(10))
    out = workdir / "evaluation.json"
    proc = run_train(
        [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"output_file={out}",
         "trainer.accelerator=cpu", f"hydra.run.dir={workdir / 'eval'}"],
        workdir, entry="evaluate",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(out.read_text())["metrics"]
    names = {k.removeprefix("val/IoU/") for k in scores if k.startswith("val/IoU/")}
    expected = {"folders": 3, "lists": 2, "fraction": 2, "cityscapes": 19, "ade20k": 150}[layout]
    assert len(names) == expected
    if layout == "cityscapes":
        assert {"road", "car", "sky"} <= names


def test_a_folder_run_serves_predict_export_figure_and_compare(workdir: Path) -> None:
    """The class count, names and colours flow from the classes file to every command."""
    root = folder_tree(workdir / "tree", num_classes=4)
    run = workdir / "sweep" / "0"
    args = ["data=folder", "data.num_classes=4", f"data.train_set.root={root}", "debug=tiny",
            "logger=none", f"hydra.run.dir={run}"]  # fmt: skip
    assert run_train(args, workdir).returncode == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    out = workdir / "pred"
    image = root / "images" / "val" / "90.jpg"
    proc = run_train([f"ckpt_path={ckpt}", f"input={image}", f"output_dir={out}", "device=cpu",
                      f"hydra.run.dir={workdir / 'p'}"], workdir, entry="predict")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = Image.open(out / "masks" / "90.png")
    assert mask.mode == "P" and mask.size == (56, 40)
    assert mask.getpalette()[:12] == [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
    # class 0 is not named background here, so its pixels are tinted too (black at alpha 0.5)
    shown = np.asarray(Image.open(out / "overlays" / "90.png"), dtype=int)
    original = np.asarray(Image.open(image), dtype=int)
    zero = np.asarray(mask) == 0
    assert zero.any() and np.abs(shown[zero] - (original[zero] + 1) // 2).max() <= 1

    onnx = workdir / "model.onnx"
    proc = run_train([f"ckpt_path={ckpt}", f"output_file={onnx}", "check_sizes=[[40,56]]",
                      f"hydra.run.dir={workdir / 'e'}"], workdir, entry="export")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    import onnx as onnx_lib

    meta = {p.key: p.value for p in onnx_lib.load(str(onnx)).metadata_props}
    assert json.loads(meta["class_names"]) == [f"class {i}" for i in range(4)]
    assert json.loads(meta["class_colors"])[1] == [255, 0, 0]

    figure = workdir / "figure.png"
    args = [f"checkpoints=[{ckpt}]", "images=[0,1]", f"output_file={figure}", "device=cpu"]
    proc = run_train([*args, f"hydra.run.dir={workdir / 'f'}"], workdir, entry="figure")
    assert proc.returncode == 0 and figure.stat().st_size > 0, proc.stderr[-3000:]

    proc = run_train([str(run.parent)], workdir, entry="compare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class 3" in (run.parent / "comparison.md").read_text()


def test_an_unreadable_mask_is_skipped_and_counted_with_on_bad_file_skip(workdir: Path) -> None:
    root = folder_tree(workdir / "tree")
    (root / "masks" / "train" / "02.png").write_bytes(b"broken")
    args = ["data=folder", "data.num_classes=3", f"data.train_set.root={root}", "debug=tiny",
            "logger=none", "trainer.limit_train_batches=null"]  # fmt: skip
    proc = run_train([*args, f"hydra.run.dir={workdir / 'r'}"], workdir)
    assert proc.returncode == 1 and "02.png" in proc.stderr + proc.stdout
    proc = run_train([*args, "data.on_bad_file=skip", f"hydra.run.dir={workdir / 's'}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((workdir / "s" / "metrics.json").read_text())
    assert metrics["history"][-1]["data/skipped_train"] == 1


def test_a_data_config_of_ones_own_outside_the_package(workdir: Path) -> None:
    """docs/data.md's example: a data option in a user's folder, added with --config-dir."""
    root = _flat_tree(workdir / "cracks")
    configs = workdir / "my_configs" / "data"
    configs.mkdir(parents=True)
    (configs / "cracks.yaml").write_text(
        "defaults:\n  - /data_common/folder@_here_\n  - _self_\nnum_classes: 2\n"
        f"train_set:\n  root: {root}\n  split_by: lists\n"
    )
    run = workdir / "run"
    args = ["--config-dir", str(workdir / "my_configs"), "data=cracks", "debug=tiny",
            "logger=none", f"hydra.run.dir={run}"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (run / "config.yaml").read_text()
    assert "split_by: lists" in config and str(root) in config


def test_a_folder_run_without_a_class_count_says_which_key_to_set(workdir: Path) -> None:
    root = folder_tree(workdir / "tree")
    proc = run_train(["data=folder", f"data.train_set.root={root}", "debug=tiny", "logger=none",
                      f"hydra.run.dir={workdir / 'r'}"], workdir)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.num_classes is not set")


@pytest.mark.parametrize("option", ["folder", "cityscapes", "ade20k"])
def test_prepare_check_reports_the_statistics_of_each_layout(option: str, tmp_path: Path) -> None:
    from fcn.data.prepare import main

    make = {"folder": folder_tree, "cityscapes": cityscapes_tree, "ade20k": ade20k_tree}[option]
    root = make(tmp_path / "tree")
    out = tmp_path / "stats.json"
    args = ["--check", f"data={option}", f"data.train_set.root={root}", "--output", str(out)]
    if option == "folder":
        args.append("data.num_classes=3")
    assert main(args) == 0
    report = json.dumps(json.loads(out.read_text()))
    names = {"folder": "class 2", "cityscapes": "sky", "ade20k": "flag"}[option]
    assert names in report
