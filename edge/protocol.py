"""The wire format of the edge daemon's results and heartbeats (ZeroMQ PUB/SUB), version 1.

Every message is three frames ``[topic, header, heatmap]``:

* ``topic``: ``masf/<line>/<camera>/`` (ASCII). Subscribers filter by prefix: ``masf/`` is everything,
  ``masf/line1/`` one line, ``masf/line1/cam1/`` one camera (keep the trailing ``/``: without it
  ``cam1`` also matches ``cam10``).
* ``header``: one JSON object (UTF-8), built by :func:`result_header` or :func:`heartbeat_header`, which
  check every field so the daemon, the docs (``docs/protocol.md``) and the readers cannot drift.
* ``heatmap``: a PNG of the uint8 anomaly map (:func:`encode_heatmap`), or empty (heartbeats, results
  published without a heatmap).

Sequence numbers are per camera, start at 1 with each daemon start (``started``), grow by one per result
and are never used by heartbeats, which repeat the last result's number: a reader that sees a jump knows
how many results it lost (see :class:`SequenceCounter` for the ordering rule the publisher keeps).
Within one ``protocol_version`` fields are only ever added; readers ignore fields they do not know and
refuse messages of a newer version (:class:`ProtocolError`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.errors import EdgeError

__all__ = [
    "HEARTBEAT_KEYS",
    "HEARTBEAT_STATES",
    "LATENCY_KEYS",
    "PROTOCOL_VERSION",
    "REASONS",
    "RESULT_KEYS",
    "THRESHOLD_SOURCES",
    "TOPIC_PREFIX",
    "VERDICTS",
    "Message",
    "ProtocolError",
    "SequenceCounter",
    "decode",
    "decode_heatmap",
    "encode_heartbeat",
    "encode_heatmap",
    "encode_result",
    "heartbeat_header",
    "heatmap_info",
    "heatmap_to_u8",
    "region",
    "result_header",
    "topic",
    "topic_prefix",
    "u8_to_scores",
    "validate_header",
]

PROTOCOL_VERSION = 1
TOPIC_PREFIX = "masf/"
VERDICTS = ("PASS", "FAIL", "UNKNOWN")
# Why a result is UNKNOWN. Readers must accept reasons they do not know (new ones are additive).
REASONS = (
    "inference_error",  # the backend raised while scoring the frame
    "timeout",  # the inference took longer than pipeline.infer_timeout_s
    "non_finite_score",  # the model produced NaN or infinity
    "bad_frame",  # the acquisition happened but its image is unusable (truncated, unreadable)
    "no_model",  # no bundle is loaded for the camera (failed load or reload)
    "queue_overflow",  # triggered mode: the part arrived while the camera's queue was full
    "camera_down",  # the camera was lost while the part was in flight
    "stale",  # the frame was older than max_frame_age_s when inference started
    "shutdown",  # the daemon stopped before the part could be scored (drain timeout)
    "paused",  # triggered mode: the part arrived while inspection of the camera was paused
)
THRESHOLD_SOURCES = ("bundle", "config", "control")
HEARTBEAT_STATES = ("running", "down", "paused", "starting")
LATENCY_KEYS = ("queue", "preprocess", "infer", "post", "publish", "total")
HEATMAP_ENCODINGS = ("png", "none")

# Required keys of each kind (the order is the order in the docs and on the wire).
RESULT_KEYS = (
    "protocol_version",
    "kind",
    "line",
    "camera",
    "seq",
    "started",
    "acquisition_id",
    "part",
    "model_version",
    "bundle_id",
    "verdict",
    "reason",
    "detail",
    "score",
    "threshold",
    "threshold_source",
    "regions",
    "frame",
    "timestamps",
    "latency_ms",
    "heatmap",
)
HEARTBEAT_KEYS = (
    "protocol_version",
    "kind",
    "line",
    "camera",
    "seq",
    "started",
    "time",
    "state",
    "detail",
    "fps",
    "model_version",
    "bundle_id",
)
_KEYS = {"result": RESULT_KEYS, "heartbeat": HEARTBEAT_KEYS}


class ProtocolError(EdgeError):
    """A message that does not follow the protocol (wrong frames, bad JSON, missing or invalid fields)."""


# ---------------------------------------------------------------------------------------------- topics


def _name_part(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ProtocolError(f"{what} must be a non-empty name without '/', got {value!r}")
    return value


def topic(line: str, camera: str) -> bytes:
    """The topic of a camera's messages.

    Args:
        line: the line name (``EdgeConfig.line``).
        camera: the camera name.

    Returns:
        ``b"masf/<line>/<camera>/"``.

    Raises:
        ProtocolError: an empty name or one containing ``/``.
    """
    return f"{TOPIC_PREFIX}{_name_part(line, 'line')}/{_name_part(camera, 'camera')}/".encode()


def topic_prefix(line: str | None = None, camera: str | None = None) -> bytes:
    """The subscription prefix for everything, one line, or one camera of a line.

    Args:
        line: the line, or None for every line.
        camera: the camera (needs ``line``), or None for every camera of the line.

    Returns:
        ``b"masf/"``, ``b"masf/<line>/"`` or ``b"masf/<line>/<camera>/"``.

    Raises:
        ProtocolError: a camera without a line, or an invalid name.
    """
    if line is None:
        if camera is not None:
            raise ProtocolError("a camera topic needs the line too: masf/<line>/<camera>/")
        return TOPIC_PREFIX.encode()
    if camera is None:
        return f"{TOPIC_PREFIX}{_name_part(line, 'line')}/".encode()
    return topic(line, camera)


# --------------------------------------------------------------------------------------------- headers


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _opt_str(x: Any) -> bool:
    return x is None or isinstance(x, str)


def _fail(kind: str, key: str, rule: str, value: Any) -> ProtocolError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ProtocolError(f"{kind} header field '{key}' must be {rule}, got {shown}")


def region(bbox: Sequence[int], area: int, peak: float) -> dict[str, Any]:
    """One anomalous region of a result, in camera-frame pixels.

    Args:
        bbox: ``[x, y, w, h]`` of the region's bounding box (top-left corner, width, height).
        area: the region's pixel count (at most ``w * h``).
        peak: the highest anomaly score inside the region (same units as ``score``).

    Returns:
        ``{"bbox": [x, y, w, h], "area": area, "peak": peak}`` with plain Python numbers.

    Raises:
        ProtocolError: a value of the wrong type or range.
    """
    out = {"bbox": [int(v) for v in bbox], "area": int(area), "peak": float(peak)}
    _check_region(out, 0)
    return out


def _check_region(r: Any, i: int) -> None:
    key = f"regions[{i}]"
    if not isinstance(r, Mapping):
        raise _fail("result", key, "an object {bbox, area, peak}", r)
    bbox = r.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(_is_int(v) for v in bbox)
        or bbox[0] < 0
        or bbox[1] < 0
        or bbox[2] <= 0
        or bbox[3] <= 0
    ):
        raise _fail("result", f"{key}.bbox", "[x, y, w, h] ints (x, y >= 0; w, h > 0)", bbox)
    if not _is_int(r.get("area")) or r["area"] < 0:
        raise _fail("result", f"{key}.area", "a non-negative int (pixels)", r.get("area"))
    if not _is_num(r.get("peak")):
        raise _fail("result", f"{key}.peak", "a finite number", r.get("peak"))


def heatmap_info(
    encoding: str = "png",
    shape: Sequence[int] | None = None,
    lo: float | None = None,
    hi: float | None = None,
) -> dict[str, Any]:
    """The ``heatmap`` object of a result header.

    Args:
        encoding: ``"png"`` (the third frame is a PNG) or ``"none"`` (the third frame is empty).
        shape: ``[h, w]`` of the uint8 map (png only).
        lo: the score mapped to 0 (png only).
        hi: the score mapped to 255 (png only, > lo).

    Returns:
        ``{"encoding", "shape", "dtype", "lo", "hi"}``; with ``"none"`` shape, lo and hi are null.

    Raises:
        ProtocolError: a png without shape/lo/hi, or ``hi <= lo``.
    """
    if encoding == "none":
        out: dict[str, Any] = {"encoding": "none", "shape": None, "dtype": "uint8", "lo": None, "hi": None}
    else:
        out = {
            "encoding": encoding,
            "shape": None if shape is None else [int(v) for v in shape],
            "dtype": "uint8",
            "lo": None if lo is None else float(lo),
            "hi": None if hi is None else float(hi),
        }
    _check_heatmap(out)
    return out


def _check_heatmap(h: Any) -> None:
    if not isinstance(h, Mapping):
        raise _fail("result", "heatmap", "an object {encoding, shape, dtype, lo, hi}", h)
    enc = h.get("encoding")
    if enc not in HEATMAP_ENCODINGS:
        raise _fail("result", "heatmap.encoding", "'png' or 'none'", enc)
    if h.get("dtype") != "uint8":
        raise _fail("result", "heatmap.dtype", "'uint8'", h.get("dtype"))
    if enc == "none":
        return
    shape = h.get("shape")
    if not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(v) and v > 0 for v in shape):
        raise _fail("result", "heatmap.shape", "[h, w] positive ints", shape)
    lo: Any = h.get("lo")
    hi: Any = h.get("hi")
    if not _is_num(lo) or not _is_num(hi) or hi <= lo:
        raise _fail("result", "heatmap.lo/hi", "finite numbers with hi > lo", [lo, hi])


def _check_common(h: Mapping[str, Any], kind: str) -> None:
    if not _is_int(h.get("protocol_version")) or h["protocol_version"] < 1:
        raise _fail(kind, "protocol_version", "a positive int", h.get("protocol_version"))
    for key in ("line", "camera"):
        v = h.get(key)
        if not isinstance(v, str) or not v or "/" in v:
            raise _fail(kind, key, "a non-empty name without '/'", v)
    if not _is_int(h.get("seq")) or h["seq"] < (1 if kind == "result" else 0):
        rule = "an int >= 1" if kind == "result" else "an int >= 0 (0: no result yet)"
        raise _fail(kind, "seq", rule, h.get("seq"))
    if not _is_num(h.get("started")) or h["started"] <= 0:
        raise _fail(kind, "started", "the daemon's start time (epoch seconds)", h.get("started"))
    for key in ("model_version", "bundle_id", "detail"):
        if not _opt_str(h.get(key)):
            raise _fail(kind, key, "a string or null", h.get(key))


def _check_result(h: Mapping[str, Any]) -> None:
    _check_common(h, "result")
    if not isinstance(h.get("acquisition_id"), str):
        raise _fail("result", "acquisition_id", "a string", h.get("acquisition_id"))
    if not _opt_str(h.get("part")):
        raise _fail("result", "part", "a string or null", h.get("part"))
    verdict, reason, score = h.get("verdict"), h.get("reason"), h.get("score")
    if verdict not in VERDICTS:
        raise _fail("result", "verdict", "one of " + ", ".join(VERDICTS), verdict)
    if verdict == "UNKNOWN":
        if not isinstance(reason, str) or not reason:
            raise _fail("result", "reason", "a reason string when the verdict is UNKNOWN", reason)
        if score is not None and not _is_num(score):
            raise _fail("result", "score", "a finite number or null", score)
    else:
        if reason is not None:
            raise _fail("result", "reason", f"null when the verdict is {verdict}", reason)
        if not _is_num(score):
            raise _fail("result", "score", f"a finite number when the verdict is {verdict}", score)
    if not _is_num(h.get("threshold")):
        raise _fail("result", "threshold", "a finite number", h.get("threshold"))
    if h.get("threshold_source") not in THRESHOLD_SOURCES:
        raise _fail(
            "result", "threshold_source", "one of " + ", ".join(THRESHOLD_SOURCES), h.get("threshold_source")
        )
    regions = h.get("regions")
    if not isinstance(regions, list):
        raise _fail("result", "regions", "a list", regions)
    for i, r in enumerate(regions):
        _check_region(r, i)
    frame = h.get("frame")
    no_image = frame is None and verdict == "UNKNOWN"  # a part without a usable image (camera down, bad file)
    if not no_image and (
        not isinstance(frame, Mapping)
        or not all(_is_int(frame.get(k)) and frame[k] > 0 for k in ("height", "width"))
    ):
        raise _fail("result", "frame", "{height, width} positive ints (null only for UNKNOWN)", frame)
    ts = h.get("timestamps")
    if not isinstance(ts, Mapping) or not all(_is_num(ts.get(k)) for k in ("capture", "published")):
        raise _fail("result", "timestamps", "{capture, published} epoch seconds", ts)
    lat = h.get("latency_ms")
    if not isinstance(lat, Mapping) or not all(_is_num(lat.get(k)) and lat[k] >= 0 for k in LATENCY_KEYS):
        raise _fail("result", "latency_ms", "{" + ", ".join(LATENCY_KEYS) + "} non-negative ms", lat)
    _check_heatmap(h.get("heatmap"))


def _check_heartbeat(h: Mapping[str, Any]) -> None:
    _check_common(h, "heartbeat")
    if not _is_num(h.get("time")):
        raise _fail("heartbeat", "time", "epoch seconds", h.get("time"))
    if h.get("state") not in HEARTBEAT_STATES:
        raise _fail("heartbeat", "state", "one of " + ", ".join(HEARTBEAT_STATES), h.get("state"))
    if not _is_num(h.get("fps")) or h["fps"] < 0:
        raise _fail("heartbeat", "fps", "a non-negative number", h.get("fps"))


def validate_header(header: Mapping[str, Any]) -> None:
    """Check a header of either kind against the protocol (every required field, types and ranges).

    Args:
        header: a decoded or freshly built header.

    Raises:
        ProtocolError: the first missing or invalid field, named.
    """
    if not isinstance(header, Mapping):
        raise ProtocolError(f"a header must be a JSON object, got {type(header).__name__}")
    kind = header.get("kind")
    if kind not in _KEYS:
        raise ProtocolError(f"unknown message kind {kind!r} (expected 'result' or 'heartbeat')")
    missing = [k for k in _KEYS[kind] if k not in header]
    if missing:
        raise ProtocolError(f"{kind} header lacks field(s): {', '.join(missing)}")
    if kind == "result":
        _check_result(header)
    else:
        _check_heartbeat(header)


def result_header(
    *,
    line: str,
    camera: str,
    seq: int,
    started: float,
    acquisition_id: str,
    verdict: str,
    score: float | None,
    threshold: float,
    threshold_source: str,
    frame_shape: Sequence[int] | None,
    capture: float,
    published: float,
    latency_ms: Mapping[str, float],
    heatmap: Mapping[str, Any],
    regions: Sequence[Mapping[str, Any]] = (),
    reason: str | None = None,
    detail: str | None = None,
    part: str | None = None,
    model_version: str | None = None,
    bundle_id: str | None = None,
) -> dict[str, Any]:
    """Build and check the header of one result (every field is described in ``docs/protocol.md``).

    Args:
        line: the line name.
        camera: the camera name.
        seq: this result's sequence number (from :meth:`SequenceCounter.result`).
        started: the daemon's start time (epoch seconds); a new value tells readers seq restarted at 1.
        acquisition_id: the source's id of the acquisition (frame id, file name).
        verdict: ``"PASS"``, ``"FAIL"`` or ``"UNKNOWN"``.
        score: the image anomaly score (finite; may be None only when UNKNOWN).
        threshold: the threshold the verdict was decided with (``score >= threshold`` is FAIL).
        threshold_source: ``"bundle"``, ``"config"`` or ``"control"``.
        frame_shape: the camera frame's ``(height, width[, channels])``; None for an UNKNOWN part that
            has no usable image.
        capture: the acquisition's wall-clock time (epoch seconds).
        published: when the result was handed to the publisher (epoch seconds).
        latency_ms: ``queue, preprocess, infer, post, publish, total`` in milliseconds (missing stages:
            0.0; total is filled from the others when absent).
        heatmap: from :func:`heatmap_info`.
        regions: from :func:`region`.
        reason: why the verdict is UNKNOWN (one of :data:`REASONS`); None otherwise.
        detail: a human-readable one-line explanation (UNKNOWN), or None.
        part: the part name of the bundle, if known.
        model_version: the bundle's model version, if a model is loaded.
        bundle_id: the bundle's id, if a model is loaded.

    Returns:
        The header dict, ready for :func:`encode_result`.

    Raises:
        ProtocolError: a missing or invalid field, a reason not in :data:`REASONS`, or a PASS/FAIL that
            contradicts ``score`` and ``threshold``.
    """
    if reason is not None and reason not in REASONS:
        raise ProtocolError(f"unknown UNKNOWN reason {reason!r}: use one of {', '.join(REASONS)}")
    if verdict in ("PASS", "FAIL") and score is not None and _is_num(score) and _is_num(threshold):
        decided = "FAIL" if score >= threshold else "PASS"
        if verdict != decided:
            raise ProtocolError(
                f"verdict {verdict} contradicts score {score} vs threshold {threshold} ({decided})"
            )
    lat = {k: float(latency_ms.get(k, 0.0)) for k in LATENCY_KEYS}
    if "total" not in latency_ms:
        lat["total"] = sum(v for k, v in lat.items() if k != "total")
    header: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "kind": "result",
        "line": line,
        "camera": camera,
        "seq": seq,
        "started": float(started),
        "acquisition_id": str(acquisition_id),
        "part": part,
        "model_version": model_version,
        "bundle_id": bundle_id,
        "verdict": verdict,
        "reason": reason,
        "detail": None if detail is None else " ".join(str(detail).split()),
        "score": None if score is None else float(score),
        "threshold": float(threshold),
        "threshold_source": threshold_source,
        "regions": [dict(r) for r in regions],
        "frame": None
        if frame_shape is None
        else {"height": int(frame_shape[0]), "width": int(frame_shape[1])},
        "timestamps": {"capture": float(capture), "published": float(published)},
        "latency_ms": lat,
        "heatmap": dict(heatmap),
    }
    _check_result(header)
    return header


def heartbeat_header(
    *,
    line: str,
    camera: str,
    seq: int,
    started: float,
    time: float,
    state: str,
    fps: float = 0.0,
    detail: str | None = None,
    model_version: str | None = None,
    bundle_id: str | None = None,
) -> dict[str, Any]:
    """Build and check the header of a camera's heartbeat (published every ``publish.heartbeat_s``).

    Args:
        line: the line name.
        camera: the camera name.
        seq: the camera's last result seq (0 before its first result; from
            :meth:`SequenceCounter.heartbeat`).
        started: the daemon's start time (epoch seconds).
        time: when the heartbeat was made (epoch seconds).
        state: ``"running"``, ``"down"``, ``"paused"`` or ``"starting"``.
        fps: results per second over the last heartbeat period.
        detail: a one-line explanation of the state (why down), or None.
        model_version: the loaded bundle's model version, or None.
        bundle_id: the loaded bundle's id, or None.

    Returns:
        The header dict, ready for :func:`encode_heartbeat`.

    Raises:
        ProtocolError: a missing or invalid field.
    """
    header: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "kind": "heartbeat",
        "line": line,
        "camera": camera,
        "seq": seq,
        "started": float(started),
        "time": float(time),
        "state": state,
        "detail": None if detail is None else " ".join(str(detail).split()),
        "fps": float(fps),
        "model_version": model_version,
        "bundle_id": bundle_id,
    }
    _check_heartbeat(header)
    return header


# -------------------------------------------------------------------------------------------- messages


def _dump(header: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(header, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"header is not JSON-serialisable: {e}") from None


def encode_result(header: Mapping[str, Any], heatmap: bytes = b"") -> list[bytes]:
    """The frames of a result message.

    Args:
        header: from :func:`result_header` (checked again here).
        heatmap: the PNG from :func:`encode_heatmap` when ``header["heatmap"]["encoding"] == "png"``,
            else empty.

    Returns:
        ``[topic, header JSON, heatmap]`` for :meth:`edge.publish.Publisher.publish`.

    Raises:
        ProtocolError: an invalid header, or a heatmap frame that contradicts ``heatmap.encoding``.
    """
    validate_header(header)
    if header["kind"] != "result":
        raise ProtocolError(f"encode_result needs a result header, got kind {header['kind']!r}")
    png = header["heatmap"]["encoding"] == "png"
    if png != bool(heatmap):
        raise ProtocolError(
            "heatmap frame and heatmap.encoding disagree: a PNG needs encoding 'png', no heatmap 'none'"
        )
    return [topic(header["line"], header["camera"]), _dump(header), bytes(heatmap)]


def encode_heartbeat(header: Mapping[str, Any]) -> list[bytes]:
    """The frames of a heartbeat message: ``[topic, header JSON, b""]``.

    Raises:
        ProtocolError: an invalid header or one that is not a heartbeat.
    """
    validate_header(header)
    if header["kind"] != "heartbeat":
        raise ProtocolError(f"encode_heartbeat needs a heartbeat header, got kind {header['kind']!r}")
    return [topic(header["line"], header["camera"]), _dump(header), b""]


@dataclass
class Message:
    """One received message.

    Attributes:
        topic: ``masf/<line>/<camera>/``.
        header: the decoded header (unknown fields kept as they are).
        heatmap: the third frame (PNG bytes, or empty).
    """

    topic: str
    header: dict[str, Any]
    heatmap: bytes

    @property
    def kind(self) -> str:
        """``"result"`` or ``"heartbeat"``."""
        return str(self.header["kind"])

    @property
    def line(self) -> str:
        return str(self.header["line"])

    @property
    def camera(self) -> str:
        return str(self.header["camera"])

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    @property
    def is_result(self) -> bool:
        return self.kind == "result"

    def heatmap_image(self) -> np.ndarray | None:
        """The decoded uint8 heatmap, or None when the message carries none.

        Raises:
            ProtocolError: the PNG cannot be decoded.
        """
        if not self.heatmap:
            return None
        return decode_heatmap(self.heatmap)


def decode(frames: Sequence[bytes | Any]) -> Message:
    """Parse and check one received multipart message.

    Args:
        frames: the frames from ``recv_multipart`` (bytes or ``zmq.Frame``).

    Returns:
        The :class:`Message`.

    Raises:
        ProtocolError: wrong frame count, a topic that is not ``masf/<line>/<camera>/`` or does not match
            the header, non-JSON header, missing or invalid fields, or a newer protocol version.
    """
    if len(frames) != 3:
        raise ProtocolError(f"a message has 3 frames [topic, header, heatmap], got {len(frames)}")
    raw = [f.bytes if hasattr(f, "bytes") else bytes(f) for f in frames]
    try:
        topic_s = raw[0].decode("ascii")
        header = json.loads(raw[1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"undecodable message: {' '.join(str(e).split())}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"the header must be a JSON object, got {type(header).__name__}")
    version: Any = header.get("protocol_version")
    if _is_int(version) and version > PROTOCOL_VERSION:
        raise ProtocolError(
            f"message of protocol version {version}, this reader knows up to {PROTOCOL_VERSION}: "
            "upgrade masf-edge on the reading side"
        )
    validate_header(header)
    expected = topic(header["line"], header["camera"]).decode()
    if topic_s != expected:
        raise ProtocolError(f"topic {topic_s!r} does not match the header (expected {expected!r})")
    enc = header.get("heatmap", {}).get("encoding", "none") if header["kind"] == "result" else "none"
    if header["kind"] == "heartbeat" and raw[2]:
        raise ProtocolError("a heartbeat carries an empty third frame")
    if header["kind"] == "result" and (enc == "png") != bool(raw[2]):
        raise ProtocolError("heatmap frame and heatmap.encoding disagree")
    return Message(topic=topic_s, header=header, heatmap=raw[2])


# -------------------------------------------------------------------------------------------- heatmaps


def heatmap_to_u8(anomaly_map: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map anomaly scores linearly to uint8: ``lo`` -> 0, ``hi`` -> 255, clipped outside.

    Record ``lo`` and ``hi`` in the header (:func:`heatmap_info`) so readers can map back
    (:func:`u8_to_scores`). NaN becomes 0, +inf 255.

    Args:
        anomaly_map: the float ``(h, w)`` anomaly map.
        lo: the score shown as 0 (e.g. the bundle's normal level).
        hi: the score shown as 255 (> lo; e.g. a multiple of the threshold).

    Returns:
        A uint8 ``(h, w)`` array.

    Raises:
        ValueError: ``hi <= lo``, non-finite bounds, or a map that is not 2-D.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"heatmap_to_u8 needs finite lo < hi, got lo={lo}, hi={hi}")
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"heatmap_to_u8 needs a 2-D map, got shape {m.shape}")
    scaled = (m - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def u8_to_scores(map_u8: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map a uint8 heatmap back to approximate scores (``lo + v / 255 * (hi - lo)``; clipped values stay
    at ``lo`` / ``hi``).

    Args:
        map_u8: the decoded heatmap.
        lo: ``header["heatmap"]["lo"]``.
        hi: ``header["heatmap"]["hi"]``.

    Returns:
        A float32 array of the same shape.
    """
    return (np.float32(lo) + np.asarray(map_u8, dtype=np.float32) * np.float32((hi - lo) / 255.0)).astype(
        np.float32
    )


