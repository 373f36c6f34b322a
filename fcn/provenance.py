"""Where a training run came from: the code, the library versions, the devices and the data.

:func:`collect` makes the record that ``metrics.json`` (``provenance``) and the loggers'
hyperparameters hold, once per fit start on rank zero; :func:`provenance_warnings` says in plain
English what differs among runs (for ``fcn.compare``) and between a run's first start and its
resumed starts. Its shape::

    {"start_epoch": 0, "time": "2025-01-31T12:00:00Z",
     "code": {"fcn_version": "0.1.0", "git_commit": "<40 hex>" | null,
              "git_dirty": bool | null, "git_diff_sha256": "<64 hex>" | null,
              "untracked_counted": false, "git_untracked_files": int | null},
     "versions": {"python": ..., "fcn": ..., "torch": ..., "torchvision": ...,
                  "pytorch-lightning": ..., "torchmetrics": ..., "hydra-core": ..., "wandb": ...,
                  "albumentations": ..., "cuda": ... | null},
     "devices": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "world_size": 1,
                 "strategy": "single_device", "precision": "32-true", "names": [...]},
     "data": {"train": {"of": "ids" | "generation parameters" | null, "count": int | null,
                        "sha256": "<64 hex>" | null, "parameters": {...} (generated data only)},
              "val": {...}}}

Parts that cannot be made are null (with a warning), never an error. The git fields describe the
work tree holding the imported ``fcn`` package (null when it is not in one, e.g. an installed
wheel, or when git is missing or slower than :data:`GIT_TIMEOUT`); ``git_dirty`` and the diff
hash cover the tracked files' changes against HEAD, staged or not, with fixed diff options (user
settings do not change it; a clean tree has the hash of nothing); untracked files are not in
them, only counted. The ids' hash is that of a list file of them (one per line, each ended by a
newline, UTF-8); the synthetic shapes data has no files, so what makes its scenes (class, count,
seed, sizes, objects, void width) is hashed as canonical JSON. ``start_epoch`` and ``time`` are
never compared.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pytorch_lightning as pl

log = logging.getLogger(__name__)

#: Distributions whose versions are recorded (importlib.metadata names), in this order.
PACKAGES = (
    "fcn", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core", "wandb",
    "albumentations",
)  # fmt: skip
#: Seconds all the git commands of one record may take together.
GIT_TIMEOUT = 10.0
#: ``git diff`` options that fix its output whatever the user's git settings say.
DIFF_ARGS = (
    "-c", "core.quotePath=true", "diff", "HEAD", "--binary", "--full-index", "--no-color",
    "--no-ext-diff", "--no-textconv", "--no-renames", "--no-relative", "--unified=3",
    "--diff-algorithm=myers", "--indent-heuristic", "--src-prefix=a/", "--dst-prefix=b/",
    "--ignore-submodules=none",
)  # fmt: skip
#: What a shapes dataset's scenes are a function of (``cache`` changes no pixel).
SHAPES_PARAMETERS = ("num_images", "seed", "min_size", "max_size", "max_objects", "void_width")


# ----------------------------------------------------------------------------------- the code


class _GitFailed(Exception):
    """A git command failed or could not start."""


class _GitTimeout(_GitFailed):
    """Git took more than its time."""


def _git_env() -> dict[str, str]:
    """The environment without variables that point git at another repository, and with
    prompts and optional index writes off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", GIT_ASKPASS="", SSH_ASKPASS="")
    env["LC_ALL"] = "C"
    return env


