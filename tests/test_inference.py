"""``python -m fcn.predict``, ``fcn.export`` and ``fcn.figure`` on a checkpoint of a real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fcn.data.labels import voc_palette
from fcn.errors import ConfigError
from fcn.export import compare_with_torch, export_onnx
from fcn.figure import image_scores, pick_images
from fcn.inference import load_model, predict_mask
from fcn.models import FCN
from fcn.scores import scores_from_confusion
from tests.conftest import run_train

#: Odd sizes on purpose: 1x1, thinner than any stride, not multiples of 32.
SIZES = {"a.jpg": (37, 53), "dot.png": (1, 1), "sub/tall.jpg": (300, 17), "sub/b.png": (64, 64)}


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


def _in_process(ckpt: Path):
    cfg = OmegaConf.create({"model": None, "data": {"num_classes": None, "normalization": None}})
    return load_model(cfg, str(ckpt))


def test_predict_writes_palette_masks_and_overlays_for_a_folder(
    trained: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    images = _image_folder(tmp_path / "images")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    proc = run_train(  # the one real command line of fcn.predict
        [f"ckpt_path={ckpt}", f"input={images}", f"hydra.run.dir={out}"], tmp_path,
        entry="predict", in_process=False,
    )  # fmt: skip
    # The broken file is named and makes the exit status 1, after every other image is done.
    assert proc.returncode == 1 and "broken.jpg" in proc.stderr
    assert "image/s" in proc.stderr  # the progress bar
    model = _in_process(ckpt)
    for name, (h, w) in SIZES.items():
        png = Path(name).with_suffix(".png")
        with Image.open(out / "masks" / png) as mask:
            assert mask.mode == "P" and mask.size == (w, h)
            assert mask.getpalette()[: 3 * 6] == voc_palette()[: 3 * 6]
            classes = np.asarray(mask)
        image = np.array(Image.open(images / name).convert("RGB"))
        assert np.array_equal(classes, predict_mask(model, image, torch.device("cpu")))
        with Image.open(out / "overlays" / png) as over:
            over_array = np.asarray(over)
        assert over_array.shape == (h, w, 3)
        background = classes == 0
        assert np.array_equal(over_array[background], image[background])
        assert not (classes > 0).any() or not np.array_equal(over_array, image)


def test_predict_single_image_and_bad_inputs(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    images = _image_folder(tmp_path / "images")
    out = tmp_path / "one"
    args = [f"ckpt_path={ckpt}", f"input={images / 'a.jpg'}", f"hydra.run.dir={out}"]
    proc = run_train([*args, "max_size=32"], tmp_path, entry="predict")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Image.open(out / "masks" / "a.png").size == (53, 37)  # scored at 32, mask full size
    proc = run_train([f"ckpt_path={ckpt}", "input=missing"], tmp_path, entry="predict")
    assert proc.returncode == 1 and "error: input not found: missing" in proc.stderr
    proc = run_train(
        [f"ckpt_path={tmp_path}/no.ckpt", f"input={images}"], tmp_path, entry="predict"
    )
    assert proc.returncode == 1 and "weights file not found" in proc.stderr


def test_export_matches_pytorch_on_two_sizes(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    out = tmp_path / "model.onnx"
    args = [f"ckpt_path={ckpt}", f"output_file={out}", "sample_size=[48,64]"]
    proc = run_train(  # the one real command line of fcn.export
        [*args, "hydra.run.dir=export"], tmp_path, entry="export", in_process=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input 224x321" in proc.stdout
    # Independently of the command's own check: two sizes, neither the traced one, batch 2.
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    net = _in_process(ckpt).net
    for shape in ((2, 3, 71, 45), (1, 3, 120, 97)):
        x = torch.randn(*shape)
        expected = net(x).detach().numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape == (shape[0], 6, *shape[2:])
        assert np.abs(got - expected).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["variant"] == "FCN-8s" and json.loads(props["class_names"])[4] == "bar"
    assert json.loads(props["normalization"])["name"] == "torchvision"


def test_caffe_alignment_exports_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = FCN(num_classes=4, skips=("pool4",), alignment="caffe", trunk_width=2, fc_width=4)
    for layer in net.score_layers:
        torch.nn.init.normal_(layer.weight)
    export_onnx(net, tmp_path / "caffe.onnx", (40, 40), {"variant": net.variant})
    for _size, diff, spread in compare_with_torch(net, tmp_path / "caffe.onnx", [(33, 70), (5, 9)]):
        assert spread > 0.1 and diff < 1e-4 * spread


def test_figure_draws_every_checkpoint_side_by_side(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    best = next((trained / "checkpoints").glob("epoch*.ckpt"))
    out = tmp_path / "fig.png"
    args = [f"checkpoints=[{ckpt},{best}]", "images=[0,3]", f"output_file={out}"]
    proc = run_train(  # the one real command line of fcn.figure
        [*args, "hydra.run.dir=figure"], tmp_path, entry="figure", in_process=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(out) as img:
        assert img.width > 1.5 * img.height  # 2 rows of 4 panels
    lines = [line for line in proc.stdout.splitlines() if "[fcn.figure]" in line]
    assert len(lines) == 2 and all(line.count("mIoU") == 2 for line in lines)  # image x model
    proc = run_train([f"checkpoints=[{ckpt}]", "images=[99]"], tmp_path, entry="figure")
    assert proc.returncode == 1 and "index 99 is outside" in proc.stderr


def test_image_scores_follow_the_paper_formulas() -> None:
    label = np.array([[0, 0, 1, 255], [1, 2, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 2], [1, 2, 0, 0]], dtype=np.uint8)
    acc, miou = image_scores(label, pred, 3)
    hist = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert acc == pytest.approx(4 / 6)
    assert miou == pytest.approx(float(scores_from_confusion(hist)["mIoU"]))
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_images_are_picked_by_index_or_id() -> None:
    class Split(torch.utils.data.Dataset):
        ids = ["2007_000033", "2007_000042"]

        def __len__(self) -> int:
            return 2

    assert pick_images(Split(), [1, "2007_000033"]) == [(1, "2007_000042"), (0, "2007_000033")]
    with pytest.raises(ConfigError, match="not an id"):
        pick_images(Split(), ["2008_000001"])
