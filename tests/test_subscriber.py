"""The reference subscriber and control client on real sockets: gap and restart detection from sequence
numbers, topic filters, invalid messages skipped, the lazy-pirate control client, recover_last and the
``masf-edge subscribe`` command."""

from __future__ import annotations

import argparse
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from test_control import Line
from test_protocol import sample_heartbeat, sample_result

from edge import protocol as P
from edge.control import ControlServer
from edge.errors import ControlError, EdgeError
from edge.publish import Publisher
from edge.subscriber import (
    ControlClient,
    Subscriber,
    add_subscribe_arguments,
    format_result,
    recover_last,
    run_subscribe,
)

ANY = "tcp://127.0.0.1:*"
pytestmark = pytest.mark.timeout(60)  # a wedged socket fails fast instead of hanging the run


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


@pytest.fixture
def pub(ctx: zmq.Context) -> Iterator[Publisher]:
    p = Publisher(ctx, ANY, sndhwm=10000).start()
    yield p
    p.close()


def _join(pub: Publisher, sub: Subscriber) -> None:
    """Publish probes (line 'probe') until the subscriber gets one, then drain them."""
    probe = P.encode_heartbeat(sample_heartbeat(line="probe"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pub.publish(probe)
        if sub.recv(0.05) is not None:
            break
    else:
        raise AssertionError("subscription never took effect")
    while sub.recv(0.1) is not None:
        pass


def _results(pub: Publisher, camera: str, seqs: list[int], **over: Any) -> None:
    for s in seqs:
        pub.publish(P.encode_result(sample_result(seq=s, camera=camera, **over)))


def _collect(sub: Subscriber, n: int) -> list[P.Message]:
    out: list[P.Message] = []
    while len(out) < n:
        msg = sub.recv(5.0)
        assert msg is not None, f"got {len(out)} of {n} messages"
        out.append(msg)
    return out


def test_gap_detection(pub: Publisher) -> None:
    with Subscriber(str(pub.endpoint), topics=["masf/line1/", "masf/probe/"]) as sub:
        _join(pub, sub)
        base = sub.received, sub.heartbeats
        _results(pub, "cam1", [1, 2, 3, 5, 6, 9])  # 4, 7 and 8 lost
        _results(pub, "cam2", [10, 11])  # first seen at 10: the baseline, no gap
        pub.publish(P.encode_heartbeat(sample_heartbeat(seq=11, camera="cam2")))  # in step: no gap
        pub.publish(P.encode_heartbeat(sample_heartbeat(seq=13, camera="cam2")))  # 12 and 13 lost
        _results(pub, "cam2", [14])
        msgs = _collect(sub, 11)
        assert [m.seq for m in msgs if m.camera == "cam1"] == [1, 2, 3, 5, 6, 9]
        assert (sub.received - base[0], sub.heartbeats - base[1]) == (9, 2)
        gaps = [(g.camera, g.expected, g.received, g.missed, g.restarted) for g in sub.gaps]
        assert gaps == [
            ("cam1", 4, 5, 1, False),
            ("cam1", 7, 9, 2, False),
            ("cam2", 12, 13, 2, False),
        ]
        assert sub.missed == 5
        assert sub.missed_by_camera == {"line1/cam1": 3, "line1/cam2": 2}

        # The daemon restarts: new 'started', seq from 1 again.
        later = P.encode_result(sample_result(seq=1, camera="cam1", started=1_800_000_000.0))
        pub.publish(later)
        _results(pub, "cam2", [3], started=1_800_000_000.0)  # 1 and 2 of the new run lost
        _results(pub, "cam2", [4], started=1_800_000_000.0)
        _collect(sub, 3)
        assert [(r.camera, r.started) for r in sub.restarts] == [("cam1", 1.8e9), ("cam2", 1.8e9)]
        assert [(g.camera, g.expected, g.received, g.missed, g.restarted) for g in sub.gaps[3:]] == [
            ("cam2", 1, 3, 2, True)
        ]
        assert sub.missed == 7


def test_topics_and_invalid_messages(pub: Publisher) -> None:
    with Subscriber(str(pub.endpoint), topics=["masf/line1/cam1/", "masf/probe/"]) as sub:
        _join(pub, sub)
        _results(pub, "cam10", [1, 2])  # not cam1: the trailing '/' keeps it out
        pub.publish([b"masf/line1/cam1/", b"{not json", b""])
        pub.publish([b"masf/line1/cam1/", b"{}"])
        _results(pub, "cam1", [1])
        msg = sub.recv(5.0)
        assert msg is not None and msg.camera == "cam1" and msg.seq == 1
        assert sub.bad == 2
        assert sub.recv(0.2) is None  # timeout
        # Iteration yields messages until we stop.
        _results(pub, "cam1", [2, 3])
        got = []
        for m in sub:
            got.append(m.seq)
            if len(got) == 2:
                break
        assert got == [2, 3] and not sub.gaps
    with pytest.raises(EdgeError, match="closed"):
        sub.recv(0)


def _free_address() -> str:
    c = zmq.Context()
    s = c.socket(zmq.REP)
    s.setsockopt(zmq.LINGER, 0)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close()
    c.term()
    return f"tcp://127.0.0.1:{port}"


def test_control_client_lazy_pirate(ctx: zmq.Context) -> None:
    address = _free_address()
    with ControlClient(address, timeout_s=0.3) as client:
        t0 = time.monotonic()
        with pytest.raises(EdgeError) as info:
            client.status()
        assert str(info.value) == f"no reply from {address} within 0.3 s: is the daemon running?"
        assert 0.25 < time.monotonic() - t0 < 2.0
        line = Line()
        server = ControlServer(ctx, address, line).start()
        try:
            assert client.ping()["pong"]  # the same client recovers once a server exists
            assert client.status()["line"] == "line1"
            assert client.trigger("cam2") == {"ok": True, "camera": "cam2"}
            assert client.threshold("cam1", 3.5)["threshold"] == 3.5
            assert client.threshold("cam1")["threshold_source"] == "control"
            assert client.threshold("cam1", reset=True)["threshold_source"] == "bundle"
            assert client.reload("model", camera="cam1")["cameras"] == ["cam1"]
            assert client.pause("cam1")["state"] == "paused" and client.resume()["state"] == "running"
            reply = client.request("trigger", camera="cam1")  # raw: error replies are returned
            assert reply["ok"] is False and "free_run" in reply["error"]
            with pytest.raises(ControlError, match="only triggered cameras"):
                client.trigger("cam1")
            assert recover_last(client) == {"cam1": line.results["cam1"], "cam2": None}
            assert recover_last(client, "cam1")["cam1"]["seq"] == 5  # type: ignore[index]
            with pytest.raises(ControlError, match="unknown camera"):
                recover_last(client, "cam9")
        finally:
            server.close()


def test_control_client_recovers_from_a_slow_reply(ctx: zmq.Context) -> None:
    class Slow(Line):
        def status(self) -> dict[str, Any]:
            time.sleep(0.6)
            return {"slow": True}

    server = ControlServer(ctx, ANY, Slow()).start()
    try:
        with ControlClient(str(server.endpoint), timeout_s=0.2) as client:
            with pytest.raises(EdgeError, match="no reply"):
                client.status()
            time.sleep(0.6)  # the late reply goes to the discarded socket, never to the next request
            assert client.request("ping", timeout_s=2.0)["pong"]
            assert client.request("last", timeout_s=2.0, camera="cam1")["results"]["cam1"]["seq"] == 5
    finally:
        server.close()


def _args(**kw: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_subscribe_arguments(parser)
    argv = [f"--connect={kw.pop('connect')}"]
    for k, v in kw.items():
        argv.append(f"--{k.replace('_', '-')}={v}")
    return parser.parse_args(argv)


def test_run_subscribe(pub: Publisher, tmp_path: Path) -> None:
    u8 = P.heatmap_to_u8(np.random.default_rng(0).random((32, 40), dtype=np.float32), 0.0, 1.0)
    png = P.encode_heatmap(u8)
    info = P.heatmap_info("png", u8.shape, 0.0, 1.0)
    stop = threading.Event()

    def produce() -> None:  # every 4th seq is skipped: gaps
        seq = 0
        while not stop.is_set():
            seq += 1
            if seq % 4:
                pub.publish(P.encode_result(sample_result(seq=seq, heatmap=info), png))
            if seq % 3 == 0:
                last = seq if seq % 4 else seq - 1
                pub.publish(P.encode_heartbeat(sample_heartbeat(seq=last, state="paused")))
            time.sleep(0.01)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    out = io.StringIO()
    try:
        rc = run_subscribe(_args(connect=pub.endpoint, count=8, save_heatmaps=tmp_path / "hm"), out)
    finally:
        stop.set()
        producer.join()
    lines = out.getvalue().splitlines()
    assert rc == 0
    results = [s for s in lines if " seq=" in s]
    assert len(results) == 8
    assert all("line1/cam1" in s and " FAIL score=3.5/2 regions=1 latency=15.0ms" in s for s in results)
    assert any(s.startswith("gap line1/cam1: expected seq") for s in lines)
    assert any("state=paused" in s for s in lines)
    assert lines[-1].startswith("summary: 8 results (PASS 0, FAIL 8, UNKNOWN 0)")
    saved = sorted((tmp_path / "hm").glob("line1_cam1_*.png"))
    assert len(saved) == 8
    np.testing.assert_array_equal(P.decode_heatmap(saved[0].read_bytes()), u8)


def test_run_subscribe_timeout_and_bad_options() -> None:
    out = io.StringIO()
    address = _free_address()
    assert run_subscribe(_args(connect=address, timeout=0.3), out) == 1
    assert out.getvalue().splitlines() == [
        f"no message from {address} within 0.3 s",
        "summary: 0 results (PASS 0, FAIL 0, UNKNOWN 0), 0 heartbeats, 0 gaps (0 lost), 0 restarts, "
        "0 invalid",
    ]
    with pytest.raises(EdgeError, match="needs both --curve-server-key"):
        run_subscribe(_args(connect=address, curve_server_key="server.key"), out)


def test_format_unknown() -> None:
    h = sample_result(seq=3, verdict="UNKNOWN", reason="stale", score=None, regions=[])
    line = format_result(P.decode(P.encode_result(h)))
    assert " line1/cam1 seq=3 UNKNOWN(stale) score=-/2 regions=0 latency=15.0ms" in line
