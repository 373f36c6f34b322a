"""A failed job does not end a sweep: real multiruns through ``python -m fcn.train -m`` where a
job fails with a user error, diverges or crashes (a bug in a constructor), with the basic
launcher and the Optuna sweeper; the other jobs finish, each failure is recorded in its job's
``failure.json``, and the sweep ends naming the failed jobs with exit status 1."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml
from pytorch_lightning import Callback

from tests.conftest import TINY, run_train
from tests.wandb_records import records

#: Sweep cases (a config group of their own, ``+case=...``): a job that trains, and jobs that
#: fail each way. Written into a folder on Hydra's search path by the tests.
CASES = {
    "fine": "",
    "user_error": "model:\n  trunk_width: 0\n",  # composes, refused when the run checks it
    "diverged": "defaults:\n  - override /optimizer: sgd\noptimizer:\n  lr: 1.0e+6\n"
    "module:\n  loss_reduction: sum\n",
    "crash": f"callbacks:\n  broken:\n    _target_: {__name__}.Broken\n",
    "interrupted": f"callbacks:\n  ctrl_c:\n    _target_: {__name__}.CtrlC\n",
}


class Broken:
    """A callback with a bug in its constructor."""

    def __init__(self) -> None:
        self.ratio = 1 / 0


class CtrlC(Callback):
    """Ctrl+C pressed as training starts."""

    def on_train_start(self, trainer: object, pl_module: object) -> None:
        raise KeyboardInterrupt


@pytest.fixture
def cases(tmp_path: Path) -> str:
    """The override that puts the sweep cases on Hydra's search path."""
    folder = tmp_path / "cases"
    for name, text in CASES.items():
        (folder / "case").mkdir(parents=True, exist_ok=True)
        (folder / "case" / f"{name}.yaml").write_text(f"# @package _global_\n{text}")
    return f"hydra.searchpath=[file://{folder}]"


def _failure(job: Path) -> dict:
    return json.loads((job / "failure.json").read_text())


def _wandb_exit_code(job: Path) -> int:
    run_file = next((job / "wandb").glob("offline-run-*/run-*.wandb"))
    exits = [r.exit for r in records(run_file) if r.WhichOneof("record_type") == "exit"]
    assert len(exits) == 1, f"{run_file}: the run was not finished"
    return exits[0].exit_code


