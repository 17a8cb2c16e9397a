"""User-facing errors.

Every error that a user can cause (bad config, bad data folder, unreadable image, bad run directory)
is raised as a :class:`UserError` subclass with a one-line message that says what is wrong and what to
do. The CLI prints ``error: <message>`` and exits with status 2, never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is a complete one-line message."""


class ConfigError(UserError):
    """Invalid configuration value; the message names the file and the field."""


class DataError(UserError):
    """Bad data folder, unreadable image, missing mask, empty split."""


class RunError(UserError):
    """Missing or corrupt run directory / checkpoint."""
