"""``masf-edge page``: the operator page, a small local web server beside the daemon.

It follows one line through :class:`edge.feed.LineFeed` (the daemon's publish socket, ``last`` to recover)
and polls the daemon's ``status`` once a second (counts since the daemon started, paused, threshold), and
serves, from a stdlib :class:`~http.server.ThreadingHTTPServer`:

* ``/`` and ``/static/...``: the page (plain HTML, CSS and JavaScript shipped in ``edge/page/static``;
  nothing is fetched from anywhere else);
* ``/api/state``: a JSON snapshot (line, daemon, every camera, the gallery);
* ``/events``: server-sent events, one per result and one per change of state; each client has a bounded
  queue that drops its oldest events when the browser reads too slowly, and such a client is sent a fresh
  ``snapshot`` instead, so a slow browser never holds up the feed or the other clients;
* ``/heatmap/<camera>/<seq>.png``: the published anomaly map of a recent result, colour-mapped (JET, as
  the evidence overlays) and scaled to the frame's aspect ratio;
* ``/evidence/<path>``: files of the evidence store (``evidence.dir``), read-only; anything outside it is
  refused;
* ``/api/control`` (POST): pause, resume and threshold, forwarded to the daemon's control socket; 403
  unless ``page.allow_control`` is on and the request carries ``Authorization: Bearer <token>`` with the
  token of ``page.token_file``.

The published messages carry the anomaly map but not the camera frame: the live tile shows the
colour-mapped map with the regions drawn over it, and for a FAIL / UNKNOWN also the evidence store's
overlay of that result (the real frame) as soon as the daemon has written it.

The evidence store is read here without :class:`edge.evidence.EvidenceStore` (which writes a probe file,
deletes temporary files and prunes): the page only lists and reads files, so it never interferes with the
daemon's writer and can run with read-only access to the store.
"""

from __future__ import annotations

import argparse
import collections
import hmac
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import cv2
import numpy as np

from edge.config import EdgeConfig, load_edge_config
from edge.errors import EdgeError
from edge.evidence import safe_name
from edge.feed import CameraView, LineFeed
from edge.protocol import Message, ProtocolError, decode_heatmap

__all__ = ["Broadcaster", "EvidenceIndex", "HeatmapCache", "LivePage", "PageServer", "read_token", "run"]

log = logging.getLogger(__name__)

VERDICTS = ("PASS", "FAIL", "UNKNOWN")
STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
EVIDENCE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".json": "application/json"}
# Everything comes from this origin; data: only for the empty favicon.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MIN_TOKEN_CHARS = 16
MAX_BODY_BYTES = 4096
KEEPALIVE_S = 15.0
STATUS_EVERY_S = 1.0
TICK_S = 0.1
EVIDENCE_WAIT_S = 5.0  # how long after a FAIL / UNKNOWN the page looks for its evidence item
HEATMAP_WIDTH = 640  # rendered heatmaps are at most this wide (the frame's aspect ratio)


