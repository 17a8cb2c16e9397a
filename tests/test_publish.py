"""The publisher on real sockets: delivery in order, bind errors, the bounded non-blocking queue, flush and
close, and a subscriber that never reads costing neither time nor unbounded memory."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest
import zmq
from test_protocol import sample_result

from edge import protocol as P
from edge.errors import EdgeError
from edge.publish import Publisher

ANY = "tcp://127.0.0.1:*"
pytestmark = pytest.mark.timeout(60)  # a wedged socket fails fast instead of hanging the run


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def _sub(ctx: zmq.Context, endpoint: str, rcvhwm: int = 1000) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.SUBSCRIBE, b"masf/")
    s.connect(endpoint)
    return s


def _probe(pub: Publisher, *subs: zmq.Socket, timeout: float = 10.0) -> None:
    """Publish probes until every subscriber has received one (the subscription is in place)."""
    frames = P.encode_heartbeat(
        P.heartbeat_header(line="probe", camera="p", seq=0, started=1.0, time=1.0, state="starting")
    )
    pending = set(subs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pub.publish(frames)
        for s in list(pending):
            if s.poll(20):
                while s.poll(0):
                    s.recv_multipart()
                pending.discard(s)
    assert not pending, "subscription never took effect"


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_delivers_in_order(ctx: zmq.Context) -> None:
    with Publisher(ctx, ANY, sndhwm=1000) as pub:
        assert pub.endpoint is not None and pub.endpoint.startswith("tcp://127.0.0.1:")
        sub = _sub(ctx, pub.endpoint)
        try:
            _probe(pub, sub)
            for i in range(1, 201):
                assert pub.publish(P.encode_result(sample_result(seq=i)))
            assert pub.flush(5.0)
            got: list[int] = []
            while len(got) < 200 and sub.poll(2000):
                msg = P.decode(sub.recv_multipart())
                if msg.line == "line1":
                    got.append(msg.seq)
            assert got == list(range(1, 201))
            assert pub.dropped == 0 and pub.sent >= 200
        finally:
            sub.close()


def test_bind_errors_are_one_line(ctx: zmq.Context) -> None:
    blocker = ctx.socket(zmq.PUB)
    blocker.setsockopt(zmq.LINGER, 0)
    port = blocker.bind_to_random_port("tcp://127.0.0.1")
    try:
        address = f"tcp://127.0.0.1:{port}"
        with pytest.raises(EdgeError, match=f"cannot bind the publish socket to {address}") as info:
            Publisher(ctx, address, sndhwm=10).start()
        assert "\n" not in str(info.value) and "publish.address" in str(info.value)
    finally:
        blocker.close()
    with pytest.raises(EdgeError, match="cannot bind the publish socket to tcp://nonsense"):
        Publisher(ctx, "tcp://nonsense:port", sndhwm=10).start()


def test_full_queue_drops_without_blocking(ctx: zmq.Context, caplog: pytest.LogCaptureFixture) -> None:
    pub = Publisher(ctx, ANY, sndhwm=10, queue_size=2)
    assert not pub.publish([b"masf/x/y/", b"{}", b""])  # not started: dropped, not queued
    assert pub.dropped == 1
    pub.start()
    try:
        frames = [b"masf/line1/cam1/", b"x" * 1000, b""]
        n = 20000
        caplog.set_level(logging.WARNING, logger="edge.publish")
        t0 = time.monotonic()
        accepted = sum(pub.publish(frames) for _ in range(n))
        assert time.monotonic() - t0 < 20.0
        assert pub.flush(5.0) and pub.queued == 0
        assert accepted < n and pub.dropped >= n - accepted  # the queue of 2 overflowed
        assert pub.sent + pub.dropped == n + 1
        warnings = [r for r in caplog.records if "publish queue full" in r.getMessage()]
        assert 1 <= len(warnings) < pub.dropped  # once per burst, not once per message
    finally:
        pub.close()
    assert not pub.publish(frames)  # closed: dropped


def test_byte_bound_of_the_queue(ctx: zmq.Context) -> None:
    pub = Publisher(ctx, ANY, sndhwm=10, max_queue_bytes=100_000)
    pub.start()
    try:
        big = [b"masf/line1/cam1/", b"{}", b"z" * 60_000]
        results = [pub.publish(big) for _ in range(2000)]
        assert pub.flush(5.0)
        assert not all(results)  # at most one 60 KB message fits next to another
        assert pub.sent + pub.dropped == 2000
    finally:
        pub.close()


def test_flush_and_close(ctx: zmq.Context) -> None:
    pub = Publisher(ctx, ANY, sndhwm=10).start()
    sub = _sub(ctx, str(pub.endpoint), rcvhwm=5)  # never read: close must still be prompt
    try:
        _probe(pub, sub)
        for i in range(1, 1001):
            pub.publish(P.encode_result(sample_result(seq=i)))
        assert pub.flush(10.0)
        assert pub.queued == 0
    finally:
        t0 = time.monotonic()
        pub.close(timeout=2.0)
        pub.close()  # idempotent
        sub.close()
        assert time.monotonic() - t0 < 3.0
    assert pub.flush(0.1)  # nothing pending after close


def test_slow_subscriber_neither_blocks_nor_grows_the_daemon() -> None:
    """A subscriber that never reads (RCVHWM 10) next to one that reads: 20k messages of ~50 KB."""
    pub_ctx, sub_ctx = zmq.Context(), zmq.Context()
    pub = Publisher(pub_ctx, ANY, sndhwm=100).start()
    slow = _sub(sub_ctx, str(pub.endpoint), rcvhwm=10)
    fast = _sub(sub_ctx, str(pub.endpoint), rcvhwm=1000)
    received: list[int] = []
    markers: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if fast.poll(50):
                frames = fast.recv_multipart()
                header = json.loads(frames[1])
                if header.get("line") == "marker":
                    markers.append(header["seq"])
                elif header.get("line") == "line1":
                    received.append(header["seq"])

    reader = threading.Thread(target=read, daemon=True)
    try:
        _probe(pub, slow, fast)
        reader.start()
        heatmap = os.urandom(50_000)
        info = P.heatmap_info("png", (200, 250), 0.0, 5.0)
        rss0 = _rss_mb()
        rss_max = rss0
        worst_call = 0.0
        t0 = time.monotonic()
        n = 20000
        for i in range(1, n + 1):
            frames = P.encode_result(sample_result(seq=i, heatmap=info), heatmap)
            c0 = time.monotonic()
            pub.publish(frames)
            worst_call = max(worst_call, time.monotonic() - c0)
            if i % 1000 == 0:
                rss_max = max(rss_max, _rss_mb())
        elapsed = time.monotonic() - t0
        assert pub.flush(30.0)
        rss_max = max(rss_max, _rss_mb())
        assert pub.sent + pub.dropped >= n
        assert pub.sent > n // 4  # the socket itself carried most of them (and dropped for the slow one)
        assert worst_call < 0.5, f"publish() blocked for {worst_call:.3f} s"
        assert elapsed < 40.0
        assert rss_max - rss0 < 200, f"RSS grew by {rss_max - rss0:.0f} MB"
        # The reading subscriber still gets the newest messages.
        deadline = time.monotonic() + 10.0
        k = 0
        while not markers and time.monotonic() < deadline:
            k += 1
            marker = P.heartbeat_header(
                line="marker", camera="m", seq=k, started=1.0, time=1.0, state="running"
            )
            pub.publish(P.encode_heartbeat(marker))
            time.sleep(0.05)
        assert markers, "the reading subscriber stopped receiving"
        assert len(received) > 1000 and received == sorted(received)
        # The one that never read holds only what its HWM and the TCP buffers allowed.
        stuck = 0
        while slow.poll(0):
            slow.recv_multipart()
            stuck += 1
        assert stuck < 2000
    finally:
        stop.set()
        if reader.is_alive():
            reader.join()  # the reader owns 'fast' until it stops
        pub.close()
        slow.close()
        fast.close()
        pub_ctx.term()
        sub_ctx.term()
