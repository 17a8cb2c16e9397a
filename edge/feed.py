"""A live view of one line's results, for processes beside the daemon (PLC gateways, the operator page).

:class:`LineFeed` subscribes to the daemon's publish socket in its own thread and keeps, per camera, the
latest result (header and heatmap PNG), the latest heartbeat, verdict counts, a result rate and when
anything was last heard. It recovers the state after a gap or at start with ``last`` on the control
socket (the clone pattern of ``docs/protocol.md``). Readers take consistent copies with
:meth:`LineFeed.snapshot` or :meth:`LineFeed.camera`; ``on_result`` callbacks run in the feed's thread.

A camera is **healthy** only while something (a result or a heartbeat) arrived within ``stale_s``, its
heartbeat says ``running`` and the daemon is reachable: a PLC must treat anything else as "do not trust
the last verdict". When the daemon dies, heartbeats stop and every camera turns unhealthy within
``stale_s``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from edge.config import EdgeConfig
from edge.errors import EdgeError
from edge.keys import CurveClient
from edge.protocol import Message
from edge.subscriber import ControlClient, Subscriber

__all__ = ["CameraView", "LineFeed", "curve_client_for"]

log = logging.getLogger(__name__)


def curve_client_for(cfg: EdgeConfig) -> CurveClient | None:
    """The CURVE client keys a local process uses to reach this line's daemon (None without CURVE)."""
    sec = cfg.security
    if not sec.curve:
        return None
    if not sec.server_public_key or not sec.client_secret_key:
        raise EdgeError(
            "security.curve is on: set security.server_public_key and security.client_secret_key for the "
            "gateways and the page (a client key pair from masf-edge keys, its public key in "
            "security.client_public_keys)"
        )
    return CurveClient(sec.server_public_key, sec.client_secret_key)


@dataclass
class CameraView:
    """What the feed knows about one camera (copied out by :meth:`LineFeed.camera`)."""

    name: str
    result: dict[str, Any] | None = None
    heatmap: bytes = b""
    heartbeat: dict[str, Any] | None = None
    last_heard: float | None = None  # monotonic
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    times: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=256))

    def fps(self, now: float, window_s: float = 5.0) -> float:
        recent = [t for t in self.times if now - t <= window_s]
        return len(recent) / window_s

    def healthy(self, now: float, stale_s: float) -> bool:
        if self.last_heard is None or now - self.last_heard > stale_s:
            return False
        return self.heartbeat is None or self.heartbeat.get("state") in ("running", "paused")

    def copy(self) -> CameraView:
        return CameraView(
            self.name,
            dict(self.result) if self.result else None,
            self.heatmap,
            dict(self.heartbeat) if self.heartbeat else None,
            self.last_heard,
            collections.Counter(self.counts),
            collections.deque(self.times, maxlen=256),
        )


class LineFeed:
    """Subscribes to one line's daemon and keeps its latest state.

    Args:
        cfg: the line config (publish and control addresses, camera names, CURVE).
        on_result: called with each result message, in the feed's thread.
        stale_s: how long without a message before a camera is unhealthy.
    """

    def __init__(
        self,
        cfg: EdgeConfig,
        on_result: Callable[[Message], None] | None = None,
        stale_s: float = 3.0,
    ) -> None:
        self.cfg = cfg
        self.on_result = on_result
        self.stale_s = stale_s
        self.curve = curve_client_for(cfg)
        self.context = zmq.Context()
        self._lock = threading.Lock()
        self._views = {c.name: CameraView(c.name) for c in cfg.cameras}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="line-feed", daemon=True)
        self._recover = threading.Event()
        self._recover.set()  # at start: fetch the state the daemon already has
        self.received = 0
        self.gaps = 0

    def start(self) -> LineFeed:
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.context.term()

    def control(self, timeout_s: float = 5.0) -> ControlClient:
        """A control client for this line (the caller closes it)."""
        return ControlClient(
            self.cfg.control.address, timeout_s=timeout_s, curve_client=self.curve, context=None
        )

    # ------------------------------------------------------------------------------ readers

    def camera(self, name: str) -> CameraView:
        """A consistent copy of one camera's view.

        Raises:
            KeyError: no such camera in the line config.
        """
        with self._lock:
            return self._views[name].copy()

    def snapshot(self) -> dict[str, CameraView]:
        with self._lock:
            return {name: view.copy() for name, view in self._views.items()}

    def healthy(self, name: str) -> bool:
        with self._lock:
            return self._views[name].healthy(time.monotonic(), self.stale_s)

    # ------------------------------------------------------------------------------ thread

    def _apply(self, msg: Message) -> None:
        now = time.monotonic()
        with self._lock:
            view = self._views.get(msg.camera)
            if view is None:
                return
            view.last_heard = now
            if msg.is_result:
                prev = view.result
                if prev is None or msg.header["started"] != prev["started"] or msg.seq > prev["seq"]:
                    view.result, view.heatmap = msg.header, msg.heatmap
                view.counts[msg.header["verdict"]] += 1
                view.times.append(now)
            else:
                view.heartbeat = msg.header
        if msg.is_result and self.on_result is not None:
            try:
                self.on_result(msg)
            except Exception:  # a consumer's bug must not stop the feed
                log.exception("on_result callback failed")

    def _recover_last(self) -> None:
        client = self.control(timeout_s=2.0)
        try:
            reply = client.request("last")
        except EdgeError as err:
            log.debug("last: %s", err)
            return
        finally:
            client.close()
        if not reply.get("ok"):
            return
        with self._lock:
            for name, header in (reply.get("results") or {}).items():
                view = self._views.get(name)
                if view is None or not header:
                    continue
                if (
                    view.result is None
                    or header["seq"] > view.result["seq"]
                    or header["started"] != view.result["started"]
                ):
                    view.result, view.heatmap = header, b""
        self._recover.clear()

    def _run(self) -> None:
        sub = Subscriber(self.cfg.publish.address, context=self.context, curve_client=self.curve)
        try:
            seen_gaps = 0
            while not self._stop.is_set():
                if self._recover.is_set():
                    self._recover_last()
                msg = sub.recv(timeout=0.2)
                if msg is None:
                    continue
                self.received += 1
                if len(sub.gaps) != seen_gaps or sub.restarts:
                    seen_gaps = len(sub.gaps)
                    self.gaps = seen_gaps
                    self._recover.set()
                    sub.restarts.clear()
                self._apply(msg)
        finally:
            sub.close()