def encode_heatmap(map_u8: np.ndarray, compression: int = 1) -> bytes:
    """PNG-encode a uint8 heatmap (lossless, 8-bit gray).

    Args:
        map_u8: a uint8 ``(h, w)`` array (from :func:`heatmap_to_u8`).
        compression: PNG compression level 0-9 (1: fast, the daemon's choice).

    Returns:
        The PNG bytes.

    Raises:
        ValueError: not a 2-D uint8 array, or OpenCV cannot encode it.
    """
    a = np.asarray(map_u8)
    if a.dtype != np.uint8 or a.ndim != 2 or a.size == 0:
        raise ValueError(f"encode_heatmap needs a non-empty 2-D uint8 array, got {a.dtype} {a.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise ValueError("OpenCV could not PNG-encode the heatmap")
    return buf.tobytes()


def decode_heatmap(data: bytes) -> np.ndarray:
    """Decode a heatmap PNG.

    Args:
        data: the third frame of a result.

    Returns:
        The uint8 ``(h, w)`` array.

    Raises:
        ProtocolError: empty or not a gray 8-bit PNG.
    """
    if not data:
        raise ProtocolError("no heatmap in this message (heatmap.encoding is 'none')")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.ndim != 2:
        raise ProtocolError("the heatmap frame is not an 8-bit gray PNG")
    return img


# ------------------------------------------------------------------------------------------- sequences


class SequenceCounter:
    """One camera's sequence numbers, with the ordering rule of the protocol.

    Results take contiguous numbers from 1; heartbeats carry the last one. Both are published while the
    counter's lock is held, so a heartbeat never overtakes the result whose number it carries (readers
    would otherwise report a false gap). A number is consumed only when the ``with`` block completes, so
    a result that fails to encode leaves no hole; a message the publisher then drops does leave one, which
    is what readers should see.

    Example::

        with counter.result() as seq:
            publisher.publish(encode_result(result_header(seq=seq, ...), png))
        with counter.heartbeat() as seq:
            publisher.publish(encode_heartbeat(heartbeat_header(seq=seq, ...)))
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    @property
    def last(self) -> int:
        """The last result's number (0 before the first)."""
        return self._last

    @contextmanager
    def result(self) -> Iterator[int]:
        """Reserve the next result number; it is consumed when the block exits without an exception."""
        with self._lock:
            seq = self._last + 1
            yield seq
            self._last = seq

    @contextmanager
    def heartbeat(self) -> Iterator[int]:
        """The number a heartbeat carries (the last result's), held until the heartbeat is published."""
        with self._lock:
            yield self._last
