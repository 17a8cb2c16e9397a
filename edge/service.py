"""``masf-edge run``: the service's main loop, signals, systemd notification and exit codes.

* Signal handlers only put the signal on a queue (and, with ``hard_stop``, start the stop's deadline
  below: faulthandler's own timer, no lock or logging of ours); the main loop acts on it: SIGTERM /
  SIGINT start the graceful stop (parts in flight are scored and published, within
  ``pipeline.drain_timeout_s``), SIGHUP reloads the config file (as the ``reload`` control request does).
* systemd (``Type=notify``): ``READY=1`` only after the sockets are bound, the models are loaded and
  warmed up and every camera was opened once (or is known to be down); ``WATCHDOG=1`` from the main
  loop only while the daemon is healthy (:meth:`edge.daemon.Daemon.health`: no stuck capture or
  inference thread), so systemd restarts a wedged daemon; ``STATUS=`` a line per camera;
  ``STOPPING=1`` when the stop begins. Without ``NOTIFY_SOCKET`` nothing is sent.
* Exit codes (:data:`EXIT_CODES`): 0 clean stop, 2 bad config or start-up failure (one ``error:`` line),
  3 the drain deadline passed with parts left (they were published UNKNOWN ``shutdown``), 4 a thread
  died or stayed stuck until stop (the process then ends with ``os._exit``: a thread stuck in native
  code cannot be joined), 1 the stop itself passed its deadline.
* The stop has a deadline even where closing a socket or joining a thread hangs: with ``hard_stop`` (the
  ``masf-edge run`` process), from the SIGTERM / SIGINT (or, for ``stop_event``, from the stop's start)
  the process ends within ``pipeline.drain_timeout_s`` plus :data:`STOP_GRACE_S`, interpreter shutdown
  included, also when the main loop itself is wedged and never reads the signal; past it every thread's
  stack is written to stderr (the journal under systemd: where it hung) and the process exits 1, before
  systemd's ``TimeoutStopSec`` would kill it without a word.
"""

from __future__ import annotations

import faulthandler
import logging
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from edge.config import EdgeConfig, load_edge_config
from edge.daemon import Daemon
from edge.notify import Notifier, WatchdogGate

__all__ = ["EXIT_CODES", "STOP_GRACE_S", "run_service"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STOP_DEADLINE = 1  # faulthandler's exit status after it wrote the stacks
EXIT_CONFIG = 2
EXIT_DRAIN_INCOMPLETE = 3
EXIT_UNHEALTHY = 4
EXIT_CODES = {
    EXIT_OK: "stopped cleanly",
    EXIT_STOP_DEADLINE: "the stop passed its deadline (every thread's stack is in stderr)",
    EXIT_CONFIG: "bad config or start-up failure",
    EXIT_DRAIN_INCOMPLETE: "stopped with parts not scored before the drain deadline (published UNKNOWN)",
    EXIT_UNHEALTHY: "stopped while unhealthy (a stuck or dead thread)",
}
_TICK_S = 0.1
# after the drain deadline: publisher flush, closing the sockets (2 s each), the metrics server (5 s), the
# evidence writer, the retraining jobs and the interpreter's own shutdown
STOP_GRACE_S = 15.0
_STATUS_EVERY_S = 5.0


def run_service(
    config_path: str | Path,
    overrides: list[str] | None = None,
    cfg: EdgeConfig | None = None,
    stop_event: threading.Event | None = None,
    hard_stop: bool = False,
) -> int:
    """Run the daemon until SIGTERM / SIGINT (or ``stop_event``); returns the exit code.

    ``hard_stop``: this process exists to run the daemon (``masf-edge run``), so once the stop begins it may
    be ended at the stop's deadline (module docstring); an embedding caller leaves it off.

    Raises:
        EdgeError / EngineError: bad config, sockets that cannot be bound, unreadable keys (the CLI
            prints one line and exits 2).
    """
    path = Path(config_path)
    if cfg is None:
        cfg = load_edge_config(path, overrides)
    signals: queue.Queue[int] = queue.Queue()
    signum: int | None
    limit = cfg.pipeline.drain_timeout_s + STOP_GRACE_S
    deadline_armed = False  # the stop's deadline is running (armed once)

    def arm_deadline() -> None:
        """Start the stop's deadline (``hard_stop`` only, once)."""
        nonlocal deadline_armed
        if not hard_stop or deadline_armed or sys.__stderr__ is None:
            return
        # armed until the process ends: a hang in the loop, a close, a join or interpreter shutdown
        faulthandler.dump_traceback_later(limit, exit=True, file=sys.__stderr__)
        deadline_armed = True

    def enqueue(signum: int, frame: FrameType | None) -> None:  # enqueues: no locks, no logging
        if signum in (signal.SIGTERM, signal.SIGINT):
            arm_deadline()  # a main loop wedged before it reads the queue still ends at the deadline
        signals.put(signum)

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            old[sig] = signal.signal(sig, enqueue)
    notifier = Notifier()
    daemon = Daemon(cfg, path, overrides)
    try:
        try:
            daemon.start()
        except BaseException:
            daemon.shutdown(2.0)
            raise
        notifier.ready(daemon.status_line())
        gate = WatchdogGate(notifier)
        log.info(
            "ready: line %s, publishing on %s, control on %s%s",
            cfg.line,
            daemon.publisher.endpoint if daemon.publisher else "?",
            daemon.control.endpoint if daemon.control else "?",
            f", metrics on {daemon.metrics_server.url}" if daemon.metrics_server else "",
        )
        status_due = time.monotonic() + _STATUS_EVERY_S
        healthy, reason = True, "ok"
        while True:
            try:
                signum = signals.get(timeout=_TICK_S)
            except queue.Empty:
                signum = None
            if signum in (int(signal.SIGTERM), int(signal.SIGINT)) or (
                stop_event is not None and stop_event.is_set()
            ):
                break
            if signum == int(signal.SIGHUP):
                notifier.reloading()
                try:
                    daemon.reload("config", None, None)
                except Exception as err:  # a bad new config keeps the old one running
                    log.error("SIGHUP reload refused: %s", err)
                notifier.ready(daemon.status_line())
            daemon.tick()
            healthy, reason = daemon.health()
            gate.maybe_feed(healthy, reason)
            if time.monotonic() >= status_due and healthy:
                status_due = time.monotonic() + _STATUS_EVERY_S
                notifier.status(daemon.status_line())
        notifier.stopping(f"stopping: draining parts in flight (up to {cfg.pipeline.drain_timeout_s:g} s)")
        arm_deadline()  # a stop_event's stop: from now
        if deadline_armed:
            log.info("stopping: draining parts in flight (the process ends within %g s)", limit)
        else:
            log.info("stopping: draining parts in flight")
        left = daemon.shutdown(cfg.pipeline.drain_timeout_s)
        if daemon.stuck_threads:
            log.error("stopped with stuck threads (left behind): %s", ", ".join(daemon.stuck_threads))
            return EXIT_UNHEALTHY
        if left:
            log.error("stopped: %d part(s) not scored before the drain deadline (published UNKNOWN)", left)
            return EXIT_DRAIN_INCOMPLETE
        if not healthy:
            log.error("stopped while unhealthy: %s", reason)
            return EXIT_UNHEALTHY
        log.info("stopped cleanly")
        return EXIT_OK
    finally:
        notifier.close()
        for signo, handler in old.items():
            signal.signal(signo, handler)