@pytest.mark.slow
def test_failed_jobs_are_recorded_and_the_sweep_goes_on(workdir: Path, cases: str) -> None:
    folder = workdir / "sweep"
    args = ["-m", *TINY, cases, "+case=fine,user_error,diverged,crash,fine", "logger=wandb",
            f"hydra.sweep.dir={folder}"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    jobs = [folder / str(n) for n in range(5)]
    for job in (jobs[0], jobs[4]):  # before and after the failures: trained, own wandb run
        assert json.loads((job / "metrics.json").read_text())["status"] == "finished"
        assert list((job / "checkpoints").glob("*.ckpt")) and not (job / "failure.json").exists()
        assert _wandb_exit_code(job) == 0

    user, diverged, crash = (_failure(job) for job in jobs[1:4])
    assert user == {
        "status": "failed", "kind": "user error", "exception": "ConfigError",
        "reason": "model.trunk_width must be a positive integer, got 0",
        "log": str(jobs[1] / "train.log"),
    }  # fmt: skip
    assert diverged["kind"] == "diverged" and diverged["exception"] == "TrainingDiverged"
    assert "module.loss_reduction=sum" in diverged["reason"] and " at step " in diverged["reason"]
    assert json.loads((jobs[2] / "metrics.json").read_text())["status"] == "failed"
    assert crash["kind"] == "crash" and crash["exception"] == "ZeroDivisionError"
    assert crash["reason"] == f"ZeroDivisionError: division by zero (building {__name__}.Broken)"
    log = Path(crash["log"]).read_text()  # a bug keeps its traceback, in the job's log
    assert "Traceback (most recent call last)" in log and "self.ratio = 1 / 0" in log
    assert _wandb_exit_code(jobs[2]) == 1  # the diverged job's wandb run is finished as failed
    assert "ZeroDivisionError" not in (jobs[4] / "train.log").read_text()  # a log of its own

    summary = proc.stderr[proc.stderr.index("error: 3 jobs of the sweep") :].splitlines()
    assert summary[1:4] == [
        f"  #1 +case=user_error: user error: {user['reason']}",
        f"  #2 +case=diverged: diverged: {diverged['reason']}",
        f"  #3 +case=crash: crash: {crash['reason']}",
    ]


def test_ctrl_c_stops_the_sweep_and_is_recorded(workdir: Path, cases: str) -> None:
    folder = workdir / "sweep"
    args = ["-m", *TINY, cases, "+case=interrupted,fine", "logger=none",
            f"hydra.sweep.dir={folder}"]  # fmt: skip
    handler = signal.getsignal(signal.SIGINT)
    try:
        proc = run_train(args, workdir)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl+C's
    assert proc.returncode == 1
    record = _failure(folder / "0")
    assert record["status"] == "interrupted" and record["exception"] == "KeyboardInterrupt"
    assert json.loads((folder / "0" / "metrics.json").read_text())["status"] == "interrupted"
    assert not (folder / "1").exists()
    assert "  #0 +case=interrupted: interrupted: stopped by Ctrl+C" in proc.stderr


@pytest.mark.slow
def test_jobs_run_elsewhere_are_reported_from_their_folders(workdir: Path) -> None:
    """The submitit launcher (SLURM's, here in its local mode) runs each job in a process of its
    own: the end-of-sweep report reads the job's failure.json."""
    folder = workdir / "submitit"
    args = ["-m", *TINY, "hydra/launcher=submitit_local", "model.trunk_width=0",
            "logger=none", f"hydra.sweep.dir={folder}"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    reason = "model.trunk_width must be a positive integer, got 0"
    assert _failure(folder / "0")["reason"] == reason
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("  #0 ")]
    assert "model.trunk_width=0" in line and line.endswith(f": user error: {reason}")


@pytest.fixture
def studies(monkeypatch: pytest.MonkeyPatch) -> list:
    """The Optuna studies the sweeper creates (kept to read their trials afterwards)."""
    import optuna

    created = []

    def create_study(*args, **kwargs):
        created.append(real(*args, **kwargs))
        return created[-1]

    real = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", create_study)
    return created


@pytest.mark.slow
def test_a_failed_optuna_trial_is_a_failed_trial(workdir: Path, studies: list) -> None:
    from optuna.trial import TrialState

    folder = workdir / "optuna"
    args = ["-m", *TINY, "hydra/sweeper=optuna_lr_wd", "hydra.sweeper.n_trials=3",
            "model.trunk_width=choice(4,0)", "logger=none",
            f"hydra.sweep.dir={folder}"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    [study] = studies
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2, states
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert failed.params["model.trunk_width"] == 0
    assert _failure(folder / str(failed.number))["kind"] == "user error"
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all((folder / str(t.number) / "metrics.json").is_file() for t in finished)
    result = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(t.value for t in finished))
    summary = proc.stderr[proc.stderr.index("error: 1 job of the sweep") :]
    assert f"#{failed.number} " in summary and "model.trunk_width=0" in summary


def test_an_optuna_study_whose_every_trial_failed_names_them(workdir: Path) -> None:
    folder = workdir / "optuna"
    args = ["-m", *TINY, "hydra/sweeper=optuna_lr_wd", "hydra.sweeper.n_trials=2",
            "model.trunk_width=0", "logger=none", f"hydra.sweep.dir={folder}"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 1
    assert "No trials are completed yet" in proc.stderr  # Optuna finds no best trial
    summary = proc.stderr[proc.stderr.index("error: 2 jobs of the sweep") :].splitlines()
    assert summary[1].startswith("  #0 optimizer.lr=") and summary[2].startswith("  #1 ")
    assert [_failure(folder / n)["kind"] for n in ("0", "1")] == ["user error"] * 2