def _finite(obj: Any) -> Any:
    """``obj`` with NaN / infinity replaced by None (browsers' JSON.parse refuses them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    return json.dumps(_finite(obj), separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------------------- events


class _Client:
    """One ``/events`` connection: a bounded queue of encoded events (oldest dropped when full)."""

    def __init__(self, size: int) -> None:
        self.queue: collections.deque[str] = collections.deque(maxlen=size)
        self.overflowed = False
        self.dropped = 0


class Broadcaster:
    """Fans events out to the server-sent-event clients without ever blocking the publisher.

    Args:
        max_clients: connections beyond this are refused (503).
        queue_size: events kept per client; when a client falls further behind its oldest events are
            dropped and its next read is a resynchronisation (the handler sends a fresh snapshot).
    """

    def __init__(self, max_clients: int = 32, queue_size: int = 64) -> None:
        self.max_clients = max_clients
        self.queue_size = queue_size
        self._cond = threading.Condition()
        self._clients: set[_Client] = set()
        self._closed = False

    @property
    def clients(self) -> int:
        with self._cond:
            return len(self._clients)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def subscribe(self) -> _Client | None:
        with self._cond:
            if self._closed or len(self._clients) >= self.max_clients:
                return None
            client = _Client(self.queue_size)
            self._clients.add(client)
            return client

    def unsubscribe(self, client: _Client) -> None:
        with self._cond:
            self._clients.discard(client)

    def publish(self, event: str, data: Any) -> None:
        """Queue one event for every client (JSON-encoded once; never blocks on a client)."""
        text = f"event: {event}\ndata: {to_json(data)}\n\n"
        with self._cond:
            for client in self._clients:
                if len(client.queue) == client.queue.maxlen:
                    client.overflowed = True
                    client.dropped += 1
                client.queue.append(text)
            self._cond.notify_all()

    def wait(self, client: _Client, timeout: float) -> tuple[list[str], bool, bool]:
        """The client's queued events (waiting up to ``timeout``).

        Returns:
            ``(events, resync, closed)``: ``resync`` when events were dropped (the queue is cleared: send a
            snapshot instead), ``closed`` when the server is stopping.
        """
        with self._cond:
            if not client.queue and not self._closed:
                self._cond.wait(timeout)
            if self._closed:
                return [], False, True
            if client.overflowed:
                client.overflowed = False
                client.queue.clear()
                return [], True, False
            events = list(client.queue)
            client.queue.clear()
            return events, False, False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------------- evidence


class EvidenceIndex:
    """A read-only view of the evidence store's files (the layout of :mod:`edge.evidence`).

    Args:
        root: ``evidence.dir``; None: no store (nothing is listed, every path is refused).
        ttl_s: :meth:`latest` re-reads the folders at most this often (or after :meth:`invalidate`).
    """

    def __init__(self, root: str | Path | None, ttl_s: float = 2.0) -> None:
        self.root = Path(root).resolve() if root else None
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: tuple[float, int, list[dict[str, Any]]] | None = None

    def invalidate(self) -> None:
        with self._lock:
            self._cache = None

    def resolve(self, rel: str) -> Path:
        """The file at ``rel`` inside the store.

        Raises:
            PermissionError: the path leaves the store (``..``, an absolute path, a link out of it).
            FileNotFoundError: no store, no such file, a temporary or hidden file, or another type of file.
        """
        if self.root is None:
            raise FileNotFoundError("no evidence store (evidence.dir is not set)")
        if "\x00" in rel:
            raise PermissionError(rel)
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise PermissionError(rel)
        if path.name.startswith(".") or path.suffix not in EVIDENCE_TYPES or not path.is_file():
            raise FileNotFoundError(rel)
        return path

    def url(self, path: Path) -> str:
        assert self.root is not None
        return "/evidence/" + quote(path.relative_to(self.root).as_posix())

    def _item(self, header_path: Path, names: set[str] | None = None) -> dict[str, Any] | None:
        stem = header_path.name[: -len("_header.json")]
        folder = header_path.parent
        try:
            header = json.loads(header_path.read_text(encoding="utf-8"))
            mtime = header_path.stat().st_mtime
        except (OSError, ValueError):
            return None  # pruned meanwhile, or being replaced
        if not isinstance(header, dict):
            return None
        if names is None:
            names = {p.name for p in folder.glob(glob_escape(stem) + "*")}
        item: dict[str, Any] = {
            "camera": str(header.get("camera", folder.parent.name)),
            "name": stem,
            "day": folder.name,
            "mtime": mtime,
            "seq": header.get("seq"),
            "started": header.get("started"),
            "verdict": header.get("verdict"),
            "reason": header.get("reason"),
            "score": header.get("score"),
            "threshold": header.get("threshold"),
            "acquisition_id": header.get("acquisition_id"),
            "published": (header.get("timestamps") or {}).get("published"),
            "header": self.url(header_path),
            "overlay": self.url(folder / (stem + "_overlay.jpg")) if stem + "_overlay.jpg" in names else None,
            "image": self.url(folder / (stem + ".png")) if stem + ".png" in names else None,
        }
        return item

    def find(self, header: dict[str, Any]) -> dict[str, Any] | None:
        """The complete item of one published result (same camera, seq, verdict, acquisition and daemon
        run), or None while it is not (yet) written."""
        if self.root is None or not header.get("camera") or not header.get("verdict"):
            return None
        capture = (header.get("timestamps") or {}).get("capture")
        stem = (
            f"{int(header['seq']):08d}_{safe_name(header['verdict'], 16)}"
            f"_{safe_name(header.get('acquisition_id', 'na'))}"
        )
        cam_dir = self.root / safe_name(header["camera"])
        t = capture if isinstance(capture, (int, float)) else time.time()
        for day_t in (t, t - 86400, t + 86400):  # the daemon's local date; the page's zone may differ
            day = time.strftime("%Y%m%d", time.localtime(day_t))
            header_path = cam_dir / day / (stem + "_header.json")
            if header_path.is_file():
                item = self._item(header_path)
                if item is not None and item["started"] == header.get("started"):
                    return item
        return None

    def latest(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` newest complete items (every camera), newest first."""
        if self.root is None:
            return []
        with self._lock:
            if self._cache and self._cache[1] == n and time.monotonic() - self._cache[0] < self.ttl_s:
                return list(self._cache[2])
        found: list[tuple[float, Path, set[str]]] = []
        for cam_dir in _subdirs(self.root):
            count = 0
            for day_dir in sorted(_subdirs(cam_dir), key=lambda p: p.name, reverse=True):
                try:
                    entries = list(os.scandir(day_dir))
                except OSError:
                    continue
                names = {e.name for e in entries}
                for entry in entries:
                    if entry.name.startswith(".") or not entry.name.endswith("_header.json"):
                        continue
                    try:
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        continue
                    found.append((mtime, Path(entry.path), names))
                    count += 1
                if count >= n:
                    break  # older days of this camera cannot be among its n newest
        found.sort(key=lambda x: x[0], reverse=True)
        items = [it for _, path, names in found[:n] if (it := self._item(path, names)) is not None]
        with self._lock:
            self._cache = (time.monotonic(), n, items)
        return list(items)


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------- heatmaps


