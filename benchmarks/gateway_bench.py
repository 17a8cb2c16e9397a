"""PLC gateway benchmark: latency from the daemon's publish to the OPC UA value change, and the gateways'
CPU and memory, with the daemon inspecting a folder replay at a fixed rate.

    .venv/bin/python benchmarks/gateway_bench.py [--fps 30] [--seconds 60] [--security sign_encrypt]
        [--publishing-ms 0] [--modbus] [--bundle DIR --images DIR] [--out benchmarks/results/gateway]

What it runs: ``masf-edge run`` on a free-running folder replay paced at ``--fps`` (``source.fps``,
looping), then ``masf-edge gateway opcua`` beside it, and in this process an asyncua client (Basic256Sha256
Sign & Encrypt with a trusted client certificate, or no security) subscribed to ``<line>.cam1.Result``
with the publishing interval ``--publishing-ms`` (0: the server sends each change at once).

What it measures over ``--seconds`` (after a warm-up):

* **latency**: the client's receive time of each ``Result`` change minus the result's
  ``timestamps.published`` (carried in the structure as ``LastResultTime``): the daemon's hand-off to its
  publish socket -> ZeroMQ -> the gateway's feed -> the OPC UA write -> the subscription -> the client.
  Median, p99, max, in ms (same host, same clock);
* results/s the client received, and results it did not see (sequence gaps);
* the gateway process's CPU (user + system time over the window / wall time; 100 % = one core) and RSS
  (mean and peak of a 0.5 s sampling, and ``VmHWM``).

With ``--modbus`` the same for ``masf-edge gateway modbus``, read by a pymodbus client that polls the
camera's block every 10 ms: the latency is then the first poll that shows a new sequence number minus
the published time (it includes up to one polling period).

Without ``--bundle``/``--images`` it uses the tests' tiny ONNX bundle and generated parts (torch-free),
so the numbers are the gateway's, not the model's. Writes ``gateway_bench.json`` and ``gateway_bench.md``
to ``--out`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from edge.errors import EdgeError  # noqa: E402
from edge.subscriber import ControlClient  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _status_kb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


class _ProcSampler:
    """CPU seconds at start/stop and RSS every 0.5 s of one process, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_mb: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.rss_mb.append(_status_kb(self.pid, "VmRSS") / 1024)

    def start(self) -> _ProcSampler:
        self.t0, self.cpu0 = time.monotonic(), _cpu_s(self.pid)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        wall, cpu = time.monotonic() - self.t0, _cpu_s(self.pid) - self.cpu0
        self._stop.set()
        self._thread.join()
        return {
            "cpu_percent": 100.0 * cpu / wall,
            "rss_mb_mean": float(np.mean(self.rss_mb)) if self.rss_mb else float("nan"),
            "rss_mb_peak": max(self.rss_mb, default=float("nan")),
            "vm_hwm_mb": _status_kb(self.pid, "VmHWM") / 1024,
        }


def _latency(lat_ms: list[float]) -> dict[str, float]:
    a = np.array(lat_ms) if lat_ms else np.array([np.nan])
    return {
        "latency_ms_median": float(np.median(a)),
        "latency_ms_p99": float(np.percentile(a, 99)),
        "latency_ms_max": float(np.max(a)),
    }


def _gaps(seqs: list[int]) -> int:
    return sum(max(0, b - a - 1) for a, b in itertools.pairwise(seqs))


