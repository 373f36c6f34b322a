"""Errors a user can cause; the entry points print their message alone, without a traceback."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fcn.sweep_failures import FailedJob

T = TypeVar("T")


class FCNError(Exception):
    """Base of the errors whose message tells the user what to fix."""


class ConfigError(FCNError):
    """A configuration value that cannot work; the message names the key."""


class DataError(FCNError):
    """Missing, unreadable or inconsistent data; the message names the file or folder."""


def user_message(err: BaseException) -> str:
    """The message of a user error, without the traceback text a DataLoader worker adds."""
    text = str(err).strip()
    if "Original Traceback" in text:  # re-raised from a loader worker: keep the original line
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith("fcn.") and ": " in last else last
    return text or type(err).__name__


def exit_on_user_error(task: Callable[[Any], T]) -> Callable[[Any], T | FailedJob]:
    """Wrap an entry point's task: a user error prints ``error: <message>`` to stderr and exits
    with status 1; anything else (a bug) keeps its traceback.

    User errors: :class:`FCNError`; a ``_target_`` that Hydra could not call with the config's
    keys, or whose own argument check refused a value; a write that found the disk full.

    In a job of a multirun (``-m``) no failure ends the sweep: the job records it in its folder
    and returns a :class:`~fcn.sweep_failures.FailedJob` (:func:`fcn.sweep_failures.run_sweep_job`).
    """

    @functools.wraps(task)
    def run(cfg: Any) -> T | FailedJob:
        from fcn.sweep_failures import in_multirun, run_sweep_job

        if in_multirun():
            return run_sweep_job(task, cfg)
        try:
            return task(cfg)
        except Exception as err:
            message = user_error_message(err)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
        sys.exit(1)

    return run


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of a user error, or None when ``err`` is not one (a bug)."""
    if isinstance(err, FCNError):
        return user_message(err)
    from hydra.errors import InstantiationException

    if isinstance(err, InstantiationException):
        cause = err.__cause__
        if isinstance(cause, FCNError):
            return user_message(cause)
        if isinstance(cause, TypeError | ValueError) and _raised_by_the_call(cause):
            target = re.search(r"target '([^']+)'", str(err))
            return f"cannot build {target[1] if target else 'a component'}: {cause}"
    from fcn.files import disk_full_message, no_space_error

    full = no_space_error(err)
    if full is not None:
        return disk_full_message(full.filename or "a file", err)
    return None


def _raised_by_the_call(err: BaseException) -> bool:
    """True when ``err`` came from calling a target with the config's arguments (Hydra's own
    frame is the last: keys the target does not take) or from fcn's own argument checks (a
    ValueError raised in fcn's code), not from deeper inside a constructor."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    where = tb.tb_frame.f_code.co_filename.replace("\\", "/")
    if "/hydra/_internal/instantiate/" in where:
        return True
    return isinstance(err, ValueError) and "/fcn/" in where and "/site-packages/" not in where


def first_few(items: Sequence[object], count: int = 5) -> str:
    """The first ``count`` items, comma-separated, and how many more: for messages that name
    some of many files or ids."""
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(map(str, items[:count])) + more
