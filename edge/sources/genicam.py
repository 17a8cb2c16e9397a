"""GenICam cameras (GigE Vision, USB3 Vision) through a vendor's GenTL producer, with ``harvesters``.

The camera is found through the producer files (``section.cti``), chosen by serial number
(``section.serial``) or user-defined name (``section.user_id``), else the first one. Given settings are
written to the camera's node map before acquisition starts: ``PixelFormat``, ``Width`` / ``Height``,
``ExposureTime`` (``exposure_us``), ``AcquisitionFrameRate`` (``fps``; ``AcquisitionFrameRateEnable``
switched on where it exists). In triggered mode the camera is set to ``TriggerMode=On`` with
``TriggerSource`` (``software``: :meth:`GenICamSource.trigger` executes ``TriggerSoftware``); in free run
``TriggerMode`` is switched off where the camera has it.

Each buffer (width, height, pixel format, flat data) is copied into an array of the right shape and
dtype by :func:`buffer_to_array` before the buffer goes back to the producer, then converted by
:func:`engines.pixels.to_canonical`. ``harvesters`` is imported only when a GenICam source is opened
(extra ``masf-edge[genicam]``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import SourceError
from edge.sources.base import Frame, Source
from engines.pixels import PIXEL_FORMATS, PixelFormatError, to_canonical

__all__ = ["GenICamSource", "buffer_to_array"]

log = logging.getLogger(__name__)

_INSTALL = "pip install 'masf-edge[genicam]'"
_TRIGGER_SOURCES = {"software": "Software"}


def _layout(data_format: str) -> tuple[int, int]:
    """(channels, bits per sample) of a known pixel format."""
    if data_format.startswith(("Mono", "Bayer")):
        return 1, int(data_format[4:] if data_format.startswith("Mono") else data_format[7:])
    order = data_format.rstrip("0123456789")
    return (4 if order.endswith("a") else 3), int(data_format[len(order) :])


def buffer_to_array(
    data: np.ndarray, width: int, height: int, data_format: str, x_padding: int = 0
) -> np.ndarray:
    """A GenICam buffer component as a ``(h, w)`` / ``(h, w, c)`` array (a copy, safe after requeue).

    Args:
        data: the component's flat samples (uint8 bytes, or uint16 for formats above 8 bits).
        width: pixels per line.
        height: lines.
        data_format: the SFNC pixel format name (``Mono8``, ``Mono12``, ``RGBa8``, ``BayerRG8``, ...).
        x_padding: padding bytes at the end of each line.

    Returns:
        uint8 for 8-bit formats, uint16 (value in the low bits) otherwise; ready for ``to_canonical``.

    Raises:
        PixelFormatError: a format :mod:`engines.pixels` does not know (packed formats such as
            ``Mono12p`` included), or a buffer smaller than its width x height.
    """
    if data_format not in PIXEL_FORMATS:
        raise PixelFormatError(
            f"pixel format {data_format!r} is not supported (set the camera's PixelFormat to one of "
            "Mono8, Mono10/12/16, RGB8, BGR8, RGBa8, BGRa8 or Bayer**8/12/16 through source.pixel_format)"
        )
    channels, bits = _layout(data_format)
    dtype = np.dtype(np.uint8 if bits == 8 else "<u2")
    flat = np.asarray(data).reshape(-1)
    if flat.dtype != dtype:
        if flat.dtype != np.uint8 or flat.nbytes % dtype.itemsize:
            raise PixelFormatError(f"{data_format} buffer has samples of type {flat.dtype}, expected {dtype}")
        flat = flat.view(dtype)
    line = width * channels
    stride = line + x_padding // dtype.itemsize
    if width <= 0 or height <= 0 or flat.size < stride * (height - 1) + line:
        raise PixelFormatError(
            f"{data_format} buffer holds {flat.size} samples, too few for {width}x{height} "
            "(a truncated transfer: check the link bandwidth and packet size)"
        )
    if stride == line:
        img = flat[: line * height].reshape(height, line)
    else:
        img = np.lib.stride_tricks.as_strided(
            flat, shape=(height, line), strides=(stride * dtype.itemsize, dtype.itemsize)
        )
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.array(img, dtype=dtype, copy=True).reshape(shape)


def _one_line(exc: BaseException) -> str:
    """GenApi/GenTL messages are long and multi-part: keep the first sentence of the first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(" : ")[0].strip()


