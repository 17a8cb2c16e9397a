"""On-device retraining benchmark: a new part from 50 good images while another camera keeps inspecting.

    .venv/bin/python benchmarks/retrain_bench.py --data ../shared/data/mvtec_ad/bottle \\
        --inspect-bundle runs/demo/bundle --inspect-images runs/demo/replay [--n-train 50]

One run, through the real daemon and its real training job (``train`` over the control socket):

1. a line with a model store and camera ``other`` inspecting a replay as fast as it is scored (the
   ``--inspect-bundle`` on ``--inspect-images``), and camera ``new`` of the part being taught;
2. the first ``--n-train`` images of ``DATA/train/good`` imported into the store (``import``);
3. the inspection rate of ``other`` over ``--window`` seconds before training, then during the training
   job (``configs/train/masf_lite2_fast.yaml``, niced worker, ``store.threads`` threads);
4. the job's wall time (from ``train`` to done), the worker processes' peak RSS (sampled every 0.5 s);
5. the new version's quality on ``DATA/test`` (image AUROC, pixel AUROC, AUPRO) scored with ONNX Runtime
   from the bundle in the store, next to the full configuration's numbers given with ``--full``.

Writes ``retrain_bench.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
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

from edge.subscriber import ControlClient, Subscriber  # noqa: E402


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_rss_mb(pid: int) -> float:
    """Total RSS (MB) of the descendants of ``pid``."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    kids = {pid}
    changed = True
    while changed:
        changed = False
        for p, pp, _ in rows:
            if pp in kids and p not in kids:
                kids.add(p)
                changed = True
    return sum(rss for p, _, rss in rows if p in kids and p != pid) / 1024