class HeatmapCache:
    """The heatmap PNGs of the last few results per camera, and their colour-mapped renderings.

    Args:
        per_camera: published PNGs kept per camera.
        rendered: colour-mapped PNGs kept in all.
    """

    def __init__(self, per_camera: int = 8, rendered: int = 32) -> None:
        self._lock = threading.Lock()
        self._per_camera = per_camera
        self._raw: dict[str, collections.OrderedDict[tuple[float, int], tuple[bytes, dict[str, Any]]]] = {}
        self._rendered: collections.OrderedDict[tuple[str, float, int], bytes] = collections.OrderedDict()
        self._max_rendered = rendered

    def put(self, header: dict[str, Any], png: bytes) -> None:
        if not png:
            return
        key = (float(header["started"]), int(header["seq"]))
        with self._lock:
            raw: collections.OrderedDict[tuple[float, int], tuple[bytes, dict[str, Any]]]
            raw = self._raw.setdefault(str(header["camera"]), collections.OrderedDict())
            raw[key] = (png, header.get("frame") or {})
            while len(raw) > self._per_camera:
                raw.popitem(last=False)

    def has(self, camera: str, started: float, seq: int) -> bool:
        with self._lock:
            return (started, seq) in self._raw.get(camera, {})

    def get(self, camera: str, seq: int, started: float | None) -> bytes | None:
        """The colour-mapped PNG of ``camera``'s result ``seq`` (of the daemon run ``started``; None: the
        newest run that has one), or None when it is not kept (any more)."""
        with self._lock:
            raw = self._raw.get(camera)
            if raw is None:
                return None
            keys = [k for k in raw if k[1] == seq and (started is None or k[0] == started)]
            if not keys:
                return None
            key = max(keys)
            cached = self._rendered.get((camera, *key))
            if cached is not None:
                self._rendered.move_to_end((camera, *key))
                return cached
            png, frame = raw[key]
        out = render_heatmap(png, frame)
        with self._lock:
            self._rendered[(camera, *key)] = out
            while len(self._rendered) > self._max_rendered:
                self._rendered.popitem(last=False)
        return out


