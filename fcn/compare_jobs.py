"""The jobs of a sweep as their own files tell them, for ``python -m fcn.compare``: each job
folder's ``metrics.json``, ``failure.json`` (a job that raised), ``config.yaml`` and ``.hydra/``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from fcn.training.tracking import run_name, swept_keys

SUMMARY = ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU", "val/loss", "train/loss")
#: The override that makes jobs repeats of one another: jobs differing only in it form a group.
SEED_KEY = "seed"


@dataclass
class Job:
    """One job folder of a sweep and what its files say."""

    folder: Path
    name: str
    status: str  # finished | failed | interrupted | incomplete | no metrics | unreadable metrics
    max_epochs: int | None = None
    metrics: dict = field(default_factory=dict)  # metrics.json, or {} when there is none
    error: str | None = None  # what is wrong with an unreadable metrics.json
    overrides: list[str] | None = None  # the job's task overrides; None when unreadable
    choices: list[str] = field(default_factory=list)  # the config groups it chose from
    failure: dict | None = None  # failure.json: status, kind, exception, reason, log

    @property
    def history(self) -> list[dict]:
        return self.metrics.get("history", [])

    @property
    def epochs(self) -> int:
        return int(self.metrics.get("epochs_completed", len(self.history)))

    @property
    def seed(self) -> str | None:
        """The value of the job's ``seed`` override, or None when it has none."""
        values = [_split(o)[1] for o in self.overrides or [] if _split(o)[0] == SEED_KEY]
        return values[-1] if values else None

    @property
    def problem(self) -> str | None:
        """Why this job is not a finished run, or None."""
        if self.status == "finished":
            return None
        log = self.folder / "train.log"
        where = f"see {log}" if log.is_file() else "no log either"
        if self.failure is not None and self.status != "unreadable metrics":
            return self._failure_text(where)
        if self.status == "no metrics":
            return f"no metrics.json: it failed before its first epoch ({where})"
        if self.status == "unreadable metrics":
            return f"{self.error} ({where})"
        if self.status == "incomplete":
            where = f"still running, or killed; {where}"
        return f"{self.status} after {self._done()} epochs ({where})"

    def _done(self) -> str:
        return f"{self.epochs}/{self.max_epochs}" if self.max_epochs else str(self.epochs)

    def _failure_text(self, where: str) -> str:
        failure = self.failure or {}
        when = f"after {self._done()} epochs" if self.metrics else "before its first epoch"
        cause = ": ".join(failure[k] for k in ("exception", "reason") if failure.get(k))
        kind = failure.get("kind")  # an interrupted job's kind is "interrupted": said once
        kind = f" ({kind})" if kind and kind != self.status else ""
        if failure.get("log"):
            where = f"see {failure['log']}"
        return f"{self.status}{kind} {when}: {cause or 'no reason recorded'} ({where})"


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _job_folders(sweep: Path) -> list[Path]:
    folders = [p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(
        folders,
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )


class BadMetrics(ValueError):
    """A ``metrics.json`` that cannot be read, or is not what MetricsFile writes."""


def _kind(value: object) -> str:
    """The JSON name of a value's type."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "?")


def _is_number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _shape_error(doc: object) -> str | None:
    """What in a parsed ``metrics.json`` is not what MetricsFile writes, or None."""
    if not isinstance(doc, dict):
        return f"{_kind(doc)} where an object was expected"
    if not isinstance(doc.get("status", ""), str):
        return f"status is {_kind(doc['status'])}, not a string"
    epochs = doc.get("epochs_completed", 0)
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return f"epochs_completed is {_kind(epochs)}, not a whole number"
    if not isinstance(doc.get("history", []), list):
        return f"history is {_kind(doc['history'])}, not an array"
    entries = [(k, doc.get(k)) for k in ("best", "final")]
    entries += [(f"history[{i}]", e) for i, e in enumerate(doc.get("history", []))]
    for where, entry in entries:
        if entry is None and not where.startswith("history"):
            continue
        if not isinstance(entry, dict):
            return f"{where} is {_kind(entry)}, not an object"
        if where.startswith("history") and not isinstance(entry.get("epoch"), int):
            return f"{where} has no whole epoch number"
        bad = next((k for k, v in entry.items() if not _is_number(v)), None)
        if bad is not None:
            return f'{where}["{bad}"] is {_kind(entry[bad])}, not a number'
    return None


def read_metrics(path: Path) -> dict:
    """The content of a ``metrics.json``; :class:`BadMetrics` names the file and what is wrong
    with it (unreadable, empty, not JSON, or not the shape MetricsFile writes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadMetrics(f"{path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise BadMetrics(f"{path} cannot be read: {err.strerror or err}") from None
    if not text.strip():
        raise BadMetrics(f"{path} is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadMetrics(
            f"{path} is not valid JSON (line {err.lineno} column {err.colno}: {err.msg})"
        ) from None
    if why := _shape_error(doc):
        raise BadMetrics(f"{path} is not a metrics file of fcn.train: {why}")
    return doc


def read_failure(folder: Path) -> dict | None:
    """The job's ``failure.json`` (what a job that raised recorded), keeping its text fields;
    None when there is none or it cannot be read."""
    try:
        doc = json.loads((folder / "failure.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    keys = ("status", "kind", "exception", "reason", "log")
    failure = {k: " ".join(doc[k].split()) for k in keys if isinstance(doc.get(k), str)}
    if failure.get("status") not in ("failed", "interrupted"):
        failure["status"] = "failed"
    return failure


def _hydra(folder: Path) -> tuple[list[str] | None, list[str]]:
    """(task overrides, chosen config groups) from ``.hydra/hydra.yaml``; the overrides from
    ``.hydra/overrides.yaml`` and no groups when only that one can be read."""
    try:
        hc = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra
        groups = [k for k, v in hc.runtime.choices.items() if v is not None]
        return [str(o) for o in hc.overrides.task], groups
    except Exception:  # missing or foreign: try the plain list
        pass
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "overrides.yaml"))
    except Exception:
        return None, []
    ok = isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)
    return (overrides, []) if ok else (None, [])


def _max_epochs(folder: Path) -> int | None:
    for config in (folder / "config.yaml", folder / ".hydra" / "config.yaml"):
        if config.is_file():
            try:
                value = OmegaConf.load(config).trainer.max_epochs
            except Exception:  # unreadable or foreign: the epochs are shown without a total
                return None
            return value if isinstance(value, int) else None
    return None


def read_job(folder: Path, keep: set[str] | None) -> Job:
    """A job from its ``metrics.json``, ``failure.json``, ``config.yaml`` and ``.hydra/``
    files; a broken ``metrics.json`` makes an ``unreadable metrics`` job that says what is wrong,
    a ``failure.json`` makes it a failed (or interrupted) job with the reason recorded there."""
    overrides, groups = _hydra(folder)
    name = (run_name(overrides, groups, keep) if groups else None) or folder.name
    job = Job(folder, name, "no metrics", _max_epochs(folder), overrides=overrides, choices=groups)
    job.failure = read_failure(folder)
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():
        try:
            job.metrics = read_metrics(metrics_file)
            job.status = job.metrics.get("status", "incomplete")
        except BadMetrics as err:
            job.status, job.error = "unreadable metrics", str(err)
    if job.status == "running":  # nobody is writing it any more, or the job is still going
        job.status = "incomplete"
    if job.failure is not None and job.status != "unreadable metrics":
        job.status = job.failure["status"]
    return job


def read_sweep(sweep: Path) -> list[Job]:
    """Every job of ``sweep`` (a Hydra multirun folder), in job order."""
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep}")
    folders = _job_folders(sweep)
    if not folders:
        raise FileNotFoundError(f"no job folders (with a .hydra/ folder) in {sweep}")
    keep = swept_keys(str(sweep))
    return [read_job(folder, keep) for folder in folders]