def _git(
    git: str, cwd: Path, args: Sequence[str], deadline: float, sink: Callable | None = None
) -> str:
    """Run ``git args`` in ``cwd``; its output (or, with ``sink``, each chunk handed to it).
    :class:`_GitFailed` when it fails, cannot start or runs past ``deadline``."""
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        raise _GitTimeout(f"no time was left for git {args[0]}")
    try:
        proc = subprocess.Popen(
            [git, *args], cwd=cwd, env=_git_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    except OSError as err:
        raise _GitFailed(str(err)) from None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    chunks: list[bytes] = []
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 16):
            (sink or chunks.append)(chunk)
        code = proc.wait()
    finally:
        timer.cancel()
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    command = next(a for a in args if not a.startswith("-") and "=" not in a)
    if time.monotonic() >= deadline:
        raise _GitTimeout(f"git {command} did not end within the {GIT_TIMEOUT:g} s allowed")
    if code != 0:
        raise _GitFailed(f"git {command} exited with status {code}")
    return b"".join(chunks).decode("utf-8", "replace")


def fcn_version() -> str | None:
    """The installed ``fcn`` distribution's version (the package's own when not installed)."""
    try:
        return importlib.metadata.version("fcn")
    except importlib.metadata.PackageNotFoundError:
        import fcn

        return getattr(fcn, "__version__", None)


def code_provenance(package_dir: str | Path, timeout: float = GIT_TIMEOUT) -> dict[str, Any]:
    """The ``code`` record of the package in ``package_dir``: its git commit, whether the work
    tree is dirty, the SHA-256 of its diff against HEAD and the number of untracked files; all
    null when ``package_dir`` holds no file tracked by a git work tree, when git is missing or
    when it takes more than ``timeout`` seconds (never an error, never a prompt)."""
    record: dict[str, Any] = {
        "fcn_version": fcn_version(),
        "git_commit": None,
        "git_dirty": None,
        "git_diff_sha256": None,
        "untracked_counted": False,
        "git_untracked_files": None,
    }
    git = shutil.which("git")
    package_dir = Path(package_dir)
    if git is None or not package_dir.is_dir():
        return record
    deadline = time.monotonic() + timeout
    try:
        top = Path(_git(git, package_dir, ["rev-parse", "--show-toplevel"], deadline).strip())
        # a package installed into a virtual environment inside some repository is not its code
        _git(git, package_dir, ["ls-files", "--error-unmatch", "--", "."], deadline)
        commit = _git(git, top, ["rev-parse", "--verify", "HEAD^{commit}"], deadline).strip()
    except _GitTimeout as err:
        log.warning("the git commit of %s is not recorded: %s", package_dir, err)
        return record
    except _GitFailed as err:  # not a work tree (or not one that tracks the package)
        log.debug("no git commit recorded for %s: %s", package_dir, err)
        return record
    record["git_commit"] = commit or None
    try:
        digest = hashlib.sha256()
        size = [0]

        def take(chunk: bytes) -> None:
            digest.update(chunk)
            size[0] += len(chunk)

        _git(git, top, DIFF_ARGS, deadline, sink=take)
        record["git_diff_sha256"] = digest.hexdigest()
        record["git_dirty"] = size[0] > 0
        untracked = _git(git, top, ["ls-files", "--others", "--exclude-standard", "-z"], deadline)
        record["git_untracked_files"] = untracked.count("\0")
    except _GitFailed as err:
        log.warning("the git state of %s is not recorded: %s", top, err)
    return record


@functools.cache
def this_code() -> dict[str, Any]:
    """:func:`code_provenance` of the imported ``fcn`` package, computed once per process (the
    code a process runs is the code it imported)."""
    import fcn

    return code_provenance(Path(fcn.__file__).resolve().parent)


# ------------------------------------------------------------------------- versions, devices


