"""Folder replay: the images of a folder, in name order, as if a camera had taken them.

For demos, line commissioning and tests: ``path`` is the folder, ``loop`` restarts at the first image
(the folder is listed again then, so images added meanwhile join the next pass), ``fps`` paces the
delivery and ``step`` delivers exactly one image per software trigger. Images are decoded like the
trainer decodes them (``IMREAD_UNCHANGED``: stored channels and bit depth, no EXIF rotation) and go
through :func:`engines.pixels.to_canonical`, so a replayed part scores exactly as in training.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import SourceError
from edge.sources.base import EndOfStream, Frame, Pacer, Source
from engines.pixels import IMAGE_SUFFIXES as _SUFFIXES
from engines.pixels import PixelFormatError, decode_image, to_canonical

__all__ = ["IMAGE_SUFFIXES", "FolderSource"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = _SUFFIXES
"""File name endings the folder source reads (matched case-insensitively)."""


class FolderSource(Source):
    """Replays the images of a folder (PNG, JPEG, BMP, TIFF) in name order.

    Args:
        name: the camera's name (for messages).
        section: its source section; uses ``path``, ``loop``, ``fps`` and ``step``.
        triggered: the camera's mode is ``triggered`` (accepted for a uniform factory; the folder source
            needs ``step`` for software triggers, otherwise each image is one part as in free run).

    Attributes:
        supports_trigger: True in ``step`` mode: :meth:`read` then returns an image only after a
            :meth:`trigger`, exactly one per trigger (triggers given ahead are counted, none lost).

    Raises:
        SourceError: the folder does not exist or holds no image.
    """

    kind = "folder"

    def __init__(self, name: str, section: Any, *, triggered: bool = False) -> None:
        super().__init__(name)
        if not section.path:
            raise SourceError(f"camera {name}: a folder source needs source.path (the image folder)")
        self.path = Path(section.path)
        self.loop = bool(section.loop)
        self.step = bool(section.step)
        self.triggered = triggered
        self.supports_trigger = self.step
        self._pacer = Pacer(0.0 if self.step else float(section.fps))
        self._files = self._list()
        self._pos = 0
        self._pass = 0
        self._triggers = 0
        self._cond = threading.Condition()

    def _list(self) -> list[Path]:
        if not self.path.is_dir():
            raise SourceError(
                f"camera {self.name}: image folder {self.path} does not exist (check source.path)"
            )
        try:
            files = sorted(
                (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                key=lambda p: p.name,
            )
        except OSError as exc:
            raise SourceError(
                f"camera {self.name}: cannot list image folder {self.path}: {exc.strerror or exc}"
            ) from None
        if not files:
            raise SourceError(
                f"camera {self.name}: image folder {self.path} holds no PNG/JPEG/BMP/TIFF image "
                "(put images there or fix source.path)"
            )
        return files

    def trigger(self) -> None:
        """Release one image for :meth:`read` (``step`` mode).

        Raises:
            SourceError: not in ``step`` mode.
        """
        if not self.step:
            super().trigger()
        with self._cond:
            self._triggers += 1
            self._cond.notify_all()

    def _wait_trigger(self, timeout: float) -> bool:
        with self._cond:
            if not self._cond.wait_for(lambda: self._triggers > 0 or self._closed, timeout=max(timeout, 0)):
                return False
            if self._closed:
                return False
            self._triggers -= 1
            return True

    def read(self, timeout: float) -> Frame | None:
        """The next image, or None when it is not due yet (``fps``) or no trigger came (``step``).

        Raises:
            EndOfStream: the last image was delivered and ``loop`` is off.
            SourceError: the folder disappeared (moved, unmounted) or the source is closed.
        """
        if self._closed:
            raise SourceError(f"camera {self.name}: the folder source is closed")
        if self._pos >= len(self._files):
            if not self.loop:
                raise EndOfStream(f"camera {self.name}: all {len(self._files)} images of {self.path} read")
            self._files = self._list()
            self._pos = 0
            self._pass += 1
        if self.step:
            if not self._wait_trigger(timeout):
                return None
        elif not self._pacer.wait(timeout):
            return None
        path = self._files[self._pos]
        self._pos += 1
        return self._frame(path)

    def _frame(self, path: Path) -> Frame:
        acq = f"{self._pass:04d}:{path.name}" if self.loop else path.name
        t_capture, t_mono = time.time(), time.monotonic()
        meta: dict[str, Any] = {"path": str(path), "index": self._pos - 1, "pass": self._pass}
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            if not self.path.is_dir():
                raise SourceError(
                    f"camera {self.name}: image folder {self.path} disappeared "
                    "(restore it or fix source.path)"
                ) from None
            if isinstance(exc, FileNotFoundError):
                why = "the file was removed while the folder was replayed"
            else:
                why = f"{exc.strerror or exc} (check the file's permissions)"
            return self._error(acq, t_capture, t_mono, meta, f"cannot read image {path}: {why}")
        try:
            img, fmt = decode_image(data)
            image = to_canonical(img, fmt)
        except (ValueError, PixelFormatError) as exc:
            msg = f"cannot read image {path}: {exc} (re-export or remove the file)"
            return self._error(acq, t_capture, t_mono, meta, msg)
        return Frame(image, acq, t_capture, t_mono, fmt, meta)

    def _error(self, acq: str, t_capture: float, t_mono: float, meta: dict[str, Any], msg: str) -> Frame:
        msg = f"camera {self.name}: {msg}"
        log.warning("%s", msg)
        return Frame(None, acq, t_capture, t_mono, "unknown", meta, error=msg)

    def describe(self) -> dict[str, Any]:
        """Kind, folder, image count, position of the next image, pass, and the replay settings."""
        return {
            "kind": self.kind,
            "path": str(self.path),
            "count": len(self._files),
            "position": self._pos,
            "pass": self._pass,
            "loop": self.loop,
            "step": self.step,
            "fps": 1.0 / self._pacer.period if self._pacer.period else 0.0,
        }

    def close(self) -> None:
        """Stop delivering (idempotent); a :meth:`read` waiting for a trigger returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
