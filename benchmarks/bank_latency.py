"""ORT batch-1 latency of the exported graph: today's MASF design vs the issue-11 bank designs, side by side.

Latency depends on the graph's shapes (input size, cues, bank sizes), not on the trained values, so the
graphs are built with the teacher's real weights, an untrained student and banks filled with random
prototypes of the given sizes (the sizes a fit gives: today 3 x 3000, also bottle's with the lite2
teacher; a joint 1 % bank 1,710 on bottle, 6,250 on magnetic tile with 20 % of train/good held out).
Each graph is exported exactly as ``masf-engine export`` does (gemm spectral mode) and timed in ONNX
Runtime at batch 1, the graphs alternating call by call, so a shared CPU slows them alike.

    .venv/bin/python benchmarks/bank_latency.py [--repeats 30] [--threads 2] [--runs RUN ...]
        [--reference-only] [--pairs]

``--runs``: also time the bundle graph of each fitted run (exported as ``masf-engine export`` does, at the
run's own input size, a frame with its part filling it); ``--reference-only``: of the designs above, only
today's full MASF, the reference every ratio is taken against; ``--pairs``: the runs are (base,
candidate) pairs, and a second table gives each candidate's paired ratio to its own base.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

# name -> (config, overrides, bank sizes, cue mix cos weight)
DESIGNS: dict[str, tuple[str, dict[str, Any], list[int], float]] = {
    "today: full MASF (student + 3 per-scale banks of 3000, k=3, mix 0.5/0.5)": (
        "masf_lite2.yaml",
        {"data.input_size": [256, 256], "backbone.name": "tf_efficientnet_lite0"},
        [3000, 3000, 3000],
        0.5,
    ),
    "lite2 teacher: full MASF (student + 3 per-scale banks of 3000, k=3, mix 0.5/0.5)": (
        "masf_lite2.yaml",
        {"data.input_size": [256, 256]},
        [3000, 3000, 3000],
        0.5,
    ),
    "today: bank only (3 per-scale banks of 3000, k=3)": (
        "masf_lite2.yaml",
        {"data.input_size": [256, 256], "backbone.name": "tf_efficientnet_lite0", "student.enabled": False},
        [3000, 3000, 3000],
        0.0,
    ),
    "joint bank 1+2, k=1, 1,710 prototypes (bottle)": ("patchcore_repro.yaml", {}, [1710], 0.0),
    "joint bank 1+2, k=1, 6,250 prototypes (magnetic tile)": ("patchcore_repro.yaml", {}, [6250], 0.0),
}


def build(
    config: str,
    overrides: dict[str, Any],
    sizes: list[int],
    cos_weight: float,
    out: Path,
    two_pass_selection: bool = False,
) -> Path:
    from engines.preprocess import PreprocessSpec
    from trainer.calibrate import calibrate
    from trainer.config import load_config
    from trainer.export.onnx import export_onnx
    from trainer.models.masf import create_masf
    from trainer.runs import RunInfo

    cfg = load_config(REPO / "configs" / "train" / config, overrides)
    model = create_masf(cfg, (256, 256)).eval()
    if two_pass_selection:
        # the reference is the graph of the code the issue measured: its kNN selection score took a
        # second elementwise pass (session 19 folded it into the product, as every other graph here has it)
        model.scorer.fused = False
        model.scorer.grouped = False
    gen = torch.Generator().manual_seed(0)
    for bank, n in zip(model.bank_list(), sizes, strict=True):
        bank.fill(torch.randn(n, bank.bank.shape[1], generator=gen))
    if model.use_student and model.use_bank:
        model.fusion.cos_weight, model.fusion.bank_weight = cos_weight, 1.0 - cos_weight
    model.fusion.stats_ready.fill_(True)
    spec = PreprocessSpec(height=256, width=256, resize=cfg.data.resize, color="rgb")
    cal = calibrate(np.linspace(0, 1, 10), np.linspace(0, 1, 10), 0.01, 10)
    info = RunInfo(cfg, spec, cal, {})
    path = out / f"{abs(hash((config, str(overrides), tuple(sizes))))}.onnx"
    export_onnx(model, info, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--runs", nargs="*", type=Path, default=[], help="fitted runs whose bundle graphs to time"
    )
    parser.add_argument("--reference-only", action="store_true", help="of the designs, only the reference")
    parser.add_argument(
        "--pairs",
        action="store_true",
        help="the runs are (base, candidate) pairs: each candidate vs its base",
    )
    args = parser.parse_args(argv)
    if args.pairs and len(args.runs) % 2:
        parser.error(f"--pairs needs (base, candidate) pairs of runs, got {len(args.runs)} runs")
    with tempfile.TemporaryDirectory(prefix="bank_latency_") as tmp:  # the graphs, removed at the end
        return _measure(args, Path(tmp))


def _measure(args: argparse.Namespace, tmp: Path) -> int:
    """Export the graphs into ``tmp``, time them and print the tables."""
    import onnxruntime as ort

    from trainer.export.onnx import export_onnx
    from trainer.runs import load_run

    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    rng = np.random.default_rng(0)

    def feeds_for(h: int, w: int) -> dict[str, np.ndarray]:
        return {
            "image": rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8),
            "valid": np.ones((1, 1, h, w), np.uint8),
        }

    sessions, feeds, run_names = {}, {}, []
    graphs: dict[Path, Path] = {}  # a run given twice is exported once: one graph, two sessions
    designs = list(DESIGNS.items())[: 1 if args.reference_only else None]
    for i, (name, (config, overrides, sizes, a)) in enumerate(designs):
        path = build(config, overrides, sizes, a, tmp, two_pass_selection=i == 0)  # the reference: first
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds[name] = feeds_for(256, 256)
    for run in args.runs:
        model, info = load_run(run)
        h, w = info.input_size
        name = f"run {run.name} ({h}x{w})"
        if name in sessions:  # the same folder name twice: two sessions, told apart
            name += f" #{run_names.count(name) + 1}"
        run_names.append(name)
        key = run.resolve()
        if key not in graphs:
            graphs[key] = tmp / f"run{len(graphs)}_{run.name}.onnx"
            export_onnx(model, info, graphs[key])
        sessions[name] = ort.InferenceSession(str(graphs[key]), opts, providers=["CPUExecutionProvider"])
        feeds[name] = feeds_for(h, w)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(5):
        for name, s in sessions.items():
            s.run(None, feeds[name])
    for _ in range(args.repeats):
        for name, s in sessions.items():
            time.sleep(0.005)
            t0 = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append((time.perf_counter() - t0) * 1000)
    print(
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}), "
        f"onnxruntime {ort.__version__}, {args.threads} threads, "
        f"{args.repeats} alternating calls per graph after 5 warm-up rounds\n"
    )
    base_times = np.asarray(next(iter(times.values())))
    base = float(np.median(base_times))
    print(
        "| graph (batch 1; the designs at 256x256) | ORT median ms | p90 ms | vs today's full MASF "
        "| paired ratio, median (95 % interval) |"
    )
    print("|---|---|---|---|---|")
    for name, t in times.items():
        med = float(np.median(t))
        ratio, low, high = paired_ratio(np.asarray(t), base_times, rng)
        print(
            f"| {name} | {med:.1f} | {float(np.percentile(t, 90)):.1f} | {med / base:.2f}x "
            f"| {ratio:.3f} ({low:.3f}-{high:.3f}) |"
        )
    if args.pairs:
        print("\n| candidate run | its base run | paired ratio, median (95 % interval) |\n|---|---|---|")
        for base_name, cand_name in zip(run_names[::2], run_names[1::2], strict=True):
            ratio, low, high = paired_ratio(np.asarray(times[cand_name]), np.asarray(times[base_name]), rng)
            print(f"| {cand_name} | {base_name} | {ratio:.3f} ({low:.3f}-{high:.3f}) |")
    return 0


def paired_ratio(
    times: np.ndarray, base: np.ndarray, rng: np.random.Generator, draws: int = 2000
) -> tuple[float, float, float]:
    """Median of the per-round ratios ``times / base`` (the calls of one round ran back to back, so a busy
    moment slows both) and its 95 % bootstrap interval over rounds."""
    ratios = times / base
    boot = np.median(rng.choice(ratios, (draws, ratios.size), replace=True), axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(np.median(ratios)), float(low), float(high)


if __name__ == "__main__":
    raise SystemExit(main())
