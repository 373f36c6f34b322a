"""Callbacks of our own: the run's ``metrics.json``; the report of skipped data files; masks
of fixed validation images in wandb."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from fcn.data.labels import IGNORE_INDEX
from fcn.errors import DataError
from fcn.files import write_text
from fcn.scores import predicted_classes

log = logging.getLogger(__name__)


class MetricsFile(pl.Callback):
    """Writes ``metrics.json``: per-epoch history, the final and the best validation metrics.

    ``best`` is the epoch with the highest ``monitor``; ``status`` is ``running`` until fit ends,
    then ``finished`` (or ``failed`` / ``interrupted``). Each history entry has the epoch's wall
    time in ``seconds`` (training, validation and checkpoints). The file is rewritten atomically
    after every epoch, on rank zero only.

    ``provenance`` records where the run comes from (:mod:`fcn.provenance`: git commit and diff,
    library versions, devices, fingerprints of the training and validation ids), computed once
    per fit start on rank zero and also given to the trainer's loggers as hyperparameters. A run
    resumed in the same folder keeps its first start's ``provenance`` and appends each later
    start's record (with the epoch it started from) to ``provenance_resumed``, with a warning
    naming what differs from the first start.
    """

    def __init__(
        self,
        path: str | Path,
        monitor: str = "val/mIoU",
        mode: str = "max",
        initial_weights: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        # which weights initialised the run (the weights option, its file and SHA-256)
        self.initial_weights = _plain_dict(initial_weights)
        self.history: list[dict[str, Any]] = []
        self.provenance: dict[str, Any] | None = None  # the first start's record
        self.provenance_resumed: list[dict[str, Any]] = []  # the later starts' records
        self._this_start: dict[str, Any] | None = None
        self._taken_over = False
        self._pending_val: dict[str, float] | None = None
        self._epoch_started: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resumed in the same folder: take over the history and the provenance already
        written there; record this start's provenance (rank zero)."""
        previous = self._take_over(trainer)
        if trainer.is_global_zero:
            self._start_provenance(trainer, previous)

    def _take_over(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """Once per fit: the ``metrics.json`` a run resumed in the same folder had written (its
        history taken over), or None."""
        if self._taken_over:
            return None
        self._taken_over = True
        if not (trainer.ckpt_path and self.path.is_file() and not self.history):
            return None
        try:
            previous = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(previous, dict):
            return None
        history = previous.get("history")
        self.history = (
            [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []
        )
        first = previous.get("provenance")
        self.provenance = first if isinstance(first, dict) else None
        later = previous.get("provenance_resumed")
        self.provenance_resumed = (
            [r for r in later if isinstance(r, dict)] if isinstance(later, list) else []
        )
        return previous

    def _start_provenance(self, trainer: pl.Trainer, previous: dict[str, Any] | None) -> None:
        """Compute this start's record: the first start's, or (resumed in the same folder) one
        more later start's, with a warning naming what differs from the first start."""
        from fcn import provenance

        try:  # where the run comes from is worth recording, never worth stopping it for
            record = provenance.collect(trainer, start_epoch=None if trainer.ckpt_path else 0)
        except Exception as err:
            log.warning("the run's provenance is not recorded: %s", err)
            return
        self._this_start = record
        if previous is None:
            self.provenance, self.provenance_resumed = record, []
        else:
            self.provenance_resumed.append(record)
            changed = (
                provenance.start_differences(self.provenance, record) if self.provenance else []
            )
            if changed:
                log.warning(
                    "this resumed start differs from the run's first start (%s): %s",
                    self.path, "; ".join(changed),
                )  # fmt: skip
        self._log_provenance(trainer)

    def _log_provenance(self, trainer: pl.Trainer) -> None:
        """Give the provenance to the trainer's loggers (wandb config, CSV and TensorBoard
        hyperparameters)."""
        params: dict[str, Any] = {"provenance": self.provenance}
        if self.provenance_resumed:
            params["provenance_resumed"] = self.provenance_resumed
        for logger in trainer.loggers:
            try:
                logger.log_hyperparams(params)
            except Exception as err:
                log.warning(
                    "the provenance could not be given to %s: %s", type(logger).__name__, err
                )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep only the epochs the checkpoint holds (a run killed after its last checkpoint
        may have recorded one more); a start from a checkpoint now knows its epoch."""
        self.history = [e for e in self.history if e.get("epoch", 1 << 30) < trainer.current_epoch]
        if self._this_start is not None and self._this_start.get("start_epoch") is None:
            self._this_start["start_epoch"] = trainer.current_epoch
            self._log_provenance(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._pending_val = _scalars(trainer.callback_metrics, ("val/", "data/skipped_val"))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, status="running")
        self._epoch_started = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, status="finished")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._take_over(trainer)  # failed before on_fit_start: keep what the folder had
        try:
            self._write(trainer, status)
        except Exception as err:  # e.g. the disk is full: the run's own error is what matters
            log.warning("could not record the %s status in %s: %s", status, self.path, err)

    def _record(self, trainer: pl.Trainer, status: str) -> None:
        """Close the epoch that just ended (train/loss is logged after validation) and write."""
        epoch = trainer.current_epoch - 1
        train = _scalars(trainer.callback_metrics, ("train/", "data/skipped_train"))
        train.pop("train/loss_step", None)
        if epoch >= 0 and (self._pending_val or "train/loss" in train):
            if not self.history or self.history[-1]["epoch"] != epoch:
                entry = {"epoch": epoch, "step": trainer.global_step, **train}
                entry.update(self._pending_val or {})
                if self._epoch_started is not None:
                    entry["seconds"] = time.perf_counter() - self._epoch_started
                self.history.append(entry)
            self._pending_val = None
        self._write(trainer, status)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, status: str) -> None:
        validated = [e for e in self.history if self.monitor in e]
        best = None
        if validated:
            pick = max if self.mode == "max" else min
            best = pick(validated, key=lambda e: _finite_or(e[self.monitor], self.mode))
        ckpt = trainer.checkpoint_callback  # the first ModelCheckpoint: the best on monitor
        last = [c for c in trainer.checkpoint_callbacks if getattr(c, "filename", "") == "last"]
        doc = {
            "status": status,
            "epochs_completed": len(self.history),
            "monitor": self.monitor,
            "final": validated[-1] if validated else None,
            "best": best,
            "best_checkpoint": getattr(ckpt, "best_model_path", None) or None,
            "last_checkpoint": (last[0].best_model_path or None) if last else None,
            "initial_weights": self.initial_weights,
            "provenance": self.provenance,
            "provenance_resumed": self.provenance_resumed,
            "history": self.history,
        }
        write_text(self.path, json.dumps(_json_safe(doc), indent=2) + "\n")


def _plain_dict(mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if mapping is None:
        return None
    if isinstance(mapping, DictConfig):
        return OmegaConf.to_container(mapping, resolve=True)
    return dict(mapping)


def _scalars(metrics: dict[str, Any], prefix: str | tuple[str, ...]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix) and v.numel() == 1}


def _finite_or(value: float, mode: str) -> float:
    if math.isnan(value):
        return -math.inf if mode == "max" else math.inf
    return value


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


class SkippedFilesReport(pl.Callback):
    """At the end of each training and validation epoch, report how many unreadable data files
    were skipped (``data.on_bad_file=skip``), summed over DDP processes, as a warning and as the
    metrics ``data/skipped_train`` and ``data/skipped_val``."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "val")

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        dataset = getattr(trainer.datamodule, f"{split}_set", None)
        if not hasattr(dataset, "pop_skipped"):
            return
        local = torch.tensor(float(dataset.pop_skipped()), device=pl_module.device)
        total = int(trainer.strategy.reduce(local, reduce_op="sum").item())
        if total and not trainer.sanity_checking:
            log.warning(
                "%d unreadable file(s) skipped in this %s epoch (data.on_bad_file=skip); "
                "the warnings above name them", total, split,
            )  # fmt: skip
            pl_module.log(f"data/skipped_{split}", float(total))


class ValidationMasks(pl.Callback):
    """After every validation, logs the first ``num_images`` validation images to each wandb
    logger as segmentation masks (prediction and ground truth, with class names; void as
    ``void``), under ``val/masks``. Rank zero only; nothing without a wandb logger.

    The images are scored one at a time at their own size, in inference mode and eagerly: a
    network compiled with ``module.compile=true`` is not recompiled for their batch of one or
    their sizes (``torch.compiler.set_stance("force_eager")``). The other DDP processes wait for
    rank zero at their next collective meanwhile, so ``num_images`` bounds that wait: one
    forward pass per image (for the paper's FCN-8s at 500x375, 294 GFLOP: about a second on a
    2-core CPU) and its encoding (about 70 ms); :attr:`last_seconds` holds the time it took.
    """

    def __init__(self, num_images: int = 4, key: str = "val/masks") -> None:
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
            raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}")
        self.num_images = num_images
        self.key = key
        #: Seconds the last logging took on rank zero (scoring, encoding and logging).
        self.last_seconds: float | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if trainer.sanity_checking or not loggers or not self.num_images:
            return
        if trainer.global_rank != 0:
            return
        started = time.perf_counter()
        pictures = self.pictures(trainer, pl_module)
        for logger in loggers:
            logger.experiment.log({self.key: pictures, "trainer/global_step": trainer.global_step})
        self.last_seconds = time.perf_counter() - started
        log.debug("validation masks of %d images: %.2f s", len(pictures), self.last_seconds)

    def pictures(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list:
        """The ``wandb.Image``s (image, predicted and true masks) of the first images."""
        import wandb

        dataset = trainer.datamodule.val_set
        labels = {i: name for i, name in enumerate(pl_module.class_names)}
        labels[IGNORE_INDEX] = "void"
        precision = trainer.precision_plugin  # the run's dtype (64-true, bf16-true, ...)
        memory_format = getattr(pl_module, "memory_format", torch.contiguous_format)
        pictures = []
        for index in range(min(self.num_images, len(dataset))):
            try:
                image, label = dataset.raw(index)
            except DataError:
                continue  # already reported by the validation loop
            x = dataset.to_tensor.image(image)[None].to(pl_module.device)
            x = x.contiguous(memory_format=memory_format)
            with (
                torch.inference_mode(),
                torch.compiler.set_stance("force_eager"),  # eager even when compiled: no recompile
                precision.forward_context(),
            ):
                scores = pl_module(precision.convert_input(x))
                pred = predicted_classes(scores.float())[0].to(torch.uint8).cpu().numpy()
            masks = {
                "prediction": {"mask_data": pred, "class_labels": labels},
                "ground_truth": {"mask_data": label, "class_labels": labels},
            }
            pictures.append(wandb.Image(image, masks=masks, caption=f"val[{index}]"))
        return pictures
