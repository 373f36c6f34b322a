"""Errors a user can cause; the entry points print their message alone, without a traceback."""


class FCNError(Exception):
    """Base of the errors whose message tells the user what to fix."""


class ConfigError(FCNError):
    """A configuration value that cannot work; the message names the key."""


class DataError(FCNError):
    """Missing, unreadable or inconsistent data; the message names the file or folder."""
