"""``fcn.predict`` never replaces the user's files nor reads its own outputs as inputs, and
refuses impossible settings before loading anything; the readers say what stands where an
image or label file should be."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fcn.data.readers import read_image, read_mat_label, read_png_label
from fcn.errors import DataError
from fcn.predict import find_images, predict
from tests.conftest import run_train

OUTPUTS = ["masks/a.png", "masks/sub/b.png", "overlays/a.png", "overlays/sub/b.png"]


def _photos(root: Path) -> Path:
    """``a.jpg`` and ``sub/b.png``, small random images."""
    rng = np.random.default_rng(0)
    for name, size in {"a.jpg": (20, 30), "sub/b.png": (16, 16)}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / name)
    return root


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its content and modification time."""
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def _cfg(ckpt: Path, images: Path, out: Path, overwrite: bool = False):
    """The predict config, as ``conf/predict.yaml`` composes it, for an in-process run."""
    return OmegaConf.create({
        "ckpt_path": str(ckpt), "input": str(images), "output_dir": str(out),
        "overwrite": overwrite, "device": "cpu", "max_size": None, "overlay_alpha": 0.5,
        "model": None, "data": {"num_classes": None, "normalization": None, "class_names": None},
    })  # fmt: skip


def test_predict_into_its_input_folder_twice_replaces_nothing(
    trained: Path, tmp_path: Path
) -> None:
    photos = _photos(tmp_path / "photos")
    (photos / "x.jpg").symlink_to("gone.jpg")
    args = [
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", f"input={photos}",
        f"output_dir={photos}", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    proc = run_train(args, tmp_path, entry="predict")
    # The broken link is named for what it is, the other images are done, the exit status is 1.
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"image {photos / 'x.jpg'} is a broken symbolic link to gone.jpg" in proc.stdout
    assert f"1 image(s) could not be read: {photos / 'x.jpg'}" in proc.stderr
    assert all((photos / name).is_file() for name in OUTPUTS)
    assert json.loads((photos / "predict.json").read_text())["files"] == OUTPUTS
    before = _snapshot(photos)
    # Again: its outputs are not inputs, and they are not replaced without overwrite=true.
    proc = run_train(args, tmp_path, entry="predict")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: 4 output file(s) already exist ({photos / OUTPUTS[0]}, ")
    assert "overwrite=true" in last and "Traceback" not in proc.stderr
    assert _snapshot(photos) == before


def test_overwrite_replaces_earlier_outputs_but_never_an_input(
    trained: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    photos = _photos(tmp_path / "photos")
    assert predict(_cfg(ckpt, photos, photos)) == 0
    mask = photos / "masks" / "a.png"
    right = mask.read_bytes()
    mask.write_bytes(b"spoilt")
    with pytest.raises(DataError, match="overwrite=true"):
        predict(_cfg(ckpt, photos, photos))
    assert mask.read_bytes() == b"spoilt"
    assert predict(_cfg(ckpt, photos, photos, overwrite=True)) == 0
    assert mask.read_bytes() == right
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png")) == sorted(
        [*OUTPUTS, "sub/b.png"]
    )  # no masks/masks/...
    # A user's own image in masks/ is an input: replacing it is refused, overwrite or not.
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "photo.jpg")
    own = photos / "masks" / "photo.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(own)
    kept = own.read_bytes()
    with pytest.raises(DataError, match=f"replace the input image\\(s\\) {own}: "):
        predict(_cfg(ckpt, photos, photos, overwrite=True))
    assert own.read_bytes() == kept


def test_search_skips_listed_outputs_and_its_own_output_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos = _photos(tmp_path / "photos")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(photos / "sub" / "old.png")
    record = {"written_by": "fcn.predict", "files": ["old.png"]}
    (photos / "sub" / "predict.json").write_text(json.dumps(record))
    (photos / "results").mkdir()  # this run's output folder: skipped, with or without a list
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(photos / "results" / "c.png")
    expected = [photos / "a.jpg", photos / "sub" / "b.png"]
    assert find_images(photos, photos / "results") == (photos, expected)
    # A predict.json that is not ours hides nothing (and is named), nor is it replaced.
    (photos / "sub" / "predict.json").write_text("my notes")
    with caplog.at_level(logging.WARNING, logger="fcn.predict"):
        assert find_images(photos, photos / "results")[1] == sorted(
            [*expected, photos / "sub" / "old.png"]
        )
    assert "sub/predict.json is not a list of fcn.predict's outputs" in caplog.text
    with pytest.raises(DataError, match="is not a list of fcn.predict's outputs: it is not"):
        predict(_cfg(tmp_path / "no.ckpt", photos / "a.jpg", photos / "sub"))


def test_predict_refuses_a_missing_gpu_and_an_output_folder_under_a_file_first(
    tmp_path: Path,
) -> None:
    # Checked before the input, the checkpoint (neither exists here) and the model.
    missing = [f"ckpt_path={tmp_path / 'no.ckpt'}", f"hydra.run.dir={tmp_path / 'run'}"]
    if not torch.cuda.is_available():
        proc = run_train([*missing, "input=nowhere", "device=cuda"], tmp_path, entry="predict")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            "error: device=cuda but this machine has no usable GPU: use device=cpu"
        )
    photos = _photos(tmp_path / "photos")
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "out"
    args = [*missing, f"input={photos}", f"output_dir={out}"]
    proc = run_train(args, tmp_path, entry="predict")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot create the folder {out}: {tmp_path / 'notes.txt'} is a file, not a folder"
    )


READERS = [(read_image, "image", ".jpg"), (read_png_label, "label", ".png")]


@pytest.mark.parametrize(("read", "what", "suffix"), [*READERS, (read_mat_label, "label", ".mat")])
def test_readers_say_what_stands_where_a_file_should(
    tmp_path: Path, read, what: str, suffix: str
) -> None:
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    loop = tmp_path / f"loop{suffix}"
    loop.symlink_to(loop.name)
    broken = tmp_path / f"broken{suffix}"
    broken.symlink_to(tmp_path / f"gone{suffix}")
    article = "an" if what == "image" else "a"
    expected = {
        folder: f"{what} {folder} is a folder, not {article} {what} file",
        loop: f"{what} {loop} is a symbolic link loop",
        broken: f"{what} {broken} is a broken symbolic link to {tmp_path / f'gone{suffix}'}",
        tmp_path / f"missing{suffix}": f"{what} file not found: {tmp_path / f'missing{suffix}'}",
    }
    for path, message in expected.items():
        with pytest.raises(DataError) as caught:
            read(path)
        assert str(caught.value) == message
