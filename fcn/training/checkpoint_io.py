"""Lightning checkpoints written atomically beside their target, and checked before a run
resumes from one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from fcn.errors import DataError
from fcn.files import atomic_write
from fcn.models.weights import load_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through :func:`fcn.files.atomic_write` (``<name>.part`` in the checkpoint's own
    folder, then a rename), so a kill or a full disk leaves the previous checkpoint whole.

    Lightning's own save goes through a temporary file in the system's temp folder, which a
    rename across file systems turns into a copy that a full disk can cut short under the final
    name. Loading is weights-only: nothing in a checkpoint is executed.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("storage_options is not supported by AtomicCheckpointIO")
        atomic_write(Path(path), lambda partial: _save(checkpoint, partial))

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_file(path, map_location=map_location or "cpu")


def _save(checkpoint: dict[str, Any], path: Path) -> None:
    # Through a Python file object: a failed write then keeps its OSError (and errno, e.g. "no
    # space left") in the exception chain, where torch's own file writer loses it.
    with open(path, "wb") as f:
        torch.save(checkpoint, f)


def epochs_trained(checkpoint: dict[str, Any]) -> int | None:
    """The number of training epochs a Lightning checkpoint has been through (None if it does
    not say)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None


def check_resumable(path: str | Path, max_epochs: int | None) -> None:
    """Refuse, naming the file, a ``ckpt_path`` training cannot continue from: missing,
    unreadable, holding code, not a Lightning checkpoint of ``fcn.train``, or already trained
    for ``max_epochs``."""
    checkpoint = load_file(path, mmap=True)
    if not isinstance(checkpoint, dict) or not {"state_dict", "loops"} <= set(checkpoint):
        raise DataError(
            f"{path} is not a training checkpoint of fcn.train (no training state in it): to "
            f"start a new run from its weights, use weights=fcn weights.path={path} instead of "
            "ckpt_path"
        )
    done = epochs_trained(checkpoint)
    if max_epochs is not None and max_epochs >= 0 and done is not None and done >= max_epochs:
        longer = f"trainer.max_epochs={done + max(done, 1)}"
        folder = Path(path).expanduser().resolve().parent
        if folder.name == "checkpoints" and (folder.parent / ".hydra").is_dir():
            longer = f"python -m fcn.resume {folder.parent} {longer}"
        raise DataError(
            f"{path} has already trained {done} epoch(s) and trainer.max_epochs={max_epochs}: "
            f"nothing is left to train (its history is kept). To train longer: {longer}"
        )
