"""``masf-edge gateway opcua`` as a real process beside a real daemon, read by a real asyncua client.

The daemon inspects a folder replay (triggered, one image per trigger) with the tiny ONNX bundle; the
gateway runs with Basic256Sha256 Sign & Encrypt and certificates made by ``--make-cert``. The client reads
every node, follows the sequence through a subscription and the seqlock handshake, compares each result
with what the daemon published, calls ``Trigger``, is refused without a (trusted) certificate, and sees
``Healthy`` go false when the daemon is killed and come back when it is restarted.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timezone
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
    unit_directives,
    unit_values,
    wait_ready,
    write_config,
    write_parts,
)

from edge.protocol import Message
from edge.subscriber import ControlClient, Subscriber

pytest.importorskip("asyncua")

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

pytestmark = pytest.mark.timeout(240)

FIELDS = ("Verdict", "Score", "Threshold", "AcquisitionId", "ModelVersion", "RegionCount", "LastResultTime")
STALE_S = 1.5


def _gateway_cmd(kind: str, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edge", "gateway", kind, "--config", str(config), *extra]


@contextmanager
def gateway_process(kind: str, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The gateway as a subprocess (output to ``log``); stopped with SIGTERM, which must end it cleanly."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _gateway_cmd(kind, config),
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            stop_process(proc, 15)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "gateway", "opcua", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _client(endpoint: str, certs: Path | None, name: str = "plc1") -> Client:
    client = Client(endpoint, timeout=5)
    client.session_timeout = 30000
    if certs is not None:
        client.application_uri = f"urn:masf-edge:client:{name}"
        client.name = name
    return client


async def _secure(client: Client, certs: Path, name: str = "plc1", user_cert: bool = True) -> Client:
    cert, key = certs / f"{name}_cert.der", certs / f"{name}_key.pem"
    await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key))
    if user_cert:
        await client.load_client_certificate(str(cert))
        await client.load_private_key(str(key))
    return client


async def _connect(endpoint: str, certs: Path, name: str = "plc1", user_cert: bool = True) -> Client:
    client = await _secure(_client(endpoint, certs, name), certs, name, user_cert)
    await client.connect()
    return client


async def _wait_server(endpoint: str, certs: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"the gateway exited: {log.read_text()}"
        try:
            client = await _connect(endpoint, certs)
        except (OSError, asyncio.TimeoutError, ua.UaError):
            assert time.monotonic() < deadline, f"the gateway does not answer: {log.read_text()}"
            await asyncio.sleep(0.3)
            continue
        await client.disconnect()
        return


async def _until(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if value:
            return value
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _check_struct(struct: Any, header: dict[str, Any]) -> None:
    assert struct.Sequence == header["seq"]
    assert struct.Verdict.name == header["verdict"]
    if header["score"] is None:
        assert math.isnan(struct.Score)
    else:
        assert struct.Score == pytest.approx(header["score"], rel=1e-9, abs=1e-12)
    assert struct.Threshold == pytest.approx(header["threshold"])
    assert struct.AcquisitionId == header["acquisition_id"]
    assert struct.ModelVersion == (header["model_version"] or "")
    assert struct.RegionCount == len(header["regions"])
    published = header["timestamps"]["published"]
    assert abs(struct.LastResultTime.replace(tzinfo=timezone.utc).timestamp() - published) < 1e-3
    assert struct.Reason == (header["reason"] or "")


def _check_fields(values: dict[str, Any], header: dict[str, Any]) -> None:
    assert values["Verdict"] == {"UNKNOWN": 0, "PASS": 1, "FAIL": 2}[header["verdict"]]
    assert values["Score"] == pytest.approx(header["score"])
    assert values["Threshold"] == pytest.approx(header["threshold"])
    assert values["AcquisitionId"] == header["acquisition_id"]
    assert values["ModelVersion"] == (header["model_version"] or "")
    assert values["RegionCount"] == len(header["regions"])
    stamp = values["LastResultTime"].replace(tzinfo=timezone.utc).timestamp()
    assert abs(stamp - header["timestamps"]["published"]) < 1e-3


class _Changes:
    """asyncua subscription handler: every data change of the Result variable, in order."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values.append(val)


def _drain(sub: Subscriber, into: dict[tuple[str, int], dict[str, Any]]) -> None:
    while True:
        msg: Message | None = sub.recv(timeout=0.05)
        if msg is None:
            return
        if msg.is_result:
            into[(msg.camera, msg.seq)] = msg.header


