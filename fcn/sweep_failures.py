"""A failed job does not end a sweep: it is recorded, and the sweep goes on with the next job.

In a multirun (``python -m fcn.train -m ...``), :func:`run_sweep_job` runs each job's task: a
job that raises a user error (:class:`~fcn.errors.FCNError`, a refused ``_target_`` argument, a
full disk), diverges (``TrainingDiverged``) or crashes (any other exception: a bug, logged with
its traceback) writes ``failure.json`` into its folder::

    {"status": "failed", "kind": "user error" | "diverged" | "crash",
     "exception": "<type name>", "reason": "<one line>", "log": "<the job's log file or null>"}

logs the reason and returns a :class:`FailedJob` instead of a score. The job ends normally for
Hydra (an exception would end the sweep: the basic sweeper reads each job's return value, which
re-raises it), the basic sweeper ignores return values, and the Optuna sweeper records a value
that is no number as a failed trial (``TrialState.FAIL``) and goes on (a NaN would not do: its
``tell`` refuses it). A Ctrl+C stops the sweep, recorded with status ``"interrupted"``.

:class:`SweepFailures`, a Hydra callback (``conf/hydra/default.yaml``), reads those files where
the sweep was launched once every job has returned, so it works alike for jobs run in this
process and for jobs run elsewhere (SLURM through submitit): it prints each failed job (number,
overrides, reason) and ends the sweep with exit status 1. :func:`report_unfinished_sweep` prints
the same list when a sweep stops before that (a Ctrl+C, an Optuna study with no finished trial).
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fcn.errors import FCNError, user_error_message
from fcn.files import write_text
from fcn.run_folder import is_secondary_process

log = logging.getLogger("fcn.sweep")
T = TypeVar("T")

#: The record of a failed job, in its folder.
FAILURE_FILE = "failure.json"
#: Folders of a sweep that never hold a job's folder (not searched for failure records).
NOT_JOBS = {"wandb", "checkpoints", "tensorboard"}


@dataclass(frozen=True)
class FailedJob:
    """What a failed job returns to the sweeper in place of its score (never a number, so the
    Optuna sweeper marks the trial failed)."""

    kind: str
    reason: str

    def __str__(self) -> str:
        return f"job failed ({self.kind}): {self.reason}"


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``), wherever the launcher runs it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_sweep_job(task: Callable[[Any], T], cfg: Any) -> T | FailedJob:
    """Run one job of a sweep: a failure is recorded in the job's folder and logged, and a
    :class:`FailedJob` is returned so that the sweep goes on; a Ctrl+C is recorded and stops the
    sweep (re-raised)."""
    try:
        return task(cfg)
    except (KeyboardInterrupt, SystemExit) as err:
        if not _interrupted(err):
            raise  # an entry point's own exit status: as without a sweep
        _record("interrupted", "interrupted", "KeyboardInterrupt", "stopped by Ctrl+C")
        raise
    except Exception as err:
        kind, exception, reason = describe_failure(err)
        job = _job_name()
        if kind == "crash":  # a bug: its traceback goes to the console and the job's log
            log.error("%s crashed, the sweep goes on: %s", job, reason, exc_info=err)
        else:
            log.error("%s failed (%s), the sweep goes on: %s", job, kind, reason)
        _record("failed", kind, exception, reason)
        failed = FailedJob(kind, reason)
    gc.collect()  # the failed job's model and loaders (held in reference cycles) go now
    return failed


def describe_failure(err: BaseException) -> tuple[str, str, str]:
    """``(kind, exception type name, one-line reason)`` of a job's exception: kind ``diverged``
    (a NaN or infinite loss), ``user error`` (what :func:`~fcn.errors.user_error_message`
    accepts) or ``crash`` (a bug). The type is that of the error behind Hydra's
    ``InstantiationException``."""
    from hydra.errors import InstantiationException

    from fcn.training.module import TrainingDiverged

    cause = err.__cause__ if isinstance(err, InstantiationException) else None
    root = cause if cause is not None else err
    if isinstance(root, TrainingDiverged):
        return "diverged", type(root).__name__, one_line(str(root))
    message = user_error_message(err)
    if message is not None:
        return "user error", type(root).__name__, one_line(message)
    reason = f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
    target = re.search(r"target '([^']+)'", str(err)) if cause is not None else None
    if target:
        reason += f" (building {target[1]})"
    return "crash", type(root).__name__, one_line(reason)


def one_line(text: str) -> str:
    """``text``'s lines joined by spaces."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _interrupted(err: BaseException) -> bool:
    """True for a Ctrl+C, also when Lightning turned it into ``sys.exit(1)`` (raised while
    handling the KeyboardInterrupt)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _job_name() -> str:
    """``job N`` for log lines (Hydra's line above names its overrides)."""
    from hydra.core.hydra_config import HydraConfig

    return f"job {HydraConfig.get().job.get('num')}"


def _job_log(folder: Path) -> str | None:
    """The path of the job's log file in ``folder`` (Hydra's ``<job name>.log``), or None."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            path = Path(handler.baseFilename)
            if path.resolve().parent == folder.resolve() and path.is_file():
                handler.flush()
                return str(path)
    return None


def _record(status: str, kind: str, exception: str, reason: str) -> None:
    """Write the job's ``failure.json`` (in the first process of a multi-process job only)."""
    if is_secondary_process():
        return
    from hydra.core.hydra_config import HydraConfig

    folder = Path(HydraConfig.get().runtime.output_dir)
    record = {"status": status, "kind": kind, "exception": exception, "reason": reason,
              "log": _job_log(folder)}  # fmt: skip
    try:
        write_text(folder / FAILURE_FILE, json.dumps(record, indent=2) + "\n")
    except (OSError, FCNError) as err:  # the sweep goes on; the summary misses this job
        log.warning("could not record the failure in %s: %s", folder / FAILURE_FILE, err)


def failure_files(sweep_dir: Path) -> list[Path]:
    """The ``failure.json`` files of the job folders under ``sweep_dir``."""
    found = []
    for folder, subfolders, files in os.walk(sweep_dir):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in NOT_JOBS)
        if FAILURE_FILE in files:
            found.append(Path(folder) / FAILURE_FILE)
    return found


