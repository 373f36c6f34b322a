"""The normalised confusion matrix: a training run's at its best epoch (files and wandb), kept
across a resume unless beaten; fcn.evaluate's beside its output file; the figure at 150 classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from fcn.confusion import (
    ANNOTATE_MAX_CLASSES,
    confusion_figure,
    normalise_rows,
    read_confusion,
    write_confusion,
)
from fcn.scores import scores_from_confusion
from tests.conftest import EVAL, TINY, run_train
from tests.wandb_records import records

#: the tests share a module-scoped fixture: one pytest-xdist worker runs them all (loadgroup)
pytestmark = pytest.mark.xdist_group("confusion")

#: Validation mIoU rises from epoch 0 to epoch 1 and falls in epoch 2 (measured: 0.001, 0.117,
#: 0.011): weighted classes at 2e-3 for two epochs, then 100 times the rate (StepLR).
ARGS = [*TINY, "data.train_set.num_images=32", "module.class_weights=median_frequency",
        "optimizer.lr=2e-3", "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=100",
        "logger=wandb"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run of 2 epochs, then continued in its folder for a third (as fcn.resume does): the
    folder and what its confusion files held before the third epoch."""
    workdir = tmp_path_factory.mktemp("confusion")
    folder = workdir / "run"
    proc = run_train([*ARGS, "trainer.max_epochs=2", f"hydra.run.dir={folder}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = {name: (folder / name).read_bytes() for name in ("confusion.json", "confusion.png")}
    resume = [*ARGS, "trainer.max_epochs=3", f"ckpt_path={folder}/checkpoints/last.ckpt",
              f"hydra.run.dir={folder}"]  # fmt: skip
    proc = run_train(resume, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"folder": folder, "before": before}


def test_the_files_are_the_best_epochs_and_its_metrics(run: dict) -> None:
    folder = run["folder"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["history"]] == [0, 1, 2]
    best, final = metrics["best"], metrics["final"]
    assert best["epoch"] == 1 and final["epoch"] == 2  # the last epoch is not the best
    counts, names, doc = read_confusion(folder / "confusion.json")
    assert doc["epoch"] == best["epoch"] and doc["step"] == best["step"]
    assert doc["monitor"] == "val/mIoU" and doc["score"] == pytest.approx(best["val/mIoU"])
    assert names == ["background", "disc", "box", "triangle", "bar", "dot"]
    # The counts are those the validation metrics were computed from.
    scores = scores_from_confusion(torch.from_numpy(counts))
    for key in ("mIoU", "pixel_acc", "mean_acc", "fwIoU"):
        assert scores[key].item() == pytest.approx(best[f"val/{key}"], abs=1e-6), key
    for name, iou in zip(names, scores["IoU"].tolist(), strict=True):
        assert iou == pytest.approx(best[f"val/IoU/{name}"], abs=1e-6, nan_ok=True), name
    assert counts.sum() > 0 and doc["pixels"] == counts.sum(1).tolist()
    for row, total in zip(doc["normalised"], counts.sum(1), strict=True):
        assert (row is None) == (total == 0)
        if row is not None:
            assert sum(row) == pytest.approx(1.0)
    assert doc["rows"] == "true class" and doc["columns"] == "predicted class"
    with Image.open(folder / "confusion.png") as png:
        assert png.format == "PNG" and min(png.size) > 400
    assert not list(folder.glob("*.part"))


def test_the_counts_equal_the_best_checkpoints_own_predictions(run: dict) -> None:
    """Recomputed here, without the metrics: the best checkpoint's network on the validation
    data its config stores, argmax, and one bincount over the non-void pixels."""
    folder = run["folder"]
    metrics = json.loads((folder / "metrics.json").read_text())
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert Path(metrics["best_checkpoint"]).name.startswith("epoch001-")
    cfg = OmegaConf.create(ckpt["fcn_config"])
    net = instantiate(cfg.model)
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}
    net.load_state_dict(state)
    net.eval().to(memory_format=torch.channels_last)  # as the run validated (channels_last)
    datamodule = instantiate(cfg.data)
    n = net.num_classes
    expected = np.zeros((n, n), dtype=np.int64)
    with torch.no_grad():
        for images, labels, _ in datamodule.val_dataloader():
            pred = net(images.contiguous(memory_format=torch.channels_last)).argmax(1)
            valid = labels != 255
            pairs = labels[valid].long() * n + pred[valid]
            expected += np.bincount(pairs.numpy(), minlength=n * n).reshape(n, n)
    counts, _, _ = read_confusion(folder / "confusion.json")
    np.testing.assert_array_equal(counts, expected)


def test_a_resumed_epoch_replaces_the_files_only_when_it_beats_the_earlier_ones(
    run: dict,
) -> None:
    folder = run["folder"]
    for name, content in run["before"].items():  # epoch 2 (after the resume) is worse
        assert (folder / name).read_bytes() == content, name
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    kept = state["BestConfusionMatrix"]
    assert kept["best_epoch"] == 1 and kept["folder"] == str(folder)


def _logged(path: Path, key: str) -> list[int]:
    """The trainer steps at which ``key`` was logged in the offline run file ``path``."""
    steps = []
    for record in records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {(i.key or i.nested_key[0]): i.value_json for i in record.history.item}
        if key in items:
            steps.append(int(float(items["trainer/global_step"])))
    return steps


def test_wandb_gets_the_figure_and_the_counts_on_each_new_best_only(run: dict) -> None:
    folder = run["folder"]
    first, resumed = sorted((folder / "wandb").glob("offline-run-*"))
    history = json.loads((folder / "metrics.json").read_text())["history"]
    steps = [e["step"] for e in history]  # epoch 0 (the first) and 1 were new bests
    run_file = next(first.glob("run-*.wandb"))
    assert _logged(run_file, "val/confusion") == steps[:2]
    assert _logged(run_file, "val/confusion_counts_table") == steps[:2]
    assert _logged(next(resumed.glob("run-*.wandb")), "val/confusion") == []
    assert len(list((first / "files" / "media" / "images").glob("val/confusion_*.png"))) == 2


def test_a_figure_of_150_classes_renders_without_cell_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 30, (150, 150)) + np.diag(rng.integers(100, 1000, 150))
    counts[7] = 0  # a class with no pixel: a grey row, null in the JSON
    names = [f"class {i}" for i in range(150)]
    paths = write_confusion(tmp_path / "big", counts, names, title="150 classes", epoch=3)
    with Image.open(paths["figure"]) as png:
        assert png.size[0] >= 2500 and png.size[1] >= 2500  # grows with the classes
    _, _, doc = read_confusion(paths["json"])
    assert doc["normalised"][7] is None and doc["epoch"] == 3
    assert np.isnan(normalise_rows(counts)[7]).all()
    fig = confusion_figure(counts, names)  # built, not drawn again
    assert len(fig.axes[0].texts) == 0  # beyond ANNOTATE_MAX_CLASSES: no cell labels
    small = confusion_figure(counts[:21, :21], names[:21])
    assert ANNOTATE_MAX_CLASSES >= 21  # each non-empty cell labelled (none in the empty row)
    assert len(small.axes[0].texts) == np.count_nonzero(counts[:21, :21])
    assert small.get_size_inches()[1] < fig.get_size_inches()[1]