class _SeqTracker:
    """The newest result sequence number of one camera, from a subscriber that is drained often. Rates
    come from sequence numbers, so a reader that falls behind or misses messages does not change them."""

    def __init__(self, sub: Subscriber, camera: str) -> None:
        self.sub, self.camera = sub, camera
        self.seq, self.t = -1, time.monotonic()

    def drain(self, wait: float = 0.0) -> tuple[int, float]:
        deadline = time.monotonic() + wait
        while True:
            msg = self.sub.recv(timeout=0.01)
            if msg is not None and msg.camera == self.camera and msg.is_result:
                self.seq, self.t = msg.seq, time.monotonic()
            if msg is None and time.monotonic() >= deadline and self.seq >= 0:
                return self.seq, self.t

    def rate(self, seconds: float) -> float:
        s0, t0 = self.drain(wait=1.0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.drain()
            time.sleep(0.1)
        s1, t1 = self.drain()
        return (s1 - s0) / (t1 - t0)


def quality(bundle: Path, data: Path) -> dict[str, float]:
    from engines.backends import get_backend
    from trainer.data import read_image, scan_test
    from trainer.data.io import read_mask
    from trainer.evaluate.metrics import pixel_metrics, roc_auc

    backend = get_backend("onnxruntime").from_bundle(bundle)
    samples = scan_test(data)
    scores, labels, maps, masks = [], [], [], []
    for s in samples:
        img = read_image(s.path)
        out = backend.infer([img])
        scores.append(float(out.score[0]))
        labels.append(int(s.label))
        amap = out.geometries[0].to_original(out.anomaly_map[0])
        maps.append(amap)
        masks.append(read_mask(s.mask_path, amap.shape) if s.mask_path is not None else None)
    px = pixel_metrics(maps, masks)
    return {
        "image_auroc": roc_auc(np.array(scores), np.array(labels)),
        "pixel_auroc": float(px["pixel_auroc"]),
        "aupro": float(px["aupro"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="MVTec-layout part (train/good, test, ground_truth)")
    ap.add_argument("--inspect-bundle", default=str(REPO / "runs" / "demo" / "bundle"))
    ap.add_argument("--inspect-images", default=str(REPO / "runs" / "demo" / "replay"))
    ap.add_argument("--n-train", type=int, default=50)
    ap.add_argument(
        "--window", type=float, default=30.0, help="seconds of the rate measurement before training"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=10, help="store.nice of the worker")
    ap.add_argument(
        "--other-fps",
        type=float,
        default=0.0,
        help="the other camera's frame rate (0: as fast as it is scored)",
    )
    ap.add_argument("--full", default=None, help="JSON of the full configuration's metrics to compare with")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrain"))
    args = ap.parse_args()
    data = Path(args.data).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="retrain-bench-") as tmp_s:
        tmp = Path(tmp_s)
        usb = tmp / "usb"
        usb.mkdir()
        goods = sorted((data / "train" / "good").iterdir())[: args.n_train]
        for p in goods:
            os.symlink(p, usb / p.name)
        pub, ctl_addr = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
        doc = {
            "line": "bench",
            "cameras": [
                {
                    "name": "other",
                    "bundle": str(Path(args.inspect_bundle).resolve()),
                    "mode": "triggered",
                    "source": {
                        "kind": "folder",
                        "path": str(Path(args.inspect_images).resolve()),
                        "loop": True,
                        "fps": args.other_fps,
                    },
                }
            ],
            "publish": {"address": pub},
            "control": {"address": ctl_addr},
            "metrics": {"enabled": False},
            "store": {
                "dir": str(tmp / "store"),
                "threads": args.threads,
                "nice": args.nice,
                "shadow_frames": 0,
                "min_images": 20,
            },
        }
        (tmp / "line.yaml").write_text(yaml.safe_dump(doc))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "run",
                "--config",
                str(tmp / "line.yaml"),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
        )
        sub = Subscriber(pub)
        ctl = ControlClient(ctl_addr, timeout_s=60)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if ctl.request("status").get("state") == "running":
                        break
                except Exception:
                    time.sleep(0.5)
            imported = ctl.request("import", part="new", dir=str(usb))
            assert imported["ok"], imported
            tracker = _SeqTracker(sub, "other")
            before = tracker.rate(args.window)
            s0, ts0 = tracker.drain()
            t0 = time.monotonic()
            job = ctl.request("train", part="new")
            assert job["ok"], job
            peak, state = 0.0, {}
            while True:
                tracker.drain(wait=0.5)
                peak = max(peak, _children_rss_mb(proc.pid))
                state = ctl.request("status")["jobs"][job["job"]]
                if state["finished"] is not None:
                    break
            wall = time.monotonic() - t0
            s1, ts1 = tracker.drain()
            during = (s1 - s0) / (ts1 - ts0)
        finally:
            ctl.close()
            sub.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        if state.get("state") != "done":
            print(
                f"error: the training job ended {state.get('state')}: {state.get('error')}", file=sys.stderr
            )
            return 1
        version_dir = tmp / "store" / "parts" / "new" / state["version"]
        metrics = quality(version_dir, data)
    full = json.loads(Path(args.full).read_text()) if args.full else None
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "data": str(data),
        "n_train": len(goods),
        "threads": args.threads,
        "nice": args.nice,
        "other_camera_source_fps": args.other_fps,
        "retrain_wall_s": round(wall, 1),
        "worker_peak_rss_mb": round(peak, 1),
        "other_camera_fps_before": round(before, 2),
        "other_camera_fps_during": round(during, 2),
        "fps_drop": round(1 - during / before, 3) if before else None,
        "validation": state.get("validation"),
        "quality": metrics,
        "full": full,
    }
    (out / "retrain_bench.json").write_text(json.dumps(result, indent=2))
    q = metrics
    print(
        "| n train | retrain wall s | worker peak RSS MB | other camera fps before | during | drop "
        "| image AUROC | pixel AUROC | AUPRO |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {len(goods)} | {wall:.0f} | {peak:.0f} | {before:.2f} | {during:.2f} "
        f"| {100 * result['fps_drop']:.1f} % | "
        f"{q['image_auroc']:.4f} | {q['pixel_auroc']:.4f} | {q['aupro']:.4f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
