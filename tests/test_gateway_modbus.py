"""``masf-edge gateway modbus`` as a real process beside a real daemon, read by a real pymodbus client.

The register map is decoded here with ``struct`` straight from the documented layout (``docs/plc.md``:
float32 and uint32 big-endian, high word first), independently of the gateway's own
:func:`edge.gateways.modbus.decode_block`, and compared with the results the daemon published.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from edge_support import (
    ANALYZE,
    REPO,
    analyze_verify,
    daemon_process,
    free_port,
    line_config,
    local_unit_copy,
    make_tiny_bundle,
    stop_process,
    wait_ready,
    write_config,
    write_parts,
)

from edge.gateways.common import CameraStatus, ResultValues
from edge.gateways.modbus import BLOCK_SIZE, BLOCK_STRIDE, decode_block, encode_block
from edge.subscriber import ControlClient, Subscriber

pytest.importorskip("pymodbus")

from pymodbus.client import ModbusTcpClient

pytestmark = pytest.mark.timeout(180)

STALE_S = 1.5
UNIT = 3


@contextmanager
def gateway_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "gateway", "modbus", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            stop_process(proc, 15)


def _f32(hi: int, lo: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def _as_f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def _read_block(client: ModbusTcpClient, camera_index: int) -> list[int]:
    rr = client.read_holding_registers(camera_index * BLOCK_STRIDE, count=BLOCK_SIZE, device_id=UNIT)
    assert not rr.isError(), rr
    return list(rr.registers)


def _check(regs: list[int], header: dict[str, Any]) -> None:
    """The documented layout, decoded by hand, against the daemon's result header."""
    assert regs[0] == {"UNKNOWN": 0, "PASS": 1, "FAIL": 2}[header["verdict"]]
    assert _f32(regs[1], regs[2]) == _as_f32(header["score"])
    assert _f32(regs[3], regs[4]) == _as_f32(header["threshold"])
    assert (regs[5] << 16) | regs[6] == header["seq"]
    assert regs[9] == len(header["regions"])
    published = header["timestamps"]["published"]
    assert (regs[10] << 16) | regs[11] == int(published)
    assert abs(regs[12] - (published - int(published)) * 1000) <= 1
    assert regs[14] == 0  # no reason for PASS / FAIL
    assert decode_block(regs)["verdict"] == header["verdict"]


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_encode_decode_block_word_order() -> None:
    header = {
        "started": 1.0,
        "seq": 70000,
        "verdict": "FAIL",
        "score": 4.812,
        "threshold": 2.95,
        "acquisition_id": "a",
        "model_version": "m",
        "regions": [{}, {}],
        "timestamps": {"capture": 0.0, "published": 1733103600.161},
        "reason": None,
    }
    regs = encode_block(ResultValues.from_header(header), CameraStatus(True, True, "running", 65537))
    assert len(regs) == BLOCK_SIZE
    assert regs[0] == 2 and regs[1:3] == [0x4099, 0xFBE7]  # 4.812 = 0x4099FBE7, high word first
    assert regs[5:7] == [1, 70000 - 65536]
    assert regs[7] == 1 and regs[8] == 1 and regs[9] == 2 and regs[13] == 2  # heartbeat wraps at 16 bits
    assert regs[10:13] == [1733103600 >> 16, 1733103600 & 0xFFFF, 161]
    values = decode_block(regs)
    assert values["verdict"] == "FAIL" and values["sequence"] == 70000 and values["healthy"]
    assert values["score"] == pytest.approx(4.812, rel=1e-6) and values["threshold"] == pytest.approx(2.95)
    unknown = encode_block(ResultValues.from_header({**header, "verdict": "UNKNOWN", "score": None,
                                                     "reason": "timeout"}), None)  # fmt: skip
    assert unknown[0] == 0 and math.isnan(_f32(unknown[1], unknown[2])) and unknown[14] == 2
    assert unknown[8] == 0 and unknown[13] == 0  # no status yet: not healthy, unreachable
    empty = decode_block(encode_block(None, None))
    assert empty["verdict"] == "UNKNOWN" and math.isnan(empty["score"]) and empty["sequence"] == 0


