"""Lightning checkpoints written atomically beside their target and read weights-only (the
checks before a run resumes from one: :func:`fcn.checkpoint.check_resumable`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from fcn.checkpoint import load_file
from fcn.files import atomic_write


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
