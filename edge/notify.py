"""systemd service notifications (``sd_notify``) without a library, and a health-gated watchdog.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a file system path, or ``@name`` for an abstract
socket) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` / ``WATCHDOG_PID``. :class:`Notifier` sends the
``KEY=value`` datagrams of the protocol over an ``AF_UNIX`` ``SOCK_DGRAM`` socket; without
``NOTIFY_SOCKET`` (run from a shell, in tests) every method does nothing. A notification must never take
the service down, so a failed send is logged at DEBUG and reported as ``False``, never raised.

:class:`WatchdogGate` feeds the watchdog from the main loop only while the daemon reports itself healthy:
a wedged daemon stops feeding and systemd kills and restarts it (``Restart=on-failure``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "WatchdogGate"]

log = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 1.0  # a full receive queue at systemd must not stall the main loop for long


def _one_line(text: str) -> str:
    """``text`` without line breaks (a value in the protocol ends at the newline)."""
    return " ".join(str(text).split())


class Notifier:
    """Sends service state to systemd over ``NOTIFY_SOCKET``.

    Thread-safe: one socket, used under a lock. Each method returns True when the datagram was sent,
    False when notifications are disabled or the send failed (logged at DEBUG).

    Args:
        env: the environment to read (default ``os.environ``); ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
            ``WATCHDOG_PID`` are read once, here.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address: str | None = None
        raw = env.get("NOTIFY_SOCKET", "")
        if raw.startswith("@"):
            self._address = "\0" + raw[1:]
        elif raw.startswith("/"):
            self._address = raw
        elif raw:
            log.debug("NOTIFY_SOCKET=%r is neither a path nor an abstract '@' socket: not notifying", raw)
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured (the process runs under ``Type=notify``)."""
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=value`` lines (keys as given, values on one line).

        Returns:
            True when sent; False when disabled or the send failed.
        """
        if self._address is None or not fields:
            return False
        message = "\n".join(f"{key}={_one_line(str(value))}" for key, value in fields.items())
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(message.encode("utf-8", "replace"), self._address)
            except OSError as err:
                log.debug("sd_notify %s failed: %s", ",".join(fields), err)
                return False
        return True

    def ready(self, status: str = "ready") -> bool:
        """Start-up (or a reload) is complete: ``READY=1`` with a status line."""
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Free-form status shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """Feed the watchdog (``WATCHDOG=1``); prefer :class:`WatchdogGate`, which feeds only when healthy."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "stopping") -> bool:
        """Shutdown has begun: ``STOPPING=1`` with a status line."""
        return self.send(STOPPING=1, STATUS=status)

    def reloading(self, status: str = "reloading") -> bool:
        """A reload has begun (``RELOADING=1``); send :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` is what systemd >= 253 needs with ``Type=notify-reload``; older versions ignore
        the field.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS=status)

    def extend_timeout(self, usec: int) -> bool:
        """Ask for ``usec`` more microseconds before the start, stop or reload timeout (long warm-ups)."""
        return self.send(EXTEND_TIMEOUT_USEC=max(0, int(usec)))

    def watchdog_interval(self) -> float | None:
        """The watchdog interval in seconds, or None when no watchdog is set for this process.

        None when ``WATCHDOG_USEC`` is missing, not a positive integer, or when ``WATCHDOG_PID`` is set and
        names another process (the variables were inherited from a parent).
        """
        if not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.debug("WATCHDOG_USEC=%r is not an integer: no watchdog", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                log.debug("WATCHDOG_PID=%r is not an integer: no watchdog", self._watchdog_pid)
                return None
            if pid != os.getpid():
                return None
        return usec / 1e6

    def close(self) -> None:
        """Close the socket (idempotent); a later send opens a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class WatchdogGate:
    """Feeds systemd's watchdog at half its interval, only while the daemon is healthy.

    The main loop calls :meth:`maybe_feed` every tick (more often than half the interval). While healthy
    it sends ``WATCHDOG=1`` whenever half the interval has passed since the last feed. While unhealthy it
    sends nothing (systemd then kills and restarts the wedged daemon once the interval expires) except,
    once per unhealthy spell, a ``STATUS=`` line naming the problem, so ``systemctl status`` and the
    journal say why the watchdog fired.

    Args:
        notifier: where to send.
        interval_s: the watchdog interval; None: the notifier's (``WATCHDOG_USEC``). Without an interval
            the gate never feeds but still reports the unhealthy status line.
        healthy_status: sent as ``STATUS=`` when health returns after an unhealthy spell; None: nothing is
            sent then (the caller sets its own status).
        clock: monotonic time source in seconds.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float | None = None,
        healthy_status: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        interval = notifier.watchdog_interval() if interval_s is None else interval_s
        self._period = interval / 2 if interval and interval > 0 else None
        self._healthy_status = healthy_status
        self._clock = clock
        self._last_feed: float | None = None
        self._problem: str | None = None

    @property
    def period(self) -> float | None:
        """Seconds between feeds (half the watchdog interval), or None when there is no watchdog."""
        return self._period

    @property
    def problem(self) -> str | None:
        """The reason given with the last unhealthy tick, or None while healthy."""
        return self._problem

    def maybe_feed(self, healthy: bool, reason: str = "unhealthy") -> bool:
        """One main-loop tick.

        Args:
            healthy: whether the daemon made progress / is idle-healthy.
            reason: what is wrong when not healthy (one line, shown by ``systemctl status``).

        Returns:
            True when ``WATCHDOG=1`` was sent on this tick.
        """
        if not healthy:
            if self._problem is None:
                self._problem = _one_line(reason) or "unhealthy"
                log.warning("unhealthy, not feeding the systemd watchdog: %s", self._problem)
                self._notifier.status(f"unhealthy: {self._problem}")
            return False
        if self._problem is not None:
            log.info("healthy again (was: %s)", self._problem)
            self._problem = None
            self._last_feed = None  # feed at once: the last feed may be most of an interval ago
            if self._healthy_status is not None:
                self._notifier.status(self._healthy_status)
        if self._period is None:
            return False
        now = self._clock()
        if self._last_feed is not None and now - self._last_feed < self._period:
            return False
        sent = self._notifier.watchdog()
        if sent:
            self._last_feed = now  # a failed send is retried on the next tick
        return sent
