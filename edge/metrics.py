"""Prometheus metrics of the edge daemon and the HTTP server for ``/metrics``, ``/healthz``, ``/readyz``.

:class:`Metrics` owns a private :class:`~prometheus_client.CollectorRegistry` (never the process-wide
default one), so two daemons or two tests in one process never share counters. All names start with
``masf_edge_``; label values come from the line config (camera names) and small fixed sets (verdicts,
stages, drop reasons), so the number of series stays bounded over months.

:class:`MetricsServer` serves the registry and two probes from a stdlib ``ThreadingHTTPServer`` in a
daemon thread; it binds loopback by default (``metrics.host`` in the line config).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from edge.errors import EdgeError

__all__ = [
    "DROP_REASONS",
    "LATENCY_BUCKETS",
    "STAGES",
    "VERDICTS",
    "Metrics",
    "MetricsServer",
]

log = logging.getLogger(__name__)

PREFIX = "masf_edge_"
VERDICTS = ("PASS", "FAIL", "UNKNOWN")
STAGES = ("capture_to_queue", "preprocess", "infer", "post", "publish", "total")
DROP_REASONS = ("free_run_replaced", "source_dropped", "overflow")
# 1 ms .. 10 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HealthCheck = Callable[[], tuple[bool, str]]


class Metrics:
    """The daemon's metrics in a private registry, with the update methods the pipeline calls.

    Thread-safe (prometheus_client metrics are; the bookkeeping of per-camera series is under a lock).

    Args:
        registry: where to register; None: a new private :class:`CollectorRegistry`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r = self.registry
        p = PREFIX
        self.frames = Counter(f"{p}frames", "Frames acquired", ["camera"], registry=r)
        self.dropped_frames = Counter(
            f"{p}dropped_frames",
            "Frames dropped before inference (free_run_replaced, source_dropped, overflow)",
            ["camera", "reason"],
            registry=r,
        )
        self.results = Counter(f"{p}results", "Results published", ["camera", "verdict"], registry=r)
        self.unknown = Counter(f"{p}unknown", "UNKNOWN results by reason", ["camera", "reason"], registry=r)
        self.stage_latency = Histogram(
            f"{p}stage_latency_seconds",
            "Latency of each pipeline stage (total: acquisition to published)",
            ["camera", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reconnects = Counter(f"{p}reconnects", "Camera reconnect attempts", ["camera"], registry=r)
        self.camera_up = Gauge(f"{p}camera_up", "1 while the camera delivers frames", ["camera"], registry=r)
        self.queue_depth = Gauge(f"{p}queue_depth", "Frames waiting for inference", ["camera"], registry=r)
        self.model_info = Gauge(
            f"{p}model_info",
            "The bundle in use per camera (always 1)",
            ["camera", "part", "model_version", "bundle_id"],
            registry=r,
        )
        self.publish_dropped = Counter(
            f"{p}publish_dropped", "Messages not published (ZeroMQ high-water mark)", registry=r
        )
        self.evidence_dropped = Counter(
            f"{p}evidence_dropped",
            "Evidence items not stored (queue full, low disk, write error)",
            registry=r,
        )
        self.evidence_bytes = Gauge(f"{p}evidence_bytes", "Bytes in the evidence store", registry=r)
        self.threshold = Gauge(f"{p}threshold", "Decision threshold in use", ["camera"], registry=r)
        self.degraded = Gauge(f"{p}degraded", "1 while the daemon is in a degraded state", registry=r)
        self.train_epoch = Gauge(
            f"{p}train_epoch", "Epoch of the part's running training job", ["part"], registry=r
        )
        self.train_epochs = Gauge(
            f"{p}train_epochs", "Epochs of the part's training job", ["part"], registry=r
        )
        self.train_eta = Gauge(
            f"{p}train_eta_seconds", "Estimated seconds left in the part's training job", ["part"], registry=r
        )
        self.train_running = Gauge(
            f"{p}train_running", "1 while a training job of the part runs", ["part"], registry=r
        )
        self.collect_left = Gauge(
            f"{p}collect_left", "Frames still to collect for the camera's collection", ["camera"], registry=r
        )
        self.degraded_info = Gauge(
            f"{p}degraded_info", "The degraded states now active (always 1)", ["reason"], registry=r
        )
        self.up = Gauge(f"{p}up", "1 while the daemon runs", registry=r)
        self.start_time = Gauge(f"{p}start_time_seconds", "Start time (Unix seconds)", registry=r)
        self.up.set(1)
        self.start_time.set(time.time())
        self._lock = threading.Lock()
        self._model: dict[str, tuple[str, str, str, str]] = {}
        self._degraded: set[str] = set()
        self._series: dict[str, set[tuple[Any, tuple[str, ...]]]] = {}

    # ------------------------------------------------------------------ bookkeeping

    def _child(self, metric: Any, camera: str, *rest: str) -> Any:
        """``metric.labels(camera, *rest)``, remembered so :meth:`remove_camera` can remove it."""
        labels = (camera, *rest)
        with self._lock:
            self._series.setdefault(camera, set()).add((metric, labels))
        return metric.labels(*labels)

    def add_camera(self, camera: str) -> None:
        """Create a camera's series at zero, so dashboards see 0 rather than nothing."""
        self._child(self.frames, camera)
        self._child(self.reconnects, camera)
        self._child(self.camera_up, camera)
        self._child(self.queue_depth, camera)
        for reason in DROP_REASONS:
            self._child(self.dropped_frames, camera, reason)
        for verdict in VERDICTS:
            self._child(self.results, camera, verdict)

    def remove_camera(self, camera: str) -> None:
        """Remove every series of ``camera`` (it left the line config on a reload)."""
        with self._lock:
            series = self._series.pop(camera, set())
            self._model.pop(camera, None)
        for metric, labels in series:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    # ------------------------------------------------------------------ updates from the pipeline

    def count_frame(self, camera: str, n: int = 1) -> None:
        """``n`` frames acquired."""
        self._child(self.frames, camera).inc(n)

    def drop_frame(self, camera: str, reason: str, n: int = 1) -> None:
        """``n`` frames dropped before inference.

        Raises:
            ValueError: ``reason`` is not one of :data:`DROP_REASONS`.
        """
        if reason not in DROP_REASONS:
            raise ValueError(f"drop reason must be one of {DROP_REASONS}, got {reason!r}")
        self._child(self.dropped_frames, camera, reason).inc(n)

    def observe_result(
        self,
        camera: str,
        verdict: str,
        reason: str | None = None,
        latencies: dict[str, float] | None = None,
    ) -> None:
        """One published result.

        Args:
            camera: the camera's name.
            verdict: PASS, FAIL or UNKNOWN.
            reason: why UNKNOWN (``stale``, ``timeout``, ``overflow``, ...; a small fixed set: it is a
                label); ignored for PASS and FAIL.
            latencies: seconds per stage (keys from :data:`STAGES`; missing stages are not observed).

        Raises:
            ValueError: an unknown verdict or stage.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        bad = sorted(set(latencies or {}) - set(STAGES))
        if bad:
            raise ValueError(f"latency stages must be among {STAGES}, got {bad[0]!r}")
        self._child(self.results, camera, verdict).inc()
        if verdict == "UNKNOWN":
            self._child(self.unknown, camera, reason or "unspecified").inc()
        for stage, seconds in (latencies or {}).items():
            self._child(self.stage_latency, camera, stage).observe(max(0.0, float(seconds)))

    def reconnect(self, camera: str) -> None:
        """A reconnect attempt of ``camera``."""
        self._child(self.reconnects, camera).inc()

    def set_camera_up(self, camera: str, up: bool) -> None:
        """Whether ``camera`` is connected and delivering."""
        self._child(self.camera_up, camera).set(1 if up else 0)

    def set_queue_depth(self, camera: str, depth: int) -> None:
        """Frames of ``camera`` waiting for inference."""
        self._child(self.queue_depth, camera).set(depth)

    def set_model(self, camera: str, part: str, model_version: str, bundle_id: str) -> None:
        """The bundle ``camera`` now uses; the previous one's ``model_info`` series is removed."""
        labels = (camera, str(part), str(model_version), str(bundle_id))
        with self._lock:
            old = self._model.get(camera)
            self._model[camera] = labels
        if old is not None and old != labels:
            with contextlib.suppress(KeyError):
                self.model_info.remove(*old)
        self._child(self.model_info, *labels).set(1)

    def set_threshold(self, camera: str, value: float) -> None:
        """The decision threshold in use for ``camera``."""
        self._child(self.threshold, camera).set(value)

    def count_publish_dropped(self, n: int = 1) -> None:
        """``n`` messages not published."""
        self.publish_dropped.inc(n)

    def count_evidence_dropped(self, n: int = 1) -> None:
        """``n`` evidence items not stored."""
        self.evidence_dropped.inc(n)

    def set_evidence_bytes(self, nbytes: int) -> None:
        """Bytes now in the evidence store."""
        self.evidence_bytes.set(nbytes)

    def set_degraded(self, reasons: Iterable[str]) -> None:
        """The degraded states now active (empty: not degraded); ``degraded_info`` has one series each.

        Reasons are labels: use short fixed names (``evidence_low_disk``, ``infer_timeout``), not messages.
        """
        new = {str(r) for r in reasons if r}
        with self._lock:
            old = self._degraded
            self._degraded = new
        for reason in old - new:
            with contextlib.suppress(KeyError):
                self.degraded_info.remove(reason)
        for reason in new:
            self.degraded_info.labels(reason).set(1)
        self.degraded.set(1 if new else 0)

    def set_training(self, part: str, running: bool, epoch: int, epochs: int, eta_s: float | None) -> None:
        """Progress of a part's training job (the gauges stay at their last values when it ends)."""
        self.train_running.labels(part).set(1 if running else 0)
        self.train_epoch.labels(part).set(epoch)
        self.train_epochs.labels(part).set(epochs)
        self.train_eta.labels(part).set(eta_s if eta_s is not None else 0.0)

    def set_collect_left(self, camera: str, left: int) -> None:
        self.collect_left.labels(camera).set(left)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return bytes(generate_latest(self.registry))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _make_handler(metrics: Metrics, health: HealthCheck, ready: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that stalls mid-request loses its connection, not a thread forever
        server_version = "masf-edge"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _probe(self, check: HealthCheck) -> None:
            try:
                ok, detail = check()
            except Exception as err:  # a broken probe is a failed probe, never a dead server thread
                ok, detail = False, f"check failed: {type(err).__name__}: {err}"
            body = json.dumps({"ok": bool(ok), "detail": str(detail)}).encode()
            self._send(200 if ok else 503, body, "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._probe(health)
            elif path == "/readyz":
                self._probe(ready)
            else:
                body = json.dumps({"ok": False, "detail": "not found: /metrics, /healthz, /readyz"}).encode()
                self._send(404, body, "application/json")

        do_HEAD = do_GET

    return Handler


class MetricsServer:
    """HTTP server for ``GET /metrics``, ``/healthz`` and ``/readyz`` in a daemon thread.

    The probes answer 200 with ``{"ok": true, "detail": ...}`` when their callable returns
    ``(True, detail)``, else 503 with ``{"ok": false, "detail": reason}``; any other path is 404. Access
    lines go to this module's logger at DEBUG.

    Args:
        metrics: whose registry ``/metrics`` serves.
        host: address to bind (``127.0.0.1``; ``::1`` for IPv6).
        port: TCP port; 0: any free port (see :attr:`port` after :meth:`start`).
        health: liveness check, ``() -> (ok, detail)``.
        ready: readiness check, ``() -> (ok, detail)``.
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 9108,
        health: HealthCheck | None = None,
        ready: HealthCheck | None = None,
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._health = health or (lambda: (True, "ok"))
        self._ready = ready or (lambda: (True, "ok"))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """The address bound (as configured)."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port after :meth:`start` (the real one when 0 was asked), else the configured one."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        """Bind and serve in a daemon thread.

        Returns:
            self.

        Raises:
            EdgeError: the address cannot be bound (in use, not a local address, no permission).
        """
        if self._server is not None:
            return self
        cls = _Server6 if ":" in self._host else _Server
        handler = _make_handler(self._metrics, self._health, self._ready)
        try:
            server = cls((self._host, self._port), handler)
        except (OSError, OverflowError) as err:
            why = getattr(err, "strerror", None) or str(err)
            raise EdgeError(
                f"metrics server cannot listen on {self._host}:{self._port}: {why}; set metrics.port to a "
                "free port (0: any) or metrics.enabled: false"
            ) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("metrics on %s/metrics", self.url)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and release the port within ``timeout`` seconds (idempotent)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        if thread is not None and thread.is_alive():
            server.shutdown()  # returns after the serve loop's next poll (0.2 s)
            thread.join(timeout)
            if thread.is_alive():
                log.warning("metrics server thread did not stop within %.1f s", timeout)
        server.server_close()
        self._port = int(server.server_address[1])
        self._server = None
        self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