def render_heatmap(png: bytes, frame: dict[str, Any] | None, max_width: int = HEATMAP_WIDTH) -> bytes:
    """A published heatmap PNG (uint8, ``lo`` -> 0, ``hi`` -> 255) as a JET colour PNG, resized to the
    camera frame's aspect ratio (at most ``max_width`` wide, never smaller than the map).

    Raises:
        ProtocolError: the PNG cannot be decoded.
    """
    heat = decode_heatmap(png)
    h, w = heat.shape
    fw, fh = (frame or {}).get("width"), (frame or {}).get("height")
    if isinstance(fw, int) and isinstance(fh, int) and fw > 0 and fh > 0:
        out_w = max(w, min(max_width, fw))
        out_h = max(1, round(out_w * fh / fw))
    else:
        out_w, out_h = w, h
    if (out_w, out_h) != (w, h):
        heat = cv2.resize(heat, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.ascontiguousarray(heat), cv2.COLORMAP_JET)
    ok, buf = cv2.imencode(".png", colour, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ProtocolError("the heatmap could not be encoded")
    return bytes(buf)


# ---------------------------------------------------------------------------------------------- the model


class LivePage:
    """What the page shows: the feed, the daemon's status, evidence look-ups, and the events.

    Args:
        cfg: the line config.
        token: the control token (None: control refused).
        stale_s: a camera without a message for this long is shown stale (default: 3 heartbeats, >= 3 s).
    """

    def __init__(self, cfg: EdgeConfig, token: str | None = None, stale_s: float | None = None) -> None:
        self.cfg = cfg
        self.names = [c.name for c in cfg.cameras]
        self.events = Broadcaster()
        self.heatmaps = HeatmapCache()
        self.evidence = EvidenceIndex(cfg.evidence.dir)
        self.token = token if cfg.page.allow_control else None
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._status_error: str | None = "not asked yet"
        self._recent: dict[str, collections.deque[tuple[float, int, str]]] = {
            n: collections.deque(maxlen=512) for n in self.names
        }
        self._received: dict[str, float] = {}  # camera -> when the page got its newest result (epoch)
        self._evidence: dict[str, dict[str, Any]] = {}  # camera -> item of its newest result
        self._pending: dict[tuple[str, float, int], tuple[dict[str, Any], float]] = {}
        self._seen: dict[str, tuple[float, int]] = {}  # camera -> newest (started, seq) handled
        self._sent: dict[str, str] = {}  # camera -> signature of the last camera event
        self._daemon_sent = ""
        self._gallery_sent = ""
        self._poll_now = threading.Event()
        self._stop = threading.Event()
        self._started = False
        stale = stale_s if stale_s is not None else max(3.0, 3 * cfg.publish.heartbeat_s)
        self.feed = LineFeed(cfg, on_result=self._on_result, stale_s=stale)
        self._threads = [
            threading.Thread(target=self._status_loop, name="page-status", daemon=True),
            threading.Thread(target=self._monitor_loop, name="page-monitor", daemon=True),
        ]

    def start(self) -> LivePage:
        self._started = True
        self.feed.start()
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._poll_now.set()
        self.events.close()
        if not self._started:
            self.feed.context.term()
            return
        for t in self._threads:
            if t.is_alive():
                t.join(3.0)
        self.feed.close()

    # ------------------------------------------------------------------------------ control

    def check_token(self, given: str) -> bool:
        if self.token is None:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    def control(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """Forward one control request to the daemon; its reply.

        Raises:
            EdgeError: no reply in time.
        """
        client = self.feed.control(timeout_s=5.0)
        try:
            reply = client.request(cmd, **args)
        finally:
            client.close()
        self._poll_now.set()  # show the new state at once
        return reply

    # ------------------------------------------------------------------------------ state

    def camera_json(self, name: str) -> dict[str, Any]:
        view = self.feed.camera(name)
        mono = time.monotonic()
        with self._lock:
            status = self._status
            reachable = status is not None
            cam_status = ((status or {}).get("cameras") or {}).get(name) or {}
            recent = list(self._recent[name])
            received = self._received.get(name)
            evidence = self._evidence.get(name)
        result = view.result
        hb = view.heartbeat or {}
        healthy = view.healthy(mono, self.feed.stale_s)
        if view.last_heard is None:
            state = "waiting" if reachable else "no_daemon"
        elif mono - view.last_heard > self.feed.stale_s:
            state = "stale" if reachable else "no_daemon"
        elif cam_status:  # polled every second and right after a control request: fresher than heartbeats
            state = "paused" if cam_status.get("paused") else str(cam_status.get("state") or "running")
        else:
            state = str(hb.get("state") or "running")
        counts = self._counts(view, cam_status, recent)
        heatmap_url = None
        if result and self.heatmaps.has(name, float(result["started"]), int(result["seq"])):
            heatmap_url = f"/heatmap/{quote(name)}/{int(result['seq'])}.png?started={result['started']!r}"
        if (
            evidence
            and result
            and (evidence["seq"], evidence["started"]) != (result["seq"], result["started"])
        ):
            evidence = None
        fresh_hb = view.last_heard is not None and mono - view.last_heard <= self.feed.stale_s
        fps = hb.get("fps") if fresh_hb and hb.get("fps") is not None else view.fps(mono)
        model = cam_status.get("model") or {}
        return {
            "name": name,
            "state": state,
            "healthy": healthy,
            "detail": cam_status.get("detail") if cam_status else hb.get("detail"),
            "paused": bool(cam_status.get("paused")) if cam_status else hb.get("state") == "paused",
            "mode": cam_status.get("mode"),
            "fps": round(float(fps or 0.0), 2),
            "counts": counts,
            "counts_since": "daemon" if cam_status else "page",
            "threshold": cam_status.get("threshold", result["threshold"] if result else None),
            "threshold_source": cam_status.get(
                "threshold_source", result["threshold_source"] if result else None
            ),
            "model_version": hb.get("model_version")
            or model.get("model_version")
            or (result or {}).get("model_version"),
            "bundle_id": hb.get("bundle_id") or model.get("bundle_id") or (result or {}).get("bundle_id"),
            "part": model.get("part") or (result or {}).get("part"),
            "last_heard_s": None if view.last_heard is None else round(mono - view.last_heard, 3),
            "result": result,
            "received": received,
            "heatmap_url": heatmap_url,
            "evidence": evidence,
        }

    @staticmethod
    def _counts(
        view: CameraView, cam_status: dict[str, Any], recent: list[tuple[float, int, str]]
    ) -> dict[str, int]:
        """Counts since the daemon started (its status, plus results newer than that status) or, while
        the daemon does not answer, since the page started."""
        if not cam_status:
            return {v: int(view.counts.get(v, 0)) for v in VERDICTS}
        base = cam_status.get("results") or {}
        counts = {v: int(base.get(v, 0)) for v in VERDICTS}
        seq = int(cam_status.get("seq") or 0)
        started = cam_status.get("_started")
        for r_started, r_seq, verdict in recent:
            if r_started == started and r_seq > seq and verdict in counts:
                counts[verdict] += 1
        return counts

    def daemon_json(self) -> dict[str, Any]:
        with self._lock:
            status, error = self._status, self._status_error
        if status is None:
            return {"reachable": False, "error": error, "state": None}
        return {
            "reachable": True,
            "error": None,
            "state": status.get("state"),
            "degraded": status.get("degraded") or {},
            "started": status.get("started"),
            "uptime_s": status.get("uptime_s"),
            "evidence": status.get("evidence"),
        }

    def gallery_json(self) -> list[dict[str, Any]]:
        return self.evidence.latest(self.cfg.page.gallery)

    def state_json(self) -> dict[str, Any]:
        return {
            "line": self.cfg.line,
            "server_time": time.time(),
            "page": {
                "control": self.cfg.page.allow_control,
                "gallery": self.cfg.page.gallery,
                "evidence": self.evidence.root is not None,
                "stale_s": self.feed.stale_s,
            },
            "daemon": self.daemon_json(),
            "cameras": [self.camera_json(n) for n in self.names],
            "gallery": self.gallery_json(),
        }

    @staticmethod
    def _signature(cam: dict[str, Any]) -> str:
        return to_json({k: v for k, v in cam.items() if k != "last_heard_s"})

    def _send_camera(self, event: str, name: str) -> None:
        cam = self.camera_json(name)
        with self._lock:
            self._sent[name] = self._signature(cam)
        self.events.publish(event, cam)

    # ------------------------------------------------------------------------------ threads

    def _on_result(self, msg: Message) -> None:
        """A published result (the feed's thread): remember it and tell the browsers; never blocks."""
        h = msg.header
        key = (float(h["started"]), int(h["seq"]))
        self.heatmaps.put(h, msg.heatmap)
        with self._lock:
            self._recent[msg.camera].append((key[0], key[1], str(h["verdict"])))
            latest = self._seen.get(msg.camera)
            newest = latest is None or key[0] != latest[0] or key[1] > latest[1]
            if newest:
                self._seen[msg.camera] = key
                self._received[msg.camera] = time.time()
            if h["verdict"] != "PASS" and self.evidence.root is not None:
                self._pending[(msg.camera, *key)] = (h, time.monotonic() + EVIDENCE_WAIT_S)
        if newest:
            self._send_camera("result", msg.camera)

    def _status_loop(self) -> None:
        client = self.feed.control(timeout_s=STATUS_EVERY_S)
        try:
            while not self._stop.is_set():
                try:
                    reply = client.request("status")
                    error = None if reply.get("ok") else str(reply.get("error"))
                except EdgeError as err:
                    reply, error = {}, str(err)
                with self._lock:
                    if error is None:
                        for cam in (reply.get("cameras") or {}).values():
                            cam["_started"] = reply.get("started")
                        self._status, self._status_error = reply, None
                    else:
                        self._status, self._status_error = None, error
                self._poll_now.wait(STATUS_EVERY_S)
                self._poll_now.clear()
        finally:
            client.close()

    def _monitor_loop(self) -> None:
        last_scan = 0.0
        while not self._stop.wait(TICK_S):
            try:
                self._look_for_evidence()
                if time.monotonic() - last_scan >= 0.5:
                    last_scan = time.monotonic()
                    self._check_changes()
            except Exception:  # the page must keep serving whatever one look-up does
                log.exception("page monitor")

    def _look_for_evidence(self) -> None:
        with self._lock:
            pending = list(self._pending.items())
        found_any = False
        for key, (header, deadline) in pending:
            item = self.evidence.find(header)
            if item is None and time.monotonic() < deadline:
                continue
            with self._lock:
                self._pending.pop(key, None)
                if item is not None and self._seen.get(key[0]) == key[1:]:
                    self._evidence[key[0]] = item
            if item is not None:
                found_any = True
                self._send_camera("camera", key[0])
            else:
                log.debug("no evidence item for %s seq %s within %.0f s", key[0], key[2], EVIDENCE_WAIT_S)
        if found_any:
            self.evidence.invalidate()
            self._send_gallery(force=True)

    def _send_gallery(self, force: bool = False) -> None:
        gallery = self.gallery_json()
        sig = to_json([(g["header"], g["overlay"]) for g in gallery])
        with self._lock:
            changed = sig != self._gallery_sent
            self._gallery_sent = sig
        if changed or force:
            self.events.publish("gallery", gallery)

    def _check_changes(self) -> None:
        """Events for what changed without a result: health, heartbeat state, status, recovered results."""
        daemon = self.daemon_json()
        sig = to_json({k: v for k, v in daemon.items() if k != "uptime_s"})
        if sig != self._daemon_sent:
            self._daemon_sent = sig
            self.events.publish("daemon", daemon)
        for name in self.names:
            cam = self.camera_json(name)
            result = cam["result"]
            if result is not None:
                key = (float(result["started"]), int(result["seq"]))
                with self._lock:
                    seen = self._seen.get(name)
                    if seen is None or key[0] != seen[0] or key[1] > seen[1]:
                        # recovered with `last` (published before the page listened, or after a gap)
                        self._seen[name] = key
                        if result["verdict"] != "PASS" and self.evidence.root is not None:
                            self._pending[(name, *key)] = (result, time.monotonic() + EVIDENCE_WAIT_S)
            sig = self._signature(cam)
            with self._lock:
                changed = sig != self._sent.get(name)
                self._sent[name] = sig
            if changed:
                self.events.publish("camera", cam)
        self._send_gallery()


def read_token(cfg: EdgeConfig) -> str:
    """The control token of ``page.token_file``.

    Raises:
        EdgeError: no file, unreadable, or a token shorter than 16 characters.
    """
    path = cfg.page.token_file
    if not path:
        raise EdgeError("page.allow_control needs page.token_file (a file holding the token)")
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
        mode = Path(path).stat().st_mode
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise EdgeError(
            f"page.token_file {path} cannot be read ({reason}): create it (see docs/page.md)"
        ) from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise EdgeError(
            f"page.token_file {path} must hold one token of at least {MIN_TOKEN_CHARS} characters without "
            "spaces (make one: openssl rand -hex 32)"
        )
    if mode & 0o007:
        log.warning("page.token_file %s is readable by every user: chmod o-rwx it", path)
    return token


# ---------------------------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    page: LivePage
    # Bound to loopback: only loopback Host headers are served (a web page cannot read the page through a
    # DNS name rebound to 127.0.0.1). Bound to another address: any Host (a reverse proxy's, a name).
    loopback_only = False

    def __init__(self, address: tuple[str, int], static: dict[str, bytes], family: int) -> None:
        self.address_family = family
        self.static = static
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the host's name up (getfqdn): slow without DNS, and unused
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "masf-edge-page"
    sys_version = ""
    timeout = 30  # a client that stops reading is dropped after this (its thread only)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------------------ helpers

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        cache: str = "no-store",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, to_json(obj).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"ok": False, "error": message})

    # ------------------------------------------------------------------------------ routes

    def _host_refused(self) -> bool:
        """Answers 403 and returns True when the Host header is not a loopback name on a loopback server."""
        host = self.headers.get("Host")
        if not self.server.loopback_only or host is None:
            return False
        try:
            name = urlsplit("//" + host).hostname or ""
        except ValueError:
            name = ""
        if _is_loopback(name):
            return False
        log.warning("refused %s: Host %r is not a loopback name", self.address_string(), host[:100])
        self._error(403, "this page is served for loopback host names only (see docs/page.md)")
        return True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        page = self.server.page
        if self._host_refused():
            return
        try:
            if path in ("/", "/index.html"):
                self._send(200, self.server.static["index.html"], STATIC_TYPES["index.html"])
            elif path.startswith("/static/"):
                name = path[len("/static/") :]
                if name not in self.server.static:
                    self._error(404, "no such file")
                else:
                    self._send(200, self.server.static[name], STATIC_TYPES[name], cache="no-cache")
            elif path == "/api/state":
                self._json(200, page.state_json())
            elif path == "/events":
                self._events()
            elif path.startswith("/heatmap/"):
                self._heatmap(path, parse_qs(url.query))
            elif path.startswith("/evidence/"):
                self._evidence(unquote(path[len("/evidence/") :]))
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon", cache="max-age=86400")
            else:
                self._error(404, "no such page")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("client %s went away", self.address_string())

    def _heatmap(self, path: str, query: dict[str, list[str]]) -> None:
        parts = path[len("/heatmap/") :].split("/")
        if len(parts) != 2 or not parts[1].endswith(".png") or not parts[1][:-4].isdigit():
            self._error(404, "use /heatmap/<camera>/<seq>.png")
            return
        camera, seq = unquote(parts[0]), int(parts[1][:-4])
        started: float | None = None
        if query.get("started"):
            try:
                started = float(query["started"][0])
            except ValueError:
                self._error(400, "started must be a number")
                return
        try:
            png = self.server.page.heatmaps.get(camera, seq, started)
        except ProtocolError as err:
            self._error(502, f"the published heatmap cannot be read: {err}")
            return
        if png is None:
            self._error(404, f"no heatmap kept for {camera} seq {seq} (only the last few are)")
            return
        cache = "private, max-age=3600, immutable" if started is not None else "no-store"
        self._send(200, png, "image/png", cache=cache)

    def _evidence(self, rel: str) -> None:
        try:
            path = self.server.page.evidence.resolve(rel)
        except PermissionError:
            log.warning("refused %s: outside the evidence store", self.address_string())
            self._error(403, "outside the evidence store")
            return
        except FileNotFoundError:
            self._error(404, "no such evidence file")
            return
        try:
            body = path.read_bytes()
        except OSError:
            self._error(404, "no such evidence file (pruned?)")
            return
        self._send(200, body, EVIDENCE_TYPES[path.suffix], cache="private, max-age=3600")

    def _events(self) -> None:
        page = self.server.page
        client = page.events.subscribe()
        if client is None:
            self._error(503, "too many live connections")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self._write(f"retry: 2000\n\nevent: snapshot\ndata: {to_json(page.state_json())}\n\n")
            while True:
                events, resync, closed = page.events.wait(client, KEEPALIVE_S)
                if closed:
                    return
                if resync:
                    log.info("live client %s fell behind: sending a fresh snapshot", self.address_string())
                    self._write(f"event: snapshot\ndata: {to_json(page.state_json())}\n\n")
                elif events:
                    self._write("".join(events))
                else:
                    self._write(": keep-alive\n\n")
        finally:
            page.events.unsubscribe(client)

    def _write(self, text: str) -> None:
        self.wfile.write(text.encode("utf-8"))
        self.wfile.flush()

    def do_POST(self) -> None:
        if self._host_refused():
            return
        if urlsplit(self.path).path != "/api/control":
            self._error(404, "no such page")
            return
        page = self.server.page
        if not page.cfg.page.allow_control:
            self._error(403, "control from the page is off (page.allow_control in the line config)")
            return
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not page.check_token(given.strip()):
            log.warning("control refused for %s: missing or wrong token", self.address_string())
            self._error(403, "missing or wrong token (Authorization: Bearer <token>)")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._error(413, f"a control request is a JSON object of at most {MAX_BODY_BYTES} bytes")
            return
        try:
            body = json.loads(self.rfile.read(length).decode("utf-8")) if length else None
        except (UnicodeDecodeError, ValueError):
            body = None
        try:
            cmd, args = self._control_args(body)
        except ValueError as err:
            self._error(400, str(err))
            return
        try:
            reply = page.control(cmd, args)
        except EdgeError as err:
            self._error(504, str(err))
            return
        log.info("control from %s: %s %s -> %s", self.address_string(), cmd, args, reply.get("ok"))
        self._json(200 if reply.get("ok") else 409, reply)

    def _control_args(self, body: Any) -> tuple[str, dict[str, Any]]:
        names = self.server.page.names
        if not isinstance(body, dict):
            raise ValueError('send a JSON object such as {"cmd": "pause", "camera": "cam1"}')
        cmd = body.get("cmd")
        camera = body.get("camera")
        if camera is not None and camera not in names:
            raise ValueError(f"unknown camera {camera!r}: use one of {', '.join(names)}")
        if cmd in ("pause", "resume"):
            if set(body) - {"cmd", "camera"}:
                raise ValueError(f"{cmd} takes only camera")
            return cmd, {"camera": camera}
        if cmd == "threshold":
            if set(body) - {"cmd", "camera", "value", "reset"}:
                raise ValueError("threshold takes camera, value and reset")
            value, reset = body.get("value"), body.get("reset", False)
            if camera is None:
                raise ValueError("threshold needs a camera")
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise ValueError("value must be a finite number")
            if not isinstance(reset, bool) or (reset and value is not None) or (not reset and value is None):
                raise ValueError("give either a value or reset: true")
            return cmd, {"camera": camera, "value": value, "reset": reset}
        raise ValueError("cmd must be pause, resume or threshold")


