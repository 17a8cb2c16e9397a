"""The publisher: one ZeroMQ PUB socket, owned by its own thread, fed through a bounded queue.

Any thread calls :meth:`Publisher.publish` with the frames of a message (:mod:`edge.protocol`); it never
blocks. When the queue is full (by count or by bytes) the message is dropped and counted. The PUB socket
itself drops per subscriber beyond ``sndhwm`` (ZeroMQ's design), so a subscriber that stops reading costs
the daemon at most ``sndhwm`` messages of memory and never slows it down.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import zmq

from edge.keys import CurveServer
from edge.sockets import bind_server_socket, open_in_thread, start_socket_thread

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

_POLL_S = 0.1


class Publisher:
    """Publishes messages on one PUB socket from a private thread.

    Args:
        context: the daemon's ZeroMQ context (terminated by its owner, after :meth:`close`).
        address: the endpoint to bind (``tcp://127.0.0.1:5556``; ``tcp://127.0.0.1:*`` picks a free port,
            see :attr:`endpoint`).
        sndhwm: messages queued per subscriber before ZeroMQ drops for that subscriber.
        curve: CURVE server keys (the context's :class:`~edge.keys.Authenticator` must be running).
        queue_size: messages waiting for the socket thread before :meth:`publish` drops.
        max_queue_bytes: bytes waiting for the socket thread before :meth:`publish` drops.
        linger_ms: how long unsent messages may delay the context's termination after close.

    Attributes:
        sent: messages handed to the socket.
        dropped: messages dropped because the queue was full (or the publisher closed).
        subscriptions: active subscriptions (one per subscriber and topic prefix; the socket is an XPUB).
        endpoint: the bound endpoint (the real port when ``address`` ends in ``:*``), after :meth:`start`.
    """

    def __init__(
        self,
        context: zmq.Context,
        address: str,
        sndhwm: int,
        curve: CurveServer | None = None,
        queue_size: int = 10000,
        max_queue_bytes: int = 256 * 2**20,
        linger_ms: int = 1000,
    ) -> None:
        self.context = context
        self.address = address
        self.sndhwm = int(sndhwm)
        self.curve = curve
        self.queue_size = int(queue_size)
        self.max_queue_bytes = int(max_queue_bytes)
        self.linger_ms = int(linger_ms)
        self.sent = 0
        self.dropped = 0
        self.subscriptions = 0
        self.endpoint: str | None = None
        self._queue: collections.deque[tuple[list[bytes], int]] = collections.deque()
        self._queued_bytes = 0
        self._pending = 0  # queued + being sent
        self._cond = threading.Condition()
        self._burst = 0  # drops in the current burst (0: not dropping)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: str | None = None

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> Publisher:
        """Create and bind the socket in the publisher thread; return once it is bound.

        Returns:
            self.

        Raises:
            EdgeError: the address is in use or invalid (one line naming it), or the CURVE key is bad.
        """
        if start_socket_thread(self, "masf-publish"):
            log.info("publishing on %s (sndhwm %d)", self.endpoint, self.sndhwm)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the socket; messages still queued are dropped (call :meth:`flush`
        first to send them). Idempotent.

        Args:
            timeout: seconds to wait for the thread.
        """
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("publisher thread did not stop within %.1f s", timeout)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._pending = 0
            self.dropped += left
            self._cond.notify_all()
        if left:
            log.warning("publisher closed with %d unsent message(s) (dropped)", left)

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ producers

    def publish(self, parts: list[bytes]) -> bool:
        """Queue one message for the socket thread; never blocks.

        Args:
            parts: the frames (from :func:`edge.protocol.encode_result` / ``encode_heartbeat``).

        Returns:
            True when queued; False when dropped (queue full or publisher not running).
        """
        size = sum(len(p) for p in parts)
        with self._cond:
            running = self._thread is not None and not self._stop.is_set()
            if (
                running
                and len(self._queue) < self.queue_size
                and (self._queued_bytes + size <= self.max_queue_bytes or not self._queue)
            ):
                self._queue.append((parts, size))
                self._queued_bytes += size
                self._pending += 1
                if self._burst:
                    log.info("publish queue accepts messages again after %d dropped", self._burst)
                    self._burst = 0
                self._cond.notify()
                return True
            self.dropped += 1
            self._burst += 1
            first = self._burst == 1
        if first:
            if running:
                log.warning(
                    "publish queue full (%d messages / %d bytes): dropping messages until it drains",
                    self.queue_size,
                    self.max_queue_bytes,
                )
            else:
                log.warning("publisher is not running: dropping messages")
        return False

    def flush(self, timeout: float) -> bool:
        """Wait until every queued message has been handed to the socket.

        Args:
            timeout: seconds to wait at most.

        Returns:
            True when the queue is empty, False on timeout.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(left)
            return True

    @property
    def queued(self) -> int:
        """Messages waiting for the socket thread."""
        return len(self._queue)

    # ------------------------------------------------------------------------------ socket thread

    def _open(self) -> zmq.Socket:
        # XPUB behaves as PUB for subscribers (drops at SNDHWM per subscriber) and also hands this thread
        # the subscriptions, so the daemon can wait for its first subscribers (publish.wait_for_subscribers).
        sock = self.context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not only the first per topic
        self.endpoint = bind_server_socket(sock, self.address, self.curve, "publish", "publish.address")
        return sock

    def _run(self) -> None:
        sock = open_in_thread(self)
        if sock is None:
            return
        try:
            while True:
                self._read_subscriptions(sock)
                with self._cond:
                    if not self._queue and not self._stop.is_set():
                        self._cond.wait(_POLL_S)
                    if self._stop.is_set():
                        return
                    if not self._queue:
                        continue
                    parts, size = self._queue.popleft()
                    self._queued_bytes -= size
                try:
                    sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    sent = True
                except zmq.Again:
                    sent = False
                except zmq.ZMQError as e:
                    log.error("publish failed: %s", e)
                    sent = False
                with self._cond:
                    if sent:
                        self.sent += 1
                    else:
                        self.dropped += 1
                    self._pending -= 1
                    self._cond.notify_all()
        finally:
            sock.close()

    def _read_subscriptions(self, sock: zmq.Socket) -> None:
        """Count subscribe (``\x01topic``) and unsubscribe (``\x00topic``) messages; never blocks."""
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if msg[:1] in (b"\x00", b"\x01"):
                with self._cond:
                    self.subscriptions += 1 if msg[:1] == b"\x01" else -1
                    self._cond.notify_all()

    def wait_for_subscribers(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` subscriptions are active (a subscriber per topic it subscribes to).

        Returns:
            True when they are there, False after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.subscriptions < n:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(min(left, _POLL_S))
            return True
