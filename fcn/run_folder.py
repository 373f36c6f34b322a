"""A run folder that already holds a run is never written over by accident.

:class:`RunFolderGuard` is a Hydra callback (``conf/hydra/default.yaml``): before Hydra writes
anything into the run folder (``hydra.run.dir``) it refuses a folder that holds results of an
earlier run, unless this run continues it (``fcn.resume``: ``ckpt_path`` inside the folder) or
the user says ``overwrite=true``. A multirun refuses a sweep folder that holds a sweep.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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
    and this run neither continues it (training from a checkpoint inside it) nor was told to
    overwrite it."""
    held = held_results(folder) if folder.is_dir() else []
    if not held or overwrite or (task == "train" and is_inside(ckpt_path, folder)):
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
    ``overwrite=true`` asks for); return the names removed."""
    removed = []
    for name in TRAINING_RESULTS:
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
        if is_secondary_process() or config.get("overwrite", False):
            return
        sweep = Path(config.hydra.sweep.dir)
        if (sweep / "multirun.yaml").exists():
            _refuse(
                f"{sweep} already holds a sweep (multirun.yaml): nothing was written. Choose "
                "another folder (hydra.sweep.dir=...) or add overwrite=true"
            )
