"""Errors a user can cause; the entry points print their message alone, without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException

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


def exit_on_user_error(task: Callable[[Any], T]) -> Callable[[Any], T]:
    """Wrap an entry point's task: a user error (also one raised while Hydra instantiates a
    ``_target_``) prints ``error: <message>`` to stderr and exits with status 1."""

    @functools.wraps(task)
    def run(cfg: Any) -> T:
        try:
            return task(cfg)
        except FCNError as err:
            print(f"error: {user_message(err)}", file=sys.stderr)
        except InstantiationException as err:
            cause = err.__cause__ if isinstance(err.__cause__, FCNError) else err
            print(f"error: {user_message(cause)}", file=sys.stderr)
        except Exception as err:
            from fcn.files import disk_full_message, is_disk_full, no_space_error

            if not is_disk_full(err):
                raise
            where = getattr(no_space_error(err), "filename", None) or "a file"
            print(f"error: {disk_full_message(where, err)}", file=sys.stderr)
        sys.exit(1)

    return run
