"""The checkpoint format, in one place: reading any weights or checkpoint file (weights-only,
every failure named), the run config our checkpoints store (:data:`CONFIG_KEY`), the random
states they carry (:data:`RNG_KEY`), and what a run resuming from one needs.

Our checkpoints are Lightning checkpoints with two keys of our own; the network's tensors are
under ``state_dict`` with ``net.`` prefixes. Plain torch: no Lightning or Hydra needed to read
one.
"""

from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fcn.errors import DataError

log = logging.getLogger(__name__)

#: Key of the random states (torch, numpy, Python and CUDA; one set per process) in our
#: checkpoints.
RNG_KEY = "fcn_rng_states"


def load_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` weights-only, every failure a :class:`DataError` naming the file and what
    it is (missing, a folder, empty, truncated, not a PyTorch file, or holding code)."""
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise DataError(f"{path} is a broken symbolic link (or a link loop)")
    if not path.exists():
        raise DataError(f"checkpoint or weights file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a checkpoint or weights file")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes): not a checkpoint or weights file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise DataError(
                f"{path} was refused: loading it would run code it names (pickled objects other "
                "than tensors and plain containers), and files are read weights-only"
            ) from None
        raise DataError(f"cannot read {path}: {_first_line(err)} (not a PyTorch file?)") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise DataError(
            f"cannot read {path}: {_first_line(err)} (a truncated or foreign file, not a "
            "PyTorch checkpoint?)"
        ) from None


def _first_line(err: BaseException) -> str:
    """The first sentence of an error's message (torch's run to several paragraphs)."""
    text = str(err).strip()
    first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
    return first[:200]


#: Key under which our checkpoints store their run's resolved config (plain containers).
CONFIG_KEY = "fcn_config"


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict | None]:
    """The state dict of a weights file, and the run config stored in it (our Lightning
    checkpoints carry one; bare state dicts and the reference port's files do not: None).

    Accepts a bare state dict, a ``{"model_state_dict": ...}`` file (the reference port) or a
    Lightning checkpoint (``state_dict`` with ``net.`` prefixes).
    """
    obj = load_file(path)
    config = obj.get(CONFIG_KEY) if isinstance(obj, Mapping) else None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        inner = obj["state_dict"]
        state = {k.removeprefix("net."): v for k, v in inner.items() if k.startswith("net.")}
        return state, config
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DataError(f"{path} holds no state dict of tensors")
    return dict(obj), config


def stored_section(path: str | Path, section: str) -> Mapping | None:
    """One section (``module``, ``weights``, ...) of the run config stored in a checkpoint, or
    None when the file stores no such section (the tensors are memory-mapped, not read)."""
    obj = load_file(path, mmap=True)
    config = obj.get(CONFIG_KEY) if isinstance(obj, Mapping) else None
    found = config.get(section) if isinstance(config, Mapping) else None
    return found if isinstance(found, Mapping) else None


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a weights file (see :func:`read_checkpoint`)."""
    return read_checkpoint(path)[0]


def rng_states() -> dict[str, Any]:
    """The global random states of torch, numpy and Python, and those of every visible GPU
    (``cuda``: dropout on a GPU draws from them) when CUDA is available, as tensors and plain
    containers (a checkpoint holding them stays loadable weights-only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` captured. CUDA states are restored for the GPUs visible
    now (a warning when their number differs, or when there is no GPU to restore them to)."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = states.get("cuda")
    if not cuda:
        return
    if not torch.cuda.is_available():
        log.warning(
            "the checkpoint holds the random states of %d GPU(s) but no GPU is available: "
            "dropout draws differ from the saved run's",
            len(cuda),
        )
        return
    count = torch.cuda.device_count()
    if count != len(cuda):
        log.warning(
            "the checkpoint holds the random states of %d GPU(s) and %d are visible: the "
            "first %d restored",
            len(cuda), count, min(count, len(cuda)),
        )  # fmt: skip
    torch.cuda.set_rng_state_all(cuda[:count])


def rank_rng_states(per_rank: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """What our checkpoints store under :data:`RNG_KEY`: the :func:`rng_states` of every
    process of the run, by rank (None for a process whose states were not gathered)."""
    return {"world_size": len(per_rank), "ranks": list(per_rank)}


def rng_states_for_rank(
    stored: Mapping[str, Any], rank: int, world_size: int
) -> tuple[Mapping[str, Any] | None, str | None]:
    """The states process ``rank`` of ``world_size`` restores from a checkpoint's
    :data:`RNG_KEY` entry (None: keep its own), and a warning when the checkpoint cannot give
    every process its own states (None when it can).

    Reads :func:`rank_rng_states` entries and the older single-process ones (one set of states,
    restored by every process, as they always were)."""
    if "ranks" not in stored:  # the older format: the states of the process that saved
        warning = None
        if world_size > 1:
            warning = (
                f"the checkpoint holds the random states of one process; all {world_size} "
                "processes restore them"
            )
        return stored, warning
    saved = int(stored["world_size"])
    per_rank = list(stored["ranks"])
    missing = [r for r in range(world_size) if r >= saved or per_rank[r] is None]
    problems = []
    if saved != world_size:
        problems.append(
            f"the checkpoint was saved by {saved} process(es) and the run resumes with {world_size}"
        )
    if missing:
        problems.append(
            f"rank(s) {missing} find no random states of their own in it and keep their seeded "
            "ones (their dropout draws differ from an uninterrupted run's)"
        )
    return (per_rank[rank] if rank < saved else None), "; ".join(problems) or None


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
