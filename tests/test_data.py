"""Built-in shapes data, the Keras seed's VOC layout, transforms and the datamodule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcn.data.datamodule import (
    SegmentationDataModule,
    TransformedDataset,
    UnpaddedDistributedSampler,
)
from fcn.data.readers import read_mat_label, read_png_label
from fcn.data.shapes import SHAPES_CLASSES, ShapesDataset
from fcn.data.transforms import ToTensor, augment, pad_collate, resize_and_pad
from fcn.data.voc_seed import SPLITS_DIR, SeedVOC
from fcn.errors import DataError
from tests.seed_tree import SPLITS, write_seed_tree


def test_shapes_are_deterministic_per_seed_and_index() -> None:
    a, b, c = ShapesDataset(10, seed=3), ShapesDataset(10, seed=3), ShapesDataset(10, seed=4)
    for i in range(10):
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1])
    assert not any(np.array_equal(a[i][0], c[i][0]) for i in range(10))


def test_cached_shapes_equal_fresh_ones_and_are_handed_out_as_copies() -> None:
    cached, fresh = ShapesDataset(5, seed=2), ShapesDataset(5, seed=2, cache=False)
    for i in (3, 0, 3):
        (ci, cl), (fi, fl) = cached[i], fresh[i]
        assert np.array_equal(ci, fi) and np.array_equal(cl, fl)
        ci[:] = 0  # a caller changing its copy changes nothing for the next one
        cl[:] = 0
    assert sorted(cached._cache) == [0, 3] and fresh._cache is None


def test_shapes_have_every_class_varied_sizes_void_bands_thin_and_small_objects() -> None:
    ds = ShapesDataset(60, seed=0)
    sizes, seen = set(), set()
    bar_widths, dot_areas = [], []
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == np.uint8 and image.shape == (*label.shape, 3)
        sizes.add(label.shape)
        seen |= set(np.unique(label).tolist())
        if (label == 255).any():  # void pixels sit next to object pixels
            void = np.argwhere(label == 255)
            y, x = void[0]
            window = label[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
            assert (window != 255).any()
        bar = label == SHAPES_CLASSES.index("bar")
        if bar.any():
            bar_widths.append(bar.sum() / max(bar.any(0).sum(), bar.any(1).sum()))
        dot = label == SHAPES_CLASSES.index("dot")
        if dot.any():
            dot_areas.append(dot.sum())
    assert seen == set(range(len(SHAPES_CLASSES))) | {255}
    assert len(sizes) > 30
    assert np.median(bar_widths) < 8  # thin parts: a few pixels across
    assert min(dot_areas) < 100  # small objects


def test_resize_and_pad_is_the_seeds_transform() -> None:
    image = np.full((100, 50, 3), 200, np.uint8)
    label = np.zeros((100, 50), np.uint8)
    label[:, 25:] = 7
    label[0] = 255
    out = resize_and_pad(512)(image=image, mask=label)
    img, lab = out["image"], out["mask"]
    assert img.shape == (512, 512, 3) and lab.shape == (512, 512)
    assert set(np.unique(lab).tolist()) == {0, 7, 255}  # nearest: no new label values
    # the longer side (height) fills 512; the width (256) is centred: 128 pad each side
    assert (lab[:, :128] == 255).all() and (lab[:, -128:] == 255).all()
    assert (img[:, :128] == 0).all() and (img[:, 200] == 200).all()
    # a small image is scaled up, as the Keras seed does
    small = resize_and_pad(64)(image=image[:10, :20], mask=label[:10, :20])
    assert small["mask"].shape == (64, 64) and (small["mask"][:16] == 255).all()


def test_seed_layout_is_read_from_real_files(tmp_path: Path) -> None:
    splits = write_seed_tree(tmp_path)
    train = SeedVOC(tmp_path / "voc_seed", "train", splits_dir=splits)
    val = SeedVOC(tmp_path / "voc_seed", "val", splits_dir=splits)
    assert len(train) == SPLITS["train_mat"] + SPLITS["train_png"]
    assert len(val) == SPLITS["val_mat"]
    kinds = {s[2] for s in train.samples}
    assert kinds == {"mat", "png"}
    for i in range(len(train)):
        image, label = train[i]
        assert image.shape[:2] == label.shape and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= set(range(21)) | {255}
    png_label = train[len(train) - 1][1]
    assert (png_label == 255).any()  # palette indices, void kept


def test_shipped_seed_splits_are_the_seeds() -> None:
    counts = {f.stem: len(f.read_text().split()) for f in SPLITS_DIR.glob("*.txt")}
    assert counts == {"train_mat": 10155, "train_png": 676, "val_mat": 1200}
    train = set((SPLITS_DIR / "train_mat.txt").read_text().split())
    train |= set((SPLITS_DIR / "train_png.txt").read_text().split())
    assert not train & set((SPLITS_DIR / "val_mat.txt").read_text().split())


def test_missing_root_names_the_folder_and_the_built_in_job(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="experiment=quickstart") as err:
        SeedVOC(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    splits = write_seed_tree(tmp_path)
    first = (splits / "val_mat.txt").read_text().split()[0]
    victim = tmp_path / "voc_seed" / "labels_mat" / f"{first}.mat"
    victim.unlink()
    with pytest.raises(DataError, match="1 file") as err:
        SeedVOC(tmp_path / "voc_seed", "val", splits_dir=splits)
    assert str(victim) in str(err.value)


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    splits = write_seed_tree(tmp_path)
    ids = (splits / "train_mat.txt").read_text().split()
    jpg = tmp_path / "voc_seed" / "images_mat" / f"{ids[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:50])
    mat = tmp_path / "voc_seed" / "labels_mat" / f"{ids[1]}.mat"
    mat.write_bytes(b"not a mat file at all")
    ds = SeedVOC(tmp_path / "voc_seed", "train", splits_dir=splits)
    with pytest.raises(DataError, match=str(jpg)):
        ds[0]
    with pytest.raises(DataError, match=str(mat)):
        ds[1]


def test_rgb_label_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "label.png"
    Image.new("RGB", (8, 8), (128, 0, 0)).save(path)
    with pytest.raises(DataError, match="palette"):
        read_png_label(path)


def test_mat_without_gtcls_is_named(tmp_path: Path) -> None:
    from scipy.io import savemat

    path = tmp_path / "x.mat"
    savemat(path, {"GTinst": {"Segmentation": np.zeros((4, 4), np.uint8)}})
    with pytest.raises(DataError, match="GTcls"):
        read_mat_label(path)


def test_unpadded_sampler_covers_each_sample_once() -> None:
    for n, world in [(10, 3), (7, 4), (2, 4)]:
        seen = [i for r in range(world) for i in UnpaddedDistributedSampler(n, r, world)]
        assert sorted(seen) == list(range(n))


def test_datamodule_batches_normalised_tensors() -> None:
    dm = SegmentationDataModule(
        ShapesDataset(6, seed=0), ShapesDataset(5, seed=1), num_classes=6,
        class_names=list(SHAPES_CLASSES), train_transform=resize_and_pad(48),
        val_transform=resize_and_pad(48), batch_size=4,
    )  # fmt: skip
    images, labels, sizes = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 48, 48) and images.dtype == torch.float32
    assert sizes.tolist() == [[48, 48]] * 4
    assert labels.shape == (4, 48, 48) and labels.dtype == torch.int64
    assert abs(images.mean().item()) < 2.0
    assert sum(len(b[0]) for b in dm.val_dataloader()) == 5


def test_training_shuffle_follows_the_seed() -> None:
    def first_batch(seed: int | None) -> torch.Tensor:
        dm = SegmentationDataModule(
            ShapesDataset(12, seed=0), ShapesDataset(2, seed=1), num_classes=6,
            train_transform=resize_and_pad(32), batch_size=12, seed=seed,
        )  # fmt: skip
        return next(iter(dm.train_dataloader()))[0]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))
    assert first_batch(None).shape == (12, 3, 32, 32)


def test_augment_crops_scales_flips_and_pads_labels_with_void() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(60, 90, 3), dtype=np.uint8)
    label = np.zeros((60, 90), np.uint8)
    label[:, 45:] = 9
    label[0] = 255
    transform = augment(crop_size=128, scale=(0.5, 2.0), hflip=0.5)
    seen_pad, seen_flip = False, False
    for _ in range(30):
        out = transform(image=image, mask=label)
        assert out["image"].shape == (128, 128, 3) and out["mask"].shape == (128, 128)
        values = set(np.unique(out["mask"]).tolist())
        assert values <= {0, 9, 255}  # labels only ever nearest-resized
        seen_pad |= bool((out["mask"] == 255).mean() > 0.3)  # crop larger than the scaled image
        row = out["mask"][out["mask"].shape[0] // 2]
        classes = row[row != 255]
        seen_flip |= bool(classes.size and classes[0] == 9)  # class 9 moved to the left
    assert seen_pad and seen_flip


@pytest.mark.parametrize("kwargs", [{"crop_size": 0}, {"scale": (2.0, 1.0)}, {"hflip": 1.5}])
def test_augment_refuses_impossible_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        augment(**kwargs)


def test_normalisation_presets_follow_the_weights() -> None:
    image = np.zeros((1, 1, 3), np.uint8)
    image[0, 0] = (10, 20, 30)  # RGB
    label = np.zeros((1, 1), np.uint8)
    caffe, _ = ToTensor("caffe")(image, label)
    expected = [30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434]  # BGR, minus mean
    assert caffe.flatten().tolist() == pytest.approx(expected)
    tv, _ = ToTensor("torchvision")(image, label)
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert tv.flatten().tolist() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="normalization"):
        ToTensor("imagenet")


def test_pad_collate_pads_bottom_right_with_void() -> None:
    a = (torch.ones(3, 4, 6), torch.zeros(4, 6, dtype=torch.long))
    b = (torch.full((3, 7, 5), 2.0), torch.ones(7, 5, dtype=torch.long))
    images, labels, sizes = pad_collate([a, b])
    assert images.shape == (2, 3, 7, 6) and labels.shape == (2, 7, 6)
    assert sizes.tolist() == [[4, 6], [7, 5]]
    assert (labels[0, 4:] == 255).all() and (labels[0, :4] == 0).all()
    assert (labels[1, :, 5] == 255).all() and (labels[1, :, :5] == 1).all()
    assert (images[0, :, 4:] == 0).all() and (images[1, :, :, :5] == 2).all()


def test_original_size_batches_mix_image_sizes() -> None:
    dm = SegmentationDataModule(ShapesDataset(6, seed=0), ShapesDataset(4, seed=1), 6, batch_size=3)
    images, labels, _ = next(iter(dm.val_dataloader()))
    sizes = [ShapesDataset(4, seed=1)[i][1].shape for i in range(3)]
    assert images.shape[-2:] == (max(h for h, _ in sizes), max(w for _, w in sizes))
    assert len({s for s in sizes}) > 1 and (labels == 255).any()


class _Flaky(torch.utils.data.Dataset):
    """Items 1 and 2 are unreadable."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int):
        if i in (1, 2):
            raise DataError(f"cannot read image /data/{i}.jpg: truncated")
        return np.full((4, 4, 3), i, np.uint8), np.zeros((4, 4), np.uint8)


def test_skip_policy_substitutes_in_training_and_drops_in_validation() -> None:
    to_tensor = ToTensor()
    train = TransformedDataset(_Flaky(), None, to_tensor, "skip", substitute=True)
    val = TransformedDataset(_Flaky(), None, to_tensor, "skip")
    image, _ = train[1]  # items 1 and 2 unreadable: item 3 stands in
    assert image.shape == (3, 4, 4) and train.pop_skipped() == 2 and train.pop_skipped() == 0
    assert val[2] is None and val.pop_skipped() == 1
    images, labels, sizes = pad_collate([val[0], val[1], val[3]])
    assert images.shape[0] == 2 and labels.shape[0] == 2 and sizes.shape == (2, 2)
    assert pad_collate([None])[0].shape[0] == 0
    with pytest.raises(DataError, match="2.jpg"):
        TransformedDataset(_Flaky(), None, to_tensor)[2]  # the default policy: stop


def test_unknown_bad_file_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="on_bad_file"):
        SegmentationDataModule(_Flaky(), _Flaky(), 2, on_bad_file="ignore")
