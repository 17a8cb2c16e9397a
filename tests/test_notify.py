"""edge.notify against real AF_UNIX datagram sockets (path and abstract) and a real child process."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.notify import Notifier, WatchdogGate

REPO = Path(__file__).resolve().parents[1]


def _drain(sock: socket.socket, wait: float = 0.0) -> list[str]:
    """Every datagram now queued on ``sock`` (after waiting up to ``wait`` s for the first one)."""
    out: list[str] = []
    sock.settimeout(wait if wait > 0 else None)
    if wait > 0:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            return out
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.fixture
def notify_sock(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in tmp_path and the NOTIFY_SOCKET value for it."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield sock, str(path)
    sock.close()


@pytest.fixture
def abstract_sock() -> Iterator[tuple[socket.socket, str]]:
    """A bound abstract-namespace datagram socket and its ``@name`` NOTIFY_SOCKET value."""
    name = f"masf-edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield sock, "@" + name
    sock.close()


def test_ready_and_status_over_a_path_socket(notify_sock: tuple[socket.socket, str]) -> None:
    sock, addr = notify_sock
    n = Notifier({"NOTIFY_SOCKET": addr})
    assert n.enabled
    assert n.ready("2 cameras, warm-up done")
    assert _drain(sock, 2.0) == ["READY=1\nSTATUS=2 cameras, warm-up done"]
    assert n.status("camera cam1\nlost")  # a line break would end the value: flattened
    assert n.stopping("draining")
    assert n.extend_timeout(5_000_000)
    assert _drain(sock, 2.0) == [
        "STATUS=camera cam1 lost",
        "STOPPING=1\nSTATUS=draining",
        "EXTEND_TIMEOUT_USEC=5000000",
    ]
    n.close()
    assert n.watchdog()  # a send after close opens a new socket
    assert _drain(sock, 2.0) == ["WATCHDOG=1"]


def test_reloading_carries_the_monotonic_clock(abstract_sock: tuple[socket.socket, str]) -> None:
    sock, addr = abstract_sock
    n = Notifier({"NOTIFY_SOCKET": addr})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    (msg,) = _drain(sock, 2.0)
    fields = dict(line.split("=", 1) for line in msg.split("\n"))
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert n.ready("reloaded")
    assert _drain(sock, 2.0) == ["READY=1\nSTATUS=reloaded"]


def test_abstract_socket_ready(abstract_sock: tuple[socket.socket, str]) -> None:
    sock, addr = abstract_sock
    assert Notifier({"NOTIFY_SOCKET": addr}).ready("ok")
    assert _drain(sock, 2.0) == ["READY=1\nSTATUS=ok"]


def test_without_notify_socket_nothing_is_sent_and_nothing_raises() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready("x")
    assert not n.status("x")
    assert not n.watchdog()
    assert not n.stopping("x")
    assert not n.reloading()
    assert not n.extend_timeout(1)
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_a_dead_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert n.enabled
    with caplog.at_level(logging.DEBUG, logger="edge.notify"):
        assert not n.ready("x")
    assert any("READY" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_watchdog_interval_from_the_environment() -> None:
    pid = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_interval() == 30.0
    assert (
        Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval()
        is None
    )
    assert Notifier({}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None


def test_gate_feeds_at_half_the_interval_only_while_healthy(notify_sock: tuple[socket.socket, str]) -> None:
    sock, addr = notify_sock
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    gate = WatchdogGate(n, healthy_status="running", clock=lambda: now[0])
    assert gate.period == 1.0

    assert gate.maybe_feed(True)
    assert _drain(sock, 2.0) == ["WATCHDOG=1"]
    now[0] += 0.5
    assert not gate.maybe_feed(True)  # within half the interval: nothing
    now[0] += 0.6
    assert gate.maybe_feed(True)
    assert _drain(sock, 2.0) == ["WATCHDOG=1"]

    # Unhealthy: no feed however long it lasts, and the reason once.
    for _ in range(5):
        now[0] += 1.0
        assert not gate.maybe_feed(False, "camera cam1 stalled for 12 s")
    assert gate.problem == "camera cam1 stalled for 12 s"
    assert _drain(sock, 0.2) == ["STATUS=unhealthy: camera cam1 stalled for 12 s"]

    # Healthy again: the status and a feed at once.
    assert gate.maybe_feed(True)
    assert gate.problem is None
    assert _drain(sock, 2.0) == ["STATUS=running", "WATCHDOG=1"]


def test_gate_without_a_watchdog_never_feeds(notify_sock: tuple[socket.socket, str]) -> None:
    sock, addr = notify_sock
    gate = WatchdogGate(Notifier({"NOTIFY_SOCKET": addr}))
    assert gate.period is None
    assert not gate.maybe_feed(True)
    assert not gate.maybe_feed(False, "infer timeout")
    assert _drain(sock, 0.5) == ["STATUS=unhealthy: infer timeout"]


def test_a_child_process_reads_its_own_environment(notify_sock: tuple[socket.socket, str]) -> None:
    """The default env is os.environ; WATCHDOG_PID of another process (here: ours) disables the watchdog."""
    sock, addr = notify_sock
    code = (
        "from edge.notify import Notifier; n = Notifier(); n.ready(f'child interval={n.watchdog_interval()}')"
    )
    env = {**os.environ, "NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=60)
    assert _drain(sock, 5.0) == ["READY=1\nSTATUS=child interval=None"]
    env.pop("WATCHDOG_PID")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=60)
    assert _drain(sock, 5.0) == ["READY=1\nSTATUS=child interval=4.0"]