def _wait_ready(control: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = ControlClient(control, timeout_s=1.0)
        try:
            if client.request("status").get("state") == "running":
                return
        except EdgeError:
            pass
        finally:
            client.close()
        time.sleep(0.2)
    raise TimeoutError(f"the daemon did not become ready on {control}")


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


# ---------------------------------------------------------------------------------------------- OPC UA


async def _opcua_client(
    endpoint: str, certs: Path | None, publishing_ms: float, warmup: float, seconds: float, pid: int
) -> dict[str, Any]:
    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    deadline = time.monotonic() + 60
    while True:
        client = Client(endpoint, timeout=10)
        try:
            if certs is not None:  # set_security asks the server for its endpoints: inside the retry
                client.application_uri = "urn:masf-edge:client:bench"
                await client.set_security(
                    SecurityPolicyBasic256Sha256, str(certs / "bench_cert.der"), str(certs / "bench_key.pem")
                )
                await client.load_client_certificate(str(certs / "bench_cert.der"))
                await client.load_private_key(str(certs / "bench_key.pem"))
            await client.connect()
            break
        except (OSError, asyncio.TimeoutError, ua.UaError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
    records: list[tuple[float, int, float]] = []

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            now = time.time()
            if val.Sequence:
                records.append((now, int(val.Sequence), val.LastResultTime.timestamp()))

    try:
        await client.load_data_type_definitions()
        ns = await client.get_namespace_index("urn:masf-edge")
        sub = await client.create_subscription(publishing_ms, Handler())
        await sub.subscribe_data_change(client.get_node(ua.NodeId("bench.cam1.Result", ns)), queuesize=1000)
        await asyncio.sleep(warmup)
        records.clear()
        sampler = _ProcSampler(pid).start()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        window = time.monotonic() - t0
        usage = sampler.stop()
        got = list(records)
        await sub.delete()
    finally:
        await client.disconnect()
    seqs = [s for _, s, _ in got]
    return {
        "results": len(got),
        "results_per_s": len(got) / window,
        "daemon_results_per_s": (seqs[-1] - seqs[0] + 1) / window if seqs else 0.0,
        "not_seen": _gaps(seqs),
        **_latency([(t - pub) * 1000 for t, _, pub in got]),
        **usage,
    }


# ---------------------------------------------------------------------------------------------- Modbus


def _modbus_client(
    port: int, warmup: float, seconds: float, pid: int, poll_s: float = 0.01
) -> dict[str, Any]:
    from pymodbus.client import ModbusTcpClient

    from edge.gateways.modbus import BLOCK_SIZE, decode_block

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
    deadline = time.monotonic() + 60
    while not client.connect():
        if time.monotonic() > deadline:
            raise TimeoutError("the Modbus gateway does not listen")
        time.sleep(0.3)
    try:
        time.sleep(warmup)
        lat: list[float] = []
        seqs: list[int] = []
        sampler = _ProcSampler(pid).start()
        t0 = time.monotonic()
        last = -1
        while time.monotonic() - t0 < seconds:
            rr = client.read_holding_registers(0, count=BLOCK_SIZE, device_id=1)
            now = time.time()
            values = decode_block(list(rr.registers))
            if values["sequence"] != last:
                if last >= 0:
                    lat.append((now - values["result_time"]) * 1000)
                    seqs.append(values["sequence"])
                last = values["sequence"]
            time.sleep(poll_s)
        window = time.monotonic() - t0
        usage = sampler.stop()
    finally:
        client.close()
    return {
        "results": len(seqs),
        "results_per_s": len(seqs) / window,
        "daemon_results_per_s": (seqs[-1] - seqs[0] + 1) / window if seqs else 0.0,
        "not_seen": _gaps(seqs),
        **_latency(lat),
        **usage,
    }


# ---------------------------------------------------------------------------------------------- main


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fps", type=float, default=30.0, help="the replay's rate (results/s)")
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement window per gateway")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--security", choices=("sign_encrypt", "none"), default="sign_encrypt")
    ap.add_argument("--publishing-ms", type=float, default=0.0, help="the client's publishing interval")
    ap.add_argument("--modbus", action="store_true", help="also measure the Modbus gateway")
    ap.add_argument("--bundle", help="a bundle folder (default: the tests' tiny ONNX bundle)")
    ap.add_argument("--images", help="a folder of part images (default: generated parts)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gateway"))
    args = ap.parse_args()
    for noisy in ("asyncua", "pymodbus"):  # the clients' session and reconnect chatter
        logging.getLogger(noisy).setLevel(logging.ERROR)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "cpu": _cpu_model(),
        "fps": args.fps,
        "seconds": args.seconds,
        "security": args.security,
        "publishing_ms": args.publishing_ms,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp_s:
        tmp = Path(tmp_s)
        if args.bundle and args.images:
            bundle, parts = Path(args.bundle), Path(args.images)
        else:
            from edge_support import make_tiny_bundle, write_parts

            bundle = make_tiny_bundle(tmp / "bundle").path
            parts = tmp / "parts"
            write_parts(parts, 30, defect_every=3)
        result["bundle"] = "tiny test bundle" if not args.bundle else str(bundle)
        result["images"] = len(_images(parts))
        certs, trusted = tmp / "certs", tmp / "trusted"
        trusted.mkdir()
        from edge.gateways.opcua import make_cert

        make_cert(certs, "server", hostnames=["127.0.0.1", "localhost"])
        make_cert(certs, "bench", client=True)
        (trusted / "bench_cert.der").write_bytes((certs / "bench_cert.der").read_bytes())
        endpoint = f"opc.tcp://127.0.0.1:{_port()}/masf/"
        modbus_port = _port()
        doc = {
            "line": "bench",
            "cameras": [
                {
                    "name": "cam1",
                    "bundle": str(bundle),
                    "mode": "free_run",
                    "source": {"kind": "folder", "path": str(parts), "fps": args.fps, "loop": True},
                }
            ],
            "publish": {"address": f"tcp://127.0.0.1:{_port()}"},
            "control": {"address": f"tcp://127.0.0.1:{_port()}"},
            "metrics": {"enabled": False},
            "gateways": {
                "opcua": {
                    "enabled": True,
                    "endpoint": endpoint,
                    "security": args.security,
                    "allow_anonymous": args.security == "none",
                    "certificate": str(certs / "server_cert.der"),
                    "private_key": str(certs / "server_key.pem"),
                    "trusted_clients": str(trusted),
                },
                "modbus": {"enabled": True, "host": "127.0.0.1", "port": modbus_port},
            },
        }
        cfg = tmp / "bench.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        edge = [sys.executable, "-m", "edge"]
        daemon = _start([*edge, "run", "--config", str(cfg), "--log-level", "warning"], tmp / "daemon.log")
        try:
            _wait_ready(doc["control"]["address"])  # type: ignore[index]
            print(f"OPC UA gateway, {args.fps:g} results/s, {args.seconds:g} s ...", flush=True)
            gw = _start([*edge, "gateway", "opcua", "--config", str(cfg)], tmp / "opcua.log")
            try:
                result["opcua"] = asyncio.run(
                    _opcua_client(
                        endpoint,
                        certs if args.security == "sign_encrypt" else None,
                        args.publishing_ms,
                        args.warmup,
                        args.seconds,
                        gw.pid,
                    )
                )
            finally:
                result["opcua_exit_code"] = _stop(gw)
            print(json.dumps(result["opcua"]), flush=True)
            if args.modbus:
                print(f"Modbus gateway, {args.fps:g} results/s, {args.seconds:g} s ...", flush=True)
                gw = _start([*edge, "gateway", "modbus", "--config", str(cfg)], tmp / "modbus.log")
                try:
                    result["modbus"] = _modbus_client(modbus_port, args.warmup, args.seconds, gw.pid)
                finally:
                    result["modbus_exit_code"] = _stop(gw)
                print(json.dumps(result["modbus"]), flush=True)
        finally:
            _stop(daemon)
    (out / "gateway_bench.json").write_text(json.dumps(result, indent=2))
    table = _table(result)
    (out / "gateway_bench.md").write_text(table)
    print(table)
    return 0


def _table(r: dict[str, Any]) -> str:
    rows = [
        "| gateway | client | results/s | not seen | latency median ms | p99 ms | max ms | CPU % (1 core) "
        "| RSS MB mean / peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    clients = {
        "opcua": f"asyncua subscription ({r['security']}, publishing {r['publishing_ms']:g} ms)",
        "modbus": "pymodbus, polls the block every 10 ms",
    }
    for key, name in (("opcua", "OPC UA"), ("modbus", "Modbus TCP")):
        d = r.get(key)
        if not d:
            continue
        rows.append(
            f"| {name} | {clients[key]} | {d['results_per_s']:.1f} | {d['not_seen']} | "
            f"{d['latency_ms_median']:.2f} | {d['latency_ms_p99']:.2f} | {d['latency_ms_max']:.2f} | "
            f"{d['cpu_percent']:.1f} | {d['rss_mb_mean']:.0f} / {d['rss_mb_peak']:.0f} |"
        )
    return (
        "\n".join(rows)
        + f"\n\nDaemon on a folder replay at {r['fps']:g} frames/s ({r['bundle']}), {r['seconds']:g} s per "
        f"gateway; {r['machine']}; {r['cpu']}; {r['date']}.\n"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
