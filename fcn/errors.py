"""Errors a user can cause; the entry points print their message alone, without a traceback."""


class FCNError(Exception):
    """Base of the errors whose message tells the user what to fix."""


class ConfigError(FCNError):
    """A configuration value that cannot work; the message names the key."""


class DataError(FCNError):
    """Missing, unreadable or inconsistent data; the message names the file or folder."""


def user_message(err: BaseException) -> str:
    """The message of a user error, without the traceback text a DataLoader worker adds."""
    text = str(err)
    if "Original Traceback" in text:  # re-raised from a loader worker: keep the original line
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith("fcn.errors.") else last
    return text
