"""OpenCV capture: USB/V4L2 devices, video files, RTSP/HTTP network cameras and GStreamer pipelines.

``section.uri`` selects what is opened:

* a device index (``"0"``): a local camera (V4L2 on Linux); ``width`` / ``height`` / ``fps`` are
  requested from the driver;
* a video file path: a finite replay; every frame is delivered in order (the reader waits for the
  pipeline, nothing is dropped), then :class:`~edge.sources.base.EndOfStream`; ``fps`` > 0 paces it;
* an ``rtsp://``, ``http://`` (or other FFmpeg) URL: a live network camera;
* a GStreamer pipeline (contains ``!``; needs an OpenCV built with GStreamer).

A background reader thread owns the ``VideoCapture`` (grabs, and releases it when it stops). For a live
stream it keeps only the newest frames (:attr:`OpenCVSource.dropped` counts the ones it discarded), so
the pipeline always sees a current image; the stream is declared lost (:class:`~edge.errors.SourceError`
from :meth:`~OpenCVSource.read`) when no frame arrived for ``read_timeout_s``. Network streams get
OpenCV's FFmpeg open and read timeouts, so a dead camera never blocks the reader for longer.

RTSP transport: OpenCV asks FFmpeg for RTSP over TCP unless the environment variable
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` says otherwise. For a camera or relay that only streams over UDP,
pass ``rtsp_transport="udp"`` (constructor keyword, or a ``rtsp_transport`` field of the source section):
the source then sets ``OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;udp`` for the duration of its own
open (under a lock, restored afterwards); a variable the user already set is respected as it is.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import SourceError
from edge.sources.base import EndOfStream, Frame, Pacer, Source
from engines.pixels import PixelFormatError, to_canonical

__all__ = ["OpenCVSource", "classify_uri", "redact_uri"]

log = logging.getLogger(__name__)

_APIS = {"auto": cv2.CAP_ANY, "ffmpeg": cv2.CAP_FFMPEG, "gstreamer": cv2.CAP_GSTREAMER, "v4l2": cv2.CAP_V4L2}
_ENV_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# Serialises the sources' temporary changes of OPENCV_FFMPEG_CAPTURE_OPTIONS (one process environment).
_ENV_LOCK = threading.Lock()
_HINTS = {
    "device": "check that the device exists (ls /dev/video*), is connected and no other program uses it",
    "file": "check that it is a video file OpenCV can decode (e.g. MJPG or H.264 in AVI/MP4/MKV)",
    "stream": "check the URL and credentials, and that the camera is reachable from here and streaming",
    "pipeline": "check the GStreamer pipeline (it must end in appsink)",
}


def classify_uri(uri: str) -> str:
    """What ``uri`` names: ``device`` (an index), ``pipeline`` (GStreamer, has ``!``), ``stream`` (a URL
    with ``scheme://``) or ``file`` (anything else: a video file path)."""
    if uri.strip().isdigit():
        return "device"
    if "!" in uri:
        return "pipeline"
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return "stream"
    return "file"


def redact_uri(uri: str) -> str:
    """``uri`` without the password of a ``scheme://user:password@host`` URL (for logs and results)."""
    return re.sub(r"(://[^/@:\s]*):[^/@\s]*@", r"\1:***@", uri)


@dataclass
class _Grab:
    image: np.ndarray
    t_capture: float
    t_mono: float
    position: int


@contextmanager
def _capture_options(value: str | None) -> Iterator[None]:
    """Set ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` to ``value`` while OpenCV opens (unless the user set it)."""
    with _ENV_LOCK:
        if value is None or _ENV_OPTIONS in os.environ:
            yield
            return
        os.environ[_ENV_OPTIONS] = value
        try:
            yield
        finally:
            os.environ.pop(_ENV_OPTIONS, None)


class OpenCVSource(Source):
    """A ``cv2.VideoCapture`` read by a background thread.

    Args:
        name: the camera's name (for messages).
        section: its source section; uses ``uri``, ``api``, ``pixel_format`` (default ``BGR8``, what
            OpenCV delivers), ``width`` / ``height`` / ``fps`` (devices; ``fps`` also paces a video file)
            and ``read_timeout_s`` (a live stream without a frame for that long is lost).
        triggered: the camera's mode is ``triggered``: a live stream then delivers a frame only for a
            :meth:`trigger` (the newest one grabbed after it), one per trigger.
        queue_size: frames the reader keeps ahead (default 2 for a live stream: only the newest; 8 for
            a video file).
        open_timeout_s: how long opening a network stream may take, and how long a live source may wait
            for its first frame (a decoder waits for the stream's next key frame).
        rtsp_transport: ``"udp"`` or ``"tcp"`` for an ``rtsp://`` URI (default: the section's
            ``rtsp_transport`` field if it has one, else OpenCV's TCP); see the module docstring.

    Attributes:
        live: False for a video file (finite, nothing dropped), True otherwise.
        supports_trigger: True for live sources: :meth:`trigger` makes the next :meth:`read` return the
            newest frame grabbed after the trigger (one frame per trigger).
        dropped: frames of a live stream discarded because :meth:`read` was slower than the camera
            (free run only: frames skipped while waiting for a trigger are not counted).

    Raises:
        SourceError: the URI cannot be opened (says what to check), an unavailable ``api`` or a missing
            video file.
    """

    kind = "opencv"

    def __init__(
        self,
        name: str,
        section: Any,
        *,
        triggered: bool = False,
        queue_size: int | None = None,
        open_timeout_s: float = 10.0,
        rtsp_transport: str | None = None,
    ) -> None:
        super().__init__(name)
        if not section.uri:
            raise SourceError(f"camera {name}: an opencv source needs source.uri (device, file or URL)")
        self.uri = str(section.uri).strip()
        self.what = classify_uri(self.uri)
        self.live = self.what != "file"
        self.triggered = triggered and self.live
        self.supports_trigger = self.live
        self.pixel_format = section.pixel_format or "BGR8"
        self.read_timeout_s = float(section.read_timeout_s)
        self._shown = redact_uri(self.uri)
        self._pacer = Pacer(0.0 if self.live else float(section.fps))
        self._maxlen = queue_size or (2 if self.live else 8)
        self._queue: collections.deque[_Grab] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._triggers: collections.deque[float] = collections.deque()  # pending trigger times
        self._eof = False
        self._lost: str | None = None
        self._position = 0
        # Before the first frame a stream may take up to the open timeout (a decoder waits for a key frame).
        self._first_grace_s = max(self.read_timeout_s, open_timeout_s) if self.live else self.read_timeout_s
        transport = rtsp_transport or getattr(section, "rtsp_transport", None)
        self._cap = self._open(section, open_timeout_s, transport)
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = 0 if self.live else max(int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        self.backend = self._cap.getBackendName()
        self._last_grab = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"opencv-{name}", daemon=True)
        self._thread.start()
        log.info(
            "camera %s: opened %s %s with %s (%dx%d, %.1f fps)",
            name, self.what, self._shown, self.backend, self.width, self.height, self.fps,
        )  # fmt: skip

    def _api(self, api: str) -> int:
        pref = _APIS[api]
        if api == "auto" and self.what == "pipeline":
            pref = cv2.CAP_GSTREAMER
        if pref != cv2.CAP_ANY and not cv2.videoio_registry.hasBackend(pref):
            backend = "GStreamer" if pref == cv2.CAP_GSTREAMER else api
            raise SourceError(
                f"camera {self.name}: this OpenCV build has no {backend} backend "
                "(use a URL with api: ffmpeg or auto, or install an OpenCV built with it)"
            )
        return pref

    def _open(self, section: Any, open_timeout_s: float, transport: str | None) -> cv2.VideoCapture:
        pref = self._api(section.api)
        if self.what == "file" and not Path(self.uri).is_file():
            raise SourceError(f"camera {self.name}: video file {self.uri} not found (check source.uri)")
        params: list[int] = []
        if self.what == "stream" and pref in (cv2.CAP_ANY, cv2.CAP_FFMPEG):
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000),
            ]  # fmt: skip
        options = None
        if transport and self.uri.lower().startswith("rtsp"):
            if transport not in ("udp", "tcp"):
                raise SourceError(
                    f"camera {self.name}: rtsp_transport must be 'udp' or 'tcp', got {transport!r}"
                )
            options = f"rtsp_transport;{transport}"
        target: int | str = int(self.uri) if self.what == "device" else self.uri
        with _capture_options(options):
            cap = cv2.VideoCapture(target, pref, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"camera {self.name}: cannot open {self.what} {self._shown} with OpenCV ({section.api}): "
                f"{_HINTS[self.what]}"
            )
        if self.what == "device":
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, section.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, section.height),
                (cv2.CAP_PROP_FPS, section.fps or None),
            ):
                if value and not cap.set(prop, float(value)):
                    log.warning("camera %s: the device refused property %d = %s", self.name, prop, value)
        return cap

    # -- reader thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        cap = self._cap
        try:
            while not self._stop.is_set():
                ok, img = cap.read()
                if ok and img is not None:
                    self._put(img)
                    continue
                if not self.live:
                    if self.frame_count and self._position < self.frame_count:
                        log.warning(
                            "camera %s: %s ended after %d of %d frames",
                            self.name, self._shown, self._position, self.frame_count,
                        )  # fmt: skip
                    with self._cond:
                        self._eof = True
                        self._cond.notify_all()
                    return
                silent = time.monotonic() - self._last_grab
                if silent > self._silence_limit():
                    self._set_lost(
                        f"camera {self.name}: stream {self._shown} lost: no frame for {silent:.1f} s "
                        "(check the camera, its power and network link; raise source.read_timeout_s "
                        "for a slow camera)"
                    )
                    return
                self._stop.wait(0.02)
        except Exception as exc:  # an OpenCV or backend failure in the reader: the camera is lost
            self._set_lost(f"camera {self.name}: reading {self._shown} failed: {exc}".replace("\n", " "))
        finally:
            cap.release()

    def _put(self, img: np.ndarray) -> None:
        grab = _Grab(img, time.time(), time.monotonic(), self._position)
        self._position += 1
        with self._cond:
            self._last_grab = grab.t_mono
            if not self.live:
                while len(self._queue) >= self._maxlen and not self._stop.is_set():
                    self._cond.wait(0.1)
            elif len(self._queue) >= self._maxlen:
                self._queue.popleft()
                if not self.triggered:
                    self.dropped += 1
            self._queue.append(grab)
            self._cond.notify_all()

    def _silence_limit(self) -> float:
        return self.read_timeout_s if self._position else self._first_grace_s

    def _set_lost(self, msg: str) -> None:
        log.warning("%s", msg)
        with self._cond:
            self._lost = msg
            self._cond.notify_all()

    # -- consumer side -------------------------------------------------------------------------------

    def trigger(self) -> None:
        """Software trigger (live sources): a :meth:`read` returns the newest frame grabbed after this
        call. Triggers given ahead are served in order, each with its own frame (none is lost).

        Raises:
            SourceError: a video file (no trigger).
        """
        if not self.live:
            super().trigger()
        with self._cond:
            self._triggers.append(time.monotonic())
            self._cond.notify_all()

    def _take(self) -> _Grab | None:
        if self._triggers:
            if self._queue and self._queue[-1].t_mono >= self._triggers[0]:
                self._triggers.popleft()
                grab = self._queue[-1]
                self._queue.clear()  # the next trigger needs a frame grabbed after this one
                return grab
            return None
        if self.triggered or not self._queue:
            return None
        grab = self._queue.popleft()
        self._cond.notify_all()  # a video file's reader may wait for room
        return grab

    def read(self, timeout: float) -> Frame | None:
        """The next frame (a file: in order; a live stream: the newest), or None after ``timeout`` s.

        Raises:
            EndOfStream: a video file is done.
            SourceError: the stream is lost (no frame for ``read_timeout_s``), or the source is closed.
        """
        if self._closed:
            raise SourceError(f"camera {self.name}: the opencv source is closed")
        if not self._pacer.wait(timeout):
            return None
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while True:
                grab = self._take()
                if grab is not None:
                    break
                if self._lost:
                    raise SourceError(self._lost)
                if self._eof:
                    raise EndOfStream(
                        f"camera {self.name}: {self._shown} ended after {self._position} frames"
                    )
                now = time.monotonic()
                if self.live and now - self._last_grab > self._silence_limit() + 0.5:
                    # The reader is stuck inside the backend (no read timeout there): same verdict.
                    raise SourceError(
                        f"camera {self.name}: stream {self._shown} lost: no frame for "
                        f"{now - self._last_grab:.1f} s (check the camera, its power and network link)"
                    )
                if now >= deadline or self._closed:
                    return None
                self._cond.wait(min(deadline - now, 0.1))
        return self._frame(grab)

    def _frame(self, grab: _Grab) -> Frame:
        meta: dict[str, Any] = {"uri": self._shown}
        if not self.live:
            meta["position"] = grab.position
        acq = self.next_id()
        try:
            image = to_canonical(grab.image, self.pixel_format)
        except PixelFormatError as exc:
            msg = f"camera {self.name}: frame does not fit source.pixel_format {self.pixel_format}: {exc}"
            log.warning("%s", msg)
            return Frame(None, acq, grab.t_capture, grab.t_mono, self.pixel_format, meta, error=msg)
        return Frame(image, acq, grab.t_capture, grab.t_mono, self.pixel_format, meta)

    def describe(self) -> dict[str, Any]:
        """Kind, URI (password hidden), backend, size, frame rate, frames read, dropped frames."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "uri": self._shown,
            "source": self.what,
            "backend": self.backend,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "pixel_format": self.pixel_format,
            "frames": self._position,
            "dropped": self.dropped,
        }
        if not self.live:
            out["frame_count"] = self.frame_count
        return out

    def close(self, join_timeout_s: float | None = None) -> None:
        """Stop the reader and release the capture (idempotent, bounded time).

        Args:
            join_timeout_s: how long to wait for the reader (default ``read_timeout_s`` + 1 s). A reader
                still blocked inside the backend after that releases the capture itself when the
                backend returns.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._cond.notify_all()
        wait = self.read_timeout_s + 1.0 if join_timeout_s is None else join_timeout_s
        self._thread.join(wait)
        if self._thread.is_alive():
            log.warning(
                "camera %s: the reader of %s did not stop within %.1f s; it releases the capture when "
                "the backend returns",
                self.name, self._shown, wait,
            )  # fmt: skip
