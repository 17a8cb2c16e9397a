"""Free loopback ports for the tests that start servers, safe when pytest-xdist runs the suite in workers.

Asking the kernel for a port (``bind(("127.0.0.1", 0))``) and closing it is not enough once two test
processes run at once: the kernel may hand the just-released port to the other process before the test's
server binds it. So each process takes its ports from its own slice of 20000-31999, below Linux's
ephemeral range (32768-60999, where the kernel picks ports for ``bind(0)`` and outgoing connections),
walking the slice in order and keeping a port only when it can be bound right now. A process never hands
out the same port twice until it has walked its whole slice. The walk starts at an offset drawn from the
test run (xdist's run id, else the process id), so two test runs on one machine do not walk in step.
"""

from __future__ import annotations

import os
import random
import socket

__all__ = ["free_port", "free_udp_base", "port_slice"]

_LOW, _HIGH = 20000, 32000


def port_slice(worker: str | None = None, workers: str | None = None) -> range:
    """This process's ports: the whole range alone, else the xdist worker's share (``gw0``, ``gw1``...)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "") if worker is None else worker
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") if workers is None else workers
    count = max(1, int(workers)) if workers.isdigit() else 1
    index = int(worker[2:]) % count if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (_HIGH - _LOW) // count
    return range(_LOW + index * size, _LOW + (index + 1) * size)


_cursor: list[int] = []


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _take(count: int, kind: int, step: int = 1) -> int:
    """The first ``count`` consecutive bindable ports from the cursor (their first is a multiple of
    ``step``); the cursor moves past them."""
    ports = port_slice()
    if not _cursor:
        run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
        _cursor.append(ports.start + random.Random(run).randrange(len(ports)))
    for _ in range(2 * len(ports)):
        base = _cursor[0]
        base += -base % step
        if base + count > ports.stop:
            _cursor[0] = ports.start
            continue
        _cursor[0] = base + count
        if all(_bindable(p, kind) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} free loopback port(s) in {ports.start}-{ports.stop - 1}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that no other test process will hand out."""
    return _take(1, socket.SOCK_STREAM)


def free_udp_base(count: int = 8) -> int:
    """An even UDP port with ``count`` free ports from it (an RTSP relay's RTP/RTCP pairs)."""
    return _take(count, socket.SOCK_DGRAM, step=2)