def versions() -> dict[str, str | None]:
    """Python's version, each of :data:`PACKAGES`' (null when not installed) and the CUDA
    version torch was built with (null for a CPU build)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = fcn_version() if name == "fcn" else None
    torch = sys.modules.get("torch")
    found["cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    return found


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what the platform module says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_provenance(trainer: pl.Trainer) -> dict[str, Any]:
    """The ``devices`` record: accelerator, devices per node, nodes, world size, strategy,
    precision and the name of each device of rank zero's node (GPU names from torch.cuda, the
    CPU model otherwise)."""
    import torch

    strategy = trainer.strategy
    used = getattr(strategy, "parallel_devices", None) or [strategy.root_device]
    names = []
    for device in used:
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_available():
            names.append(torch.cuda.get_device_name(device))
        elif device.type == "cpu":
            names.append(cpu_model())
        else:
            names.append(f"{device.type} ({cpu_model()})")
    accelerator = type(trainer.accelerator).__name__
    return {
        "accelerator": accelerator.removesuffix("Accelerator").lower() or accelerator,
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "strategy": _strategy_name(strategy),
        "precision": str(trainer.precision),
        "names": names,
    }


def _strategy_name(strategy: Any) -> str:
    """The strategy's registry name (``single_device``, ``ddp``, ``fsdp``, ...)."""
    name = getattr(type(strategy), "strategy_name", None)
    if isinstance(name, str) and name:
        return name
    kind = type(strategy).__name__
    return kind.removesuffix("Strategy").lower() or kind


# ------------------------------------------------------------------------------------ the data


def _sha256_lines(lines: Iterable[str]) -> str:
    """SHA-256 of the lines, each ended by a newline, in UTF-8: of a list file holding them."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(f"{line}\n".encode())
    return digest.hexdigest()


def _unwrap(dataset: Any) -> Any:
    """The dataset under the datamodule's TransformedDataset wrapper."""
    from fcn.data.datamodule import TransformedDataset

    while isinstance(dataset, TransformedDataset):
        dataset = dataset.dataset
    return dataset


