"""The daemon (``edge.service`` / ``edge.daemon``) with real cameras and real clients, as a subprocess:
the GenICam simulator producer, a real RTSP stream, CURVE with an allowed and a refused client, a
subscriber that never reads, SIGHUP reloading the config file, and a stop that hangs."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from edge_support import (
    REPO,
    daemon_process,
    free_port,
    line_config,
    make_tiny_bundle,
    wait_ready,
    write_config,
    write_parts,
)
from net_support import free_udp_base

from edge.keys import CurveClient, make_keypair
from edge.protocol import Message
from edge.subscriber import ControlClient, Subscriber

pytestmark = pytest.mark.timeout(180)


def _folder_cam(bundle: Path, parts: Path, mode: str = "triggered", fps: float = 20.0) -> dict[str, Any]:
    source = {"kind": "folder", "path": str(parts), "loop": True, "fps": fps}
    return {"name": "cam1", "bundle": str(bundle), "mode": mode, "source": source}


def _results(sub: Subscriber, n: int, timeout: float = 30.0) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        msg = sub.recv(timeout=0.5)
        if msg is not None and msg.is_result:
            out.append(msg)
    return out


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "bundle").path


def test_genicam_simulator_camera_through_the_daemon(tmp_path: Path, bundle: Path) -> None:
    genicam = pytest.importorskip("genicam")
    viky = Path(genicam.__file__).parent / "viky.cti"
    if not viky.is_file():
        pytest.skip("this genicam wheel ships no viky.cti simulator")
    source = {"kind": "genicam", "cti": [str(viky)], "pixel_format": "Mono8"}
    doc = line_config(
        tmp_path, [{"name": "gige", "bundle": str(bundle), "mode": "free_run", "source": source}]
    )
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    with daemon_process(cfg):
        status = wait_ready(doc["control"]["address"])
        got = _results(sub, 5)
        sub.close()
    assert status["cameras"]["gige"]["state"] == "running"
    assert status["cameras"]["gige"]["source"]["kind"] == "genicam"
    assert len(got) == 5 and [m.seq for m in got] == list(range(got[0].seq, got[0].seq + 5))
    assert all(m.header["frame"] == {"height": 400, "width": 400} for m in got)
    assert all(m.header["verdict"] in ("PASS", "FAIL") for m in got)


def _rtsp_tools() -> bool:
    return shutil.which("rtsp-server-perl") is not None and shutil.which("ffmpeg") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _rtsp_tools(), reason="needs Debian rtsp-server-perl and ffmpeg (make system-deps)")
def test_rtsp_camera_through_the_daemon(tmp_path: Path, bundle: Path) -> None:
    client, source_port = free_port(), free_port()
    server = subprocess.Popen(
        ["rtsp-server-perl", "-c", str(client), "-s", str(source_port),
         "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1",
         "--rtp_start_port", str(free_udp_base())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)
    push = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-c:v",
         "libx264", "-pix_fmt", "yuv420p", "-f", "rtsp", f"rtsp://127.0.0.1:{source_port}/cam"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        source = {"kind": "opencv", "uri": f"rtsp://127.0.0.1:{client}/cam", "rtsp_transport": "udp"}
        cam = {"name": "rtsp", "bundle": str(bundle), "mode": "free_run", "source": source}
        doc = line_config(tmp_path, [cam], pipeline={"reconnect_min_s": 0.5, "reconnect_max_s": 1.0})
        cfg = write_config(tmp_path, doc)
        sub = Subscriber(doc["publish"]["address"])
        with daemon_process(cfg):
            got = _results(sub, 3, timeout=60)
            ctl = ControlClient(doc["control"]["address"], timeout_s=5)
            status = ctl.request("status")
            push.terminate()  # the camera's stream stops
            push.wait(10)
            deadline = time.monotonic() + 30
            while ctl.request("status")["cameras"]["rtsp"]["state"] != "down":
                assert time.monotonic() < deadline, "the lost stream was never reported"
                time.sleep(0.2)
            ctl.close()
            sub.close()
    finally:
        for proc in (push, server):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    assert len(got) == 3 and all(m.header["frame"] == {"height": 120, "width": 160} for m in got)
    assert status["cameras"]["rtsp"]["source"]["kind"] == "opencv"


def test_curve_allowed_and_refused_clients(tmp_path: Path, bundle: Path) -> None:
    keys = tmp_path / "keys"
    server_pub, server_secret = make_keypair(keys, "server")
    _, allowed_secret = make_keypair(keys / "clients", "plc")
    _, intruder_secret = make_keypair(tmp_path / "other", "intruder")
    write_parts(tmp_path / "parts", 50)
    cam = _folder_cam(bundle, tmp_path / "parts")
    security = {
        "curve": True,
        "server_secret_key": str(server_secret),
        "client_public_keys": str(keys / "clients"),
    }
    doc = line_config(tmp_path, [cam], security=security)
    cfg = write_config(tmp_path, doc)
    allowed = CurveClient(server_pub, allowed_secret)
    refused = CurveClient(server_pub, intruder_secret)
    with daemon_process(cfg):
        ctl = ControlClient(doc["control"]["address"], timeout_s=5, curve_client=allowed)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert ctl.request("status")["state"] == "running"
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        good = Subscriber(doc["publish"]["address"], curve_client=allowed)
        bad = Subscriber(doc["publish"]["address"], curve_client=refused)
        plain = Subscriber(doc["publish"]["address"])
        assert len(_results(good, 5, timeout=20)) == 5
        assert bad.recv(timeout=2.0) is None and plain.recv(timeout=0.5) is None
        intruder = ControlClient(doc["control"]["address"], timeout_s=2, curve_client=refused)
        with pytest.raises(Exception, match="no reply"):
            intruder.request("status")
        for c in (good, bad, plain):
            c.close()
        intruder.close()
        ctl.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_subscriber_that_never_reads_does_not_grow_or_block_the_daemon(tmp_path: Path) -> None:
    big = make_tiny_bundle(tmp_path / "big", height=256, width=256).path  # ~60 KB heatmaps
    write_parts(tmp_path / "parts", 20, height=256, width=256)
    cam = _folder_cam(big, tmp_path / "parts", mode="free_run", fps=200.0)
    doc = line_config(tmp_path, [cam])
    doc["publish"]["sndhwm"] = 50
    cfg = write_config(tmp_path, doc)
    stuck = Subscriber(doc["publish"]["address"], rcvhwm=10)  # connected, never reads
    with daemon_process(cfg) as proc:
        wait_ready(doc["control"]["address"])
        reader = Subscriber(doc["publish"]["address"])
        first = _results(reader, 20)
        rss0 = _rss_mb(proc.pid)
        deadline = time.monotonic() + 12
        got = 0
        while time.monotonic() < deadline:
            msg = reader.recv(timeout=0.5)
            got += msg is not None and msg.is_result
        rss1 = _rss_mb(proc.pid)
        ctl = ControlClient(doc["control"]["address"], timeout_s=5)
        status = ctl.request("status")
        ctl.close()
        reader.close()
    stuck.close()
    assert len(first) == 20 and got > 100, "the reading subscriber keeps receiving"
    assert rss1 - rss0 < 100, f"daemon memory grew from {rss0:.0f} to {rss1:.0f} MB"
    assert status["publish"]["sent"] > 200


def test_sighup_reloads_the_config_file(tmp_path: Path, bundle: Path) -> None:
    write_parts(tmp_path / "parts", 40, defect_every=0)
    cam = _folder_cam(bundle, tmp_path / "parts")
    doc = line_config(tmp_path, [cam])
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    with daemon_process(cfg) as proc:
        wait_ready(doc["control"]["address"])
        before = _results(sub, 3)
        changed: dict[str, Any] = yaml.safe_load(cfg.read_text())
        changed["cameras"][0]["threshold"] = 0.05  # every part now FAILs
        cfg.write_text(yaml.safe_dump(changed))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        after: list[Message] = []
        while time.monotonic() < deadline and not (
            after and after[-1].header["threshold_source"] == "config"
        ):
            after += _results(sub, 1, timeout=2)
        changed["control"]["address"] = f"tcp://127.0.0.1:{free_port()}"  # needs a restart: refused
        cfg.write_text(yaml.safe_dump(changed))
        proc.send_signal(signal.SIGHUP)
        still = _results(sub, 3)
        sub.close()
    assert all(m.header["threshold"] == 1.0 and m.header["verdict"] == "PASS" for m in before)
    last = after[-1].header
    assert last["threshold"] == 0.05 and last["threshold_source"] == "config" and last["verdict"] == "FAIL"
    assert all(m.header["threshold"] == 0.05 for m in still)  # the refused reload changed nothing


_STUCK_STOP = """
import sys, threading
import edge.service as service
from edge.cli import main
from edge.daemon import Daemon

