"""Long thin parts: tiled inference vs one letterboxed frame, on a generated 16:1 line-scan fabric set.

We have no real long-part data set here, so this benchmark *generates* one (seeded, into ``--out``):
64x1024 grayscale strips of a woven texture (warp and weft threads with per-thread brightness, phase
jitter, sensor noise and a slow illumination drift along the strip), and four defect kinds drawn by this
script only (the trainer's synthetic defects, which its per-part selection uses, are a different
generator): a broken weft thread (a 2-px band that loses its texture over 30-120 px), a knot (a bright
4-8 px blob), a thin scratch (1 px wide, 40-150 px long, slightly slanted, darker) and a faint stain
(-15 grey levels, 20-40 px, soft edges). Masks mark the defect pixels.

The candidates are fixed here, before any run, and both are reported: the same training config
(``--config``, default the on-device fast profile) with ``data.tiling: off`` (one frame: the auto
size keeps the aspect ratio up to 8:1 and letterboxes the rest) and with ``data.tiling: on`` (the
frame at native resolution, 64x256 tiles). Nothing is chosen on the test images: the product rule
(``data.tiling: auto``, tiled above 3:1) was fixed before this benchmark existed.

    python benchmarks/long_parts.py --out /tmp/long_parts --markdown /tmp/long_parts/table.md
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "train" / "masf_lite2_fast.yaml"
HEIGHT, WIDTH = 64, 1024
KINDS = ("broken_thread", "knot", "scratch", "stain")
CANDIDATES = {"one frame (letterbox)": {"data.tiling": "off"}, "tiled (native)": {"data.tiling": "on"}}

log = logging.getLogger("long_parts")


def fabric(rng: np.random.Generator) -> np.ndarray:
    """One 64x1024 woven strip, uint8."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    pw, ph = rng.uniform(5.5, 6.5), rng.uniform(4.5, 5.5)
    shift = rng.uniform(0, 50)
    warp_gain = rng.normal(1.0, 0.08, size=int(WIDTH / pw) + 3)
    weft_gain = rng.normal(1.0, 0.08, size=int(HEIGHT / ph) + 3)
    warp = np.sin(2 * np.pi * (x + shift) / pw) * warp_gain[((x + shift) / pw).astype(int) % len(warp_gain)]
    weft = np.sin(2 * np.pi * y / ph) * weft_gain[(y / ph).astype(int) % len(weft_gain)]
    texture = 118 + 22 * warp * np.sign(weft) + 10 * weft
    drift = 10 * np.sin(2 * np.pi * (x / WIDTH) * rng.uniform(0.3, 1.0) + rng.uniform(0, 6.3))
    img = texture + drift + rng.normal(0, 5, size=texture.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def add_defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind``; returns (image, mask uint8 0/255)."""
    out = img.astype(np.float32)
    mask = np.zeros(img.shape, np.uint8)
    x0 = int(rng.integers(60, WIDTH - 200))
    if kind == "broken_thread":
        y0, length = int(rng.integers(8, HEIGHT - 10)), int(rng.integers(30, 120))
        band = out[y0 : y0 + 2, x0 : x0 + length]
        out[y0 : y0 + 2, x0 : x0 + length] = band.mean() + rng.normal(0, 2, band.shape)
        mask[y0 : y0 + 2, x0 : x0 + length] = 255
    elif kind == "knot":
        cy, cx = int(rng.integers(8, HEIGHT - 8)), x0
        r = (int(rng.integers(2, 5)), int(rng.integers(2, 5)))
        cv2.ellipse(mask, (cx, cy), r, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        out[mask > 0] += 50
    elif kind == "scratch":
        y0, length = int(rng.integers(10, HEIGHT - 10)), int(rng.integers(40, 150))
        y1 = int(np.clip(y0 + rng.integers(-6, 7), 2, HEIGHT - 3))
        cv2.line(mask, (x0, y0), (x0 + length, y1), 255, 1)
        out[mask > 0] -= 35
    elif kind == "stain":
        cy, cx, r = int(rng.integers(16, HEIGHT - 16)), x0, int(rng.integers(10, 20))
        blob = np.zeros(img.shape, np.float32)
        cv2.circle(blob, (cx, cy), r, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), r / 3)
        out -= 15 * blob / max(float(blob.max()), 1e-6)
        mask[blob > 0.5 * blob.max()] = 255
    else:
        raise ValueError(kind)
    return np.clip(out, 0, 255).astype(np.uint8), mask


def make_dataset(root: Path, n_train: int, n_good: int, n_defect: int, seed: int) -> Path:
    """Write the MVTec-layout strip set (skipped when it exists)."""
    if (root / "train" / "good").is_dir():
        return root
    rng = np.random.default_rng(seed)
    for folder in (
        "train/good",
        "test/good",
        *(f"test/{k}" for k in KINDS),
        *(f"ground_truth/{k}" for k in KINDS),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train" / "good" / f"{i:04d}.png"), fabric(rng))
    for i in range(n_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:04d}.png"), fabric(rng))
    for kind in KINDS:
        for i in range(n_defect):
            img, mask = add_defect(rng, fabric(rng), kind)
            cv2.imwrite(str(root / "test" / kind / f"{i:04d}.png"), img)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:04d}_mask.png"), mask)
    return root


def run_candidate(
    name: str, overrides: dict[str, Any], data: Path, out: Path, config: Path
) -> dict[str, Any]:
    from trainer.evaluate.runner import evaluate_run

    run_dir = out / "runs" / name.split(" ")[0]
    if not (run_dir / "run.json").is_file():
        cmd = [sys.executable, "-m", "trainer", "-q", "fit", "--config", str(config), "--data", str(data)]
        cmd += ["--out", str(run_dir)]
        for key, value in overrides.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        subprocess.run(cmd, check=True, cwd=REPO)
    doc = json.loads((run_dir / "run.json").read_text())
    res = evaluate_run(
        run_dir, data, json_out=out / f"{run_dir.name}.json", report_dir=out / f"report_{run_dir.name}"
    )
    spec = doc["preprocess"]
    tiles = spec.get("tiles")
    return {
        "candidate": name,
        "model_input": f"{spec['height']}x{spec['width']}",
        "frame": f"{tiles['frame_height']}x{tiles['frame_width']}"
        if tiles
        else f"{spec['height']}x{spec['width']}",
        "fit_s": doc["timing_s"]["total"],
        "mix": doc.get("fusion_selection", {}) and doc["fusion_selection"].get("cos_weight"),
        **{k: res[k] for k in ("image_auroc", "pixel_auroc", "aupro", "false_reject_rate", "escape_rate")},
        "per_defect": res.get("per_defect_image_auroc", {}),
        "seconds_per_image": res["seconds_per_image"],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| candidate | frame -> model input | image AUROC | pixel AUROC | AUPRO@0.3 | FRR @thr "
        "| escapes @thr | fit s | s/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['candidate']} | {r['frame']} -> {r['model_input']} | {r['image_auroc']:.4f} "
            f"| {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | {r['false_reject_rate']:.3f} "
            f"| {r['escape_rate']:.3f} | {r['fit_s']:.0f} | {r['seconds_per_image']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the generated data, runs and results"
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-good", type=int, default=40)
    parser.add_argument("--n-defect", type=int, default=20, help="test images per defect kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = datetime.now(timezone.utc)
    data = make_dataset(args.out / "data", args.n_train, args.n_good, args.n_defect, args.seed)
    rows = []
    for name, overrides in CANDIDATES.items():
        t0 = time.perf_counter()
        rows.append(run_candidate(name, overrides, data, args.out, args.config))
        log.info("%s: %s (%.0f s)", name, json.dumps(rows[-1]), time.perf_counter() - t0)
    cpu = platform.processor() or platform.machine()
    header = (
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {platform.node()} ({cpu}), Python "
        f"{platform.python_version()}; config {args.config.name}; generated data: {args.n_train} train/good "
        f"strips (20 % held out for calibration), {args.n_good} good + {len(KINDS)}x{args.n_defect} "
        f"defective test strips, seed {args.seed}\n\n"
    )
    table = header + markdown(rows)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