def _ids(dataset: Any) -> list[str] | None:
    """The ids of ``dataset`` in order (through torch's Subset and ConcatDataset), or None."""
    from torch.utils.data import ConcatDataset, Subset

    dataset = _unwrap(dataset)
    if isinstance(dataset, Subset):
        inner = _ids(dataset.dataset)
        return None if inner is None else [inner[int(i)] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [_ids(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else [i for p in parts for i in p]
    ids = getattr(dataset, "ids", None)
    return [str(i) for i in ids] if ids is not None else None


def _plain(value: Any) -> Any:
    """A JSON value: numbers and strings as they are (numpy's as Python's), others as text."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    item = getattr(value, "item", None)  # numpy scalars
    return item() if callable(item) else str(value)


def data_fingerprint(dataset: Any) -> dict[str, Any] | None:
    """The record of one split: ``of: ids`` with the count and the SHA-256 of the ordered ids
    (each ended by a newline, UTF-8: the hash of a list file of them); for the synthetic shapes
    data, which has no files, ``of: generation parameters`` with the count, the parameters and
    the SHA-256 of their canonical JSON; ``of: null`` (no hash) for a dataset with neither.
    None for no dataset."""
    if dataset is None:
        return None
    from fcn.data.shapes import ShapesDataset

    inner = _unwrap(dataset)
    ids = _ids(inner)
    if ids is not None:
        return {"of": "ids", "count": len(ids), "sha256": _sha256_lines(ids)}
    if isinstance(inner, ShapesDataset):
        parameters = {"dataset": f"{type(inner).__module__}.{type(inner).__qualname__}"}
        parameters.update({k: _plain(getattr(inner, k)) for k in SHAPES_PARAMETERS})
        text = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
        return {
            "of": "generation parameters",
            "count": len(inner),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "parameters": parameters,
        }
    try:
        count: int | None = len(inner)
    except TypeError:
        count = None
    return {"of": None, "count": count, "sha256": None}


def data_provenance(datamodule: Any) -> dict[str, Any]:
    """The ``data`` record: :func:`data_fingerprint` of the training and validation sets."""
    return {
        split: data_fingerprint(getattr(datamodule, f"{split}_set", None))
        for split in ("train", "val")
    }


def collect(trainer: pl.Trainer, start_epoch: int | None = 0) -> dict[str, Any]:
    """The provenance record of a fit starting (at ``start_epoch``; None: not known yet)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "start_epoch": start_epoch,
        "time": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "code": _part("code", lambda: dict(this_code())),
        "versions": _part("versions", versions),
        "devices": _part("devices", lambda: device_provenance(trainer)),
        "data": _part("data", lambda: data_provenance(getattr(trainer, "datamodule", None))),
    }


def _part(name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """One part of the record; None, with a warning, when making it fails (a record with a
    gap is worth more than none, and never worth stopping a run)."""
    try:
        return make()
    except Exception as err:
        log.warning("the %s part of the run's provenance is not recorded: %s", name, err)
        return None


# ------------------------------------------------------------------------------- the warnings


def _get(record: Mapping | None, *keys: str) -> Any:
    for key in keys:
        record = record.get(key) if isinstance(record, Mapping) else None
    return record


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _short(sha: Any, n: int = 12) -> str:
    return sha[:n] if isinstance(sha, str) else "unknown"


def _code_text(record: Mapping) -> str:
    commit = _get(record, "code", "git_commit")
    if not commit:
        version = _get(record, "code", "fcn_version") or _get(record, "versions", "fcn")
        return f"no git commit (fcn {version or 'of unknown version'})"
    return _short(commit, 7) + _changes_text(record, prefix=" (", suffix=")")


def _changes_text(record: Mapping, prefix: str = "", suffix: str = "") -> str:
    dirty = _get(record, "code", "git_dirty")
    if dirty is None:
        return f"{prefix}changes unknown{suffix}"
    if not dirty:
        return f"{prefix}clean{suffix}" if not prefix else ""
    return f"{prefix}dirty, diff {_short(_get(record, 'code', 'git_diff_sha256'))}{suffix}"


def _hardware_text(record: Mapping) -> str:
    devices = _mapping(_get(record, "devices"))
    names = devices.get("names")
    names = names if isinstance(names, list) else []
    named = "; ".join(dict.fromkeys(str(n) for n in names)) or "unnamed"
    nodes = devices.get("num_nodes")
    on_nodes = f" on {nodes} nodes" if isinstance(nodes, int) and nodes > 1 else ""
    return (
        f"{devices.get('devices', '?')} x {devices.get('accelerator', '?')} ({named}){on_nodes}, "
        f"world size {devices.get('world_size', '?')}"
    )


def _data_text(split: str) -> Callable[[Mapping], str]:
    def text(record: Mapping) -> str:
        data = _get(record, "data", split)
        if not isinstance(data, Mapping):
            return "none"
        count = data.get("count")
        if data.get("of") == "ids":
            return f"{count} ids, sha256 {_short(data.get('sha256'))}"
        if data.get("of") == "generation parameters":
            return f"{count} generated images, parameters sha256 {_short(data.get('sha256'))}"
        return f"{count} items, not fingerprinted"

    return text


def _data_key(split: str) -> Callable[[Mapping], Any]:
    def key(record: Mapping) -> Any:
        data = _get(record, "data", split)
        if not isinstance(data, Mapping):
            return None
        return (data.get("of"), data.get("count"), data.get("sha256"))

    return key


class _Field(NamedTuple):
    """One compared field: how its difference reads, what is compared, how a value reads."""

    label: str
    key: Callable[[Mapping], Any]
    text: Callable[[Mapping], str]


def _version_field(name: str) -> _Field:
    label = "CUDA version differs" if name == "cuda" else f"{name} version differs"
    return _Field(
        label,
        lambda r: _get(r, "versions", name),
        lambda r: str(_get(r, "versions", name) or "none"),
    )


def _device_field(key: str, label: str) -> _Field:
    return _Field(label, lambda r: _get(r, "devices", key), lambda r: str(_get(r, "devices", key)))


def _hardware_key(record: Mapping) -> Any:
    devices = _mapping(_get(record, "devices"))
    keys = ("accelerator", "devices", "num_nodes", "world_size", "names")
    return {k: devices.get(k) for k in keys}


def _fields(records: Sequence[Mapping]) -> list[_Field]:
    """The compared fields, in the order their lines come (the uncommitted changes are
    compared only among records of one commit: see :func:`_differences`)."""
    fields = [
        _Field("git commit differs", lambda r: _get(r, "code", "git_commit"), _code_text),
        _Field(
            "uncommitted changes differ",
            lambda r: (_get(r, "code", "git_dirty"), _get(r, "code", "git_diff_sha256")),
            lambda r: f"{_short(_get(r, 'code', 'git_commit'), 7)} {_changes_text(r) or 'clean'}",
        ),
    ]
    names = ["python", *PACKAGES, "cuda"]
    names += sorted({k for r in records for k in _mapping(_get(r, "versions"))} - set(names))
    fields += [_version_field(name) for name in names]
    fields += [
        _Field("devices differ (timings are not comparable)", _hardware_key, _hardware_text),
        _device_field("strategy", "strategy differs"),
        _device_field("precision", "precision differs"),
    ]
    for split, name in (("train", "training"), ("val", "validation")):
        kinds = {_get(r, "data", split, "of") for r in records}
        label = f"{name} ids differ" if kinds == {"ids"} else f"{name} data differs"
        fields.append(_Field(label, _data_key(split), _data_text(split)))
    return fields


def _key_text(field: _Field, record: Mapping) -> str:
    return json.dumps(field.key(record), sort_keys=True, default=str)


def _differences(
    named: Sequence[tuple[str, Mapping]],
) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """For each field on which the records differ: its label and the groups of (value as read,
    the names of the records that have it)."""
    found = []
    records = [r for _, r in named]
    for field in _fields(records):
        if field.label == "uncommitted changes differ":
            commits = {_get(r, "code", "git_commit") for r in records}
            if len(commits) != 1 or None in commits:  # other commits: said by the commit line
                continue
        groups: dict[str, tuple[str, list[str]]] = {}
        for name, record in named:
            key = _key_text(field, record)
            if key not in groups:
                groups[key] = (field.text(record), [])
            groups[key][1].append(name)
        if len(groups) > 1:
            found.append((field.label, list(groups.values())))
    return found


def start_differences(first: Mapping, later: Mapping) -> list[str]:
    """One line per field on which a later start's record differs from the first start's,
    e.g. ``torch version differs: 2.5.0 at the first start, 2.6.0 now``."""
    return [
        f"{label}: {groups[0][0]} at the first start, {groups[1][0]} now"
        for label, groups in _differences([("first", first), ("later", later)])
    ]


def provenance_warnings(runs: Mapping[str, Mapping]) -> list[str]:
    """Plain-English lines saying what differs among ``runs`` (run name -> its parsed
    ``metrics.json``): one per field that differs among their first starts (git commit, or
    uncommitted changes at one commit; each library's version; devices, strategy, precision;
    training and validation ids), one naming the runs that recorded no provenance (left out),
    and one per field on which a run's resumed start differs from its first start."""
    lines = []
    recorded = [
        (name, doc["provenance"])
        for name, doc in runs.items()
        if isinstance(doc, Mapping) and isinstance(doc.get("provenance"), Mapping)
    ]
    missing = [name for name in runs if name not in {n for n, _ in recorded}]
    if missing:
        lines.append(
            f"no provenance recorded by {_names(missing)} (not compared): written by an older "
            "fcn, or the run stopped before its fit started"
        )
    for label, groups in _differences(recorded) if len(recorded) > 1 else []:
        lines.append(f"{label}: " + "; ".join(f"{text} in {_names(ns)}" for text, ns in groups))
    for name, first in recorded:
        later = runs[name].get("provenance_resumed")
        for record in later if isinstance(later, list) else []:
            if not isinstance(record, Mapping):
                continue
            epoch = record.get("start_epoch")
            at = f"epoch {epoch}" if isinstance(epoch, int) else "an unknown epoch"
            for label, groups in _differences([("first", first), ("later", record)]):
                lines.append(
                    f"{label} within {name}: {groups[0][0]} at its first start, "
                    f"{groups[1][0]} when it resumed at {at}"
                )
    return lines


def _names(names: Sequence[str]) -> str:
    """Run names joined by ``and`` (names hold commas: ``fcn8,seed=0``)."""
    return " and ".join(names)