def load_static() -> dict[str, bytes]:
    """The page's files from the package (``edge/page/static``).

    Raises:
        EdgeError: a file is missing (a broken installation).
    """
    folder = resources.files("edge.page").joinpath("static")
    out = {}
    for name in STATIC_TYPES:
        try:
            out[name] = folder.joinpath(name).read_bytes()
        except OSError:
            raise EdgeError(
                f"the page's file static/{name} is missing from the installed package: reinstall masf-edge"
            ) from None
    return out


def _is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class PageServer:
    """The operator page of one line: the live model and its HTTP server (bound on construction).

    Args:
        cfg: the line config.
        host: address to bind (default ``page.host``).
        port: port (default ``page.port``; 0: any free one, see :attr:`url`).

    Raises:
        EdgeError: the address cannot be bound (port in use, unknown host), the token file is unusable,
            the page's files are missing.
    """

    def __init__(self, cfg: EdgeConfig, host: str | None = None, port: int | None = None) -> None:
        self.cfg = cfg
        host = cfg.page.host if host is None else host
        port = cfg.page.port if port is None else port
        token = read_token(cfg) if cfg.page.allow_control else None
        static = load_static()
        try:
            family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
            self.httpd = _Server((host.strip("[]"), port), static, family)
        except (OSError, OverflowError) as err:
            reason = getattr(err, "strerror", None) or err
            raise EdgeError(
                f"cannot serve the page on {host}:{port} ({reason}): set page.port (or --port) to a free "
                "port and page.host to an address of this machine"
            ) from None
        try:
            self.page = LivePage(cfg, token)  # the feed: CURVE keys are checked here
        except BaseException:
            self.httpd.server_close()
            raise
        self.httpd.page = self.page
        self.httpd.loopback_only = _is_loopback(host)
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="page-http", daemon=True)
        if not _is_loopback(host):
            log.warning(
                "the page is served on %s, reachable from the network without TLS: put it behind a "
                "reverse proxy with TLS (docs/page.md)",
                host,
            )

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> PageServer:
        self.page.start()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (live connections are closed), then the feed; call from another thread than a
        request handler."""
        self.page.events.close()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.page.close()


# ---------------------------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Serve the page until SIGTERM / SIGINT (or ``stop``); 0 after a clean stop.

    Raises:
        EdgeError: bad config, the page not enabled, port in use (the CLI prints one line, exits 2).
    """
    if not getattr(args, "config", None):
        raise EdgeError("masf-edge page needs --config (the line config the daemon runs with)")
    cfg = load_edge_config(args.config, args.set)
    if not cfg.page.enabled:
        raise EdgeError(
            f"page.enabled is false in {args.config}: set page.enabled: true to serve the operator page "
            "(or --set page.enabled=true)"
        )
    if args.port is not None and not 0 <= args.port <= 65535:
        raise EdgeError(f"--port must be a TCP port (0..65535), got {args.port}")
    stop = stop or threading.Event()
    server = PageServer(cfg, args.host, args.port)
    old: dict[int, Callable[..., Any] | int | None] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:  # only sets the event
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, on_signal)
    try:
        server.start()
        log.info(
            "operator page of line %s on %s (control %s, evidence %s)",
            cfg.line,
            server.url,
            "on" if cfg.page.allow_control else "off",
            cfg.evidence.dir or "off",
        )
        while not stop.wait(0.5):
            pass
        log.info("stopping the page")
    finally:
        server.close()
        for signo, handler in old.items():
            signal.signal(signo, handler)
    log.info("page stopped")
    return 0
