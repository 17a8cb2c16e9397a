"""Camera sources: folder replay, OpenCV capture (devices, files, RTSP/HTTP) and GenICam cameras.

:func:`open_source` builds the source a camera's config section asks for. Each kind's module is imported
only when that kind is used, so ``harvesters`` (GenICam) is needed only by lines with GenICam cameras.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edge.errors import SourceError
from edge.sources.base import EndOfStream, Frame, Source

if TYPE_CHECKING:
    from edge.config import SourceSection

__all__ = ["KINDS", "EndOfStream", "Frame", "Source", "open_source"]

KINDS = {
    "folder": ("edge.sources.folder", "FolderSource"),
    "opencv": ("edge.sources.opencv", "OpenCVSource"),
    "genicam": ("edge.sources.genicam", "GenICamSource"),
}
"""Source kind -> (module, class); the module is imported on first use."""


def open_source(name: str, section: SourceSection, *, triggered: bool = False, **options: Any) -> Source:
    """Open the camera ``name`` described by ``section`` (connects right away).

    Args:
        name: the camera's name in the line config (for messages).
        section: its validated source section; ``section.kind`` selects the source.
        triggered: the camera's mode is ``triggered`` (GenICam: TriggerMode=On; OpenCV live stream: a
            frame per software trigger; folder: accepted, ``step`` decides).
        options: further keyword arguments of that kind's class (e.g. OpenCV ``rtsp_transport``).

    Returns:
        The open source.

    Raises:
        SourceError: unknown kind, or the source cannot be opened (one line saying what to do).
    """
    try:
        module_name, class_name = KINDS[section.kind]
    except KeyError:
        raise SourceError(
            f"camera {name}: unknown source kind {section.kind!r} (use one of {', '.join(KINDS)})"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    source: Source = cls(name, section, triggered=triggered, **options)
    return source
