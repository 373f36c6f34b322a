"""Runs on SLURM: one run folder per job, named from the job id, for every task that ``srun``
starts and again when SLURM requeues the job; a requeued job goes on in its folder; the SLURM
launcher's jobs (what submitit would submit, run as its tasks would) and ``paper_staged``'s
stages one at a time; the distributed collective timeout.

SLURM itself is not here: its environment variables are, as SLURM sets them for a task, and
submitit writes its real sbatch script and job pickles up to the ``sbatch`` call.
"""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fcn.errors import ConfigError
from fcn.run_folder import (
    RANK_VARIABLES,
    RunFolderGuard,
    check_run_folder,
    clear_training_results,
    is_secondary_process,
    requeue_checkpoint,
)
from fcn.training.distributed import set_collective_timeout
from tests.conftest import CONF, TINY, compose_train, run_train

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d")


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts outside SLURM and submitit, as rank zero."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "SUBMITIT_")) or name in RANK_VARIABLES:
            monkeypatch.delenv(name)


def slurm_task(job: str = "4242", procid: int = 0, ntasks: int = 2, **more: str) -> dict:
    """The environment SLURM gives task ``procid`` of a batch job of ``ntasks`` tasks on one
    node (what ``srun`` sets; the array and restart variables come in ``more``)."""
    return {
        "SLURM_JOB_ID": job, "SLURM_JOB_NAME": "train.sh", "SLURM_NTASKS": str(ntasks),
        "SLURM_NTASKS_PER_NODE": str(ntasks), "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid), "SLURM_NODEID": "0", "SLURM_NODELIST": "gpu001",
        "SLURM_JOB_NUM_NODES": "1", **more,
    }  # fmt: skip


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict) -> None:
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def at_time(monkeypatch: pytest.MonkeyPatch, when: datetime) -> None:
    """Hydra's ``now`` resolver reads this time from here on (a process started later)."""

    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:
            return when

    monkeypatch.setattr("hydra.core.utils.datetime", Clock)


def run_dirs(monkeypatch: pytest.MonkeyPatch, env: dict, when: datetime) -> tuple[str, str]:
    """``hydra.run.dir`` and ``hydra.sweep.dir`` as a process with ``env`` started at ``when``
    composes them."""
    set_env(monkeypatch, env)
    at_time(monkeypatch, when)
    cfg = compose_train(["experiment=quickstart"])
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


T0, T1 = datetime(2030, 5, 1, 12, 0, 0), datetime(2030, 5, 1, 12, 0, 3)


def test_the_tasks_of_one_job_share_one_folder_named_from_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rank0 = run_dirs(monkeypatch, slurm_task(procid=0), T0)
    rank1 = run_dirs(monkeypatch, slurm_task(procid=1), T1)  # started 3 s later
    assert is_secondary_process()
    assert rank0 == rank1 == ("outputs/train/runs/slurm-4242", "outputs/train/multiruns/slurm-4242")
    requeued = run_dirs(monkeypatch, slurm_task(SLURM_RESTART_COUNT="1"), datetime(2030, 5, 2))
    assert requeued == rank0


def test_an_array_job_gives_each_task_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    task = {"SLURM_ARRAY_JOB_ID": "4240"}
    two = run_dirs(monkeypatch, slurm_task("4243", **task, SLURM_ARRAY_TASK_ID="2"), T0)
    three = run_dirs(monkeypatch, slurm_task("4244", **task, SLURM_ARRAY_TASK_ID="3"), T0)
    assert two[0] == "outputs/train/runs/slurm-4240_2"
    assert three[0] == "outputs/train/runs/slurm-4240_3"


