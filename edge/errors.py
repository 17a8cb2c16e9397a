"""User-facing errors of the edge daemon.

Each is an :class:`EdgeError` with a one-line message that says what is wrong and what to do;
``masf-edge`` prints ``error: <message>`` and exits with status 2 (never a traceback).
"""

from __future__ import annotations

from engines.errors import EngineError

__all__ = ["ControlError", "EdgeError", "SourceError"]


class EdgeError(EngineError):
    """A problem the user can fix; ``str(err)`` is a complete one-line message."""


class SourceError(EdgeError):
    """A camera cannot be opened, was lost, or delivered a frame that cannot be used."""


class ControlError(EdgeError):
    """A control request that is malformed, unknown or cannot be carried out (sent back as an error reply)."""
