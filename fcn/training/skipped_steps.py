"""Optimiser steps that a grad scaler skipped, made visible.

Under float16 mixed precision (``trainer.precision=16-mixed`` on GPUs) Lightning steps the
optimiser through a :class:`torch.amp.GradScaler`. When the scaled gradients hold inf or NaN the
scaler skips the step and lowers its scale, and says nothing: a run can lose many steps without
a trace in its metrics. This callback warns about each one and counts them.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from torch.optim import Optimizer

log = logging.getLogger(__name__)

#: The logged metric: optimiser steps skipped so far in the run.
METRIC = "train/skipped_steps"


def grad_scaler(trainer: pl.Trainer) -> Any | None:
    """The enabled grad scaler of the trainer's precision plugin, or None (32-bit, bf16 and
    64-bit precision have none; neither has 16-mixed on a CPU, where Lightning runs bf16)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return scaler


class SkippedSteps(pl.Callback):
    """Warns about every optimiser step a grad scaler skipped and logs their count.

    A skip is told by the scaler's scale: ``update()`` after a step lowers it (by its
    ``backoff_factor``, 0.5 by default) exactly when the step was skipped, and otherwise keeps
    it or raises it. The warning names the step, the epoch and batch, and the new scale;
    ``train/skipped_steps`` (the count since the run started, a resumed run included) is logged
    at every optimiser step when there is a scaler, and never logged without one.
    """

    def __init__(self) -> None:
        self.skipped = 0
        self._scale_before: float | None = None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        scaler = grad_scaler(trainer)
        self._scale_before = scaler.get_scale() if scaler is not None else None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        scaler = grad_scaler(trainer)
        before, self._scale_before = self._scale_before, None
        if scaler is None or before is None:  # no scaler, or no optimiser step this batch
            return
        after = scaler.get_scale()
        if after < before:
            self.skipped += 1
            if trainer.is_global_zero:
                log.warning(
                    "optimiser step %d (epoch %d, batch %d) was skipped: its float16 gradients "
                    "held inf or NaN, and the grad scaler lowered its scale from %g to %g "
                    "(%d step%s skipped so far)",
                    trainer.global_step, trainer.current_epoch, batch_idx, before, after,
                    self.skipped, "" if self.skipped == 1 else "s",
                )  # fmt: skip
        pl_module.log(METRIC, float(self.skipped), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
