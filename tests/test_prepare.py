"""``python -m fcn.data.prepare`` against small archives served from this machine (loopback)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn.data import prepare
from fcn.data.pascal import PAPER_SPLITS, PascalDataset
from fcn.data.prepare import main, unsafe_member
from fcn.data.voc_seed import SeedVOC
from tests.loopback import Server
from tests.seed_tree import write_pascal_tree

SPLITS = {
    "voc_train": ["2007_000001", "2007_000002"],
    "voc_val": ["2007_000010"],
    "sbd_train": ["2008_000001", "2008_000002"],
    "sbd_val": ["2008_000003", "2008_000004"],
}
SEED = {"train_mat": ["2008_000001", "2008_000002", "2008_000003"],
        "val_mat": ["2008_000004"], "train_png": ["2007_000010"]}  # fmt: skip


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archives(tmp_path: Path) -> Iterator[tuple[Server, list[str], Path]]:
    seg11 = (PAPER_SPLITS / "seg11valid.txt").read_text().split()
    tree = write_pascal_tree(tmp_path / "src", SPLITS, extra_voc=seg11, size=(12, 16))
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "VOCtrainval_11-May-2012.tar", "w") as tar:
        tar.add(tree / "VOCdevkit", arcname="VOCdevkit")
    with tarfile.open(served / "benchmark.tgz", "w:gz") as tar:
        tar.add(tree / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    seed_splits = tmp_path / "seed_splits"
    seed_splits.mkdir()
    for name, ids in SEED.items():
        (seed_splits / f"{name}.txt").write_text("\n".join(ids) + "\n")
    server = Server(served)
    args = [
        "--voc-url", f"{server.url}/VOCtrainval_11-May-2012.tar",
        "--voc-md5", _md5(served / "VOCtrainval_11-May-2012.tar"),
        "--sbd-url", f"{server.url}/benchmark.tgz",
        "--sbd-md5", _md5(served / "benchmark.tgz"),
        "--seed-splits", str(seed_splits),
    ]  # fmt: skip
    yield server, args, seed_splits
    server.httpd.shutdown()


def test_downloads_verifies_extracts_builds_seed_layout_and_reruns_for_free(
    archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    server, args, seed_splits = archives
    root = tmp_path / "data"
    assert main(["--root", str(root), "--layout", "seed", *args]) == 0
    assert server.requests == 2
    assert PascalDataset(root, "aug_train").ids == [
        "2007_000001", "2007_000002", "2008_000001", "2008_000002", "2008_000003", "2008_000004"
    ]  # fmt: skip
    assert len(SeedVOC(root / "voc_seed", "train", seed_splits)) == 4
    assert not list((root / "downloads").glob("*"))  # archives removed after extraction
    assert main(["--root", str(root), "--layout", "seed", *args]) == 0
    assert server.requests == 2  # nothing fetched again
    capsys.readouterr()
    assert main(["--root", str(root), "--check", *args]) == 0
    report = capsys.readouterr().out
    for line in ("voc_seed/train         4           0", "aug_train              6           0",
                 "seg11valid           736           0"):  # fmt: skip
        assert line in report


def test_interrupted_download_is_never_taken_for_whole(archives, tmp_path: Path) -> None:
    server, args, _ = archives
    root = tmp_path / "data"
    server.truncate_next = True
    assert main(["--root", str(root), "--datasets", "voc", *args]) == 1
    assert not (root / "downloads" / "VOCtrainval_11-May-2012.tar").exists()
    assert not (root / "VOCdevkit").exists()
    assert main(["--root", str(root), "--datasets", "voc", *args]) == 0
    assert len(PascalDataset(root, "voc2012_train")) == 2


def test_checksum_mismatch_discards_the_file(
    archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, args, _ = archives
    args[args.index("--sbd-md5") + 1] = "0" * 32
    root = tmp_path / "data"
    assert main(["--root", str(root), "--datasets", "sbd", *args]) == 1
    err = capsys.readouterr().err
    assert "benchmark.tgz arrived with MD5" in err and "0" * 32 in err
    assert not list((root / "downloads").glob("benchmark.tgz*"))


def test_unreachable_server_is_one_clear_error(tmp_path: Path, capsys) -> None:
    args = ["--root", str(tmp_path), "--datasets", "voc", "--voc-url", "http://127.0.0.1:9/x.tar"]
    assert main(args) == 1
    assert "cannot download http://127.0.0.1:9/x.tar" in capsys.readouterr().err


def test_check_finds_unreadable_and_missing_files(tmp_path: Path, capsys) -> None:
    root = write_pascal_tree(tmp_path, SPLITS)
    label = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000002.png"
    label.write_bytes(label.read_bytes()[:40])
    (root / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000004.mat").unlink()
    assert main(["--root", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"cannot read label {label}" in out
    assert "1 of 2 ids of split sbd_val have no label" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--root", str(empty), "--check"]) == 1
    assert f"nothing to check under {empty}" in capsys.readouterr().out


def test_check_passes_a_whole_tree_and_ignores_files_outside_the_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    seg11 = (PAPER_SPLITS / "seg11valid.txt").read_text().split()  # every split whole
    root = write_pascal_tree(tmp_path, SPLITS, extra_voc=seg11, size=(8, 8))
    image = np.zeros((4, 4, 3), np.uint8)
    Image.fromarray(image).save(root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "unrelated.jpg")
    (root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "unrelated.png").write_bytes(b"junk")
    assert main(["--root", str(root), "--check"]) == 0  # files no split lists are not read
    out = capsys.readouterr().out
    assert "unrelated" not in out and "voc2012_train" in out and "sbd_val" in out
    # the same through the command line
    proc = subprocess.run(
        [sys.executable, "-m", "fcn.data.prepare", "--root", str(root), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "voc2012_val" in proc.stdout, proc.stderr[-2000:]


ADE = "ADEChallengeData2016"


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def _ade_zip(path: Path, extra: tuple[str, ...] = ()) -> str:
    """A small zip in ADE20K's layout (plus ``extra`` members); returns its SHA-1."""
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("training", "validation"):
            name = f"ADE_{split[:5]}_00000001"
            zf.writestr(f"{ADE}/images/{split}/{name}.jpg", _png(np.zeros((8, 8, 3), np.uint8),
                                                                 "JPEG"))  # fmt: skip
            zf.writestr(f"{ADE}/annotations/{split}/{name}.png", _png(np.ones((8, 8), np.uint8)))
        zf.writestr(f"{ADE}/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n")
        for member in extra:
            zf.writestr(member, "outside")
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture
def ade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, list[str]]]:
    """A loopback server holding an ADE20K-like zip whose SHA-1 is the source's."""
    served = tmp_path / "served"
    served.mkdir()
    sha1 = _ade_zip(served / f"{ADE}.zip")
    source = dataclasses.replace(prepare.SOURCES["ade20k"], checksum=sha1)
    monkeypatch.setitem(prepare.SOURCES, "ade20k", source)
    server = Server(served)
    yield server, ["--dataset", "ade20k", "--ade20k-url", f"{server.url}/{ADE}.zip"]
    server.httpd.shutdown()


