"""Checkpoints as wandb model artifacts (``logger.wandb.log_model``): the best and the last, once.

Lightning's own ``log_model=True`` uploads, at the end of training, every file each
``ModelCheckpoint`` points at, all as versions of one artifact, and gives the alias ``best`` to
whichever file is its callback's ``best_model_path``: for a callback without a ``monitor`` (our
``last_checkpoint``) that is ``last.ckpt``, so the ``best`` alias ends on the last checkpoint. With
``save_top_k=-1`` it uploads every checkpoint as it is written. :class:`CheckpointArtifactsLogger`
uploads exactly two versions at the end of a successful training instead: the monitored
callback's best checkpoint (alias ``best``; metadata: monitor, score, epoch, global step) and the
newest checkpoint (alias ``last``). ``log_model="all"`` keeps Lightning's behaviour (every
checkpoint as it is saved); ``False`` uploads nothing. When no monitored callback saved in
the process (a resumed run whose score did not improve), the best is the one the newest
checkpoint's ModelCheckpoint state names.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

log = logging.getLogger(__name__)
#: Warned when ``log_model="all"``.
ALL_WARNING = (
    "logger.wandb.log_model=all uploads every checkpoint as it is saved: a new artifact version "
    "(a whole checkpoint) at every validation, for each checkpoint callback, so the run's "
    "storage grows with every epoch; log_model=true uploads only the best and the last "
    "checkpoint, once, at the end"
)


def check_log_model(value: Any) -> bool | str:
    """``value`` as a ``log_model`` choice: False (also None), True or ``"all"``; else a
    ValueError naming the key."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "all"):
        return {"true": True, "false": False, "all": "all"}[value.strip().lower()]
    if value is None or value is False:
        return False
    if value is True:
        return True
    raise ValueError(f"logger.wandb.log_model must be false, true or all, got {value!r}")


class CheckpointArtifactsLogger(WandbLogger):
    """A WandbLogger whose ``log_model=True`` uploads the best and the last checkpoint once, at
    the end of a successful training (see the module's docstring)."""

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """``all``: Lightning's upload of each new checkpoint; ``True``: remember the callback
        (nothing is uploaded before the end)."""
        if self._log_model == "all":
            super().after_save_checkpoint(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """On success with ``log_model=True``: upload the best and the last checkpoint."""
        if self._log_model is not True:
            super().finalize(status)
            return
        if status != "success" or self._experiment is None or not self._checkpoint_callbacks:
            return
        callbacks = list(self._checkpoint_callbacks.values())
        last = last_checkpoint(callbacks)
        best = best_checkpoint(callbacks, last)
        if best is not None:
            self._upload(best.path, "best", best)
        if last is not None:
            self._upload(last, "last", None)
        self._checkpoint_callbacks.clear()

    def _upload(self, path: Path, alias: str, best: Best | None) -> None:
        import wandb

        metadata: dict[str, Any] = {"original_filename": path.name, **checkpoint_position(path)}
        if best is not None:
            metadata.update(monitor=best.monitor, score=best.score)
            if best.mode:
                metadata["mode"] = best.mode
        if not self._checkpoint_name:
            self._checkpoint_name = f"model-{self.experiment.id}"
        artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
        artifact.add_file(str(path), name="model.ckpt", policy=self.add_file_policy)
        self.experiment.log_artifact(artifact, aliases=[alias])
        log.info("wandb: uploading %s as %s:%s", path, self._checkpoint_name, alias)


@dataclass(frozen=True)
class Best:
    """The best checkpoint of a monitored ModelCheckpoint."""

    path: Path
    monitor: str
    mode: str | None
    score: float | None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if isinstance(value, Tensor) else value)


def last_checkpoint(callbacks: list[ModelCheckpoint]) -> Path | None:
    """The newest checkpoint file the callbacks point at: ``last.ckpt`` of a callback without
    a monitor or a ``save_last`` file; else any of theirs."""
    paths = [c.last_model_path for c in callbacks]
    paths += [c.best_model_path for c in callbacks if not c.monitor]
    files = [Path(p) for p in paths if p and Path(p).is_file()]
    if not files:  # only monitored callbacks without save_last: their newest file
        files = [
            Path(p)
            for c in callbacks
            for p in [c.best_model_path, *c.best_k_models]
            if p and Path(p).is_file()
        ]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def best_checkpoint(callbacks: list[ModelCheckpoint], last: Path | None) -> Best | None:
    """The best checkpoint of the first monitored callback that saved one in this process; else
    (a resumed run whose score did not improve) the best that the newest checkpoint ``last``
    records in its ModelCheckpoint states. None when neither names a file on disk."""
    for c in callbacks:
        if c.monitor and Path(c.best_model_path or "").is_file():
            return Best(Path(c.best_model_path), c.monitor, c.mode, _number(c.best_model_score))
    if last is None:
        return None
    from fcn.checkpoint import load_file
    from fcn.errors import DataError

    try:
        states = load_file(last, mmap=True).get("callbacks") or {}
    except (DataError, AttributeError):
        return None
    for key, state in states.items():
        path = Path(state.get("best_model_path") or "") if isinstance(state, dict) else Path()
        if str(key).startswith("ModelCheckpoint") and state.get("monitor") and path.is_file():
            mode = re.search(r"'mode': '(\w+)'", str(key))
            score = _number(state.get("best_model_score"))
            return Best(path, state["monitor"], mode[1] if mode else None, score)
    return None


def checkpoint_position(path: Path) -> dict[str, int]:
    """``epoch`` and ``global_step`` stored in a Lightning checkpoint (memory-mapped: the
    tensors are not read); empty when the file cannot be read."""
    from fcn.checkpoint import load_file
    from fcn.errors import DataError

    try:
        checkpoint = load_file(path, mmap=True)
    except DataError:
        return {}
    return {k: int(checkpoint[k]) for k in ("epoch", "global_step") if k in checkpoint}