@dataclass(frozen=True)
class Failure:
    """A failed job of a sweep, read back from its folder."""

    folder: Path
    number: int | None
    overrides: list[str]
    record: dict


def read_failures(sweep_dir: Path) -> list[Failure]:
    """The failed (or interrupted) jobs recorded under ``sweep_dir``, by job number."""
    failures = []
    for path in failure_files(sweep_dir):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {"status": "failed", "reason": f"unreadable {path.name}"}
        number, overrides = _job_of(path.parent)
        failures.append(Failure(path.parent, number, overrides, record))
    return sorted(failures, key=lambda f: (f.number is None, f.number or 0, str(f.folder)))


def _job_of(folder: Path) -> tuple[int | None, list[str]]:
    """A job folder's number and overrides, from the files Hydra wrote into its ``.hydra``."""
    number, overrides = None, []
    try:
        overrides = list(yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or [])
        hydra_cfg = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())
        number = int(hydra_cfg["hydra"]["job"]["num"])
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        if folder.name.isdigit():
            number = int(folder.name)
    return number, [str(o) for o in overrides]


def failure_summary(failures: list[Failure], sweep_dir: Path, common: list[str]) -> str:
    """The end-of-sweep report: one line per failed job (number, the overrides that are not
    ``common`` to the whole sweep, kind and reason)."""
    jobs = f"{len(failures)} job{'s' if len(failures) > 1 else ''}"
    lines = [f"error: {jobs} of the sweep in {sweep_dir} failed:"]
    for failure in failures:
        own = [o for o in failure.overrides if o not in common] or failure.overrides
        number = "?" if failure.number is None else failure.number
        record = failure.record
        kind = record.get("kind") if record.get("status") == "failed" else record.get("status")
        lines.append(f"  #{number} {' '.join(own)}: {kind or 'failed'}: {record.get('reason')}")
    lines.append(f"(each failed job's folder holds its {FAILURE_FILE} and its log)")
    return "\n".join(lines)


#: The sweeps started in this process whose end has not been reported yet: (folder, the
#: overrides common to their jobs).
_unreported: list[tuple[Path, list[str]]] = []


def report_failures(sweep_dir: Path, common: list[str]) -> bool:
    """Print the failed jobs of the sweep in ``sweep_dir`` to stderr; True when there were."""
    failures = read_failures(sweep_dir)
    if failures:
        print(failure_summary(failures, sweep_dir, common), file=sys.stderr, flush=True)
    return bool(failures)


class SweepFailures(Callback):
    """Hydra callback: a sweep starts without the failure records of an earlier sweep in its
    folder, and ends, when any job failed, by naming each failed job and exit status 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_secondary_process():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        for path in failure_files(sweep_dir):
            path.unlink(missing_ok=True)
        _unreported.append((sweep_dir, [str(o) for o in config.hydra.overrides.task]))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if is_secondary_process() or not _unreported:
            return
        if report_failures(*_unreported.pop()):
            sys.exit(1)  # SystemExit passes through Hydra's callbacks, which swallow Exceptions


def report_unfinished_sweep(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a Hydra entry point: a sweep that ends before :class:`SweepFailures` reports it (a
    Ctrl+C, the Optuna sweeper finding no finished trial, a launcher's error) still names its
    failed jobs, after Hydra's own message; the exit status is unchanged."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> T:
        _unreported.clear()
        try:
            return main(*args, **kwargs)
        finally:
            while _unreported:
                report_failures(*_unreported.pop())

    return run