def test_ade20k_downloads_verifies_sha1_extracts_the_zip_and_reruns_for_free(
    ade, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    server, args = ade
    root = tmp_path / "data"
    assert main(["--root", str(root), *args]) == 0
    assert server.requests == 1
    assert (root / ADE / "images" / "training" / "ADE_train_00000001.jpg").is_file()
    assert (root / ADE / "annotations" / "validation" / "ADE_valid_00000001.png").is_file()
    assert (root / f".extracted-{prepare.SOURCES['ade20k'].checksum}").is_file()
    assert not list((root / "downloads").glob("*"))  # archive removed after extraction
    assert not (root / "VOCdevkit").exists()  # only what was asked for
    assert "python -m fcn.train data=ade20k" in capsys.readouterr().out
    assert main(["--root", str(root), *args]) == 0
    assert server.requests == 1  # nothing fetched again
    assert f"{ADE}.zip: already downloaded and extracted" in capsys.readouterr().out


def test_ade20k_wrong_sha1_or_cut_transfer_is_never_used(
    ade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    server, args = ade
    root = tmp_path / "data"
    good = prepare.SOURCES["ade20k"]
    monkeypatch.setitem(prepare.SOURCES, "ade20k", dataclasses.replace(good, checksum="0" * 40))
    assert main(["--root", str(root), *args]) == 1
    err = capsys.readouterr().err
    assert f"{ADE}.zip arrived with SHA-1 {good.checksum}, expected {'0' * 40}" in err
    assert not list((root / "downloads").glob("*")) and not (root / ADE).exists()

    monkeypatch.setitem(prepare.SOURCES, "ade20k", good)
    server.truncate_next = True
    assert main(["--root", str(root), *args]) == 1
    err = capsys.readouterr().err
    assert re.search(r"the transfer was cut short \([\d,]+ of [\d,]+ bytes\)", err), err
    assert not list((root / "downloads").glob("*")) and not (root / ADE).exists()
    assert main(["--root", str(root), *args]) == 0  # the partial file is fetched again whole
    assert server.requests == 3 and (root / ADE / "objectInfo150.txt").is_file()


def test_zip_with_members_outside_the_folder_is_refused_whole(
    ade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _, args = ade
    archive = tmp_path / "served" / f"{ADE}.zip"
    sha1 = _ade_zip(archive, extra=(f"{ADE}/../../evil.txt",))
    source = dataclasses.replace(prepare.SOURCES["ade20k"], checksum=sha1)
    monkeypatch.setitem(prepare.SOURCES, "ade20k", source)
    root = tmp_path / "data"
    assert main(["--root", str(root), *args]) == 1
    err = capsys.readouterr().err
    assert "was refused" in err and "'ADEChallengeData2016/../../evil.txt'" in err
    assert not (root / ADE).exists() and not list(tmp_path.rglob("evil.txt"))
    assert not list(root.glob(".extracted-*"))


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [("a/b.png", False), ("a/..b/c", False), ("../x", True), ("a/../../x", True),
     ("/etc/x", True), ("C:/x", True), ("a\\..\\..\\x", True)],
)  # fmt: skip
def test_unsafe_member_names(name: str, unsafe: bool) -> None:
    assert unsafe_member(name) is unsafe


def test_cityscapes_downloads_nothing_and_says_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "data"
    assert main(["--root", str(root), "--dataset", "cityscapes"]) == 0
    out = capsys.readouterr().out
    for text in ("https://www.cityscapes-dataset.com", "leftImg8bit_trainvaltest.zip",
                 "gtFine_trainvaltest.zip", f"{root}/cityscapes/leftImg8bit/",
                 f"{root}/cityscapes/gtFine/", "python -m fcn.train data=cityscapes"):  # fmt: skip
        assert text in out
    assert not (root / "downloads").exists() and "data ready" not in out
    (root / "cityscapes" / "leftImg8bit").mkdir(parents=True)
    (root / "cityscapes" / "gtFine").mkdir()
    assert main(["--root", str(root), "--dataset", "cityscapes"]) == 0
    assert "are there" in capsys.readouterr().out
