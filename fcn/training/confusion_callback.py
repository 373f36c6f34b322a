"""The run's confusion matrix at its best epoch: ``<run>/confusion.json`` and
``<run>/confusion.png``, and in wandb under ``val/confusion``."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from fcn.confusion import write_confusion

log = logging.getLogger(__name__)

#: What is watched when no ModelCheckpoint watches anything.
DEFAULT_MONITOR, DEFAULT_MODE = "val/mIoU", "max"


class BestConfusionMatrix(pl.Callback):
    """After each validation that is the best so far on ``monitor``, writes its confusion
    matrix (:mod:`fcn.confusion`: ``<folder>/<name>.json``, the counts and the matrix normalised
    by true class, and ``<folder>/<name>.png``, its figure) and logs the figure to each wandb
    logger as a ``wandb.Image`` under ``wandb_key``, with the counts as wandb's confusion-matrix
    chart under ``<wandb_key>_counts`` (``wandb_counts``; cells with no pixel left out).

    The matrix is the one the validation metrics accumulated (``FCNModule.last_val_confusion``,
    summed over processes under DDP): no second pass over the data. ``monitor`` and ``mode``
    None: those of the run's first ModelCheckpoint that watches a metric (``model_checkpoint``:
    ``val/mIoU``, max), so the files belong to the epoch of the best checkpoint; as there, an
    epoch replaces the files only when strictly better, and a NaN never is. The best score so
    far is kept in the checkpoints, so a resumed run (in the same folder) replaces the files only
    with an epoch that beats every earlier one, before the resume included. Files are written
    and logged on rank zero only; nothing happens outside ``fit`` or in the sanity check.
    """

    def __init__(
        self,
        folder: str | Path,
        name: str = "confusion",
        monitor: str | None = None,
        mode: str | None = None,
        wandb_key: str = "val/confusion",
        wandb_counts: bool = True,
    ) -> None:
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max', 'min' or null, got {mode!r}")
        if not name or "/" in name:
            raise ValueError(f"name must be a file name without a folder, got {name!r}")
        self.folder = Path(folder)
        self.name = name
        self.monitor = monitor
        self.mode = mode
        self.wandb_key = wandb_key
        self.wandb_counts = wandb_counts
        self.best: float | None = None  # the best monitored value so far (NaN as the worst)
        self.best_epoch: int | None = None
        self.best_step: int | None = None

    @property
    def stem(self) -> Path:
        """``<folder>/<name>``: the files are ``<stem>.json`` and ``<stem>.png``."""
        return self.folder / self.name

    def state_dict(self) -> dict[str, Any]:
        """The best score so far, its epoch and step, and the folder (kept in checkpoints)."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "folder": str(self.folder),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take over the best so far, unless the checkpoint's run wrote into another folder (a
        new run started from a checkpoint writes its own files, as ModelCheckpoint does)."""
        if state_dict.get("folder") == str(self.folder):
            self.best = state_dict.get("best")
            self.best_epoch = state_dict.get("best_epoch")
            self.best_step = state_dict.get("best_step")

    def _watched(self, trainer: pl.Trainer) -> tuple[str, str, ModelCheckpoint | None]:
        """(monitor, mode, the ModelCheckpoint watching the same) of this run."""
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        if self.monitor is None:
            watching = [c for c in checkpoints if c.monitor is not None]
            monitor = watching[0].monitor if watching else DEFAULT_MONITOR
        else:
            monitor = self.monitor
        same = [c for c in checkpoints if c.monitor == monitor]
        mode = self.mode or (same[0].mode if same else DEFAULT_MODE)
        same = [c for c in same if c.mode == mode]
        return monitor, mode, same[0] if same else None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write and log the matrix of this validation when it is the best so far."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        counts = getattr(pl_module, "last_val_confusion", None)
        monitor, mode, checkpoint = self._watched(trainer)
        current = trainer.callback_metrics.get(monitor)
        if counts is None or current is None:
            return
        value = float(current)
        if math.isnan(value):
            value = -math.inf if mode == "max" else math.inf
        if self.best is None and checkpoint is not None and checkpoint.best_model_score is not None:
            # resumed from a checkpoint written before this callback kept its own score (that
            # ModelCheckpoint runs after this callback: its score is still the earlier epochs')
            self.best = float(checkpoint.best_model_score)
        if self.best is not None and not (
            value > self.best if mode == "max" else value < self.best
        ):
            return
        self.best, self.best_epoch, self.best_step = (
            value,
            trainer.current_epoch,
            trainer.global_step,
        )
        if trainer.is_global_zero:
            self._write(trainer, pl_module, counts.numpy(), monitor, mode, float(current))

    def _write(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        counts: np.ndarray,
        monitor: str,
        mode: str,
        score: float,
    ) -> None:
        # counted from 1 as the end-of-run report does; the JSON's epoch from 0 as metrics.json
        epoch, step = trainer.current_epoch, trainer.global_step
        title = f"best {monitor} {score:.4f}, at epoch {epoch + 1} (step {step})"
        paths = write_confusion(
            self.stem,
            counts,
            pl_module.class_names,
            title=title,
            epoch=epoch,
            step=step,
            monitor=monitor,
            mode=mode,
            score=score,
        )
        log.debug("confusion matrix of epoch %d written to %s", epoch + 1, paths["json"])
        self._log_wandb(trainer, counts, pl_module.class_names, paths["figure"], title)

    def _log_wandb(
        self,
        trainer: pl.Trainer,
        counts: np.ndarray,
        class_names: list[str],
        figure: Path,
        title: str,
    ) -> None:
        from pytorch_lightning.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not self.wandb_key:
            return
        import wandb

        logged: dict[str, Any] = {self.wandb_key: wandb.Image(str(figure), caption=title)}
        if self.wandb_counts:
            rows = [
                [class_names[i], class_names[j], int(counts[i, j])]
                for i, j in zip(*np.nonzero(counts), strict=True)
            ]
            table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows)
            fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
            logged[f"{self.wandb_key}_counts"] = wandb.plot_table(
                "wandb/confusion_matrix/v1", table, fields, {"title": f"pixel counts, {title}"}
            )
        for logger in loggers:
            logger.experiment.log({**logged, "trainer/global_step": trainer.global_step})
