"""Run folders: named once per SLURM job, and never written over by accident.

The ``fcn_run_name`` resolver (registered on import; ``conf/hydra/default.yaml`` names run and
sweep folders with it) gives ``slurm-<job id>`` in a SLURM batch job (``slurm-<array job id>_<task
id>`` in a task of a job array): every task that ``srun`` starts resolves the same folder, and so
does the job that SLURM requeues (it keeps its job id). Elsewhere it gives its argument, the
launch time.

:class:`RunFolderGuard` is a Hydra callback (``conf/hydra/default.yaml``): before Hydra writes
anything into the run folder (``hydra.run.dir``) it refuses a folder that holds results of an
earlier run, unless this run continues it (``fcn.resume``: ``ckpt_path`` inside the folder; a
SLURM job started again by SLURM, :func:`is_requeued`) or the user says ``overwrite=true``. A
multirun refuses a sweep folder that holds a sweep, but for a requeued job's.
:func:`requeue_checkpoint` is the checkpoint a requeued training run goes on from.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

#: What our commands leave in a run folder: a folder holding any of these holds a run.
RESULTS = (
    "metrics.json", "config.yaml", "checkpoints", "evaluation.json", "model.onnx",
    "comparison.png", "masks", "overlays", "predict.json", "splits",
)  # fmt: skip
#: What ``overwrite=true`` removes before a new training run starts in a used folder (its
#: loggers' folders stay: a new wandb run starts beside the old one).
TRAINING_RESULTS = (
    "metrics.json", "config.yaml", "checkpoints", "splits", "confusion.json", "confusion.png",
    "failure.json",
)  # fmt: skip
#: Environment variables that make a process a non-zero rank of a multi-process job.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
#: Job names of interactive SLURM allocations (``salloc``, ``srun --pty bash``): like Lightning
#: (``lightning_fabric.plugins.environments.slurm._is_slurm_interactive_mode``), runs started
#: there are not the job's own: each gets a folder of its own.
INTERACTIVE_JOB_NAMES = ("bash", "interactive")
#: What Lightning names the checkpoint it saves on SLURM's requeue signal (in the trainer's
#: ``default_root_dir``, the run folder).
HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def slurm_job() -> str | None:
    """This process's SLURM batch job: ``<job id>``, or ``<array job id>_<task id>`` for a task
    of a job array (what ``squeue`` shows); None outside SLURM or in an interactive
    allocation. The same in every task of the job, and after SLURM requeues it."""
    job = os.environ.get("SLURM_JOB_ID", "").strip()
    if not job or os.environ.get("SLURM_JOB_NAME") in INTERACTIVE_JOB_NAMES:
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID", "").strip()
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
    return f"{array_job}_{task}" if array_job and task else job


def run_name(default: str) -> str:
    """A run or sweep folder's name: ``slurm-<job>`` in a SLURM batch job (:func:`slurm_job`),
    else ``default`` (the launch time). The ``fcn_run_name`` resolver."""
    job = slurm_job()
    return f"slurm-{job}" if job else default


def is_requeued() -> bool:
    """True in a SLURM job that SLURM started again: requeued on the time-limit signal (by
    Lightning or submitit), on preemption or after a node failure. SLURM sets
    ``SLURM_RESTART_COUNT`` to the number of restarts."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def requeue_checkpoint(folder: Path) -> str | None:
    """In a requeued SLURM job (:func:`is_requeued`), the checkpoint its earlier start left in
    ``folder`` to go on from: the newer of Lightning's newest ``hpc_ckpt_<n>.ckpt`` (saved on
    the requeue signal) and ``checkpoints/last.ckpt`` (saved after every validation; the only
    one after a preemption, a node failure or submitit's requeue); None when not requeued or
    when the earlier start left neither."""
    if not is_requeued() or not folder.is_dir():
        return None
    hpc = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := HPC_CHECKPOINT.fullmatch(p.name))
    ]
    candidates = [max(hpc)[1]] if hpc else []
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        candidates.append(last)
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: p.stat().st_mtime))


OmegaConf.register_new_resolver("fcn_run_name", run_name, use_cache=True, replace=True)


def is_secondary_process() -> bool:
    """True in every process of a multi-process job but the first (those never set up
    folders: the first one does)."""
    return any(os.environ.get(name, "0").strip() not in ("", "0") for name in RANK_VARIABLES)


def held_results(folder: Path) -> list[str]:
    """The names in :data:`RESULTS` that ``folder`` holds."""
    return [name for name in RESULTS if (folder / name).exists()]


def is_inside(path: str | None, folder: Path) -> bool:
    """True when ``path`` lies in ``folder`` (a checkpoint of the run there: continuing it)."""
    if not path:
        return False
    return Path(path).expanduser().resolve().is_relative_to(folder.resolve())


def check_run_folder(folder: Path, ckpt_path: str | None, overwrite: bool, task: str) -> None:
    """Raise :class:`SystemExit` with a message when ``folder`` holds an earlier run's results
    and this run neither continues it (training from a checkpoint inside it, or a SLURM job
    that SLURM requeued: its own folder) nor was told to overwrite it."""
    held = held_results(folder) if folder.is_dir() else []
    if not held or overwrite or is_requeued():
        return
    if task == "train" and is_inside(ckpt_path, folder):
        return
    how = (
        f"continue it with python -m fcn.resume {folder}, "
        if task == "train" and "checkpoints" in held
        else ""
    )
    _refuse(
        f"{folder} already holds the results of a run ({', '.join(held)}): nothing was "
        f"written. Choose another folder (hydra.run.dir=...), {how}or add overwrite=true to "
        "replace them"
    )


def clear_training_results(folder: Path) -> list[str]:
    """Remove an earlier training run's metrics, config and checkpoints from ``folder`` (what
    ``overwrite=true`` asks for), Lightning's SLURM requeue checkpoints included (Lightning
    would otherwise restore a new run under SLURM from them); return the names removed."""
    removed = []
    hpc = sorted(p.name for p in folder.glob("hpc_ckpt_*.ckpt") if HPC_CHECKPOINT.fullmatch(p.name))
    for name in [*TRAINING_RESULTS, *hpc]:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            continue
        removed.append(name)
    return removed


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


class RunFolderGuard(Callback):
    """Hydra callback: refuse a used run folder or sweep folder before anything is written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_secondary_process():
            return
        check_run_folder(
            Path(config.hydra.run.dir),
            config.get("ckpt_path"),
            bool(config.get("overwrite", False)),
            str(config.get("task_name", "")),
        )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_secondary_process() or config.get("overwrite", False) or is_requeued():
            return
        sweep = Path(config.hydra.sweep.dir)
        if (sweep / "multirun.yaml").exists():
            _refuse(
                f"{sweep} already holds a sweep (multirun.yaml): nothing was written. Choose "
                "another folder (hydra.sweep.dir=...) or add overwrite=true"
            )
