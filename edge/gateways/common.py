"""What the PLC gateways share: value codes, the feed-to-asyncio bridge and the serve loop.

* Codes a PLC compares against (the same in OPC UA and Modbus): :data:`VERDICT_CODES` (UNKNOWN 0, PASS 1,
  FAIL 2), :data:`STATE_CODES` and :data:`REASON_CODES`.
* :class:`ResultValues`: one result header reduced to what the gateways publish (score NaN when the
  daemon sent none); :class:`CameraStatus`: a camera's health, state and heartbeat counter.
* :class:`FeedBridge`: a :class:`~edge.feed.LineFeed` whose results wake an asyncio loop
  (``call_soon_threadsafe``); it hands each new result to the loop once, and computes the health of
  every camera (``Healthy``: a message from the daemon within ``stale_s`` and a running or paused camera).
* :func:`run_gateway`: ``asyncio.run`` of the serve loop with SIGTERM / SIGINT handlers (they only set an
  event), systemd notification (``READY=1`` once the server listens, ``WATCHDOG=1`` from the loop) and
  one-line errors.

A gateway implements :class:`Gateway`: ``start`` (listen; raise :class:`~edge.errors.EdgeError`),
``write_results`` (all values of one camera's result together), ``write_status`` (about every 200 ms) and
``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edge.config import EdgeConfig
from edge.feed import LineFeed
from edge.notify import Notifier, WatchdogGate
from edge.protocol import REASONS, Message

__all__ = [
    "REASON_CODES",
    "REASON_OTHER",
    "STATE_CODES",
    "STATUS_PERIOD_S",
    "VERDICT_CODES",
    "CameraStatus",
    "FeedBridge",
    "Gateway",
    "ResultValues",
    "library_log_level",
    "run_gateway",
]

log = logging.getLogger(__name__)

# A PLC compares against these numbers; never renumber (add new ones at the end).
VERDICT_CODES = {"UNKNOWN": 0, "PASS": 1, "FAIL": 2}
# ``unreachable``: nothing heard from the daemon within stale_s (not running, network, CURVE refused).
STATE_CODES = {"unreachable": 0, "starting": 1, "running": 2, "paused": 3, "down": 4}
# Reasons of UNKNOWN in protocol order (1..); 0: none (PASS / FAIL); REASON_OTHER: one added later.
REASON_CODES: dict[str | None, int] = {None: 0, **{reason: i + 1 for i, reason in enumerate(REASONS)}}
REASON_OTHER = 255
STATUS_PERIOD_S = 0.2  # health, state and heartbeat are recomputed this often
_HEARTBEAT_PERIOD_S = 1.0
_LOG_STATUS_EVERY_S = 60.0
U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class ResultValues:
    """The published values of one result (from its header).

    Attributes:
        started: the daemon's start time (epoch s); with ``seq`` the result's identity.
        seq: the daemon's per-camera sequence number (1.. after each daemon start).
        verdict: ``PASS``, ``FAIL`` or ``UNKNOWN``; ``verdict_code``: :data:`VERDICT_CODES`.
        score: the anomaly score; NaN when the daemon sent none (UNKNOWN).
        threshold: the threshold the verdict was decided with.
        acquisition_id: the camera's id of the acquisition.
        model_version: the bundle's model version ("" without a model).
        region_count: anomalous regions in the result.
        published: when the daemon published the result (epoch s).
        reason: why the verdict is UNKNOWN ("" for PASS / FAIL); ``reason_code``: :data:`REASON_CODES`.
    """

    started: float
    seq: int
    verdict: str
    score: float
    threshold: float
    acquisition_id: str
    model_version: str
    region_count: int
    published: float
    reason: str

    @classmethod
    def from_header(cls, h: Mapping[str, Any]) -> ResultValues:
        score = h.get("score")
        stamps = h.get("timestamps") or {}
        return cls(
            started=float(h["started"]),
            seq=int(h["seq"]),
            verdict=str(h["verdict"]),
            score=float(score) if score is not None else math.nan,
            threshold=float(h["threshold"]) if h.get("threshold") is not None else math.nan,
            acquisition_id=str(h.get("acquisition_id") or ""),
            model_version=str(h.get("model_version") or ""),
            region_count=len(h.get("regions") or ()),
            published=float(stamps.get("published") or 0.0),
            reason=str(h.get("reason") or ""),
        )

    @property
    def verdict_code(self) -> int:
        return VERDICT_CODES.get(self.verdict, VERDICT_CODES["UNKNOWN"])

    @property
    def reason_code(self) -> int:
        return REASON_CODES.get(self.reason or None, REASON_OTHER)


@dataclass(frozen=True)
class CameraStatus:
    """A camera as the gateways report it.

    Attributes:
        healthy: the PLC may trust the last verdict: a result or heartbeat arrived within ``stale_s`` and
            the camera is running or paused (:meth:`edge.feed.CameraView.healthy`).
        heard: a message from the daemon arrived within ``stale_s``.
        state: ``unreachable`` (not heard) or the heartbeat's state (``running`` when only results came).
        heartbeat: a counter that grows by one every second while the daemon is heard (mod 2**32).
    """

    healthy: bool
    heard: bool
    state: str
    heartbeat: int

    @property
    def state_code(self) -> int:
        return STATE_CODES.get(self.state, STATE_CODES["down"])


class Gateway(Protocol):
    """One protocol server fed by :func:`run_gateway`."""

    name: str

    async def start(self) -> str:
        """Listen; return where (one line for logs). Raises EdgeError (port in use, certificates)."""

    async def write_results(self, results: dict[str, ResultValues]) -> None:
        """Publish new results (camera -> values), all values of a camera's result together."""

    async def write_status(self, status: dict[str, CameraStatus]) -> None:
        """Publish health, state and heartbeat counters."""

    async def stop(self) -> None:
        """Stop serving (idempotent)."""


