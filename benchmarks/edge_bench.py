"""Edge daemon benchmark: throughput and latency through the daemon vs the bare backend, in one run.

    .venv/bin/python benchmarks/edge_bench.py --bundle runs/demo/bundle --images runs/demo/replay \\
        [--frames 10000] [--bare-frames 2000] [--out benchmarks/results/edge]

What it measures, on the same frames (the images of ``--images``, repeated in order up to ``--frames``):

1. **bare backend**: ``OrtBackend.infer([frame])`` one frame at a time on decoded frames (preprocessing
   included, as the daemon does it), single process: frames/s and per-frame latency;
2. **daemon, one camera**: ``masf-edge run`` on a triggered folder replay of ``--frames`` files (links to
   the images), one subscriber: frames/s (results over the time between the first and the last result),
   frame-to-publish latency (the header's ``latency_ms.total``: acquisition to hand-off to the socket)
   median and p99, the subscriber's receive latency, results lost (``--frames`` minus results received,
   plus sequence gaps), the daemon's peak RSS (``VmHWM``);
3. **daemon, two cameras sharing one bundle** (one model, one inference thread, batches across them):
   the same, ``--frames`` split over the two cameras.

The overhead target: daemon frames/s >= 0.9 x bare frames/s. Writes ``edge_bench.json`` and a Markdown
table (``edge_bench.md``) to ``--out``. Torch-free (the daemon's own dependencies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.subscriber import Subscriber  # noqa: E402
from engines.backends import get_backend  # noqa: E402
from engines.pixels import list_images, read_image_file  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bare(bundle: Path, images: list[Path], n: int, decode: bool = False) -> dict[str, Any]:
    """The backend alone, one frame at a time; with ``decode``, each frame is read from its file first (as
    the daemon's folder replay does), else frames are decoded once beforehand."""
    frames = [read_image_file(p) for p in images]
    backend = get_backend("onnxruntime").from_bundle(bundle)
    backend.infer([frames[0]])  # warm-up, as the daemon does before READY
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        frame = read_image_file(images[i % len(images)]) if decode else frames[i % len(frames)]
        backend.infer([frame])
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    backend.close()
    ms = np.array(lat) * 1000
    return {
        "frames": n,
        "fps": n / total,
        "latency_ms_median": float(np.median(ms)),
        "latency_ms_p99": float(np.percentile(ms, 99)),
    }


def _replay_dir(root: Path, images: list[Path], n: int) -> Path:
    folder = root / f"replay_{n}_{len(list(root.iterdir()))}"
    folder.mkdir()
    for i in range(n):
        os.symlink(
            images[i % len(images)].resolve(), folder / f"{i:06d}{images[i % len(images)].suffix.lower()}"
        )
    return folder


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def daemon(
    bundle: Path, images: list[Path], n: int, cameras: int, work: Path, fps: float = 0.0
) -> dict[str, Any]:
    per_cam = n // cameras
    pub, ctl = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    doc = {
        "line": "bench",
        "cameras": [
            {
                "name": f"cam{c + 1}",
                "bundle": str(bundle),
                "mode": "triggered",
                "source": {"kind": "folder", "path": str(_replay_dir(work, images, per_cam)), "fps": fps},
            }
            for c in range(cameras)
        ],
        "publish": {"address": pub, "heatmaps": "always", "wait_for_subscribers": 1, "sndhwm": 100000},
        "control": {"address": ctl},
        "metrics": {"enabled": False},
    }
    cfg = work / f"bench_{cameras}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    sub = Subscriber(pub, rcvhwm=100000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(cfg), "--log-level", "warning"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    received, totals, recv_lat, t_first, t_last = 0, [], [], None, None
    try:
        deadline = time.monotonic() + 3600
        quiet_since = time.monotonic()
        while received < per_cam * cameras and time.monotonic() < deadline:
            msg = sub.recv(timeout=1.0)
            now = time.time()
            if msg is None:
                if t_first is not None and time.monotonic() - quiet_since > 30:
                    break  # nothing for 30 s after results started: the rest is lost
                continue
            if not msg.is_result:
                continue
            quiet_since = time.monotonic()
            received += 1
            t_first = t_first or now
            t_last = now
            totals.append(msg.header["latency_ms"]["total"])
            recv_lat.append((now - msg.header["timestamps"]["capture"]) * 1000)
        peak = _vm_hwm_mb(proc.pid)
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    tot = np.array(totals)
    span = (t_last or 0) - (t_first or 0)
    return {
        "cameras": cameras,
        "source_fps": fps,
        "frames": per_cam * cameras,
        "results": received,
        "lost": per_cam * cameras - received + sub.missed,
        "sequence_gaps": len(sub.gaps),
        "fps": (received - 1) / span if span > 0 else float("nan"),
        "latency_ms_median": float(np.median(tot)),
        "latency_ms_p99": float(np.percentile(tot, 99)),
        "receive_latency_ms_median": float(np.median(recv_lat)),
        "receive_latency_ms_p99": float(np.percentile(recv_lat, 99)),
        "peak_rss_mb": peak,
        "exit_code": proc.returncode,
        "stderr_tail": err.strip().splitlines()[-3:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=str(REPO / "runs" / "demo" / "bundle"))
    ap.add_argument("--images", default=str(REPO / "runs" / "demo" / "replay"))
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--bare-frames", type=int, default=2000)
    ap.add_argument("--paced-frames", type=int, default=1000, help="frames of the latency run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "edge"))
    args = ap.parse_args()
    bundle, images = Path(args.bundle), list_images(Path(args.images))
    if not (bundle / "manifest.json").is_file() or not images:
        print(
            f"error: need a bundle ({bundle}) and images ({args.images}): run `make demo` first",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "bundle": str(bundle),
        "images": len(images),
        "image_size": list(read_image_file(images[0]).shape),
    }
    print(f"bare backend, {args.bare_frames} frames ...", flush=True)
    result["bare"] = bare(bundle, images, args.bare_frames)
    print(json.dumps(result["bare"]), flush=True)
    result["bare_decode"] = bare(bundle, images, args.bare_frames, decode=True)
    print(json.dumps(result["bare_decode"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        for cams in (1, 2):
            print(f"daemon, {cams} camera(s), {args.frames} frames ...", flush=True)
            result[f"daemon_{cams}"] = daemon(bundle, images, args.frames, cams, Path(tmp))
            print(json.dumps(result[f"daemon_{cams}"]), flush=True)
        fps = round(0.5 * result["bare"]["fps"], 1)
        print(f"daemon, 1 camera at {fps} frames/s (half the bare rate), {args.paced_frames} frames ...")
        result["daemon_paced"] = daemon(bundle, images, args.paced_frames, 1, Path(tmp), fps=fps)
        print(json.dumps(result["daemon_paced"]), flush=True)
    # the bare rate again after the daemon runs: the machine's load may have changed meanwhile
    result["bare_after"] = bare(bundle, images, args.bare_frames)
    print(json.dumps(result["bare_after"]), flush=True)
    d1, b = result["daemon_1"], result["bare"]
    bare_fps = (result["bare"]["fps"] + result["bare_after"]["fps"]) / 2
    result["overhead"] = 1 - d1["fps"] / bare_fps
    result["overhead_vs_bare_with_decode"] = 1 - d1["fps"] / result["bare_decode"]["fps"]
    (out / "edge_bench.json").write_text(json.dumps(result, indent=2))
    head = (
        "| run | frames | results | lost | frames/s | latency median ms | latency p99 ms | p99/median "
        "| peak RSS MB |"
    )

    def row(name: str, d: dict[str, Any], results: str, lost: str, rss: str) -> str:
        med, p99 = d["latency_ms_median"], d["latency_ms_p99"]
        return (
            f"| {name} | {d['frames']} | {results} | {lost} | {d['fps']:.1f} | {med:.1f} | {p99:.1f} | "
            f"{p99 / med:.2f} | {rss} |"
        )

    rows = [
        head,
        "|---|---|---|---|---|---|---|---|---|",
        row("bare backend (ORT, batch 1), before the daemon runs", b, "-", "-", "-"),
        row("bare backend, after the daemon runs", result["bare_after"], "-", "-", "-"),
        row("bare backend reading each frame from its file", result["bare_decode"], "-", "-", "-"),
    ]
    names = {
        "daemon_1": "daemon, 1 camera, replay as fast as it is scored",
        "daemon_2": "daemon, 2 cameras sharing one bundle, replay",
        "daemon_paced": f"daemon, 1 camera paced at {result['daemon_paced']['source_fps']} frames/s",
    }
    for key, name in names.items():
        d = result[key]
        rows.append(row(name, d, str(d["results"]), str(d["lost"]), f"{d['peak_rss_mb']:.0f}"))
    table = "\n".join(rows) + (
        f"\n\nDaemon overhead, 1 camera vs the mean bare rate: {100 * result['overhead']:.1f} %; vs the bare "
        f"backend reading the same files: {100 * result['overhead_vs_bare_with_decode']:.1f} %\n"
    )
    (out / "edge_bench.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
