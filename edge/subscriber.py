"""The reference subscriber and control client: a small API for PLC gateway authors.

* :class:`Subscriber` receives results and heartbeats (:class:`~edge.protocol.Message`) and detects lost
  messages per camera from the sequence numbers (:attr:`Subscriber.gaps`) and daemon restarts from the
  ``started`` field (:attr:`Subscriber.restarts`).
* :class:`ControlClient` sends control requests (REQ socket, "lazy pirate": a request that gets no reply in
  time raises and the socket is rebuilt, so the next request starts clean).
* :func:`recover_last` is the clone pattern: after a gap, fetch the last result per camera over the
  control socket (subscribe first, then ask, so nothing published in between is missed).
* :func:`add_subscribe_arguments` / :func:`run_subscribe` are ``masf-edge subscribe``.

Each object owns its socket and is used from one thread. Without a ``context`` argument it makes its own
ZeroMQ context and terminates it on :meth:`close`.

Example::

    with Subscriber("tcp://127.0.0.1:5556", topics=["masf/line1/"]) as sub:
        for msg in sub:
            if msg.is_result:
                print(msg.camera, msg.seq, msg.header["verdict"])
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import zmq

from edge.errors import ControlError, EdgeError
from edge.keys import CurveClient
from edge.protocol import Message, ProtocolError, decode

__all__ = [
    "ControlClient",
    "Gap",
    "Restart",
    "Subscriber",
    "add_subscribe_arguments",
    "format_result",
    "recover_last",
    "run_subscribe",
]

log = logging.getLogger(__name__)

_SLICE_MS = 200  # poll slices, so Ctrl-C is handled promptly


@dataclass(frozen=True)
class Gap:
    """Results of one camera that were published but not received.

    Attributes:
        line: the line.
        camera: the camera.
        expected: the seq that should have come next.
        received: the seq that came (a result's, or the last result's seq carried by a heartbeat).
        missed: how many results were lost (``received - expected``, +1 when a heartbeat revealed it).
        restarted: the gap follows a daemon restart (results 1.. of the new run were missed).
        time: when it was detected (epoch seconds).
    """

    line: str
    camera: str
    expected: int
    received: int
    missed: int
    restarted: bool
    time: float


@dataclass(frozen=True)
class Restart:
    """A daemon restart seen on a camera (new ``started`` value; seq starts again at 1).

    Attributes:
        line: the line.
        camera: the camera.
        previous: the old ``started`` (epoch seconds).
        started: the new ``started``.
        time: when it was seen.
    """

    line: str
    camera: str
    previous: float
    started: float
    time: float


class _CameraTrack:
    __slots__ = ("last", "started")

    def __init__(self, started: float, last: int) -> None:
        self.started = started
        self.last = last


class Subscriber:
    """A SUB socket on the daemon's publish address, with per-camera gap detection.

    Args:
        connect: the daemon's publish endpoint (``tcp://127.0.0.1:5556``).
        topics: topic prefixes (``masf/`` all, ``masf/line1/`` a line, ``masf/line1/cam1/`` a camera).
        context: a ZeroMQ context to use (not terminated here); None: own one.
        curve_client: CURVE keys when the daemon uses CURVE.
        rcvhwm: messages buffered here before ZeroMQ drops the newest for this subscriber.
        linger_ms: LINGER of the socket.

    Attributes:
        gaps: every :class:`Gap` detected, oldest first.
        restarts: every :class:`Restart` seen.
        missed: total results lost (sum of ``gaps``); ``missed_by_camera``: per ``line/camera``.
        received: results received; ``heartbeats``: heartbeats received.
        bad: messages that were not valid protocol messages (skipped, logged).

    Gap rules (per ``line/camera``): the first message only sets the baseline; a result must carry the
    last seq + 1; a heartbeat carries the last result's seq, so a heartbeat ahead of the last result seen
    reveals results lost since; a new ``started`` value is a daemon restart: the baseline becomes 0 and
    results 1.. that did not arrive count as a gap.
    """

    def __init__(
        self,
        connect: str,
        topics: Iterable[str | bytes] = ("masf/",),
        context: zmq.Context | None = None,
        curve_client: CurveClient | None = None,
        rcvhwm: int = 10000,
        linger_ms: int = 0,
    ) -> None:
        self.address = connect
        self._own_context = context is None
        self.context = zmq.Context() if context is None else context
        self.gaps: list[Gap] = []
        self.restarts: list[Restart] = []
        self.missed = 0
        self.missed_by_camera: collections.Counter[str] = collections.Counter()
        self.received = 0
        self.heartbeats = 0
        self.bad = 0
        self._tracks: dict[str, _CameraTrack] = {}
        self._bad_seen: set[str] = set()
        sock = self.context.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, int(linger_ms))
            sock.setsockopt(zmq.RCVHWM, int(rcvhwm))
            if curve_client is not None:
                curve_client.apply(sock)
            for t in topics:
                sock.setsockopt(zmq.SUBSCRIBE, t.encode() if isinstance(t, str) else bytes(t))
            sock.connect(connect)
        except (zmq.ZMQError, EdgeError) as e:
            sock.close(0)
            if self._own_context:
                self.context.term()
            if isinstance(e, EdgeError):
                raise
            raise EdgeError(f"cannot connect a subscriber to {connect}: {e.strerror}") from None
        self._sock: zmq.Socket | None = sock

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next valid message; invalid ones are skipped (counted in :attr:`bad`, logged once per kind).

        Args:
            timeout: seconds to wait; None waits forever.

        Returns:
            The :class:`~edge.protocol.Message`, or None on timeout.

        Raises:
            EdgeError: the subscriber is closed.
        """
        if self._sock is None:
            raise EdgeError("the subscriber is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = _SLICE_MS
            if deadline is not None:
                wait_ms = max(0, min(_SLICE_MS, int((deadline - time.monotonic()) * 1000) + 1))
            if not self._sock.poll(wait_ms, zmq.POLLIN):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            frames = self._sock.recv_multipart(copy=True)
            try:
                msg = decode(frames)
            except ProtocolError as e:
                self.bad += 1
                text = str(e)
                if text not in self._bad_seen:
                    self._bad_seen.add(text)
                    log.warning("skipping an invalid message from %s: %s", self.address, text)
                continue
            self._track(msg)
            return msg

    def __iter__(self) -> Iterator[Message]:
        """Every message, until the subscriber is closed."""
        while self._sock is not None:
            msg = self.recv(None)
            if msg is not None:
                yield msg

    def _track(self, msg: Message) -> None:
        h = msg.header
        key = f"{msg.line}/{msg.camera}"
        seq, started = msg.seq, float(h["started"])
        if msg.is_result:
            self.received += 1
        else:
            self.heartbeats += 1
        now = time.time()
        track = self._tracks.get(key)
        if track is None:
            self._tracks[key] = _CameraTrack(started, seq)
            return
        restarted = started != track.started
        if restarted:
            self.restarts.append(Restart(msg.line, msg.camera, track.started, started, now))
            log.info(
                "%s: the daemon restarted (started %.3f, was %.3f): seq starts again at 1",
                key,
                started,
                track.started,
            )
            track.started, track.last = started, 0
        expected = track.last + 1
        if msg.is_result:
            missed = seq - expected
            if seq < expected:
                # Cannot happen with one daemon (ZeroMQ keeps order); a second publisher with the same
                # names would do it. Re-baseline instead of reporting nonsense.
                log.warning("%s: seq went back from %d to %d without a restart", key, track.last, seq)
        else:
            missed = seq - track.last  # a heartbeat repeats the last result's seq
        if missed > 0:
            gap = Gap(msg.line, msg.camera, expected, seq, missed, restarted, now)
            self.gaps.append(gap)
            self.missed += missed
            self.missed_by_camera[key] += missed
            log.warning("%s: %d result(s) lost (expected seq %d, got %d)", key, missed, expected, seq)
        track.last = seq if msg.is_result else max(seq, track.last)

    def close(self) -> None:
        """Close the socket (and the context when it is this subscriber's own); idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            if self._own_context:
                self.context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlClient:
    """A client of the daemon's control socket (REQ, lazy pirate).

    Args:
        address: the daemon's control endpoint (``tcp://127.0.0.1:5557``).
        timeout_s: seconds to wait for each reply.
        curve_client: CURVE keys when the daemon uses CURVE.
        context: a ZeroMQ context to use (not terminated here); None: own one.

    A request that gets no reply within the timeout raises :class:`~edge.errors.EdgeError` and the socket
    is closed and rebuilt, so the next request works as soon as the daemon answers again. Requests are not
    retried automatically (``trigger`` is not idempotent): retry in the caller if that is safe.
    """

    def __init__(
        self,
        address: str,
        timeout_s: float = 2.0,
        curve_client: CurveClient | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = float(timeout_s)
        self.curve_client = curve_client
        self._own_context = context is None
        self.context = zmq.Context() if context is None else context
        self._sock: zmq.Socket | None = None
        self._closed = False

    def _socket(self) -> zmq.Socket:
        if self._closed:
            raise EdgeError("the control client is closed")
        if self._sock is None:
            sock = self.context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                if self.curve_client is not None:
                    self.curve_client.apply(sock)
                sock.connect(self.address)
            except zmq.ZMQError as e:
                sock.close(0)
                raise EdgeError(
                    f"cannot connect to the control socket {self.address}: {e.strerror}"
                ) from None
            except EdgeError:
                sock.close(0)
                raise
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def request(self, cmd: str, timeout_s: float | None = None, **args: Any) -> dict[str, Any]:
        """Send one request and return the reply as it is (``ok`` true or false).

        Args:
            cmd: the command (see ``docs/protocol.md``).
            timeout_s: this request's timeout (default: the client's).
            **args: the command's arguments.

        Returns:
            The reply object.

        Raises:
            EdgeError: no reply in time (the socket is rebuilt), or a reply that is not a JSON object.
        """
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        sock = self._socket()
        body = json.dumps({"cmd": cmd, **args}).encode()
        with contextlib.suppress(zmq.ZMQError):  # not sendable yet: reported below like a silent daemon
            sock.send(body, zmq.NOBLOCK)
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            self._drop_socket()
            raise EdgeError(f"no reply from {self.address} within {timeout:g} s: is the daemon running?")
        data = sock.recv()
        try:
            reply = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            reply = None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise EdgeError(
                f"{self.address} sent a reply that is not a control reply: is it a masf-edge daemon?"
            )
        return reply

    def call(self, cmd: str, timeout_s: float | None = None, **args: Any) -> dict[str, Any]:
        """Like :meth:`request`, but an error reply raises.

        Raises:
            ControlError: the daemon replied ``ok: false`` (its message).
            EdgeError: no reply in time.
        """
        reply = self.request(cmd, timeout_s=timeout_s, **args)
        if not reply["ok"]:
            raise ControlError(str(reply.get("error", "error reply without a message")))
        return reply

    def ping(self) -> dict[str, Any]:
        return self.call("ping")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def last(self, camera: str | None = None) -> dict[str, Any]:
        return self.call("last", camera=camera)

    def trigger(self, camera: str) -> dict[str, Any]:
        return self.call("trigger", camera=camera)

    def threshold(self, camera: str, value: float | None = None, reset: bool = False) -> dict[str, Any]:
        return self.call("threshold", camera=camera, value=value, reset=reset)

    def reload(
        self,
        what: str = "model",
        camera: str | None = None,
        bundle: str | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        return self.call("reload", timeout_s=timeout_s, what=what, camera=camera, bundle=bundle)

    def pause(self, camera: str | None = None) -> dict[str, Any]:
        return self.call("pause", camera=camera)

    def resume(self, camera: str | None = None) -> dict[str, Any]:
        return self.call("resume", camera=camera)

    def close(self) -> None:
        """Close the socket (and the own context); idempotent."""
        self._closed = True
        self._drop_socket()
        if self._own_context and not self.context.closed:
            self.context.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recover_last(client: ControlClient, camera: str | None = None) -> dict[str, dict[str, Any] | None]:
    """The clone pattern: the last result header of each camera (or one), from the control socket.

    Use it at start-up (after subscribing, so nothing published meanwhile is lost) and after a
    :class:`Gap`: results with a seq above the returned one are newer than the snapshot.

    Args:
        client: a control client of the same daemon.
        camera: one camera, or None for all.

    Returns:
        ``{camera: header or None}`` (None: no result yet).

    Raises:
        ControlError: an error reply (unknown camera).
        EdgeError: no reply, or a reply without a ``results`` object.
    """
    reply = client.last(camera)
    results = reply.get("results")
    if not isinstance(results, dict) or not all(v is None or isinstance(v, dict) for v in results.values()):
        raise EdgeError(f"{client.address}: the 'last' reply has no 'results' object: is the daemon current?")
    return results


# ---------------------------------------------------------------------------------------------- CLI


def add_subscribe_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``masf-edge subscribe`` to ``parser``."""
    parser.add_argument(
        "--connect", required=True, help="the daemon's publish endpoint, e.g. tcp://127.0.0.1:5556"
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=None,
        help="topic prefix (repeatable): masf/ (default), masf/LINE/, masf/LINE/CAMERA/",
    )
    parser.add_argument("--save-heatmaps", metavar="DIR", default=None, help="write each heatmap PNG here")
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many results (0: run until Ctrl-C)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="exit with status 1 when nothing arrives for this many seconds",
    )
    parser.add_argument(
        "--curve-server-key", metavar="PUBFILE", default=None, help="the daemon's public .key file"
    )
    parser.add_argument(
        "--curve-client-key", metavar="SECRETFILE", default=None, help="this client's .key_secret file"
    )


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def format_result(msg: Message) -> str:
    """One line for a result: time, camera, seq, verdict (with reason), score/threshold, regions, latency."""
    h = msg.header
    score = "-" if h.get("score") is None else f"{h['score']:.4g}"
    verdict = h["verdict"] if h.get("reason") is None else f"{h['verdict']}({h['reason']})"
    t = h.get("timestamps", {}).get("capture", time.time())
    total = h.get("latency_ms", {}).get("total")
    lat = "-" if total is None else f"{total:.1f}ms"
    return (
        f"{_clock(t)} {msg.line}/{msg.camera} seq={msg.seq} {verdict} score={score}/{h['threshold']:.4g} "
        f"regions={len(h.get('regions', []))} latency={lat}"
    )