class FeedBridge:
    """A :class:`~edge.feed.LineFeed` that wakes the asyncio loop it was made in on every result.

    Make it inside the running loop; the loop calls :meth:`wait`, then :meth:`new_results` and, every
    :data:`STATUS_PERIOD_S`, :meth:`status`.

    Args:
        cfg: the line config.
        stale_s: the gateway's staleness deadline (``Healthy`` false after this long without a message).
    """

    def __init__(self, cfg: EdgeConfig, stale_s: float) -> None:
        self.cameras = [c.name for c in cfg.cameras]
        self.stale_s = float(stale_s)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._written: dict[str, tuple[float, int] | None] = dict.fromkeys(self.cameras)
        self._beats = dict.fromkeys(self.cameras, 0)
        self._next_beat = time.monotonic() + _HEARTBEAT_PERIOD_S
        self.feed = LineFeed(cfg, on_result=self._on_result, stale_s=self.stale_s)

    def start(self) -> FeedBridge:
        self.feed.start()
        return self

    def close(self) -> None:
        self.feed.close()

    def _on_result(self, msg: Message) -> None:  # the feed's thread
        with contextlib.suppress(RuntimeError):  # the loop is already closed (shutdown)
            self._loop.call_soon_threadsafe(self._wake.set)

    def wake(self) -> None:
        """Wake :meth:`wait` now (from the loop's thread: signal handlers)."""
        self._wake.set()

    async def wait(self, timeout: float) -> None:
        """Until a result arrived or :meth:`wake` was called, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, timeout))
        self._wake.clear()

    def new_results(self) -> dict[str, ResultValues]:
        """Each camera's latest result not handed out yet (results in between are skipped: the gateways
        show the newest; the daemon's ``seq`` tells a PLC how many it did not see)."""
        out: dict[str, ResultValues] = {}
        for name in self.cameras:
            header = self.feed.camera(name).result
            if header is None:
                continue
            key = (float(header["started"]), int(header["seq"]))
            if key != self._written[name]:
                self._written[name] = key
                out[name] = ResultValues.from_header(header)
        return out

    def status(self, now: float | None = None) -> dict[str, CameraStatus]:
        """Every camera's status; advances the heartbeat counters once per second of ``now``."""
        now = time.monotonic() if now is None else now
        beat = now >= self._next_beat
        if beat:
            # one step per call, however late (a stalled loop does not make the counter jump)
            self._next_beat = max(self._next_beat + _HEARTBEAT_PERIOD_S, now - _HEARTBEAT_PERIOD_S)
        out: dict[str, CameraStatus] = {}
        for name in self.cameras:
            view = self.feed.camera(name)
            heard = view.last_heard is not None and now - view.last_heard <= self.stale_s
            if beat and heard:
                self._beats[name] = (self._beats[name] + 1) & U32
            state = "unreachable"
            if heard:
                state = str(view.heartbeat.get("state") or "running") if view.heartbeat else "running"
            out[name] = CameraStatus(view.healthy(now, self.stale_s), heard, state, self._beats[name])
        return out


