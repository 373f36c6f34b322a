"""Failures end runs, never hang them: a diverging loss stops with its step and likely cause; a
DDP process that dies takes the whole job down within seconds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcn.training.module import diverged_message
from tests.conftest import TINY, run_train


def test_a_diverging_loss_stops_the_run_naming_step_and_cause(workdir: Path) -> None:
    args = [*TINY, "optimizer=sgd", "optimizer.lr=1", "module.loss_reduction=sum",
            "trainer.max_epochs=20", "logger=none", "hydra.run.dir=run"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the training loss is nan at step ") or "is inf at step" in last
    assert "module.loss_reduction=sum" in last and "1e-10" in last
    assert json.loads((workdir / "run" / "metrics.json").read_text())["status"] == "failed"


def test_the_likely_cause_follows_the_settings() -> None:
    assert "summed loss" in diverged_message(float("nan"), 7, 0, 1e-4, "sum")
    assert "seed uses Adam at 1e-4" in diverged_message(float("inf"), 7, 0, 0.5, "mean")
    assert "NaN or infinite values in the data" in diverged_message(
        float("nan"), 7, 0, 1e-4, "mean"
    )
    assert "step 7 (epoch 0)" in diverged_message(float("nan"), 7, 0, 1e-10, "sum")


def _start_ddp(workdir: Path) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(workdir)
    args = [*TINY, "trainer.max_epochs=200", "data.train_set.num_images=64", "logger=none",
            "trainer.devices=2", "trainer.strategy=ddp", "hydra.run.dir=run"]  # fmt: skip
    main = subprocess.Popen(
        [sys.executable, "-m", "fcn.train", *args], cwd=workdir, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for training to be under way in both processes
        children = subprocess.run(["pgrep", "-P", str(main.pid)], capture_output=True, text=True)
        metrics = workdir / "run" / "metrics.json"
        started = metrics.is_file() and json.loads(metrics.read_text())["epochs_completed"] >= 1
        if children.stdout.split() and started:
            return main, int(children.stdout.split()[0])
        time.sleep(0.2)
    main.kill()
    raise AssertionError("DDP training did not start")


def _ended_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` (not ours to reap) is gone, or a zombie, within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["rank 1", "rank 0"])
def test_a_dead_ddp_process_ends_the_whole_job(workdir: Path, victim: str) -> None:
    main, child = _start_ddp(workdir)
    try:
        if victim == "rank 1":
            os.kill(child, signal.SIGKILL)
            assert main.wait(timeout=60) != 0  # TimeoutExpired if rank 0 hung
        else:
            os.kill(main.pid, signal.SIGKILL)
            main.wait()
            assert _ended_within(child, 60), "rank 1 survived rank 0's death"
    finally:
        for pid in (main.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