class GenICamSource(Source):
    """A GenICam camera through ``harvesters`` and a GenTL producer.

    Args:
        name: the camera's name (for messages).
        section: its source section; uses ``cti``, ``serial``, ``user_id``, ``pixel_format``, ``width``,
            ``height``, ``exposure_us``, ``fps``, ``trigger_source`` and ``read_timeout_s``.
        triggered: the camera's mode is ``triggered``: the camera waits for a trigger on
            ``trigger_source`` (``software``: :meth:`trigger`).

    Attributes:
        supports_trigger: True in triggered mode with ``trigger_source: software``.
        serial: the opened camera's serial number.
        device: the opened camera's facts (vendor, model, serial, id).

    Raises:
        SourceError: harvesters missing, a producer file missing, no camera or not the requested one
            (lists the serials found), a setting the camera refuses, or no trigger nodes in triggered
            mode.
    """

    kind = "genicam"

    def __init__(self, name: str, section: Any, *, triggered: bool = False) -> None:
        super().__init__(name)
        try:
            from genicam.gentl import TimeoutException
            from harvesters.core import Harvester
        except ImportError:
            raise SourceError(f"camera {name}: GenICam support is not installed ({_INSTALL})") from None
        self._timeout_exc: type[BaseException] = TimeoutException
        self.triggered = triggered
        self.trigger_source = str(section.trigger_source)
        self.supports_trigger = triggered and self.trigger_source == "software"
        self.read_timeout_s = float(section.read_timeout_s)
        self._ia: Any = None
        self._acquiring = False
        self._harvester: Any = Harvester()
        try:
            index = self._find(section)
            self._ia = self._harvester.create(index)
            self._node_map = self._ia.remote_device.node_map
            self._configure(section)
            self._ia.start()
            self._acquiring = True
        except BaseException:
            self.close()
            raise
        self.pixel_format = self._get("PixelFormat") or "unknown"
        self._last_frame = time.monotonic()
        log.info(
            "camera %s: opened GenICam %s %s (serial %s), %s, %s",
            name, self.device.get("vendor"), self.device.get("model"), self.serial, self.pixel_format,
            "triggered" if triggered else "free run",
        )  # fmt: skip

    # -- opening -------------------------------------------------------------------------------------

    def _find(self, section: Any) -> int:
        if not section.cti:
            raise SourceError(f"camera {self.name}: a genicam source needs source.cti (GenTL producer files)")
        for cti in section.cti:
            if not Path(cti).is_file():
                raise SourceError(
                    f"camera {self.name}: GenTL producer {cti} not found (install the camera vendor's SDK "
                    "or fix source.cti)"
                )
            try:
                self._harvester.add_file(str(cti), check_existence=True, check_validity=True)
            except Exception as exc:
                raise SourceError(
                    f"camera {self.name}: cannot load GenTL producer {cti}: {_one_line(exc)}"
                ) from None
        try:
            self._harvester.update()
        except Exception as exc:
            raise SourceError(
                f"camera {self.name}: listing GenICam cameras failed: {_one_line(exc)}"
            ) from None
        infos = [dict(d.property_dict) for d in self._harvester.device_info_list]
        if not infos:
            raise SourceError(
                f"camera {self.name}: no GenICam camera found through {', '.join(section.cti)} "
                "(check its power, cable or network, and that no other program holds it)"
            )
        index = 0
        if section.serial is not None or section.user_id is not None:
            key, want = (
                ("serial_number", section.serial)
                if section.serial is not None
                else ("user_defined_name", section.user_id)
            )
            matches = [i for i, info in enumerate(infos) if str(info.get(key)) == str(want)]
            if not matches:
                found = ", ".join(str(info.get(key)) if info.get(key) else "(none)" for info in infos)
                what = "serial" if key == "serial_number" else "user_id"
                raise SourceError(
                    f"camera {self.name}: no GenICam camera with {what} {want!r}; found {what}s: {found} "
                    f"(fix source.{what})"
                )
            index = matches[0]
        info = infos[index]
        self.serial = str(info.get("serial_number"))
        self.device = {
            k: info.get(k)
            for k in ("vendor", "model", "serial_number", "user_defined_name", "id_", "tl_type")
        }
        return index

    def _has(self, node: str) -> bool:
        try:
            return bool(self._node_map.has_node(node))
        except Exception:
            return hasattr(self._node_map, node)

    def _get(self, node: str) -> Any:
        try:
            return getattr(self._node_map, node).value if self._has(node) else None
        except Exception:
            return None

    def _set(self, node: str, value: Any, field: str) -> None:
        if not self._has(node):
            raise SourceError(
                f"camera {self.name}: the camera has no {node} node (remove source.{field} for this camera)"
            )
        feature = getattr(self._node_map, node)
        try:
            feature.value = value
        except Exception as exc:
            hint = ""
            symbolics = getattr(feature, "symbolics", None)
            if symbolics:
                hint = f"; it offers {', '.join(map(str, symbolics))}"
            elif hasattr(feature, "min") and hasattr(feature, "max"):
                try:
                    hint = f"; its range is {feature.min}..{feature.max}"
                except Exception:
                    hint = ""
            raise SourceError(
                f"camera {self.name}: the camera refuses {node} = {value} ({_one_line(exc)}){hint} "
                f"(fix source.{field})"
            ) from None

    def _configure(self, section: Any) -> None:
        if section.pixel_format:
            self._set("PixelFormat", section.pixel_format, "pixel_format")
        if section.width:
            self._set("Width", int(section.width), "width")
        if section.height:
            self._set("Height", int(section.height), "height")
        if section.exposure_us:
            if self._has("ExposureAuto"):
                self._set("ExposureAuto", "Off", "exposure_us")
            self._set("ExposureTime", float(section.exposure_us), "exposure_us")
        if section.fps:
            if self._has("AcquisitionFrameRateEnable"):
                self._set("AcquisitionFrameRateEnable", True, "fps")
            self._set("AcquisitionFrameRate", float(section.fps), "fps")
        if self.triggered:
            missing = [n for n in ("TriggerMode", "TriggerSource") if not self._has(n)]
            if self.trigger_source == "software" and not self._has("TriggerSoftware"):
                missing.append("TriggerSoftware")
            if missing:
                raise SourceError(
                    f"camera {self.name}: the camera has no trigger nodes ({', '.join(missing)} missing): "
                    "use mode free_run, or a folder source with step for a software-triggered replay"
                )
            if self._has("TriggerSelector"):
                self._set("TriggerSelector", "FrameStart", "trigger_source")
            self._set("TriggerMode", "On", "trigger_source")
            source = _TRIGGER_SOURCES.get(self.trigger_source, self.trigger_source)
            self._set("TriggerSource", source, "trigger_source")
        elif self._has("TriggerMode"):
            if self._has("TriggerSelector"):
                self._set("TriggerSelector", "FrameStart", "trigger_source")
            self._set("TriggerMode", "Off", "trigger_source")

    # -- acquisition ---------------------------------------------------------------------------------

    def trigger(self) -> None:
        """Execute ``TriggerSoftware`` (triggered mode with ``trigger_source: software``).

        Raises:
            SourceError: no software trigger in this mode, or the camera refused it (lost).
        """
        if not self.supports_trigger:
            super().trigger()
        try:
            self._node_map.TriggerSoftware.execute()
        except Exception as exc:
            raise SourceError(f"camera {self.name}: software trigger failed: {_one_line(exc)}") from None

    def read(self, timeout: float) -> Frame | None:
        """The next buffer as a frame, or None after ``timeout`` seconds.

        Raises:
            SourceError: acquisition failed (camera removed, stream error), the source is closed, or (free
                run) no frame for ``read_timeout_s``.
        """
        if self._closed or self._ia is None:
            raise SourceError(f"camera {self.name}: the genicam source is closed")
        try:
            buf = self._ia.fetch(timeout=max(float(timeout), 0.001))
        except self._timeout_exc:
            silent = time.monotonic() - self._last_frame
            if not self.triggered and silent > self.read_timeout_s:
                raise SourceError(
                    f"camera {self.name}: no frame for {silent:.1f} s in free run (check the camera's "
                    "cable, power and network; raise source.read_timeout_s for a slow frame rate)"
                ) from None
            return None
        except Exception as exc:
            raise SourceError(f"camera {self.name}: acquisition failed: {_one_line(exc)}") from None
        self._last_frame = time.monotonic()
        t_capture, t_mono = time.time(), time.monotonic()
        try:
            with buf:  # the buffer goes back to the producer on exit: _frame copies the data first
                return self._frame(buf, t_capture, t_mono)
        except Exception as exc:
            raise SourceError(
                f"camera {self.name}: returning a buffer to the producer failed: {_one_line(exc)}"
            ) from None

    def _frame(self, buf: Any, t_capture: float, t_mono: float) -> Frame:
        acq: str | None = None
        meta: dict[str, Any] = {"serial": self.serial}
        try:
            acq = str(int(buf.module.frame_id))
        except Exception:
            acq = None
        with contextlib.suppress(Exception):
            meta["timestamp_ns"] = int(buf.timestamp_ns)
        acq = acq if acq is not None else self.next_id()
        fmt = "unknown"
        try:
            component = buf.payload.components[0]
            fmt = str(component.data_format)
            try:
                padding = int(component.x_padding)
            except Exception:
                padding = 0
            arr = buffer_to_array(component.data, int(component.width), int(component.height), fmt, padding)
            image = to_canonical(arr, fmt)
        except Exception as exc:  # any failure to read this one buffer makes this part UNKNOWN, not lost
            msg = f"camera {self.name}: unusable buffer {acq} ({fmt}): {_one_line(exc)}"
            log.warning("%s", msg)
            return Frame(None, acq, t_capture, t_mono, fmt, meta, error=msg)
        return Frame(image, acq, t_capture, t_mono, fmt, meta)

    def describe(self) -> dict[str, Any]:
        """Kind, camera (vendor, model, serial), pixel format, size, mode."""
        return {
            "kind": self.kind,
            **{k: v for k, v in self.device.items() if v is not None},
            "pixel_format": self.pixel_format,
            "width": self._get("Width"),
            "height": self._get("Height"),
            "triggered": self.triggered,
            "trigger_source": self.trigger_source if self.triggered else None,
        }

    def close(self) -> None:
        """Stop acquisition, destroy the image acquirer and reset the harvester (idempotent; each step
        guarded so that a lost camera still releases the producer)."""
        if self._closed:
            return
        self._closed = True
        ia, self._ia = self._ia, None
        if ia is not None:
            if self._acquiring:
                try:
                    ia.stop()
                except Exception as exc:
                    log.warning("camera %s: stopping acquisition failed: %s", self.name, _one_line(exc))
            try:
                ia.destroy()
            except Exception as exc:
                log.warning("camera %s: releasing the camera failed: %s", self.name, _one_line(exc))
        try:
            self._harvester.reset()
        except Exception as exc:
            log.warning("camera %s: resetting harvesters failed: %s", self.name, _one_line(exc))
