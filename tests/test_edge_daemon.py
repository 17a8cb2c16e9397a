"""The edge daemon as a real subprocess: folder replay, real ZeroMQ sockets, real signals and datagrams.

Each test starts ``python -m edge run`` on a tiny real ONNX bundle (``edge_support``) and talks to it
only as a PLC gateway would: a SUB socket for results and the control socket for requests.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_support import (
    daemon_process,
    line_config,
    make_tiny_bundle,
    part_image,
    wait_ready,
    write_config,
    write_parts,
)

from edge.protocol import Message
from edge.subscriber import ControlClient, Subscriber

pytestmark = pytest.mark.timeout(180)


def _camera(name: str, bundle: Path, parts: Path, **kw: Any) -> dict[str, Any]:
    source = {"kind": "folder", "path": str(parts), **kw.pop("source", {})}
    return {"name": name, "bundle": str(bundle), "mode": "triggered", "source": source, **kw}


def _collect(sub: Subscriber, n: int, timeout: float = 60.0, kind: str = "result") -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        msg = sub.recv(timeout=0.5)
        if msg is not None and msg.kind == kind:
            out.append(msg)
    return out


def _results_until_quiet(sub: Subscriber, quiet_s: float = 2.0, timeout: float = 60.0) -> list[Message]:
    out: list[Message] = []
    deadline, last = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
        msg = sub.recv(timeout=0.2)
        if msg is not None and msg.kind == "result":
            out.append(msg)
            last = time.monotonic()
    return out


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "bundle").path


def _replay(tmp_path: Path, doc: dict[str, Any], n: int) -> tuple[list[Message], dict[str, Any]]:
    """Run the daemon on ``doc`` until ``n`` results are in, read ``status``, stop it with SIGTERM (it
    must exit 0); returns the results and the status."""
    doc["publish"]["wait_for_subscribers"] = 1
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    try:
        with daemon_process(cfg) as proc:
            results = _collect(sub, n)
            try:
                status = wait_ready(doc["control"]["address"])
            except TimeoutError as err:  # say what the daemon did
                alive = proc.poll() is None
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=30)
                raise AssertionError(
                    f"{err}; {len(results)} of {n} results; the daemon was {'running' if alive else 'gone'} "
                    f"(exit code {proc.returncode}); its output:\n{out[-3000:]}"
                ) from err
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, out
    finally:
        sub.close()
    return results, status


def test_every_part_is_published_in_order_with_the_right_verdict(tmp_path: Path, bundle: Path) -> None:
    labels = write_parts(tmp_path / "parts", 30)
    doc = line_config(tmp_path, [_camera("cam1", bundle, tmp_path / "parts")])
    doc["evidence"] = {"dir": str(tmp_path / "evidence")}
    results, status = _replay(tmp_path, doc, 30)
    assert [m.header["seq"] for m in results] == list(range(1, 31))
    assert [m.header["acquisition_id"] for m in results] == [f"{i:04d}.png" for i in range(30)]
    verdicts = [m.header["verdict"] for m in results]
    assert verdicts == ["FAIL" if d else "PASS" for d in labels]
    fail = next(m for m in results if m.header["verdict"] == "FAIL")
    h = fail.header
    assert h["score"] >= h["threshold"] == 1.0 and h["threshold_source"] == "bundle"
    assert h["part"] == "widget" and len(h["bundle_id"]) == 64 and h["model_version"] == h["bundle_id"][:12]
    assert h["frame"] == {"height": 80, "width": 96}
    assert h["regions"], "a FAIL has at least one region"
    x, y, w, hh = h["regions"][0]["bbox"]
    assert 0 <= x < 96 and 0 <= y < 80 and 5 <= w <= 30 and 5 <= hh <= 30  # the 13 px spot, frame pixels
    heat = fail.heatmap_image()
    assert heat is not None and heat.dtype.name == "uint8" and heat.max() == 255
    assert set(h["latency_ms"]) >= {"queue", "preprocess", "infer", "post", "publish", "total"}
    assert status["cameras"]["cam1"]["results"] == {"PASS": 20, "FAIL": 10}
    stored = sorted((tmp_path / "evidence").rglob("*_header.json"))
    assert len(stored) == 10  # every FAIL kept as evidence, no PASS


def test_a_full_disk_pauses_evidence_but_no_result(tmp_path: Path, bundle: Path) -> None:
    """Below the evidence free-space floor (here: more than any disk has) every part is still published
    and counted; nothing is stored and the daemon names the state."""
    labels = write_parts(tmp_path / "parts", 12)
    doc = line_config(tmp_path, [_camera("cam1", bundle, tmp_path / "parts")])
    doc["evidence"] = {"dir": str(tmp_path / "evidence"), "min_free_mb": 1e12}
    results, status = _replay(tmp_path, doc, 12)
    assert [m.header["verdict"] for m in results] == ["FAIL" if d else "PASS" for d in labels]
    assert sum(labels) >= 2 and not list((tmp_path / "evidence").rglob("*.png"))
    assert "evidence_low_disk" in status["degraded"], status["degraded"]


def test_a_state_change_is_announced_at_once_not_a_heartbeat_period_later(
    tmp_path: Path, bundle: Path
) -> None:
    """With a one-minute heartbeat period, pausing and resuming a camera still reach a subscriber as
    heartbeats within a few seconds (each camera's state change triggers one)."""
    write_parts(tmp_path / "parts", 4)
    cam = _camera("cam1", bundle, tmp_path / "parts", source={"loop": True, "fps": 2.0})
    doc = line_config(tmp_path, [cam])
    doc["publish"].update({"heartbeat_s": 60.0, "wait_for_subscribers": 1})
    sub = Subscriber(doc["publish"]["address"])
    ctl = ControlClient(doc["control"]["address"])
    try:
        with daemon_process(write_config(tmp_path, doc)):
            wait_ready(doc["control"]["address"])
            (first,) = _collect(sub, 1, timeout=15, kind="heartbeat")  # the start's own
            assert first.header["state"] == "running", first.header.get("detail")
            t0 = time.monotonic()
            assert ctl.request("pause", camera="cam1")["paused"] == ["cam1"]
            (paused,) = _collect(sub, 1, timeout=10, kind="heartbeat")
            assert paused.header["state"] == "paused" and time.monotonic() - t0 < 10
            ctl.request("resume")
            (resumed,) = _collect(sub, 1, timeout=10, kind="heartbeat")
            assert resumed.header["state"] == "running" and time.monotonic() - t0 < 20
    finally:
        ctl.close()
        sub.close()


def test_a_tiled_bundle_inspects_long_parts_at_native_resolution(tmp_path: Path) -> None:
    """A 64x384 part seen as four 64x128 tiles: every verdict right, the defect's region where the spot
    is, in the part's own pixels, and the heatmap the size of the part."""
    tiled = make_tiny_bundle(tmp_path / "tiled", height=64, width=128, tiles=(64, 384, 32)).path
    labels = write_parts(tmp_path / "parts", 12, height=64, width=384)
    doc = line_config(tmp_path, [_camera("strip", tiled, tmp_path / "parts")])
    results, status = _replay(tmp_path, doc, 12)
    assert [m.header["verdict"] for m in results] == ["FAIL" if d else "PASS" for d in labels]
    facts = status["cameras"]["strip"]["model"]
    assert facts["input"] == [64, 128] and facts["frame"] == [64, 384] and facts["tiles"] == 4
    assert sum(labels) >= 3
    for m in results:
        if m.header["verdict"] != "FAIL":
            continue
        assert m.header["frame"] == {"height": 64, "width": 384}
        x, y, w, hh = m.header["regions"][0]["bbox"]
        assert 0 <= x < 384 and 0 <= y < 64 and 5 <= w <= 30 and 5 <= hh <= 30
        heat = m.heatmap_image()
        assert heat is not None and heat.shape[:2] == (64, 384)


def spot_centre(seed: int, height: int, width: int) -> tuple[int, int]:
    """Where ``part_image(True, seed, height, width)`` draws its spot: ``(x, y)``."""
    rng = np.random.default_rng(seed)
    rng.normal(0, 4, (height, width, 3))
    cy, cx = int(rng.integers(15, height - 15)), int(rng.integers(15, width - 15))
    return cx, cy


def test_a_bundle_that_turns_images_reports_in_the_camera_orientation(tmp_path: Path) -> None:
    """Landscape 64x96 parts through a portrait 96x64 bundle with ``preprocess.orient: auto``: each part
    is turned to fill the frame, and every defect's region and heatmap come back in the camera's pixels."""
    turned = make_tiny_bundle(tmp_path / "turned", height=96, width=64, orient="auto").path
    labels = write_parts(tmp_path / "parts", 9, height=64, width=96)
    doc = line_config(tmp_path, [_camera("cam", turned, tmp_path / "parts")])
    results, _ = _replay(tmp_path, doc, 9)
    assert [m.header["verdict"] for m in results] == ["FAIL" if d else "PASS" for d in labels]
    assert sum(labels) >= 3
    for i, m in enumerate(results):
        if not labels[i]:
            continue
        cx, cy = spot_centre(i, 64, 96)
        x, y, w, h = m.header["regions"][0]["bbox"]
        assert x <= cx < x + w and y <= cy < y + h, (m.header["regions"][0], (cx, cy))
        assert w <= 30 and h <= 30
        heat = m.heatmap_image()
        assert heat is not None and heat.shape[:2] == (64, 96)
        assert np.unravel_index(int(np.argmax(heat)), heat.shape)[1] in range(cx - 8, cx + 9)


def test_control_socket_last_status_threshold_trigger_and_bad_requests(tmp_path: Path, bundle: Path) -> None:
    write_parts(tmp_path / "parts", 6, defect_every=2)
    cam = _camera("cam1", bundle, tmp_path / "parts", source={"step": True, "loop": True})
    doc = line_config(tmp_path, [cam])
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    with daemon_process(cfg):
        status = wait_ready(doc["control"]["address"])
        assert status["cameras"]["cam1"]["state"] == "running"
        assert status["cameras"]["cam1"]["model"]["part"] == "widget"
        ctl = ControlClient(doc["control"]["address"], timeout_s=5)
        try:
            time.sleep(0.5)  # the subscription reaches the daemon
            assert ctl.request("trigger", camera="cam1")["trigger"] == "queued"
            (first,) = _collect(sub, 1, timeout=15)
            assert first.header["acquisition_id"] == "0000:0000.png" and first.header["verdict"] == "PASS"
            last = ctl.request("last", camera="cam1")["results"]["cam1"]
            assert last["seq"] == first.header["seq"] == 1
            # a threshold override is applied to the next part and recorded in it
            reply = ctl.request("threshold", camera="cam1", value=0.2)
            assert reply["threshold"] == 0.2 and reply["threshold_source"] == "control"
            ctl.request("trigger", camera="cam1")
            (second,) = _collect(sub, 1, timeout=15)
            assert second.header["threshold"] == 0.2 and second.header["threshold_source"] == "control"
            assert second.header["verdict"] == "FAIL"  # a defective part (0001) fails at any threshold
            reset = ctl.request("threshold", camera="cam1", reset=True)
            assert reset["threshold"] == 1.0 and reset["threshold_source"] == "bundle"
            # bad requests get error replies; the socket keeps answering
            for bad in ({"cmd": "explode"}, {"cmd": "trigger", "camera": "nope"}, {"cmd": "threshold"}):
                reply = ctl.request(**bad)
                assert reply["ok"] is False and reply["error"] and "\n" not in reply["error"]
            raw = ctl.request("threshold", camera="cam1", value="high")
            assert raw["ok"] is False
            assert ctl.request("status")["ok"] is True
            # pause / resume
            assert ctl.request("pause", camera="cam1")["paused"] == ["cam1"]
            ctl.request("trigger", camera="cam1")
            (paused,) = _collect(sub, 1, timeout=15)
            assert paused.header["verdict"] == "UNKNOWN" and paused.header["reason"] == "paused"
            ctl.request("resume")
            status = ctl.request("status")
            assert status["cameras"]["cam1"]["paused"] is False and status["cameras"]["cam1"]["seq"] == 3
        finally:
            ctl.close()
            sub.close()


@pytest.mark.slow
def test_a_camera_that_disappears_and_returns(tmp_path: Path, bundle: Path) -> None:
    parts = tmp_path / "parts"
    write_parts(parts, 4, defect_every=0)
    cam = _camera("cam1", bundle, parts, source={"step": True, "loop": True})
    doc = line_config(tmp_path, [cam], pipeline={"reconnect_min_s": 0.2, "reconnect_max_s": 0.5})
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    with daemon_process(cfg):
        wait_ready(doc["control"]["address"])
        ctl = ControlClient(doc["control"]["address"], timeout_s=5)
        try:
            time.sleep(0.5)
            parts.rename(tmp_path / "gone")  # the camera is unplugged
            ctl.request("trigger", camera="cam1")  # the source notices on its next read
            deadline = time.monotonic() + 15
            while ctl.request("status")["cameras"]["cam1"]["state"] != "down":
                assert time.monotonic() < deadline, "camera never reported down"
                time.sleep(0.1)
            status = ctl.request("status")
            assert status["degraded"] and any(k.startswith("camera_down:cam1") for k in status["degraded"])
            reply = ctl.request("trigger", camera="cam1")  # a part arrives while the camera is down
            assert reply["trigger"] == "camera_down"
            unknown = [m for m in _collect(sub, 2, timeout=10) if m.header["verdict"] == "UNKNOWN"]
            assert unknown and all(m.header["reason"] == "camera_down" for m in unknown)
            beats = _collect(sub, 1, timeout=5, kind="heartbeat")
            assert beats and beats[0].header["state"] == "down"
            (tmp_path / "gone").rename(parts)  # plugged back in
            deadline = time.monotonic() + 15
            while ctl.request("status")["cameras"]["cam1"]["state"] != "running":
                assert time.monotonic() < deadline, "camera never came back"
                time.sleep(0.1)
            assert ctl.request("status")["cameras"]["cam1"]["reconnects"] >= 1
            ctl.request("trigger", camera="cam1")
            back = _collect(sub, 1, timeout=10)
            assert back and back[0].header["verdict"] == "PASS"
            seqs = [m.header["seq"] for m in unknown + back]
            assert seqs == sorted(seqs)
        finally:
            ctl.close()
            sub.close()


def test_sigterm_drains_every_accepted_part(tmp_path: Path, bundle: Path) -> None:
    n = 400
    write_parts(tmp_path / "parts", n, defect_every=5)
    doc = line_config(tmp_path, [_camera("cam1", bundle, tmp_path / "parts")])
    doc["publish"]["wait_for_subscribers"] = 1
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    try:
        with daemon_process(cfg) as proc:
            got = _collect(sub, 20, timeout=30)
            assert len(got) == 20
            proc.send_signal(signal.SIGTERM)  # mid-replay: queued parts must still be published
            got += _results_until_quiet(sub, quiet_s=3.0)
            out, _ = proc.communicate(timeout=30)
    finally:
        sub.close()
    assert proc.returncode == 0, out
    seqs = [m.header["seq"] for m in got]
    assert seqs == list(range(1, len(got) + 1))
    ids = [m.header["acquisition_id"] for m in got]
    assert ids == [f"{i:04d}.png" for i in range(len(got))]  # no accepted part is missing
    assert len(got) < n, "the replay should have been stopped before its end"
    assert all(m.header["verdict"] in ("PASS", "FAIL") for m in got)  # drained, not given up


def test_notify_socket_gets_ready_and_watchdog_and_no_watchdog_when_wedged(tmp_path: Path) -> None:
    """A model whose inference hangs (a 10^8-iteration Loop: ~100 s) wedges the pipeline: the part is
    published UNKNOWN (timeout), the watchdog is no longer fed, STATUS= names why, and SIGTERM still stops
    the daemon (exit 4: stopped while unhealthy)."""
    hung = make_tiny_bundle(tmp_path / "hung", delay_iters=10**8)
    write_parts(tmp_path / "parts", 3, defect_every=0)
    pipeline = {"stall_s": 2.0, "infer_timeout_s": 1.0, "drain_timeout_s": 3.0, "warmup": False}
    doc = line_config(tmp_path, [_camera("cam1", hung.path, tmp_path / "parts")], pipeline=pipeline)
    doc["publish"]["wait_for_subscribers"] = 1
    cfg = write_config(tmp_path, doc)
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.2)
    messages: list[tuple[float, str]] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                continue

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    env = {"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "1000000"}
    sub = Subscriber(doc["publish"]["address"])
    try:
        with daemon_process(cfg, env) as proc:
            (timeout,) = _collect(sub, 1, timeout=30)
            assert timeout.header["verdict"] == "UNKNOWN" and timeout.header["reason"] == "timeout"
            time.sleep(4.0)  # wedged for longer than stall_s
            assert any("READY=1" in m for _, m in messages)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 4, out
    finally:
        stop.set()
        reader.join(2)
        sock.close()
        sub.close()
    t_ready = next(t for t, m in messages if "READY=1" in m)
    watchdogs = [t for t, m in messages if "WATCHDOG=1" in m]
    assert watchdogs and min(watchdogs) >= t_ready, "WATCHDOG=1 only after READY=1"
    unhealthy = [(t, m) for t, m in messages if "STATUS=unhealthy" in m]
    assert unhealthy, "the wedge is named in STATUS="
    assert "inference" in unhealthy[0][1] and "stuck" in unhealthy[0][1]
    assert not [t for t in watchdogs if t > unhealthy[0][0]], "the watchdog was fed while wedged"
    assert any("STOPPING=1" in m for _, m in messages)


def test_reload_under_load_switches_model_between_two_frames(tmp_path: Path, bundle: Path) -> None:
    write_parts(tmp_path / "parts", 20)
    other = make_tiny_bundle(tmp_path / "bundle2", threshold=2.0, part="widget", version="v2")
    cam = _camera("cam1", bundle, tmp_path / "parts", source={"loop": True, "fps": 40.0})
    doc = line_config(tmp_path, [cam])
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    with daemon_process(cfg):
        wait_ready(doc["control"]["address"])
        ctl = ControlClient(doc["control"]["address"], timeout_s=20)
        try:
            before = _collect(sub, 20, timeout=30)
            reply = ctl.request("reload", what="model", camera="cam1", bundle=str(other.path))
            assert reply["ok"] and reply["reloaded"][0]["model_version"] == "v2"
            after = _collect(sub, 40, timeout=30)
            bad = ctl.request("reload", what="model", camera="cam1", bundle=str(tmp_path / "missing"))
            assert bad["ok"] is False and "current model keeps running" in bad["error"]
            still = _collect(sub, 5, timeout=10)
        finally:
            ctl.close()
            sub.close()
    seqs = [m.header["seq"] for m in before + after + still]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gap across the swap"
    versions = [m.header["model_version"] for m in before + after + still]
    switch = versions.index("v2")
    assert set(versions[:switch]) == {bundle_version(bundle)} and set(versions[switch:]) == {"v2"}
    for m in before + after + still:  # each result carries the threshold of the model that scored it
        assert m.header["threshold"] == (2.0 if m.header["model_version"] == "v2" else 1.0)


def bundle_version(path: Path) -> str:
    from engines.bundle import Bundle

    return Bundle.open(path).model_version


def test_two_cameras_share_one_model(tmp_path: Path, bundle: Path) -> None:
    write_parts(tmp_path / "a", 10)
    write_parts(tmp_path / "b", 10, defect_every=2)
    cams = [_camera("left", bundle, tmp_path / "a"), _camera("right", bundle, tmp_path / "b")]
    doc = line_config(tmp_path, cams)
    doc["publish"]["wait_for_subscribers"] = 1
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    with daemon_process(cfg):
        got = _collect(sub, 20)
        status = wait_ready(doc["control"]["address"])
        sub.close()
    by_cam: dict[str, list[int]] = {"left": [], "right": []}
    for m in got:
        by_cam[m.header["camera"]].append(m.header["seq"])
    assert by_cam == {"left": list(range(1, 11)), "right": list(range(1, 11))}
    models = {c["model"]["bundle_id"] for c in status["cameras"].values()}
    assert len(models) == 1


def test_bad_config_and_missing_bundle_are_one_line_errors(tmp_path: Path, bundle: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "cameras:\n  - name: cam1\n    bundle: b\n    mode: freerun\n    source: {kind: folder, path: p}\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: cameras[0].mode must be one of 'free_run', 'triggered', got 'freerun'"
    )
    assert "Traceback" not in res.stderr
    # check: a bundle that is not there and a folder that is not there, each named
    write_parts(tmp_path / "parts", 2)
    doc = line_config(
        tmp_path,
        [
            _camera("good", bundle, tmp_path / "parts"),
            _camera("bad", tmp_path / "nope", tmp_path / "nothing"),
        ],
    )
    cfg = write_config(tmp_path, doc)
    res = subprocess.run(
        [sys.executable, "-m", "edge", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("camera good: bundle") and "warmed up" in line for line in lines)
    assert any(line.startswith("camera good: source folder OK, frame 96x80") for line in lines)
    assert any(line.startswith("camera bad: bundle") and "FAILED" in line for line in lines)
    assert any(line.startswith("camera bad: source FAILED") for line in lines)
    assert lines[-1] == "check: 2 problem(s)"


def test_missing_model_publishes_unknown_never_pass(tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", 5, defect_every=0)
    doc = line_config(tmp_path, [_camera("cam1", tmp_path / "no_bundle", tmp_path / "parts")])
    doc["publish"]["wait_for_subscribers"] = 1
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    with daemon_process(cfg):
        got = _collect(sub, 5, timeout=30)
        status = wait_ready(doc["control"]["address"])
        sub.close()
    assert [m.header["verdict"] for m in got] == ["UNKNOWN"] * 5
    assert {m.header["reason"] for m in got} == {"no_model"}
    assert "not found" in got[0].header["detail"]
    assert any(k.startswith("no_model") for k in status["degraded"])


def test_metrics_and_probes_over_http(tmp_path: Path, bundle: Path) -> None:
    import urllib.request

    write_parts(tmp_path / "parts", 6)
    doc = line_config(tmp_path, [_camera("cam1", bundle, tmp_path / "parts")])
    port = doc["metrics"]["port"]
    cfg = write_config(tmp_path, doc)
    with daemon_process(cfg):
        wait_ready(doc["control"]["address"])
        time.sleep(1.5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200
    assert 'masf_edge_results_total{camera="cam1",verdict="PASS"} 4.0' in body
    assert 'masf_edge_results_total{camera="cam1",verdict="FAIL"} 2.0' in body
    assert "masf_edge_stage_latency_seconds_bucket" in body and "masf_edge_model_info" in body


def test_a_frame_of_the_wrong_size_is_unknown(tmp_path: Path, bundle: Path) -> None:
    import cv2

    parts = tmp_path / "parts"
    parts.mkdir()
    cv2.imwrite(str(parts / "0000.png"), part_image(False))
    cv2.imwrite(str(parts / "0001.png"), part_image(False, height=40, width=40))
    (parts / "0002.png").write_bytes(b"\x89PNG truncated")
    cam = _camera("cam1", bundle, parts, source={"width": 96, "height": 80})
    doc = line_config(tmp_path, [cam])
    doc["publish"]["wait_for_subscribers"] = 1
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    with daemon_process(cfg):
        got = _collect(sub, 3, timeout=30)
        sub.close()
    assert [m.header["verdict"] for m in got] == ["PASS", "UNKNOWN", "UNKNOWN"]
    assert [m.header["reason"] for m in got] == [None, "bad_frame", "bad_frame"]
    assert "40x40" in got[1].header["detail"]


def test_the_edge_package_imports_no_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    from edge_support import REPO

    code = (
        "import sys, pkgutil, importlib, edge\n"
        "for m in pkgutil.walk_packages(edge.__path__, 'edge.'):\n"
        "    if m.name != 'edge.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'timm', 'trainer'))\n"
        "print(bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_edge_tests_run_where_torch_cannot_be_imported() -> None:
    """The test suite's conftest and the edge test helpers import no torch: edge tests run on a box
    that has only the edge's dependencies (torch is blocked here by an import hook)."""
    import subprocess
    import sys

    from edge_support import REPO

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'timm', 'torchvision'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_regions.py', "
        "'tests/test_edge_config.py', 'tests/test_edge_model.py']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "error" not in res.stdout.lower()
