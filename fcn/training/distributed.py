"""How long a distributed process waits for the others: ``ddp_timeout_s``.

Every collective (the gradient all-reduce, the metric sums, the barriers around checkpoints)
waits for all processes. When one process hangs (a stuck file system, a deadlock) the others
wait in that collective until the process group's timeout, which torch and Lightning put at 30
minutes, holding their GPUs all that time. :func:`set_collective_timeout` sets a shorter one on
the trainer's distributed strategy before ``fit`` creates the process group; the processes that
waited longer fail with a timeout error (NCCL's watchdog aborts them; gloo raises), and the job
ends. A process that dies outright is another matter: ``srun --kill-on-bad-exit=1`` ends the
others at once, and Lightning's own launcher does on one machine.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytorch_lightning as pl
from pytorch_lightning.strategies import ParallelStrategy

from fcn.errors import ConfigError


def set_collective_timeout(trainer: pl.Trainer, seconds: float | None) -> None:
    """Give the process group that ``trainer``'s strategy creates (DDP in every form Lightning
    picks: ``ddp``, ``ddp_spawn``, ``auto`` on several devices or nodes; FSDP and DeepSpeed too)
    a timeout of ``seconds``. None keeps Lightning's default (30 minutes); a single-process
    strategy has no collectives and is left alone. Call it before ``trainer.fit``."""
    if seconds is None:
        return
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ConfigError(f"ddp_timeout_s must be a positive number of seconds, got {seconds!r}")
    strategy = trainer.strategy
    if not isinstance(strategy, ParallelStrategy):
        return
    if not hasattr(strategy, "_timeout"):  # Lightning 2.6 keeps it there (strategies/ddp.py)
        raise ConfigError(
            f"ddp_timeout_s cannot be applied to {type(strategy).__name__}: it takes no timeout"
        )
    strategy._timeout = timedelta(seconds=seconds)
