"""Nothing lost, nothing executed: a file never chooses code to run, no run replaces another's
results, a full disk leaves every file whole, and bad input gets one line naming it."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fcn.config_checks import PRECISIONS, check_precision
from fcn.data.datamodule import SegmentationDataModule
from fcn.data.pascal import PascalDataset
from fcn.data.readers import read_ids
from fcn.errors import ConfigError, DataError, user_message
from fcn.files import DiskFull, atomic_write
from fcn.inference import load_model
from fcn.models.fcn import FCN
from fcn.run_folder import RunFolderGuard
from fcn.stored_config import ALL_TARGETS
from fcn.training.checkpoint_io import AtomicCheckpointIO
from tests.conftest import CONF, EVAL, REPO, TINY, run_train
from tests.seed_tree import write_pascal_tree


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _copy_run(trained: Path, to: Path) -> Path:
    shutil.copytree(trained, to, symlinks=True)
    return to


def _with_stored(ckpt: Path, out: Path, edit) -> Path:
    """A copy of ``ckpt`` whose stored run config ``edit`` changed (still weights-only)."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(checkpoint["fcn_config"])
    torch.save(checkpoint, out)
    torch.load(out, weights_only=True)  # the edited file still loads weights-only
    return out


# --- 1. a stored config never chooses what is called ----------------------------------------


