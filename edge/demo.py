"""``masf-edge demo`` (what ``make demo`` runs): teach the box a part, then inspect a line of parts.

1. Data: a generated set of machined parts with scratches, spots and cracks (``masf-train synth``), or
   any MVTec-layout folder (``--data DIR``).
2. Train with the fast lite0 configuration (``configs/train/masf_lite0_demo.yaml``) and export a bundle
   (``masf-train fit``, ``masf-engine export``: subprocesses, so this module never imports torch).
3. Lay the test images out as a replay folder (good and defective parts interleaved, in name order).
4. Start the daemon (``masf-edge run`` on ``configs/edge/demo.yaml``, ONNX Runtime on the CPU) on free
   local ports, subscribe, print one line per result, write heatmap overlays, stop it with SIGTERM.
5. Print a summary against the ground truth: PASS / FAIL / UNKNOWN counts, escapes, false rejects,
   latency, and how long each step took.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.subscriber import Subscriber, format_result
from engines.pixels import list_images

__all__ = ["add_demo_arguments", "run_demo"]

_REPO = Path(__file__).resolve().parents[1]


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="working folder (default runs/demo)")
    parser.add_argument("--data", default=None, help="an MVTec-layout folder instead of generated parts")
    parser.add_argument(
        "--train-config",
        default=str(_REPO / "configs" / "train" / "masf_lite0_demo.yaml"),
        help="training config",
    )
    parser.add_argument(
        "--edge-config", default=str(_REPO / "configs" / "edge" / "demo.yaml"), help="line config to run"
    )
    parser.add_argument("--limit", type=int, default=0, help="replay at most this many test images (0: all)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _step(name: str, cmd: list[str], log: Path, timings: dict[str, float]) -> None:
    print(
        f"[demo] {name}: {' '.join(cmd[2:]) if cmd[:2] == [sys.executable, '-m'] else ' '.join(cmd)}",
        flush=True,
    )
    t0 = time.monotonic()
    with open(log, "a", encoding="utf-8") as fh:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, cwd=_REPO)
    timings[name] = time.monotonic() - t0
    for line in res.stdout.strip().splitlines():
        print(f"         {line}", flush=True)
    if res.returncode != 0:
        tail = log.read_text(encoding="utf-8").strip().splitlines()[-1:] or ["(no output)"]
        raise EdgeError(f"demo step '{name}' failed (exit {res.returncode}): {tail[0]} (log: {log})")


def _replay(data: Path, out: Path, limit: int) -> list[tuple[str, str, Path]]:
    """Copy DATA/test into ``out`` as ``0000_<type>_<stem>.png``..., types interleaved; returns
    ``(file name, type, mask path)`` in replay order."""
    test = data / "test"
    if not test.is_dir():
        raise EdgeError(f"{data} has no test/ folder: use an MVTec-layout folder (test/good, test/<defect>)")
    by_type = {d.name: list_images(d) for d in sorted(test.iterdir()) if d.is_dir()}
    order: list[tuple[str, Path]] = []
    while any(by_type.values()):
        for kind in sorted(by_type):
            if by_type[kind]:
                order.append((kind, by_type[kind].pop(0)))
    if limit > 0:
        order = order[:limit]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    items = []
    for i, (kind, src) in enumerate(order):
        name = f"{i:04d}_{kind}_{src.stem}{src.suffix.lower()}"
        shutil.copyfile(src, out / name)
        items.append((name, kind, data / "ground_truth" / kind / f"{src.stem}_mask.png"))
    return items


def _overlay(image_path: Path, heat: np.ndarray | None, header: dict[str, Any], dst: Path) -> None:
    img = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if img is None:
        return
    if heat is not None:
        colour = cv2.applyColorMap(cv2.resize(heat, (img.shape[1], img.shape[0])), cv2.COLORMAP_JET)
        img = cv2.addWeighted(img, 0.55, colour, 0.45, 0)
    colour_box = {"PASS": (0, 200, 0), "FAIL": (0, 0, 255)}.get(header["verdict"], (0, 200, 255))
    for r in header.get("regions", []):
        x, y, w, h = r["bbox"]
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), colour_box, 1)
    cv2.putText(img, header["verdict"], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour_box, 1, cv2.LINE_AA)
    cv2.imwrite(str(dst), img)


def run_demo(args: argparse.Namespace) -> int:
    """Run the whole demo; returns 0 when every part got a verdict and the daemon stopped cleanly."""
    t_start = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    log.write_text("", encoding="utf-8")
    timings: dict[str, float] = {}
    py = sys.executable
    if args.data:
        data = Path(args.data).resolve()
    else:
        data = out / "data"
        if data.exists():
            shutil.rmtree(data)
        _step("generate parts", [py, "-m", "trainer", "synth", "--out", str(data)], log, timings)
    run_dir, bundle = out / "run", out / "bundle"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    fit = [
        py,
        "-m",
        "trainer",
        "-q",
        "fit",
        "--config",
        args.train_config,
        "--data",
        str(data),
        "--out",
        str(run_dir),
    ]
    _step("train", fit, log, timings)
    export = [py, "-m", "engines", "export", "--run", str(run_dir), "--out", str(bundle), "--overwrite"]
    _step("export", export, log, timings)
    items = _replay(data, out / "replay", args.limit)
    labels = {name: kind for name, kind, _ in items}
    overlays = out / "overlays"
    if overlays.exists():
        shutil.rmtree(overlays)
    overlays.mkdir()
    pub, ctl = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    sets = [
        f"cameras.0.bundle={bundle}",
        f"cameras.0.source.path={out / 'replay'}",
        f"evidence.dir={out / 'evidence'}",
        f"publish.address={pub}",
        f"control.address={ctl}",
        f"metrics.port={_free_port()}",
    ]
    cmd = [py, "-m", "edge", "run", "--config", args.edge_config]
    for s in sets:
        cmd += ["--set", s]
    print(
        f"[demo] inspect: masf-edge run --config {args.edge_config} (replay of {len(items)} parts)",
        flush=True,
    )
    t0 = time.monotonic()
    daemon_log = open(out / "daemon.log", "w", encoding="utf-8")  # noqa: SIM115  # closed below
    proc = subprocess.Popen(cmd, stdout=daemon_log, stderr=subprocess.STDOUT, cwd=_REPO, env={**os.environ})
    sub = Subscriber(pub)
    results: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120.0
        while len(results) < len(items) and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EdgeError(f"the daemon exited with status {proc.returncode}: see {out / 'daemon.log'}")
            msg = sub.recv(timeout=0.5)
            if msg is None or not msg.is_result:
                continue
            results.append(msg.header)
            name = msg.header["acquisition_id"]
            truth = labels.get(name, "?")
            print(f"  {format_result(msg)}  truth={'good' if truth == 'good' else truth}", flush=True)
            _overlay(
                out / "replay" / name, msg.heatmap_image(), msg.header, overlays / f"{Path(name).stem}.jpg"
            )
        timings["inspect"] = time.monotonic() - t0
    finally:
        sub.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        daemon_log.close()
    return _summary(
        results, labels, proc.returncode, gaps=sub.missed, timings=timings, out=out, t_start=t_start
    )


def _summary(
    results: list[dict[str, Any]],
    labels: dict[str, str],
    exit_code: int | None,
    gaps: int,
    timings: dict[str, float],
    out: Path,
    t_start: float,
) -> int:
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("PASS", "FAIL", "UNKNOWN")}
    defective = [r for r in results if labels.get(r["acquisition_id"]) not in ("good", None)]
    good = [r for r in results if labels.get(r["acquisition_id"]) == "good"]
    escapes = [r["acquisition_id"] for r in defective if r["verdict"] == "PASS"]
    false_rejects = [r["acquisition_id"] for r in good if r["verdict"] == "FAIL"]
    lat = np.array([r["latency_ms"]["total"] for r in results if r["verdict"] != "UNKNOWN"], dtype=float)
    missing = sorted(set(labels) - {r["acquisition_id"] for r in results})
    summary = {
        "parts": len(labels),
        "results": len(results),
        "counts": counts,
        "defective": len(defective),
        "good": len(good),
        "escapes": escapes,
        "false_rejects": false_rejects,
        "missing": missing,
        "sequence_gaps": gaps,
        "latency_ms_median": float(np.median(lat)) if lat.size else None,
        "latency_ms_p99": float(np.percentile(lat, 99)) if lat.size else None,
        "daemon_exit_code": exit_code,
        "seconds": {
            **{k: round(v, 1) for k, v in timings.items()},
            "total": round(time.monotonic() - t_start, 1),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(
        f"[demo] summary: {len(results)}/{len(labels)} parts inspected: PASS {counts['PASS']}, FAIL "
        f"{counts['FAIL']}, UNKNOWN {counts['UNKNOWN']}; {len(defective)} defective: {len(escapes)} escaped; "
        f"{len(good)} good: {len(false_rejects)} rejected"
    )
    if lat.size:
        med, p99 = np.median(lat), np.percentile(lat, 99)
        print(f"[demo] latency frame-to-publish: median {med:.1f} ms, p99 {p99:.1f} ms")
    seconds = {**{k: round(v, 1) for k, v in timings.items()}, "total": round(time.monotonic() - t_start, 1)}
    print("[demo] time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"[demo] overlays in {out}/overlays, evidence in {out}/evidence, summary in {out}/summary.json")
    ok = not missing and gaps == 0 and exit_code == 0
    if not ok:
        print(
            f"[demo] problem: {len(missing)} part(s) without a result, {gaps} lost, daemon exit {exit_code}"
        )
    return 0 if ok else 1
