"""A run killed with SIGKILL in the middle of an epoch, resumed with ``python -m fcn.resume``,
ends in its own folder and wandb run with exactly the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, run_train

#: Three epochs of 24 steps with dropout: enough random draws and shuffles to tell a resumed
#: run that lost its random state or its shuffle order from an uninterrupted one.
ARGS = [*TINY, "data.train_set.num_images=96", "trainer.max_epochs=3", "model.dropout=0.5",
        "logger=[wandb,csv]"]  # fmt: skip


def _kill_during_second_epoch(workdir: Path, run: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(workdir), WANDB_DISABLE_CODE="true")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fcn.train", *ARGS, f"hydra.run.dir={run}"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # metrics.json says epoch 1 has started (epoch 0 is checkpointed)
            if json.loads((run / "metrics.json").read_text())["epochs_completed"] >= 1:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(workdir: Path) -> None:
    proc = run_train([*ARGS, "hydra.run.dir=reference"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads((workdir / "reference" / "metrics.json").read_text())

    run = workdir / "killed"
    _kill_during_second_epoch(workdir, run)
    killed = json.loads((run / "metrics.json").read_text())
    assert killed["status"] == "running" and killed["epochs_completed"] < 3

    proc = subprocess.run(
        [sys.executable, "-m", "fcn.resume", str(run)], cwd=workdir, capture_output=True,
        text=True, timeout=600, env={**os.environ, "HOME": str(workdir)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["status"] == "finished"
    assert [e["epoch"] for e in resumed["history"]] == [0, 1, 2]

    def numbers(history: list[dict]) -> list[dict]:  # all but the wall times
        return [{k: v for k, v in e.items() if k != "seconds"} for e in history]

    assert numbers(resumed["history"]) == numbers(reference["history"])  # bit for bit
    assert not list(workdir.glob("outputs"))  # no new run folder
    offline = sorted((run / "wandb").glob("offline-run-*"))
    # offline, the continuation is a run of its own (wandb cannot append to an offline run)
    assert len(offline) == 2 and len({p.name.rsplit("-", 1)[1] for p in offline}) == 2


def test_resume_names_what_is_missing(workdir: Path) -> None:
    proc = run_train([str(workdir)], workdir, entry="resume")
    assert proc.returncode == 1 and "not a run folder of fcn.train" in proc.stderr


def test_checkpoints_are_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Trainer's checkpoint writer (AtomicCheckpointIO, in train.py) writes beside the
    target and renames: a write cut off half way leaves the previous file as it was."""
    import fcn.training.checkpoint_io

    target = tmp_path / "last.ckpt"
    writer = fcn.training.checkpoint_io.AtomicCheckpointIO()
    writer.save_checkpoint({"step": torch.tensor(1)}, target)
    real_save = torch.save

    def cut_off(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise OSError("killed while writing")

    monkeypatch.setattr(fcn.training.checkpoint_io.torch, "save", cut_off)
    with pytest.raises(OSError, match="killed"):
        writer.save_checkpoint({"step": torch.tensor(2), "more": torch.zeros(1000)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # and no partial file is left