def test_outside_slurm_and_in_interactive_allocations_folders_are_timestamps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, sweep = run_dirs(monkeypatch, {}, T0)
    assert (run, sweep) == ("outputs/train/runs/2030-05-01_12-00-00",
                            "outputs/train/multiruns/2030-05-01_12-00-00")  # fmt: skip
    assert run_dirs(monkeypatch, {}, T1)[0] != run  # two processes: two folders
    for name in ("bash", "interactive"):  # salloc, srun --pty bash: runs of their own
        run, _ = run_dirs(monkeypatch, slurm_task(SLURM_JOB_NAME=name), T1)
        assert TIMESTAMP.fullmatch(Path(run).name), run


def test_only_a_requeued_job_goes_on_in_its_used_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    set_env(monkeypatch, slurm_task(procid=0))
    monkeypatch.chdir(tmp_path)
    cfg = compose_train(["experiment=quickstart"])
    folder = Path(cfg.hydra.run.dir)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit):  # a second run in the same job: refused
        RunFolderGuard().on_run_start(cfg)
    sweep = Path(cfg.hydra.sweep.dir)
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    with pytest.raises(SystemExit):
        RunFolderGuard().on_multirun_start(cfg)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    RunFolderGuard().on_run_start(cfg)
    RunFolderGuard().on_multirun_start(cfg)
    check_run_folder(folder, None, False, "evaluate")


def test_a_requeued_run_goes_on_from_its_newest_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "checkpoints").mkdir()
    files = ["checkpoints/last.ckpt", "hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt"]
    for age, name in zip((30, 40, 20, 10), files, strict=True):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))
    assert requeue_checkpoint(tmp_path) is None  # not requeued: a run of its own
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert requeue_checkpoint(tmp_path) == str(tmp_path / "hpc_ckpt_10.ckpt")  # Lightning's newest
    os.utime(tmp_path / files[0], (1e9, 1e9))  # an epoch ended after the last requeue
    assert requeue_checkpoint(tmp_path) == str(tmp_path / files[0])
    assert requeue_checkpoint(tmp_path / "nothing") is None
    # overwrite=true starts a new run: Lightning would restore it from an old hpc checkpoint
    removed = clear_training_results(tmp_path)
    assert removed == ["checkpoints", "hpc_ckpt_1.ckpt", "hpc_ckpt_10.ckpt", "hpc_ckpt_2.ckpt"]


class SlurmKilled(Exception):
    """What ends the process of a job that SLURM requeued (there: SIGKILL)."""