@pytest.fixture
def line(tmp_path: Path) -> dict[str, Any]:
    """Two triggered cameras on a replay (odd parts FAIL), certificates, the gateway's config."""
    bundle = make_tiny_bundle(tmp_path / "bundle").path
    write_parts(tmp_path / "parts", 6, defect_every=2)
    certs, trusted = tmp_path / "certs", tmp_path / "trusted"
    trusted.mkdir()
    for args in (("--name", "server"), ("--client", "--name", "plc1"), ("--client", "--name", "rogue")):
        done = _cli("--make-cert", str(certs), *args)
        assert done.returncode == 0, done.stderr
    (trusted / "plc1_cert.der").write_bytes((certs / "plc1_cert.der").read_bytes())
    source = {"kind": "folder", "path": str(tmp_path / "parts"), "step": True, "loop": True}
    cams = [
        {"name": name, "bundle": str(bundle), "mode": "triggered", "source": source}
        for name in ("cam1", "cam2")
    ]
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/masf/"
    opcua = {
        "enabled": True,
        "endpoint": endpoint,
        "stale_s": STALE_S,
        "certificate": str(certs / "server_cert.der"),
        "private_key": str(certs / "server_key.pem"),
        "trusted_clients": str(trusted),
    }
    doc = line_config(tmp_path, cams, gateways={"opcua": opcua})
    return {
        "doc": doc,
        "path": write_config(tmp_path, doc),
        "certs": certs,
        "endpoint": endpoint,
        "tmp": tmp_path,
    }


