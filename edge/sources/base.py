"""The camera interface: a :class:`Source` yields :class:`Frame` objects in the canonical pixel format.

A source is built from its validated config section (:class:`~edge.config.SourceSection`) and is
usable right away: ``__init__`` connects, or raises :class:`~edge.errors.SourceError` with a one-line
message. The pipeline owns each source from one capture thread; reconnecting with backoff after a loss is
the pipeline's job (it builds a new source), so a source never retries by itself.

Contract of :meth:`Source.read`:

* returns the next :class:`Frame` (image already converted by :func:`engines.pixels.to_canonical`),
* returns ``None`` when nothing arrived within ``timeout`` seconds (not an error: a triggered camera
  waiting for a part, a slow stream),
* raises :class:`~edge.errors.SourceError` when the camera is lost (the
  pipeline then closes it, marks the camera down and reconnects),
* raises :class:`EndOfStream` when a finite source (a video file, a folder without ``loop``) is done.

A source with ``supports_trigger`` accepts :meth:`trigger` (a software trigger: the next frame is
acquired for it; the folder source in step mode delivers exactly one image per trigger).
"""

from __future__ import annotations

import abc
import itertools
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

__all__ = ["EndOfStream", "Frame", "Pacer", "Source"]


_S = TypeVar("_S", bound="Source")


class EndOfStream(Exception):
    """A finite source has delivered its last frame."""


@dataclass
class Frame:
    """One acquired image.

    Attributes:
        image: canonical uint8 ``(h, w)`` gray or ``(h, w, 3)`` RGB (see :mod:`engines.pixels`).
        acquisition_id: the source's id of this acquisition (camera frame id, file name, counter).
        t_capture: wall-clock time of the acquisition (``time.time()``), for results.
        t_mono: ``time.monotonic()`` at the acquisition, for latencies.
        pixel_format: the camera's pixel format before conversion.
        meta: source-specific facts (file path, camera timestamp, ...), JSON-serialisable.
        error: set (and ``image`` None) when this acquisition happened but its image is unusable
            (unreadable file, truncated buffer, unknown pixel format): the pipeline publishes the part as
            UNKNOWN with this one-line reason instead of losing it.
    """

    image: np.ndarray | None
    acquisition_id: str
    t_capture: float = field(default_factory=time.time)
    t_mono: float = field(default_factory=time.monotonic)
    pixel_format: str = "RGB8"
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Pacer:
    """Paces a replayed source (folder, video file) to a frame rate without drifting or bursting.

    Args:
        fps: frames per second; 0 disables pacing (every frame is due at once).
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._due: float | None = None

    def wait(self, timeout: float) -> bool:
        """Sleep until the next frame is due, at most ``timeout`` seconds.

        Returns:
            True when the frame is due now (the schedule advances by one period), False when ``timeout``
            ran out first (call again).
        """
        if self.period <= 0:
            return True
        now = time.monotonic()
        due = now if self._due is None else self._due
        if due - now > timeout:
            time.sleep(max(timeout, 0.0))
            return False
        if due > now:
            time.sleep(due - now)
        # A reader that fell behind by more than a period restarts the schedule instead of bursting.
        now = time.monotonic()
        self._due = (due if now - due <= self.period else now) + self.period
        return True


class Source(abc.ABC):
    """Base class of the camera sources (folder replay, OpenCV, GenICam).

    Args:
        name: the camera's name in the line config (for messages).
    """

    kind: str = "base"
    supports_trigger: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.dropped = 0
        """Frames the source itself discarded (a live stream read slower than it delivers)."""
        self._counter = itertools.count()
        self._closed = False

    def next_id(self) -> str:
        """A fresh per-source counter value, for sources without their own frame ids."""
        return str(next(self._counter))

    @abc.abstractmethod
    def read(self, timeout: float) -> Frame | None:
        """The next frame, or ``None`` after ``timeout`` seconds without one.

        Raises:
            SourceError: the camera is lost or delivered an unusable frame.
            EndOfStream: a finite source is done.
        """

    def trigger(self) -> None:
        """Software trigger: acquire one frame for the next :meth:`read`.

        Raises:
            SourceError: this source has no software trigger (``supports_trigger`` is False).
        """
        from edge.errors import SourceError

        raise SourceError(f"camera {self.name}: the {self.kind} source has no software trigger")

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts for ``status`` (kind, device, size, pixel format, ...)."""
        return {"kind": self.kind}

    def close(self) -> None:
        """Release the camera (idempotent)."""
        self._closed = True

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