def test_evaluate_and_predict_refuse_a_checkpoint_that_names_a_function(
    trained: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    evil = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    ckpt = _with_stored(
        trained / "checkpoints" / "last.ckpt",
        tmp_path / "evil.ckpt",
        lambda c: c["model"].update(evil=evil),
    )
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    from PIL import Image

    Image.new("RGB", (20, 16)).save(image)
    for entry, args in (
        ("evaluate", [f"ckpt_path={ckpt}", "hydra.run.dir=e"]),
        ("predict", [f"ckpt_path={ckpt}", f"input={image.parent}", "hydra.run.dir=p"]),
    ):
        proc = run_train(args, tmp_path, entry=entry)
        assert proc.returncode == 1, (entry, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {ckpt}: model.evil._target_ is 'builtins.open'"), last
        assert "refused before anything was built" in last
        assert victim.read_text() == "precious\n", entry  # never opened for writing
    assert not list((tmp_path / "p").rglob("*.png"))  # nothing predicted


@pytest.mark.parametrize(
    ("section", "node", "key"),
    [
        ("model", {"_target_": "os.system", "_args_": ["true"]}, "model._target_"),
        ("model", {"_target_": "builtins.exec", "_partial_": True}, "model._target_"),
        (
            "data",
            {"_target_": "fcn.data.datamodule.SegmentationDataModule",
             "val_set": {"_target_": "fcn.data.shapes.ShapesDataset",
                         "num_images": {"_target_": "builtins.eval", "_args_": ["1"]}}},
            "data.val_set.num_images._target_",
        ),
        (
            "data",
            {"_target_": "fcn.data.datamodule.SegmentationDataModule",
             "train_transform": {"_target_": "fcn.data.transforms.augment",
                                 "_args_": [{"_target_": "subprocess.call"}]}},
            "data.train_transform._args_[0]._target_",
        ),
        ("data", {"_target_": "fcn.models.fcn.FCN"}, "data._target_"),  # not a data component
        ("model", {"_target_": "fcn.models.fcn.FCN", "skips": "${oc.env:HOME}"}, "model.skips"),
    ],
)  # fmt: skip
def test_no_key_nesting_or_interpolation_gets_past_the_check(
    trained: Path, tmp_path: Path, section: str, node: dict, key: str
) -> None:
    """What evaluate, predict, export and figure all build networks and data through."""
    ckpt = _with_stored(
        trained / "checkpoints" / "last.ckpt",
        tmp_path / "edited.ckpt",
        lambda c: c.update({section: node}),
    )
    cfg = OmegaConf.create({"model": None, "data": {"num_classes": None}})
    with pytest.raises(ConfigError, match="^" + re.escape(f"{ckpt}: {key}")):
        load_model(cfg, str(ckpt))


def test_every_component_the_configs_name_is_allowed_and_nothing_else() -> None:
    named = set()
    for path in [*CONF.rglob("*.yaml"), *(REPO / "experiments").rglob("*.yaml")]:
        if "hydra" in path.parts:  # Hydra's own plugins (sweeper, launcher) are Hydra's
            continue
        for line in path.read_text().splitlines():
            if line.strip().startswith("_target_:"):
                named.add(line.split(":", 1)[1].split("#")[0].strip())
    assert named <= ALL_TARGETS
    assert ALL_TARGETS - named <= {"fcn.models.fcn.FCN"}  # the same class by its module path


def test_resume_refuses_overrides_that_would_choose_code(trained: Path, tmp_path: Path) -> None:
    run = _copy_run(trained, tmp_path / "run")
    overrides = run / ".hydra" / "overrides.yaml"
    original = overrides.read_text()
    for bad in ("+model.evil._target_=builtins.print", "+hydra.callbacks.x._target_=os.getcwd",
                "model={_target_:builtins.print}"):  # fmt: skip
        overrides.write_text(original + f"- {bad}\n")
        proc = run_train([str(run), "trainer.max_epochs=3"], tmp_path, entry="resume")
        assert proc.returncode == 1
        assert "would choose code to run" in proc.stderr and bad in proc.stderr, proc.stderr


# --- 2. a finished run keeps its history -----------------------------------------------------


def test_a_finished_run_is_refused_or_continued_with_its_history(
    trained: Path, tmp_path: Path
) -> None:
    run = _copy_run(trained, tmp_path / "run")
    before = json.loads((run / "metrics.json").read_text())
    proc = run_train([str(run)], tmp_path, entry="resume")
    assert proc.returncode == 1
    assert "has already trained 2 epoch(s) and trainer.max_epochs=2" in proc.stderr
    assert f"python -m fcn.resume {run} trainer.max_epochs=4" in proc.stderr
    assert json.loads((run / "metrics.json").read_text()) == before
    proc = run_train([str(run), "trainer.max_epochs=3"], tmp_path, entry="resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())
    assert after["status"] == "finished"
    assert [e["epoch"] for e in after["history"]] == [0, 1, 2]
    assert after["history"][:2] == before["history"]


# --- 3. a full disk leaves every file whole --------------------------------------------------


def test_a_full_disk_leaves_the_previous_checkpoint_whole(trained: Path, tmp_path: Path) -> None:
    run = _copy_run(trained, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    before = _md5(last)
    limit = last.stat().st_size // 4  # every write past this size fails (EFBIG), as on a full disk

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {"HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [*_python(), "-m", "fcn.resume", str(run), "trainer.max_epochs=3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=small_disk,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    # the first checkpoint of epoch 3 (the best, or last.ckpt) is the write that fails
    assert lines[-1].startswith(f"error: no space left to write {last.parent}/"), lines[-1]
    assert "(File too large)" in lines[-1] and "python -m fcn.resume" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert _md5(last) == before  # the previous checkpoint, whole under its name
    assert len(list(last.parent.iterdir())) == 2  # no partial new one
    assert not list(run.rglob("*.part")) and not list(run.rglob("*.tmp"))
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    proc = run_train([str(run), "trainer.max_epochs=3"], tmp_path, entry="resume")
    assert proc.returncode == 0, proc.stderr[-3000:]  # and the run goes on from it


def _python() -> list[str]:
    import sys

    return [sys.executable]


def test_an_interrupted_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, target)

    def half_then_full(partial: Path) -> None:
        partial.write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device", str(partial))

    with pytest.raises(DiskFull, match=f"no space left to write {target}"):
        atomic_write(target, half_then_full)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    with pytest.raises(DataError, match="already exists"):
        atomic_write(target, lambda p: p.write_text("x"), replace=False)


# --- 4. a used run folder is never written over ----------------------------------------------


def test_a_second_run_into_a_used_folder_is_refused_unless_asked(
    trained: Path, tmp_path: Path
) -> None:
    run = _copy_run(trained, tmp_path / "run")
    kept = ["metrics.json", "config.yaml", "checkpoints/last.ckpt", ".hydra/overrides.yaml"]
    before = {name: _md5(run / name) for name in kept}
    args = [*TINY, "logger=none", f"hydra.run.dir={run}"]
    proc = run_train(args, tmp_path)
    assert proc.returncode == 1
    held = "already holds the results of a run (metrics.json, config.yaml, checkpoints)"
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {run} {held}")
    assert f"python -m fcn.resume {run}" in proc.stderr and "overwrite=true" in proc.stderr
    assert {name: _md5(run / name) for name in kept} == before  # .hydra/ included
    proc = run_train([*args, "overwrite=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1  # a new run, not the old history
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run / "checkpoints").iterdir())) == 2  # the old best checkpoint is gone


def test_an_existing_output_file_is_refused_before_any_work(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    mine = tmp_path / "mine.json"
    mine.write_text("my own results\n")
    for entry in ("evaluate", "export"):
        args = [f"ckpt_path={ckpt}", f"output_file={mine}", f"hydra.run.dir={entry}"]
        proc = run_train(args, tmp_path, entry=entry)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last == f"error: output_file {mine} already exists: add overwrite=true to replace it"
    assert mine.read_text() == "my own results\n"


def test_a_used_sweep_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    cfg = OmegaConf.create({"overwrite": False, "hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit):
        RunFolderGuard().on_multirun_start(cfg)
    assert "already holds a sweep" in capsys.readouterr().err
    cfg.overwrite = True
    RunFolderGuard().on_multirun_start(cfg)


# --- 5. empty splits, the documented evaluate command, precision ------------------------------


def test_empty_splits_are_named_with_their_file(tmp_path: Path) -> None:
    tree = write_pascal_tree(
        tmp_path / "data", {"voc_train": ["2007_000001"], "voc_val": ["2007_000002"]}
    )
    lists = tree / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n")
    args = ["data=voc2012", "debug=tiny", "logger=none", f"paths.data_dir={tree}",
            "hydra.run.dir=run"]  # fmt: skip
    proc = run_train(args, tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: the train split is empty: no image is listed in {lists / 'train.txt'}"
    (tmp_path / "empty.txt").write_text("")
    val = PascalDataset(tree, ids_file=tmp_path / "empty.txt")
    train = PascalDataset(tree, split="voc2012_val")
    with pytest.raises(DataError, match=r"the val split is empty: no image is listed in .*empty"):
        SegmentationDataModule(train, val, num_classes=21)


def test_evaluate_on_a_voc_data_config_as_documented(tmp_path: Path) -> None:
    """``fcn.evaluate ckpt_path=<file> model=... data=voc2012``: evaluation drops the training
    set, whose root the validation set's names."""
    tree = write_pascal_tree(
        tmp_path / "data", {"voc_train": ["2007_000001"], "voc_val": ["2007_000002", "2007_3"]}
    )
    net = FCN(num_classes=21, skips=("pool4", "pool3"), trunk_width=2, fc_width=4)
    torch.save({"model_state_dict": net.state_dict()}, tmp_path / "fcn8s.pth")
    args = [
        "ckpt_path=fcn8s.pth",
        "model=fcn8",
        "model.trunk_width=2",
        "model.fc_width=4",
        "data=voc2012",
        "data.num_workers=0",
        f"paths.data_dir={tree}",
        "hydra.run.dir=out",
    ]
    proc = run_train(args, tmp_path, entry="evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert result["data"] == "voc2012_val" and "val/IoU/aeroplane" in result["metrics"]
    proc = run_train(args, tmp_path, entry="evaluate")  # the same folder again: refused
    assert proc.returncode == 1 and "already holds the results of a run" in proc.stderr


def test_every_supported_precision_trains_and_validates(tmp_path: Path) -> None:
    """The validation-masks callback (wandb, offline) runs each image at the run's precision."""
    for precision in ("64-true", "bf16-true"):
        run = tmp_path / precision
        args = [*TINY, "logger=wandb", f"trainer.precision={precision}", f"hydra.run.dir={run}"]
        proc = run_train(args, tmp_path, env={"WANDB_MODE": "offline"})
        assert proc.returncode == 0, (precision, proc.stderr[-3000:])
        assert json.loads((run / "metrics.json").read_text())["final"]["val/mIoU"] >= 0
    proc = run_train([*TINY, "trainer.precision=16-true", "hydra.run.dir=x"], tmp_path)
    assert proc.returncode == 1 and "trainer.precision=16-true is not supported" in proc.stderr
    assert not (tmp_path / "x" / "metrics.json").exists()  # refused before training


def test_precision_values() -> None:
    for value in PRECISIONS:
        check_precision(value)
    for value in ("16-true", "transformer-engine", "8"):
        with pytest.raises(ConfigError, match="use one of 32-true"):
            check_precision(value)


# --- 6. one clear line instead of a traceback ------------------------------------------------


def test_bad_checkpoints_for_training_are_named(trained: Path, tmp_path: Path) -> None:
    good = trained / "checkpoints" / "last.ckpt"
    cases = {
        "missing.ckpt": None,
        "empty.ckpt": b"",
        "text.ckpt": b"epoch 3, all fine\n" * 10,
        "truncated.ckpt": good.read_bytes()[: good.stat().st_size // 2],
        "foreign.ckpt": "state",  # a bare state dict: weights, not a training checkpoint
        "malicious.ckpt": "code",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content == "state":
            torch.save({"w": torch.zeros(2)}, path)
        elif content == "code":
            torch.save({"state_dict": {}, "loops": {}, "x": shutil.rmtree}, path)
        elif content is not None:
            path.write_bytes(content)
    expected = {
        "missing.ckpt": "checkpoint or weights file not found",
        "empty.ckpt": "is empty (0 bytes)",
        "text.ckpt": "cannot read",
        "truncated.ckpt": "cannot read",
        "foreign.ckpt": "is not a training checkpoint of fcn.train",
        "malicious.ckpt": "was refused: loading it would run code",
    }
    from fcn.checkpoint import check_resumable

    for name, message in expected.items():  # the check fcn.train makes before anything else
        with pytest.raises(DataError, match=re.escape(message)) as info:
            check_resumable(tmp_path / name, 2)
        assert str(tmp_path / name) in str(info.value)
    for name, start in (
        ("malicious.ckpt", "malicious.ckpt was refused"),
        ("truncated.ckpt", "cannot read truncated.ckpt: PytorchStreamReader"),
    ):
        proc = run_train([*TINY, "logger=none", f"ckpt_path={name}", "hydra.run.dir=r"], tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr  # through the entry point
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {start}")
    # evaluation reads the same files the same way
    proc = run_train([*EVAL, "ckpt_path=empty.ckpt"], tmp_path, entry="evaluate")
    assert proc.returncode == 1 and "error: empty.ckpt is empty (0 bytes)" in proc.stderr


def test_bad_split_files_and_settings_are_named(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"2007_000001\n\xff\xfe\x00\x81garbage" * 2000)
    with pytest.raises(DataError, match=rf"split list {ids} is not UTF-8 text \(byte 12 is 0xff\)"):
        read_ids(ids)
    proc = run_train([*TINY, "data.num_workers=-1", "hydra.run.dir=r"], tmp_path)
    assert proc.returncode == 1
    assert "error: data.num_workers must be an integer >= 0, got -1" in proc.stderr
    assert user_message(DataError("")) == "DataError"  # an empty message still says something