def test_make_cert_files_and_one_line_errors(tmp_path: Path) -> None:
    done = _cli("--make-cert", str(tmp_path / "c"), "--client", "--name", "plc9", "--hostname", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    assert "urn:masf-edge:client:plc9" in done.stdout
    key = tmp_path / "c" / "plc9_key.pem"
    assert (
        stat.S_IMODE(key.stat().st_mode) == 0o600 and (tmp_path / "c" / "plc9_cert.der").stat().st_size > 500
    )
    again = _cli("--make-cert", str(tmp_path / "c"), "--client", "--name", "plc9")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr

    cam = {"name": "cam1", "bundle": "b", "source": {"kind": "folder", "path": str(tmp_path)}}
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = [
        ({"security": "sign_encrypt", "certificate": "nope.der", "private_key": "nope.pem"}, "no such file"),
        ({"security": "none"}, "allow_anonymous"),
        (
            {"security": "none", "allow_anonymous": True, "endpoint": f"opc.tcp://127.0.0.1:{port}/"},
            "cannot listen",
        ),
    ]
    try:
        for i, (section, expected) in enumerate(cases):
            doc = line_config(tmp_path, [cam], gateways={"opcua": {"enabled": True, **section}})
            done = _cli("--config", str(write_config(tmp_path, doc, f"bad{i}.yaml")))
            assert done.returncode == 2, done.stderr
            lines = done.stderr.strip().splitlines()
            assert lines[-1].startswith("error: ") and expected in lines[-1], done.stderr
            assert "Traceback" not in done.stderr
    finally:
        busy.close()


@pytest.mark.slow
def test_opcua_gateway_mirrors_the_daemon(line: dict[str, Any]) -> None:
    doc, certs, endpoint, tmp = line["doc"], line["certs"], line["endpoint"], line["tmp"]
    published: dict[tuple[str, int], dict[str, Any]] = {}
    restarted: list[subprocess.Popen[bytes]] = []
    with daemon_process(line["path"]) as daemon, gateway_process("opcua", line["path"], tmp / "gw.log") as gw:
        wait_ready(doc["control"]["address"])
        sub = Subscriber(doc["publish"]["address"], topics=["masf/test/"])
        try:
            asyncio.run(_wait_server(endpoint, certs, gw, tmp / "gw.log"))
            asyncio.run(_session(line, sub, published, daemon, restarted))
            gw.send_signal(signal.SIGTERM)
            assert gw.wait(15) == 0
        finally:
            sub.close()
            for proc in restarted:
                stop_process(proc, 20)
    log = (tmp / "gw.log").read_text()
    assert "Traceback" not in log, log
    assert "refused an OPC UA client: BadCertificateUntrusted (certificate rogue" in log


async def _session(
    line: dict[str, Any],
    sub: Subscriber,
    published: dict[tuple[str, int], dict[str, Any]],
    daemon: subprocess.Popen[str],
    restarted: list[subprocess.Popen[bytes]],
) -> None:
    certs, endpoint = line["certs"], line["endpoint"]
    client = await _connect(endpoint, certs)
    try:
        await client.load_data_type_definitions()
        ns = await client.get_namespace_index("urn:masf-edge")
        objects = client.nodes.objects
        line_node = await objects.get_child(f"{ns}:test")
        cams = {name: await line_node.get_child(f"{ns}:{name}") for name in ("cam1", "cam2")}
        assert cams["cam1"].nodeid == ua.NodeId("test.cam1", ns)

        # every node of every camera, by browse path and by its documented node id
        expected = {
            "Result", "SequenceBegin", "Verdict", "Score", "Threshold", "AcquisitionId", "ModelVersion",
            "RegionCount", "LastResultTime", "Reason", "Sequence", "Heartbeat", "Healthy", "State", "Trigger",
        }  # fmt: skip
        for name, cam in cams.items():
            children = {(await c.read_browse_name()).Name: c for c in await cam.get_children()}
            assert set(children) == expected
            for child_name, child in children.items():
                assert child.nodeid == ua.NodeId(f"test.{name}.{child_name}", ns)
                if child_name != "Trigger":
                    await child.read_value()
        nodes = {n: client.get_node(ua.NodeId(f"test.cam1.{n}", ns)) for n in expected}

        # Verdict is a real enumeration data type; Result a structure
        verdict_type = client.get_node(await nodes["Verdict"].read_data_type())
        definition = await verdict_type.read_data_type_definition()
        assert {f.Name: f.Value for f in definition.Fields} == {"UNKNOWN": 0, "PASS": 1, "FAIL": 2}
        assert (await verdict_type.read_browse_name()).Name == "Verdict"
        first = await nodes["Result"].read_value()
        assert type(first).__name__ == "InspectionResult" and first.Sequence == 0

        # healthy once the daemon's heartbeats arrive
        healthy = client.get_node(ua.NodeId("test.Healthy", ns))
        await _until(healthy.read_value, 10, "the line never became healthy")
        assert await nodes["State"].read_value() == "running"
        beat0 = await nodes["Heartbeat"].read_value()

        # wait until the test's own subscriber is live (it then sees every result)
        await _until(lambda: _async(sub.recv(timeout=0.2) is not None), 10, "no heartbeat on the subscriber")

        # a subscription on Result sees each result whole
        changes = _Changes()
        subscription = await client.create_subscription(0, changes)
        await subscription.subscribe_data_change(nodes["Result"])

        # Trigger through OPC UA: each call queues one part
        cam1 = cams["cam1"]
        trigger_id = ua.NodeId("test.cam1.Trigger", ns)
        for _ in range(6):
            assert await cam1.call_method(trigger_id) == "queued"
        await _until(lambda: _eq(nodes["Sequence"].read_value(), 6), 20, "Sequence did not reach 6")
        _drain(sub, published)
        result = await nodes["Result"].read_value()
        _check_struct(result, published[("cam1", 6)])
        values = {n: await nodes[n].read_value() for n in FIELDS}
        _check_fields(values, published[("cam1", 6)])
        assert [published[("cam1", s)]["verdict"] for s in range(1, 7)] == ["PASS", "FAIL"] * 3
        assert await nodes["SequenceBegin"].read_value() == 6
        await _until(lambda: _gt(nodes["Heartbeat"].read_value(), beat0), 3, "Heartbeat does not count")

        # the other camera was not touched
        other = await client.get_node(ua.NodeId("test.cam2.Result", ns)).read_value()
        assert other.Sequence == 0

        # the seqlock handshake while results keep coming (cam2 triggered from a second task)
        cam2_nodes = {n: client.get_node(ua.NodeId(f"test.cam2.{n}", ns)) for n in expected}
        stop = asyncio.Event()

        async def keep_triggering() -> int:
            n = 0
            trigger2 = ua.NodeId("test.cam2.Trigger", ns)
            while not stop.is_set():
                assert await cams["cam2"].call_method(trigger2) == "queued"
                n += 1
                await asyncio.sleep(0.03)
            return n

        trigger_task = asyncio.create_task(keep_triggering())
        accepted: list[tuple[int, dict[str, Any]]] = []
        rejected = 0
        deadline = time.monotonic() + 20
        while len({seq for seq, _ in accepted}) < 10 and time.monotonic() < deadline:
            s1 = await cam2_nodes["Sequence"].read_value()
            fields = {n: await cam2_nodes[n].read_value() for n in FIELDS}
            s2 = await cam2_nodes["SequenceBegin"].read_value()
            if s1 == s2 and s1 > 0:
                accepted.append((s1, fields))
            else:
                rejected += 1
        stop.set()
        sent = await trigger_task
        assert len({seq for seq, _ in accepted}) >= 10, (len(accepted), rejected)  # it advanced under us
        await _until(lambda: _eq(cam2_nodes["Sequence"].read_value(), sent), 20, "cam2 did not catch up")
        _drain(sub, published)
        for seq, fields in accepted:
            _check_fields(fields, published[("cam2", seq)])

        # every Result notification is one whole result, in order
        await _until(lambda: _async(any(v.Sequence == 6 for v in changes.values)), 5, "no notification")
        seqs = [v.Sequence for v in changes.values if v.Sequence]
        assert seqs == sorted(seqs) and seqs[-1] == 6
        for v in changes.values:
            if v.Sequence:
                _check_struct(v, published[("cam1", v.Sequence)])
        await subscription.delete()

        # an UNKNOWN part (the camera is paused): no score (NaN), a reason; paused counts as healthy
        ctl = ControlClient(line["doc"]["control"]["address"])
        try:
            ctl.pause("cam1")
            assert await cam1.call_method(trigger_id) == "queued"
            await _until(lambda: _eq(nodes["Sequence"].read_value(), 7), 10, "no result while paused")
            await _until(lambda: _eq(nodes["State"].read_value(), "paused"), 5, "State is not paused")
            unknown = await nodes["Result"].read_value()
            assert (
                unknown.Verdict.name == "UNKNOWN" and unknown.Reason == "paused" and math.isnan(unknown.Score)
            )
            assert await nodes["Verdict"].read_value() == 0 and math.isnan(await nodes["Score"].read_value())
            assert await nodes["Healthy"].read_value() is True
            ctl.resume("cam1")
        finally:
            ctl.close()

        # the variables are read-only for clients
        with pytest.raises(ua.UaStatusCodeError):
            await nodes["Verdict"].write_value(ua.Variant(1, ua.VariantType.Int32))

        # refused: an untrusted certificate, no certificate, a trusted one with an anonymous user token
        with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUntrusted"):
            await _connect(endpoint, certs, "rogue")
        with pytest.raises(ua.UaError):
            await _client(endpoint, None).connect()  # no SecurityPolicy#None endpoint
        with pytest.raises(ua.UaStatusCodeError, match="BadIdentityTokenRejected"):
            await _connect(endpoint, certs, "plc1", user_cert=False)

        # the daemon dies: Healthy goes false within the deadline (plus the 0.2 s recomputation)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        t0 = time.monotonic()
        await _until(lambda: _not(nodes["Healthy"].read_value()), STALE_S + 3, "Healthy stayed true")
        assert time.monotonic() - t0 < STALE_S + 1.0
        assert await healthy.read_value() is False
        assert await nodes["State"].read_value() == "unreachable"
        beat = await nodes["Heartbeat"].read_value()
        await asyncio.sleep(1.3)
        assert await nodes["Heartbeat"].read_value() == beat  # no daemon heard: the counter stands still
        assert (await nodes["Result"].read_value()).Sequence == 7  # the last values stay readable

        # the daemon comes back (same sockets): healthy again, its sequence starts at 1
        restarted.append(
            subprocess.Popen(
                [sys.executable, "-m", "edge", "run", "--config", str(line["path"])],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        await asyncio.to_thread(wait_ready, line["doc"]["control"]["address"])
        await _until(nodes["Healthy"].read_value, 15, "not healthy after the daemon restarted")
        assert await cam1.call_method(trigger_id) == "queued"
        await _until(lambda: _eq(nodes["Sequence"].read_value(), 1), 15, "no result after the restart")
        assert (await nodes["Result"].read_value()).Sequence == 1
    finally:
        await client.disconnect()


async def _async(value: Any) -> Any:
    return value


async def _eq(coro: Any, expected: Any) -> bool:
    return bool(await coro == expected)


async def _gt(coro: Any, than: Any) -> bool:
    return bool(await coro > than)


async def _not(coro: Any) -> bool:
    return not await coro


UNIT = REPO / "systemd" / "masf-edge-opcua@.service"


def test_systemd_unit(tmp_path: Path) -> None:
    assert unit_values(UNIT, "ExecStart") == [
        "/usr/local/bin/masf-edge gateway opcua --config /etc/masf-edge/%i.yaml"
    ]
    for key, value in {
        "Type": "notify",
        "Restart": "on-failure",
        "WatchdogSec": "30",
        "User": "masf-edge",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "true",
        "CapabilityBoundingSet": "",
        "PrivateDevices": "true",
    }.items():
        assert unit_values(UNIT, key) == [value], key
    keys = {k for _, k, _ in unit_directives(UNIT.read_text())}
    assert "BindsTo" not in keys and "PartOf" not in keys  # it must outlive a daemon restart
    if not os.access(ANALYZE, os.X_OK):
        pytest.skip("systemd-analyze is not installed")
    unit = local_unit_copy(UNIT, tmp_path)
    for name in (unit, tmp_path / "masf-edge-opcua@line1.service"):
        rc, noise = analyze_verify(name)
        assert rc == 0 and not noise, noise
