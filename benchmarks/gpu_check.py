"""GPU check (``make gpu-check``): TensorRT FP16 engine vs ONNX Runtime on the bottle test images.

For a machine with an NVIDIA GPU, TensorRT (``tensorrt`` >= 10, or ``tensorrt_rtx`` on an RTX GPU) and
pycuda (``pip install 'masf-edge[gpu]'``). Steps, each printed:

1. a small run on ``--data`` (``masf-train fit``, the full product configuration, ``--epochs`` epochs;
   reused if present);
2. its bundle (``masf-engine export``, parity on the data's test images);
3. the FP16 engine with the FP32 spectral island (``masf-engine build``, batch 1..``--max-batch``);
4. every test image through TensorRT and ONNX Runtime (CPU, FP32): max anomaly-map difference (absolute
   and relative to the map's range), max score difference, verdict agreement at the bundle threshold;
5. latency of the engine (preprocessed batches, ``EngineRunner.run``: copies in, execute, copies out) at
   batch 1 and 8: median and p99 over ``--iters`` runs, with the GPU name;
6. the ``plugin`` spectral mode: a plugin-mode bundle (``masf::CuFFTDFT`` nodes), its FP16 engine with the
   cuFFT plugin (``tensorrt.plugin``, CuPy), compared with ONNX Runtime on a ``dft``-mode bundle of the same
   run (same maths, native ONNX DFT), and its latency. Needs NVIDIA TensorRT >= 10.6 and CuPy
   (``pip install 'masf-edge[gpu]'``); with a TensorRT that has no ``tensorrt.plugin`` (TensorRT-RTX 1.7)
   the step is skipped and says why. ``--skip-plugin`` leaves it out.

    .venv/bin/python benchmarks/gpu_check.py [--data DIR] [--work DIR] [--epochs 3] [--json OUT]
        [--set KEY=VALUE ...]

``--set`` passes config overrides to the small run (step 1), e.g. the position cue's bundle at its
option's weight: ``--set position.enabled=true --set position.select=none --set position.weight=0.25
--work runs/gpu_check_position --skip-plugin``. A run in ``--work`` is reused only when it was made with
the same overrides (``overrides.json`` beside it).

Exit status 0 when the verdicts agree on every image (both engines), 1 otherwise (2: a setup error).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle"
CONFIG = REPO / "configs" / "train" / "masf_lite2.yaml"
BIN = Path(sys.executable).parent


def _step(title: str) -> float:
    print(f"== {title}", flush=True)
    return time.perf_counter()


def _run(cmd: list[str]) -> None:
    print("   $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _test_images(data: Path) -> tuple[list[np.ndarray], list[str]]:
    from trainer.data import read_image, scan_test

    samples = scan_test(data)
    return [read_image(s.path) for s in samples], [str(s.path.relative_to(data)) for s in samples]


def _latency(runner: Any, batch: np.ndarray, valid: np.ndarray, size: int, iters: int) -> dict[str, float]:
    reps = int(np.ceil(size / batch.shape[0]))
    image = np.ascontiguousarray(np.concatenate([batch] * reps)[:size])
    mask = np.ascontiguousarray(np.concatenate([valid] * reps)[:size])
    for _ in range(10):
        runner.run(image, mask)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner.run(image, mask)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"batch": size, "median_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99))}


def _compare(out: Any, ref: Any, names: list[str], threshold: float) -> dict[str, Any]:
    """TensorRT scores ``out`` vs ONNX Runtime scores ``ref`` (maps, scores, verdicts at ``threshold``)."""
    n = len(names)
    diff = np.abs(out.anomaly_map - ref.anomaly_map).reshape(n, -1).max(axis=1)
    ranges = np.ptp(ref.anomaly_map.reshape(n, -1), axis=1)
    score_diff = np.abs(out.score.astype(np.float64) - ref.score)
    mismatch = [
        name for name, a, b in zip(names, out.failed(threshold), ref.failed(threshold), strict=True) if a != b
    ]
    return {
        "images": n,
        "map_max_abs_diff": float(diff.max()),
        "map_max_rel_diff": float(np.max(diff / np.where(ranges > 0, ranges, 1.0))),
        "score_max_abs_diff": float(score_diff.max()),
        "score_max_rel_diff": float(np.max(score_diff / np.maximum(np.abs(ref.score), 1e-12))),
        "threshold": threshold,
        "verdict_mismatches": mismatch,
        "min_threshold_margin": float(np.min(np.abs(ref.score - threshold))),
    }


def _print_latency(result: dict[str, Any], where: str) -> None:
    for row in result["latency"]:
        print(
            f"TensorRT {result['engine']} {where}: batch {row['batch']}: median "
            f"{row['median_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
        )


def _print_comparison(label: str, result: dict[str, Any]) -> None:
    mismatch = result["verdict_mismatches"]
    verdicts = "agree" if not mismatch else f"DIFFER on {mismatch}"
    print(
        f"{label}: {result['images']} images: map diff max {result['map_max_abs_diff']:.3g} "
        f"({result['map_max_rel_diff']:.2%} of the map range), score diff max "
        f"{result['score_max_abs_diff']:.3g} ({result['score_max_rel_diff']:.2%}), verdicts {verdicts}"
    )


def _plugin_problem(flavour: str | None) -> str | None:
    """Why the plugin step cannot run here (None: it can); a missing CuPy is a setup error (raised)."""
    from engines.tensorrt import import_tensorrt
    from engines.tensorrt.dft_plugin import import_cupy, plugin_api_problem

    problem = plugin_api_problem(import_tensorrt(flavour))
    if problem is None:
        import_cupy()
    return problem


def _plugin_step(
    args: argparse.Namespace, run_dir: Path, gpu: Any, images: list[np.ndarray], names: list[str],
    batch: np.ndarray, valid: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """Step 6: plugin-mode engine vs ONNX Runtime on the dft-mode bundle of the same run."""
    from engines.backends.ort import OrtBackend
    from engines.backends.tensorrt import TensorRTBackend

    dft_dir, plugin_dir = args.work / "bundle_dft", args.work / "bundle_plugin"
    export = [str(BIN / "masf-engine"), "export", "--run", str(run_dir), "--verify-data", str(args.data)]
    _run([*export, "--out", str(dft_dir), "--spectral-mode", "dft", "--overwrite"])
    _run([*export, "--out", str(plugin_dir), "--spectral-mode", "plugin", "--overwrite"])
    build = [str(BIN / "masf-engine"), "build", "--bundle", str(plugin_dir), "--precision", "fp16"]
    build += ["--max-batch", str(args.max_batch)]
    if args.tensorrt != "auto":
        build += ["--tensorrt", args.tensorrt]
    if args.tensorrt == "tensorrt_rtx" and gpu is not None:
        build += ["--sm", gpu.sm]
    _run(build)
    flavour = None if args.tensorrt == "auto" else args.tensorrt
    with (
        OrtBackend.from_bundle(dft_dir) as ort,
        TensorRTBackend.from_bundle(plugin_dir, flavour=flavour) as trt,
    ):
        result = _compare(trt.infer(images), ort.infer(images), names, ort.threshold)
        result["engine"] = trt.engine_file
        result["latency"] = [
            _latency(trt.runner, batch, valid, size, args.iters) for size in (1, args.max_batch)
        ]
    _print_comparison("plugin-mode TensorRT vs ONNX Runtime (dft)", result)
    _print_latency(result, "(cuFFT plugin)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="MVTec-layout part folder (default: bottle)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gpu_check", help="run + bundle folder")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the small run")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=200, help="timed runs per batch size")
    parser.add_argument("--tensorrt", choices=("auto", "tensorrt", "tensorrt_rtx"), default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--skip-plugin", action="store_true", help="leave out step 6 (plugin spectral mode)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the small run (repeatable), e.g. position.enabled=true",
    )
    args = parser.parse_args(argv)
    bad = [o for o in args.set if "=" not in o]
    if bad:
        print(f"error: --set {bad[0]!r} is not KEY=VALUE", file=sys.stderr)
        return 2

    from engines.backends.ort import OrtBackend
    from engines.backends.tensorrt import TensorRTBackend, check_available
    from engines.errors import EngineError
    from engines.preprocess import preprocess_batch, valid_masks
    from engines.tensorrt import gpu_info

    flavour = None if args.tensorrt == "auto" else args.tensorrt
    try:
        check_available()
        plugin_problem = "left out (--skip-plugin)" if args.skip_plugin else _plugin_problem(flavour)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpu = gpu_info()
    print(f"GPU: {gpu.name} ({gpu.sm})" if gpu else "GPU: none found", flush=True)
    run_dir, bundle_dir = args.work / "run", args.work / "bundle"
    t0 = _step(f"1. small run on {args.data} ({args.epochs} epochs, overrides {args.set or 'none'})")
    marker = args.work / "overrides.json"
    made_with = json.loads(marker.read_text()) if marker.is_file() else []
    if (run_dir / "model.safetensors").is_file() and made_with != args.set:
        print(
            f"error: the run in {run_dir} was made with overrides {made_with}, not {args.set}: "
            "give another --work",
            file=sys.stderr,
        )
        return 2
    if not (run_dir / "model.safetensors").is_file():
        fit = [str(BIN / "masf-train"), "fit", "--config", str(CONFIG), "--data", str(args.data)]
        _run(
            [
                *fit,
                "--out",
                str(run_dir),
                "--set",
                f"train.epochs={args.epochs}",
                "--set",
                "train.warmup_epochs=1",
                *[x for o in args.set for x in ("--set", o)],
            ]
        )
        marker.write_text(json.dumps(args.set) + "\n")
    _step(f"2. bundle (parity on the test images) [{time.perf_counter() - t0:.0f} s]")
    export = [str(BIN / "masf-engine"), "export", "--run", str(run_dir), "--out", str(bundle_dir)]
    _run([*export, "--verify-data", str(args.data), "--overwrite"])
    _step("3. FP16 engine")
    build = [str(BIN / "masf-engine"), "build", "--bundle", str(bundle_dir), "--precision", "fp16"]
    build += ["--max-batch", str(args.max_batch), "--timing-cache", str(args.work / "timing.cache")]
    if args.tensorrt != "auto":
        build += ["--tensorrt", args.tensorrt]
    if args.tensorrt == "tensorrt_rtx" and gpu is not None:
        build += ["--sm", gpu.sm]
    _run(build)

    _step("4. TensorRT vs ONNX Runtime on the test images")
    images, names = _test_images(args.data)
    with (
        OrtBackend.from_bundle(bundle_dir) as ort,
        TensorRTBackend.from_bundle(bundle_dir, flavour=flavour) as trt,
    ):
        result: dict[str, Any] = {"gpu": gpu.to_dict() if gpu else None, "engine": trt.engine_file}
        result.update(_compare(trt.infer(images), ort.infer(images), names, ort.threshold))
        batch, geoms = preprocess_batch(images[: args.max_batch], ort.spec)
        valid = valid_masks(geoms)
        _step(f"5. latency ({args.iters} runs per batch size, engine {trt.engine_file})")
        result["latency"] = [
            _latency(trt.runner, batch, valid, size, args.iters) for size in (1, args.max_batch)
        ]
    _print_comparison("TensorRT vs ONNX Runtime", result)
    _print_latency(result, f"on {gpu.name if gpu else '?'}")
    mismatch = list(result["verdict_mismatches"])
    _step("6. plugin spectral mode (cuFFT TensorRT plugin)")
    if plugin_problem is None:
        result["plugin"] = _plugin_step(args, run_dir, gpu, images, names, batch, valid)
        mismatch += result["plugin"]["verdict_mismatches"]
    else:
        print(f"   skipped: {plugin_problem}")
        result["plugin"] = {"skipped": plugin_problem}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not mismatch else 1


if __name__ == "__main__":
    sys.exit(main())