def test_modbus_gateway_mirrors_the_daemon(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle").path
    write_parts(tmp_path / "parts", 6, defect_every=2)
    source = {"kind": "folder", "path": str(tmp_path / "parts"), "step": True, "loop": True}
    cams = [
        {"name": n, "bundle": str(bundle), "mode": "triggered", "source": source} for n in ("cam1", "cam2")
    ]
    port = free_port()
    modbus = {"enabled": True, "host": "127.0.0.1", "port": port, "unit_id": UNIT, "stale_s": STALE_S}
    doc = line_config(tmp_path, cams, gateways={"modbus": modbus})
    cfg_path = write_config(tmp_path, doc)
    log = tmp_path / "gw.log"
    published: dict[tuple[str, int], dict[str, Any]] = {}
    with daemon_process(cfg_path) as daemon, gateway_process(cfg_path, log) as gw:
        wait_ready(doc["control"]["address"])
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
        sub = Subscriber(doc["publish"]["address"], topics=["masf/test/"])
        ctl = ControlClient(doc["control"]["address"])
        try:
            _wait(lambda: gw.poll() is not None or client.connect(), 30, "the gateway does not listen")
            assert gw.poll() is None, log.read_text()
            # healthy and running once heartbeats arrive; nothing published yet
            _wait(lambda: _read_block(client, 0)[8] == 1, 10, "cam1 never became healthy")
            regs = _read_block(client, 1)
            assert regs[8] == 1 and regs[13] == 2 and (regs[5] << 16 | regs[6]) == 0
            assert math.isnan(_f32(regs[1], regs[2]))
            _wait(lambda: sub.recv(timeout=0.2) is not None, 10, "the subscriber hears nothing")

            # five parts on cam2 (index 1: registers 100..114), read whole blocks in one request each
            for _ in range(5):
                ctl.trigger("cam2")
            _wait(lambda: (_read_block(client, 1)[6]) == 5, 20, "cam2's sequence did not reach 5")
            while len(published) < 5:
                msg = sub.recv(timeout=5)
                assert msg is not None
                if msg.is_result:
                    published[(msg.camera, msg.seq)] = msg.header
            regs = _read_block(client, 1)
            _check(regs, published[("cam2", 5)])
            assert [published[("cam2", s)]["verdict"] for s in range(1, 6)] == ["PASS", "FAIL"] * 2 + ["PASS"]

            # while parts flow, every block read in one request is one whole result
            reads: list[list[int]] = []
            sent = 5
            while len({(r[5] << 16) | r[6] for r in reads}) < 5 and sent < 60:
                ctl.trigger("cam2")
                sent += 1
                t = time.perf_counter()
                reads.append(_read_block(client, 1))
                time.sleep(max(0.0, 0.05 - (time.perf_counter() - t)))
            _wait(lambda: (_read_block(client, 1)[6]) == sent, 20, f"cam2's sequence did not reach {sent}")
            while len(published) < sent:
                msg = sub.recv(timeout=5)
                assert msg is not None
                if msg.is_result:
                    published[(msg.camera, msg.seq)] = msg.header
            assert len({(r[5] << 16) | r[6] for r in reads}) >= 5  # the sequence advanced under the reader
            for r in reads:
                _check(r, published[("cam2", (r[5] << 16) | r[6])])
            # cam1's block was not touched; input registers (function 4) read the same map
            assert (_read_block(client, 0)[5] << 16 | _read_block(client, 0)[6]) == 0
            ir = client.read_input_registers(BLOCK_STRIDE, count=BLOCK_SIZE, device_id=UNIT)
            assert list(ir.registers)[:7] == _read_block(client, 1)[:7]

            # heartbeat counts while the daemon is heard; the map is read-only
            beat = _read_block(client, 1)[7]
            _wait(lambda: _read_block(client, 1)[7] > beat, 3, "the heartbeat does not count")
            wr = client.write_register(BLOCK_STRIDE, 7, device_id=UNIT)
            assert wr.isError() and wr.exception_code == 2
            assert _read_block(client, 1)[0] != 7

            # an UNKNOWN part on cam1 (paused): score NaN, reason 10 (paused), state 3, still healthy
            ctl.pause("cam1")
            ctl.trigger("cam1")
            _wait(lambda: _read_block(client, 0)[6] == 1, 10, "no result while paused")
            _wait(lambda: _read_block(client, 0)[13] == 3, 5, "state is not paused")
            regs = _read_block(client, 0)
            assert regs[0] == 0 and regs[14] == 10 and math.isnan(_f32(regs[1], regs[2])) and regs[8] == 1
            assert decode_block(regs)["verdict"] == "UNKNOWN"
            ctl.resume("cam1")

            # the daemon dies: healthy 0 within the deadline, state unreachable, values kept
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
            t0 = time.monotonic()
            _wait(
                lambda: _read_block(client, 0)[8] == _read_block(client, 1)[8] == 0, STALE_S + 3, "healthy 1"
            )
            assert time.monotonic() - t0 < STALE_S + 1.0
            regs = _read_block(client, 1)
            assert regs[13] == 0 and _read_block(client, 0)[13] == 0
            _check(regs, published[("cam2", sent)])
        finally:
            ctl.close()
            sub.close()
            client.close()
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    text = log.read_text()
    assert "Traceback" not in text, text


def test_modbus_one_line_errors(tmp_path: Path) -> None:
    cam = {"name": "cam1", "bundle": "b", "source": {"kind": "folder", "path": str(tmp_path)}}
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for section, expected in (
            ({"enabled": True, "port": busy.getsockname()[1]}, "port is in use"),
            ({"enabled": False}, "enabled is false"),
        ):
            doc = line_config(tmp_path, [cam], gateways={"modbus": section})
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "edge",
                    "gateway",
                    "modbus",
                    "--config",
                    str(write_config(tmp_path, doc)),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            assert (
                done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and expected in done.stderr
            )
    finally:
        busy.close()


def test_systemd_unit(tmp_path: Path) -> None:
    unit = REPO / "systemd" / "masf-edge-modbus@.service"
    text = unit.read_text()
    assert "ExecStart=/usr/local/bin/masf-edge gateway modbus --config /etc/masf-edge/%i.yaml\n" in text
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "User=masf-edge",
        "ProtectSystem=strict",
        "PrivateDevices=true",
    ):
        assert f"\n{line}\n" in text, line
    assert "BindsTo=" not in text and "PartOf=" not in text  # it must outlive a daemon restart
    if not os.access(ANALYZE, os.X_OK):
        pytest.skip("systemd-analyze is not installed")
    copy = local_unit_copy(unit, tmp_path)
    for name in (copy, tmp_path / "masf-edge-modbus@line1.service"):
        rc, noise = analyze_verify(name)
        assert rc == 0 and not noise, noise