def library_log_level(level: str) -> int:
    """The level for the protocol libraries' loggers: theirs are chatty (a line per session or request),
    so they log warnings and errors only unless the gateway runs with ``--log-level debug``."""
    return logging.DEBUG if level == "debug" else logging.WARNING


async def _serve(make: Callable[[FeedBridge], Gateway], cfg: EdgeConfig, stale_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    bridge = FeedBridge(cfg, stale_s)
    gateway = make(bridge)

    def request_stop() -> None:
        stop.set()
        bridge.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    notifier = Notifier()
    gate = WatchdogGate(notifier)
    healthy: dict[str, bool] = {}
    try:
        where = await gateway.start()
    except BaseException:
        await gateway.stop()
        bridge.feed.context.term()  # the feed never started
        raise
    bridge.start()
    try:
        log.info("%s gateway of line %s: serving %s", gateway.name, cfg.line, where)
        notifier.ready(f"{gateway.name}: serving {where}")
        next_status = time.monotonic()
        next_line = next_status + _LOG_STATUS_EVERY_S
        while not stop.is_set():
            await bridge.wait(next_status - time.monotonic())
            results = bridge.new_results()
            if results:
                await gateway.write_results(results)
            now = time.monotonic()
            if now < next_status:
                continue
            next_status = now + STATUS_PERIOD_S
            status = bridge.status(now)
            await gateway.write_status(status)
            gate.maybe_feed(True)  # the gateway's own loop is alive; the daemon's health is the PLC's
            for name, st in status.items():
                if healthy.get(name) != st.healthy:
                    first = name not in healthy
                    healthy[name] = st.healthy
                    log.log(
                        logging.INFO if st.healthy or first else logging.WARNING,
                        "camera %s: %s (state %s)",
                        name,
                        "healthy" if st.healthy else "NOT healthy",
                        st.state,
                    )
            if now >= next_line:
                next_line = now + _LOG_STATUS_EVERY_S
                notifier.status(
                    f"{gateway.name}: serving {where}; "
                    + ", ".join(f"{n} {'healthy' if s.healthy else s.state}" for n, s in status.items())
                )
    finally:
        notifier.stopping()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        bridge.close()
        await gateway.stop()
        notifier.close()
        log.info("%s gateway of line %s: stopped", gateway.name, cfg.line)


def run_gateway(make: Callable[[FeedBridge], Gateway], cfg: EdgeConfig, stale_s: float) -> int:
    """Serve until SIGTERM / SIGINT; returns the exit code (0).

    Args:
        make: builds the gateway around the bridge (called inside the loop).
        cfg: the line config.
        stale_s: the staleness deadline of ``Healthy``.

    Raises:
        EdgeError: the gateway cannot start (one line).
    """
    asyncio.run(_serve(make, cfg, stale_s))
    return 0