def run_subscribe(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``masf-edge subscribe``: print one line per result, report gaps, restarts and camera state changes,
    save heatmaps, end with a summary.

    Args:
        args: from :func:`add_subscribe_arguments`.
        out: where the lines go (stdout).

    Returns:
        0 after ``--count`` results or Ctrl-C; 1 when ``--timeout`` passed without a message.

    Raises:
        EdgeError: one CURVE key option without the other, an unusable heatmap folder, bad keys.
    """
    out = sys.stdout if out is None else out
    if (args.curve_server_key is None) != (args.curve_client_key is None):
        raise EdgeError("CURVE needs both --curve-server-key PUBFILE and --curve-client-key SECRETFILE")
    curve = None
    if args.curve_server_key is not None:
        curve = CurveClient(args.curve_server_key, args.curve_client_key)
    save_dir = None
    if args.save_heatmaps:
        save_dir = Path(args.save_heatmaps)
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgeError(f"cannot make the heatmap folder {save_dir}: {e.strerror}") from None
    verdicts: collections.Counter[str] = collections.Counter()
    states: dict[str, str] = {}
    status = 0
    sub = Subscriber(args.connect, topics=args.topic or ["masf/"], curve_client=curve)
    try:
        n_gaps = n_restarts = 0
        while not args.count or sub.received < args.count:
            msg = sub.recv(args.timeout if args.timeout and args.timeout > 0 else None)
            if msg is None:
                print(f"no message from {args.connect} within {args.timeout:g} s", file=out)
                status = 1
                break
            for r in sub.restarts[n_restarts:]:
                print(
                    f"restart {r.line}/{r.camera}: daemon started at {_clock(r.started)}, seq restarts at 1",
                    file=out,
                )
            for g in sub.gaps[n_gaps:]:
                print(
                    f"gap {g.line}/{g.camera}: expected seq {g.expected}, got {g.received} ({g.missed} lost)",
                    file=out,
                )
            n_gaps, n_restarts = len(sub.gaps), len(sub.restarts)
            key = f"{msg.line}/{msg.camera}"
            if msg.is_result:
                verdicts[msg.header["verdict"]] += 1
                print(format_result(msg), file=out)
                if save_dir is not None and msg.heatmap:
                    (save_dir / f"{msg.line}_{msg.camera}_{msg.seq:08d}.png").write_bytes(msg.heatmap)
            elif states.get(key) != msg.header["state"]:
                states[key] = msg.header["state"]
                detail = f" ({msg.header['detail']})" if msg.header.get("detail") else ""
                print(f"{_clock(msg.header['time'])} {key} state={msg.header['state']}{detail}", file=out)
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
    counts = ", ".join(f"{v} {verdicts[v]}" for v in ("PASS", "FAIL", "UNKNOWN"))
    print(
        f"summary: {sub.received} results ({counts}), {sub.heartbeats} heartbeats, "
        f"{len(sub.gaps)} gaps ({sub.missed} lost), {len(sub.restarts)} restarts, {sub.bad} invalid",
        file=out,
    )
    return status