def test_evaluate_writes_its_confusion_matrix_and_never_replaces_one(
    trained: Path, tmp_path: Path
) -> None:
    ckpt = next((trained / "checkpoints").glob("epoch*.ckpt"))  # the best, as validated
    out = tmp_path / "scores" / "best.json"
    args = [*EVAL, "transforms=resize_pad", f"ckpt_path={ckpt}", f"output_file={out}"]
    proc = run_train([*args, "hydra.run.dir=first"], tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = tmp_path / "scores" / "best.confusion"
    recorded = json.loads(out.read_text())["confusion"]
    assert recorded == {"json": f"{stem}.json", "figure": f"{stem}.png"}
    counts, _, doc = read_confusion(f"{stem}.json")
    assert doc["checkpoint"] == str(ckpt)
    assert doc["mIoU"] == pytest.approx(json.loads(out.read_text())["metrics"]["val/mIoU"])
    # At the training resolution, the best checkpoint's matrix is the run's own.
    trained_counts, _, _ = read_confusion(trained / "confusion.json")
    np.testing.assert_array_equal(counts, trained_counts)

    out.unlink()  # only the confusion figure is left: still refused, before anything runs
    Path(f"{stem}.json").unlink()
    proc = run_train([*args, "hydra.run.dir=second"], tmp_path, entry="evaluate")
    assert proc.returncode == 1
    assert f"output_file's confusion matrix {stem}.png already exists" in proc.stderr
    assert "overwrite=true" in proc.stderr and not out.exists()
    proc = run_train([*args, "overwrite=true", "hydra.run.dir=third"], tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists() and Path(f"{stem}.json").exists()