service.STOP_GRACE_S = 1.0
closed = Daemon.shutdown


def shutdown(self, deadline_s):  # the stop finishes, then a close hangs (e.g. a socket nobody closes)
    closed(self, deadline_s)
    threading.Event().wait()


Daemon.shutdown = shutdown
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def _sigterm_once_ready(
    script: list[str], doc: dict[str, Any], wedge: Path | None = None
) -> tuple[int, str, float]:
    """Run ``python -c *script``, wait until its daemon answers ``status``, create ``wedge`` (when given)
    and let a second of ticks pass, send SIGTERM; its exit code, output and seconds from the signal to
    its end (killed after 30 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", *script],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_ready(doc["control"]["address"])
        if wedge is not None:
            wedge.touch()
            time.sleep(1.0)  # a few ticks: the loop is now blocked
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        return proc.returncode, out, time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_WEDGED_LOOP = """
import os, sys, threading
import edge.service as service
from edge.cli import main
from edge.daemon import Daemon

service.STOP_GRACE_S = 1.0
ticked = Daemon.tick


def tick(self):  # once the test says so, the main loop blocks in a tick and never reads its signal queue
    ticked(self)
    if os.path.exists(sys.argv[2]):
        threading.Event().wait()


Daemon.tick = tick
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def test_a_main_loop_wedged_before_the_stop_still_ends_at_the_deadline(tmp_path: Path, bundle: Path) -> None:
    """SIGTERM to a ``masf-edge run`` whose main loop is blocked (it never reads the signal): the deadline
    starts at the signal, so the process ends at the drain deadline plus the grace, exit 1, with the
    blocked call in the stacks on stderr."""
    doc = line_config(tmp_path, [_folder_cam(bundle, tmp_path / "parts")])
    write_parts(tmp_path / "parts", 4)
    doc["pipeline"]["drain_timeout_s"] = 0.5
    cfg = write_config(tmp_path, doc)
    wedge = tmp_path / "wedge"
    code, out, took = _sigterm_once_ready([_WEDGED_LOOP, str(cfg), str(wedge)], doc, wedge)
    assert code == 1, out[-3000:]
    assert "Timeout (0:00:01.500000)!" in out and "in tick" in out, out[-3000:]
    assert "stopping" not in out  # the loop never got to the stop: only the deadline ended it
    assert took < 20, took


def test_a_stop_that_hangs_ends_at_its_deadline_with_every_threads_stack(
    tmp_path: Path, bundle: Path
) -> None:
    """A close that never returns during the stop: the ``masf-edge run`` process still ends, at the drain
    deadline plus the grace, exit 1, with every thread's stack (the hanging call among them) on stderr."""
    doc = line_config(tmp_path, [_folder_cam(bundle, tmp_path / "parts")])
    write_parts(tmp_path / "parts", 4)
    doc["pipeline"]["drain_timeout_s"] = 0.5
    cfg = write_config(tmp_path, doc)
    code, out, took = _sigterm_once_ready([_STUCK_STOP, str(cfg)], doc)
    assert code == 1, out[-3000:]
    assert "the process ends within 1.5 s" in out
    assert "Timeout (0:00:01.500000)!" in out and "in shutdown" in out  # faulthandler: where it hung
    assert took < 20, took