class RequeueSignal(pl.Callback):
    """Sends SLURM's requeue signal (``--signal=USR1@90``) after the first training batch of
    epoch ``epoch``; then the job is killed, as SLURM kills a job it requeues."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGUSR1)  # Lightning saves hpc_ckpt_1.ckpt, requeues
            raise SlurmKilled(f"step {trainer.global_step}")


def test_a_requeued_job_continues_its_run_with_its_history(tmp_path: Path) -> None:
    """The real thing on one task: Lightning's SLURM requeue handler saves its checkpoint in
    the run folder and asks ``scontrol`` to requeue the job; the job started again (same job
    id, ``SLURM_RESTART_COUNT=1``) finds its folder, is let in and goes on with its history."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    job = slurm_task("4242", ntasks=1, PATH=f"{bin_dir}:{os.environ['PATH']}")
    args = [*TINY, "trainer.max_epochs=2", "logger=none"]
    signal_at = ["+callbacks.requeue._target_=tests.test_slurm.RequeueSignal"]
    proc = run_train([*args, *signal_at], tmp_path, env=job)
    assert proc.returncode == 1 and "SlurmKilled: step 3" in proc.stderr, proc.stderr[-3000:]
    folder = tmp_path / "outputs" / "train" / "runs" / "slurm-4242"
    assert (folder / "hpc_ckpt_1.ckpt").is_file()
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"

    proc = run_train(args, tmp_path, env=job)  # the same job again, not requeued: refused
    assert proc.returncode == 1 and "already holds the results" in proc.stderr

    proc = run_train(args, tmp_path, env={**job, "SLURM_RESTART_COUNT": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (folder / "train.log").read_text()  # Lightning's restore (or fcn.train's resume) line
    assert f"{folder}/hpc_ckpt_1.ckpt" in log and "last.ckpt" not in log
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert [(e["epoch"], e["step"]) for e in metrics["history"]] == [(0, 2), (1, 4)]
    assert [r["start_epoch"] for r in metrics["provenance_resumed"]] == [1]


def job_folder(cfg: DictConfig) -> str:
    """The task function of the launcher tests: the folder Hydra gives the job."""
    return HydraConfig.get().runtime.output_dir


class Submitted(Exception):
    """Raised where submitit would run ``sbatch``."""


def launch(
    monkeypatch: pytest.MonkeyPatch, overrides: list[str], jobs: list[list[str]]
) -> tuple[str, list]:
    """Launch a sweep of ``jobs`` with the SLURM launcher as ``python -m fcn.train -m`` does,
    up to submitit's ``sbatch`` call: the sbatch script it would submit, and its pickled jobs
    (in job order) as each task of a job loads them."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext
    from submitit.slurm.slurm import SlurmExecutor

    bin_dir = Path.cwd() / "bin"  # submitit looks for srun before it builds an executor
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    scripts = []

    def sbatch(self: SlurmExecutor, command: str) -> None:
        scripts.append(self._make_submission_file_text(command, "uid"))
        raise Submitted

    monkeypatch.setattr(SlurmExecutor, "_submit_command", sbatch)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
    HydraConfig.instance().set_config(cfg)
    context = HydraContext(config_loader=loader, callbacks=Callbacks(cfg))
    launcher = Plugins.instance().instantiate_launcher(
        config=cfg, hydra_context=context, task_function=job_folder
    )
    with pytest.raises(Submitted):
        launcher.launch(jobs, initial_job_idx=0)
    pickles = (Path(str(cfg.hydra.sweep.dir)) / ".submitit").glob("*.pkl")
    delayed = sorted(
        (submitit.helpers.DelayedSubmission.load(p) for p in pickles), key=lambda d: d.args[2]
    )
    [script] = scripts
    return script, delayed


def run_task(monkeypatch: pytest.MonkeyPatch, pickled: Path, env: dict) -> Path:
    """Run a submitted job as one task of it does (``python -m submitit.core._submit``: load
    the job's pickle, call it) with SLURM's environment ``env``; the job's folder."""
    import submitit
    from hydra.core.global_hydra import GlobalHydra

    set_env(monkeypatch, env)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    try:
        return Path(submitit.helpers.DelayedSubmission.load(pickled).result().return_value)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("launched_in", ["login node", "SLURM job"])
def test_a_launched_job_has_one_folder_on_every_task_and_on_requeue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, launched_in: str
) -> None:
    monkeypatch.chdir(tmp_path)
    at_time(monkeypatch, T0)
    if launched_in == "SLURM job":  # e.g. launched by a batch script: the sweep is that job's
        set_env(monkeypatch, slurm_task("100", ntasks=1, SLURM_JOB_NAME="launch.sh"))
    common = ["hydra/launcher=slurm", "experiment=quickstart", "trainer.devices=2"]
    script, delayed = launch(monkeypatch, common, [[*common, f"seed={s}"] for s in (0, 1)])
    sweep = (
        tmp_path
        / "outputs/train/multiruns"
        / ("2030-05-01_12-00-00" if launched_in == "login node" else "slurm-100")
    )
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --ntasks-per-node=2" in script
    assert [d.args[2] for d in delayed] == [0, 1]

    at_time(monkeypatch, T1)  # the jobs start later, each task at its own time
    pickled = tmp_path / "job1.pkl"
    delayed[1].dump(pickled)
    array_task = {"SLURM_ARRAY_JOB_ID": "5000", "SLURM_ARRAY_TASK_ID": "1"}
    tasks = [
        run_task(monkeypatch, pickled, slurm_task("5002", rank, **array_task)) for rank in (0, 1)
    ]
    assert tasks == [sweep / "1", sweep / "1"]

    # submitit's requeue on the time-limit signal pickles launcher.checkpoint(*args) for the
    # job's next start, with the same job id and SLURM_RESTART_COUNT=1
    at_time(monkeypatch, datetime(2030, 5, 3))
    again = delayed[1].function.checkpoint(*delayed[1].args)
    again.dump(pickled)
    requeued = slurm_task("5002", 0, **array_task, SLURM_RESTART_COUNT="1")
    assert run_task(monkeypatch, pickled, requeued) == sweep / "1"


def test_the_slurm_launcher_kills_the_job_when_a_task_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What submitit would submit: srun with --kill-on-bad-exit=1, one task per device."""
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    monkeypatch.chdir(tmp_path)
    overrides = ["hydra/launcher=slurm", "experiment=quickstart", "trainer.devices=4",
                 "trainer.num_nodes=2", "hydra.launcher.partition=gpu"]  # fmt: skip
    cfg = compose_train(overrides)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    # hydra-submitit-launcher's dataclass, every field of it, and submitit's srun_args
    assert set(params) == {f.name for f in fields(SlurmQueueConf)} | {"srun_args"}
    assert params["srun_args"] == ["--kill-on-bad-exit=1"]
    script, _ = launch(monkeypatch, overrides, [overrides])
    [srun] = [line for line in script.splitlines() if line.startswith("srun ")]
    assert "--kill-on-bad-exit=1" in srun.split() and "submitit.core._submit" in srun
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                 "--signal=USR2@120"):  # fmt: skip
        assert f"#SBATCH {line}" in script.splitlines()


def test_paper_staged_runs_its_stages_one_at_a_time_on_slurm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    staged = ["experiment=paper_staged"]
    launcher = compose_train([*staged, "hydra/launcher=slurm", "model=fcn32"]).hydra.launcher
    assert launcher.array_parallelism == 1 and launcher.max_num_timeout == 0
    assert launcher.srun_args == ["--kill-on-bad-exit=1"]
    other = compose_train(["hydra/launcher=slurm", "experiment=quickstart"]).hydra.launcher
    assert other.array_parallelism == 8 and other.max_num_timeout == 3
    basic = compose_train([*staged, "model=fcn32"]).hydra.launcher  # the basic launcher
    assert basic._target_.endswith("BasicLauncher") and "array_parallelism" not in basic

    common = [*staged, "hydra/launcher=slurm"]
    script, delayed = launch(monkeypatch, common, [[*common, f"model={m}"] for m in
                                                   ("fcn32", "fcn16", "fcn8")])  # fmt: skip
    assert "#SBATCH --array=0-2%1" in script  # array index = job number = stage order
    assert [d.args[0][-1] for d in delayed] == ["model=fcn32", "model=fcn16", "model=fcn8"]


def test_the_collective_timeout_reaches_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import torch.distributed as dist

    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
             "enable_model_summary": False, "accelerator": "cpu"}  # fmt: skip
    two = pl.Trainer(devices=2, **quiet)  # auto on two devices: Lightning's DDP
    set_collective_timeout(two, 90)
    assert two.strategy._timeout == timedelta(seconds=90)
    one = pl.Trainer(devices=1, **quiet)  # one process: no process group
    set_collective_timeout(one, 90)
    for wrong in (0, -5, float("nan"), "600", True):
        with pytest.raises(ConfigError, match="ddp_timeout_s must be a positive number"):
            set_collective_timeout(two, wrong)

    ddp = pl.Trainer(devices=1, strategy="ddp", **quiet)
    set_collective_timeout(ddp, 90)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    ddp.strategy.setup_environment()  # what fit does first: the real gloo process group
    try:
        group = dist.distributed_c10d._get_default_group()
        assert group._get_backend(torch.device("cpu")).options._timeout == timedelta(seconds=90)
    finally:
        dist.destroy_process_group()
