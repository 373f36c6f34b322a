"""The wandb runs of a run folder (``<run>/wandb``): which exist, which are on the server, the
``wandb sync`` commands that upload the rest, and the new run a continuation becomes when wandb
cannot append to the old one.

Offline, wandb 0.31 ignores ``resume`` (a continued run's history starts again at step 0), and
``wandb sync`` (which has no ``--append``) replays a folder into the run of the same id from its
first history line: a second folder of one run id would overwrite the first's history. So a run
continued by ``fcn.resume`` keeps its run id only online, when every earlier part is on the
server; otherwise it is a new run of the same group (:func:`continuation`).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Iterable
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_only

from fcn.errors import FCNError
from fcn.files import write_text

log = logging.getLogger(__name__)
#: In ``<save_dir>/wandb``: the name, group and tags of the run folder's wandb run, which a
#: continuation under a new run id keeps (:func:`continuation`).
RUN_RECORD = "fcn-run.json"
#: wandb's run folders: ``run-<time>-<id>`` (online) and ``offline-run-<time>-<id>``.
RUN_FOLDER = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(.+)")
#: Tag of a run that continues an earlier run of the same folder under a new run id.
RESUMED_TAG = "resumed"


def run_folders(wandb_dir: str | Path) -> list[Path]:
    """The wandb run folders in ``wandb_dir`` (online ``run-<time>-<id>`` and offline
    ``offline-run-<time>-<id>``; not the ``latest-run`` link), oldest first."""
    folders = [
        p
        for p in Path(wandb_dir).glob("*run-*")
        if RUN_FOLDER.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
    ]
    return sorted(folders, key=lambda p: (RUN_FOLDER.fullmatch(p.name)[1], p.stat().st_mtime))


def folder_run_id(folder: Path) -> str:
    """The run id in a wandb run folder's name."""
    return RUN_FOLDER.fullmatch(folder.name)[2]


def is_uploaded(folder: Path) -> bool:
    """Whether a run folder's data is on the wandb server: an online run's, or an offline run's
    that ``wandb sync`` marked synced (``run-<id>.wandb.synced``)."""
    return not folder.name.startswith("offline-") or any(folder.glob("*.wandb.synced"))


def previous_run_id(save_dir: str) -> str | None:
    """The id of the wandb run already in ``save_dir/wandb`` (a resumed run folder), or None."""
    folders = run_folders(Path(save_dir) / "wandb")
    return folder_run_id(folders[-1]) if folders else None


def sync_commands(wandb_dirs: Iterable[str | Path]) -> list[str]:
    """The ``wandb sync`` commands that upload the offline runs in ``wandb_dirs`` that are not
    synced yet, oldest first: each folder is its own run.

    Folders that share a run id (a run continued offline with that id, as fcn did before it
    gave continuations a new id: offline runs ignore ``resume``, so the later folder's history
    starts again at step 0, and ``wandb sync`` replays a folder without ``resume``, from the
    run's first history line) would overwrite each other: the first is synced as it is, each
    later one as a run of its own (``--id <id>-<n>``)."""
    folders = [f for d in wandb_dirs for f in run_folders(d)]
    folders.sort(key=lambda p: (RUN_FOLDER.fullmatch(p.name)[1], p.stat().st_mtime))
    seen: dict[str, int] = {}
    first, later = [], []
    for folder in folders:
        run_id = folder_run_id(folder)
        seen[run_id] = seen.get(run_id, 0) + 1
        if is_uploaded(folder):
            continue
        if seen[run_id] == 1:
            first.append(shlex.quote(str(folder)))
        else:
            later.append(f"wandb sync --id {run_id}-{seen[run_id]} {shlex.quote(str(folder))}")
    return ([f"wandb sync {' '.join(first)}"] if first else []) + later


def read_run_record(save_dir: str) -> dict:
    """The name, group and tags recorded for the run folder's wandb run ({} when none)."""
    try:
        record = json.loads((Path(save_dir) / "wandb" / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_run_record(save_dir: str, name: str | None, group: str | None, tags: list[str]) -> None:
    """Record the run's name, group and tags in ``<save_dir>/wandb`` (rank zero only)."""
    if rank_zero_only.rank != 0:
        return
    folder = Path(save_dir) / "wandb"
    record = {"name": name, "group": group, "tags": tags}
    try:
        write_text(folder / RUN_RECORD, json.dumps(record, indent=1) + "\n")
    except (OSError, FCNError) as err:  # a continuation would lose its name: not worth failing
        log.warning("wandb: could not write %s: %s", folder / RUN_RECORD, err)


def resumed_epoch(checkpoint: str | Path) -> int | None:
    """The epoch (0-based) a run resumed from ``checkpoint`` starts in: the epochs its training
    had gone through (memory-mapped read of Lightning's loop state); None when unreadable."""
    from fcn.checkpoint import epochs_trained, load_file
    from fcn.errors import DataError

    try:
        state = load_file(checkpoint, mmap=True)
    except DataError:
        return None
    return epochs_trained(state) if isinstance(state, dict) else None


def continuation(
    previous_id: str, name: str | None, group: str | None, tags: list[str], epoch: int | None
) -> dict:
    """The ``wandb.init`` arguments of a run that continues run ``previous_id`` under a new run
    id: the same group and tags (plus ``resumed``), the name ``<name> (resumed at epoch k)``."""
    from wandb.sdk.lib.runid import generate_id

    where = f"epoch {epoch}" if epoch is not None else "its last checkpoint"
    return {
        "id": generate_id(),
        "name": f"{name or previous_id} (resumed at {where})",
        "group": group,
        "tags": list(dict.fromkeys([*tags, RESUMED_TAG])),
        "notes": f"continues run {previous_id} ({name or previous_id}) from {where}",
    }


def not_appendable(earlier: list[Path], mode: str) -> str:
    """Why a continuation cannot append to the earlier run whose folders are ``earlier``."""
    if mode != "online":
        return f"not on the server and this run logs {mode} (offline runs ignore resume)"
    folders = ", ".join(f.name for f in earlier if not is_uploaded(f))
    return f"logged offline and not synced yet ({folders}; a later sync would overwrite)"
