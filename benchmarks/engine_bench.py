"""Engine benchmark (issue 3): ONNX Runtime vs PyTorch eager on this CPU, gemm vs torch.fft, size, RSS.

Every number is measured in this run, on one trained run (``masf-train fit``; the issue's target is
``tf_efficientnet_lite0`` at 256x256):

1. **Bundles**: the run is exported twice with the existing export API (``engines.export.export_run``,
   spectral mode ``gemm``, with its parity check): the plain path and the TTSA path (``--tta``). Sizes:
   all files of each bundle and ``model.onnx`` alone, plus the bytes of the constants the spectral
   subgraph uses (the gemm path's cos/sin and band matrices).
2. **Latency**: ONNX Runtime (the bundle's graph, a CPU session with the same options as ``OrtBackend``:
   ``--threads`` intra-op threads, 1 inter-op thread) vs PyTorch eager (the same run rebuilt by
   ``TorchBackend``, spectral mode ``fft``, inside ``ExportWrapper``, the exact module that is exported,
   so both sides start from the same uint8 frames; ``torch.set_num_threads(--threads)``,
   ``torch.inference_mode()``), at batch 1 and 8, with and without TTSA. Only the model is timed: the
   frames are preprocessed once beforehand (the cost of that step is reported on its own). The two sides
   alternate call by call (ORT, torch, torch, ORT, ...) after ``--warmup`` calls each, so machine noise
   hits both equally; a short pause (``--pause-ms``) before each timed call lets the other runtime's
   spinning worker threads go idle. Medians and p90 per batch and per image; the ratio ORT/torch of the
   medians and the median of the per-pair ratios.
3. **Spectral path per scale**: each spectral op as used at inference, gemm (real MatMuls) vs
   ``torch.fft``, in torch eager, at batch 1 and 8, alternating (each measurement is a block of
   back-to-back calls of about 20 ms, reported per call, since single calls are sub-ms): SAMB's
   ``ChannelDFTMagnitude`` on the ``[N, h_l, w_l, C_l]`` prototypes of each scale, SDM's band split
   (MatMuls in both modes; its ``fft2`` form, which the model does not use, is timed for reference) and
   TTSA's ``SpectralPhaseRotation`` at the input size. The gemm op is also exported alone
   (``trainer.export.onnx.to_onnx_proto``) and timed in ONNX Runtime, where the deployed graph runs it.
4. **Peak RSS**: a child process that imports only numpy and the ORT backend (it asserts that torch,
   timm and the trainer are not in ``sys.modules``), loads the plain bundle and runs ``--rss-iters``
   inferences at batch 1 after 5 warm-ups, then reports ``ru_maxrss``; the same for a torch-eager child.

    .venv/bin/python benchmarks/engine_bench.py --run RUN_DIR [--out benchmarks/results/engines]
        [--markdown FILE] [--images DIR] [--verify-data DIR] [--repeats 30] [--warmup 5] [--threads 2]
        [--reuse-bundles]

Writes ``engines.json`` (every raw time, in ms) and the bundles under ``--out``, prints a Markdown report
(also written to ``--markdown``) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

PATHS = ("plain", "tta")
TARGET_MODEL = ("tf_efficientnet_lite0", (256, 256))
OP_BLOCK_MS = 20.0  # one spectral-op measurement: back-to-back calls for about this long

# -- child processes (peak RSS) ------------------------------------------------------------------------------

# The child is started by a small launcher process, not by the benchmark itself: a process started
# directly from this one (fork/vfork + exec) inherits our resident size as its ru_maxrss floor (Linux
# keeps ru_maxrss across execve), which would report ~1 GB for any child.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"

_CHILD_COMMON = r"""
import json, resource, sys, time
import numpy as np

def peak_mib():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0

def hwm_mib():  # the kernel's own peak RSS of this address space (Linux), a cross-check
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None

bundle, frames, threads, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run_dir = sys.argv[5] if len(sys.argv) > 5 else None
batch = np.ascontiguousarray(np.load(frames)[:1])
valid = np.ones((1, 1, batch.shape[1], batch.shape[2]), dtype=np.uint8)
"""

_CHILD_ORT = (
    _CHILD_COMMON
    + r"""
from engines.backends.ort import OrtBackend
after_import = peak_mib()
backend = OrtBackend.from_bundle(bundle, intra_op_threads=threads)
after_load = peak_mib()
run = lambda: backend.infer(batch)
"""
)

_CHILD_TORCH = (
    _CHILD_COMMON
    + r"""
import torch
torch.set_num_threads(threads)
from trainer.torch_backend import TorchBackend
from trainer.export.wrapper import ExportWrapper
after_import = peak_mib()
backend = TorchBackend.from_bundle(bundle, run_dir=run_dir)
wrapper = ExportWrapper(backend.model).eval()
x, v = torch.from_numpy(batch), torch.from_numpy(valid)
after_load = peak_mib()
def run():
    with torch.inference_mode():
        amap, score = wrapper(x, v)
    return amap.numpy(), score.numpy()
"""
)

_CHILD_TAIL = r"""
for _ in range(5):
    run()
times = []
for _ in range(iters):
    t0 = time.perf_counter_ns()
    run()
    times.append((time.perf_counter_ns() - t0) / 1e6)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "trainer"))
print(json.dumps({
    "peak_rss_mib": peak_mib(), "vm_hwm_mib": hwm_mib(),
    "after_import_mib": after_import, "after_load_mib": after_load,
    "iters": iters, "median_ms": float(np.median(times)), "heavy_modules": heavy[:20],
    "n_heavy_modules": len(heavy),
}))
"""


def child_rss(
    kind: str, bundle: Path, frames: Path, threads: int, iters: int, run_dir: Path | None = None
) -> dict[str, Any]:
    """Run the ``kind`` (``"ort"`` or ``"torch"``) child; its peak RSS, load stages and batch-1 latency.

    ``peak_rss_mib`` is the child's ``ru_maxrss``; ``after_import_mib`` / ``after_load_mib`` are the same
    counter after the imports and after loading the bundle; ``vm_hwm_mib`` is ``VmHWM`` (Linux).
    """
    code = (_CHILD_ORT if kind == "ort" else _CHILD_TORCH) + _CHILD_TAIL
    cmd = [
        sys.executable,
        "-c",
        _LAUNCHER,
        sys.executable,
        "-c",
        code,
        str(bundle),
        str(frames),
        str(threads),
        str(iters),
    ]
    if run_dir is not None:
        cmd.append(str(run_dir))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if kind == "ort" and doc["n_heavy_modules"]:
        raise RuntimeError(f"the ORT-only child imported {doc['heavy_modules']}: not an ORT-only process")
    doc["kind"] = kind
    return doc


# -- timing --------------------------------------------------------------------------------------------------


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    """Median, p90, min and mean of a list of times (ms)."""
    arr = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "min_ms": float(arr.min()),
        "mean_ms": float(arr.mean()),
        "n": int(arr.size),
    }


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    pause_s: float = 0.0,
    block_ms: float = 0.0,
) -> dict[str, list[float]]:
    """Time each function ``repeats`` times (ms), alternating the order on every round (A B, B A, ...).

    With ``block_ms`` > 0, one measurement is a block of back-to-back calls lasting about ``block_ms``
    (the count is set per function from its last warm-up call) and the time per call is reported: for
    sub-millisecond ops, whose single calls would be dominated by the timer and the wake-up after the
    pause. ``pause_s`` is slept before each measurement (untimed).
    """
    names = list(fns)
    last = dict.fromkeys(names, 0.0)
    for _ in range(max(warmup, 1 if block_ms > 0 else 0)):
        for name in names:
            t0 = time.perf_counter_ns()
            fns[name]()
            last[name] = (time.perf_counter_ns() - t0) / 1e6
    calls = {
        n: max(1, min(10_000, math.ceil(block_ms / max(last[n], 1e-3)))) if block_ms > 0 else 1 for n in names
    }
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            fn, k = fns[name], calls[name]
            if pause_s > 0:
                time.sleep(pause_s)
            t0 = time.perf_counter_ns()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter_ns() - t0) / 1e6 / k)
    return times


def _paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.median(np.asarray(a, dtype=np.float64) / np.asarray(b, dtype=np.float64)))


def _ort_session(model: str | Path | bytes, threads: int) -> Any:
    """A CPU session with the options of ``OrtBackend`` (intra-op ``threads``, 1 inter-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


# -- machine, frames, bundles --------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (or what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    return {
        "node": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def make_frames(
    spec: Any, n: int, images_dir: Path | None = None, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """``n`` raw images: spread over ``images_dir`` (recursively, cycled if fewer), else generated.

    Generated images are synthetic parts (``trainer.data.synthetic.render_part``) at twice the model frame,
    so preprocessing does a real resize.
    """
    from trainer.data import IMAGE_EXTENSIONS, read_image

    if images_dir is not None:
        paths = sorted(
            p for p in Path(images_dir).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not paths:
            raise SystemExit(f"--images {images_dir}: no image files found")
        step = max(1, len(paths) // n)
        chosen = [paths[(i * step) % len(paths)] for i in range(n)]
        return [read_image(p) for p in chosen], f"{len(set(chosen))} images of {images_dir}"
    from trainer.data.synthetic import render_part

    rng = np.random.default_rng(seed)
    h, w = 2 * spec.height, 2 * spec.width
    gray = spec.color == "gray"
    return [render_part(rng, h, w, gray) for _ in range(n)], f"{n} generated parts ({h}x{w}, synthetic.py)"


def preprocess_cost(
    images: list[np.ndarray], spec: Any, batch_sizes: Sequence[int], repeats: int
) -> list[dict[str, Any]]:
    """Median time of ``preprocess_batch`` (raw images -> uint8 model frames) per batch size."""
    from engines.preprocess import preprocess_batch

    rows = []
    for bs in batch_sizes:
        chunk = images[:bs]
        preprocess_batch(chunk, spec)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            preprocess_batch(chunk, spec)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        s = summarize(times)
        rows.append({"batch": bs, **s, "per_image_median_ms": s["median_ms"] / bs, "raw_ms": times})
    return rows


def _bundle_matches(path: Path, run_dir: Path, tta: bool) -> bool:
    from engines.bundle import Bundle, sha256_file
    from engines.errors import BundleError

    try:
        m = Bundle.open(path).manifest
    except BundleError:
        return False
    return (
        m["source"].get("weights_sha256") == sha256_file(run_dir / "model.safetensors")
        and m["export"]["spectral_mode"] == "gemm"
        and bool(m["export"]["tta"]) == tta
    )


def spectral_constant_bytes(onnx_path: Path) -> dict[str, int]:
    """Bytes of the initializers and Constant nodes used by nodes of the spectral scopes (gemm matrices)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))

    def spectral(node: Any) -> bool:
        return any("spectral" in part for part in node.name.rpartition("/")[0].split("."))

    inits = {t.name: t for t in proto.graph.initializer}
    used: set[str] = set()
    const_bytes, n_const = 0, 0
    for node in proto.graph.node:
        if not spectral(node):
            continue
        used.update(i for i in node.input if i in inits)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    const_bytes += numpy_helper.to_array(attr.t).nbytes
                    n_const += 1
    init_bytes = sum(numpy_helper.to_array(inits[name]).nbytes for name in used)
    return {"bytes": int(init_bytes + const_bytes), "tensors": len(used) + n_const}


def export_bundles(
    run_dir: Path,
    out: Path,
    threads: int,
    verify_data: Path | None = None,
    reuse: bool = False,
) -> dict[str, dict[str, Any]]:
    """Export the plain and the TTSA bundle (gemm) with ``export_run``; sizes, export time and parity."""
    from engines.bundle import Bundle
    from trainer.export import export_run

    bundles: dict[str, dict[str, Any]] = {}
    for name in PATHS:
        tta = name == "tta"
        path = out / f"bundle_{name}"
        reused = reuse and _bundle_matches(path, run_dir, tta)
        t0 = time.perf_counter()
        if reused:
            bundle = Bundle.open(path)
        else:
            print(f"exporting the {name} bundle to {path}", flush=True)
            bundle = export_run(
                run_dir, path, "gemm", tta=tta, verify_data=verify_data, overwrite=True, threads=threads
            )
        wall = time.perf_counter() - t0
        files = [p for p in path.rglob("*") if p.is_file()]
        export = bundle.manifest["export"]
        parity = export.get("parity") or {}
        bundles[name] = {
            "path": str(path),
            "reused": reused,
            "tta": bool(export["tta"]),
            "tta_views": int(export.get("tta_views", 1)),
            "total_bytes": sum(p.stat().st_size for p in files),
            "n_files": len(files),
            "onnx_bytes": bundle.onnx_path.stat().st_size,
            "spectral_constants": spectral_constant_bytes(bundle.onnx_path),
            "n_nodes": int(sum(export["ops"].values())),
            "export_seconds": float(export["export_seconds"]),
            "export_wall_seconds": None if reused else wall,
            "parity": {
                k: parity.get(k)
                for k in ("images", "map_max_rel_err", "score_max_rel_err", "verdict_mismatches", "passed")
            },
        }
    return bundles


# -- latency -------------------------------------------------------------------------------------------------


def latency(
    run_dir: Path,
    bundles: Mapping[str, Mapping[str, Any]],
    batch: np.ndarray,
    valid: np.ndarray,
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    threads: int,
    pause_s: float,
) -> list[dict[str, Any]]:
    """ORT vs torch eager on the same preprocessed frames, per path (plain/TTSA) and batch size."""
    import torch

    from engines.bundle import GRAPH_INPUTS, Bundle
    from trainer.export.wrapper import ExportWrapper
    from trainer.torch_backend import TorchBackend

    rows = []
    for name, info in bundles.items():
        bundle = Bundle.open(info["path"])
        session = _ort_session(bundle.onnx_path, threads)
        reference = TorchBackend.from_bundle(bundle.path, run_dir=run_dir)  # spectral mode fft
        wrapper = ExportWrapper(reference.model).eval()
        for bs in batch_sizes:
            image, mask = np.ascontiguousarray(batch[:bs]), np.ascontiguousarray(valid[:bs])
            feeds = dict(zip(GRAPH_INPUTS, (image, mask), strict=True))
            x, v = torch.from_numpy(image), torch.from_numpy(mask)

            def run_ort(session: Any = session, feeds: dict[str, np.ndarray] = feeds) -> Any:
                return session.run(None, feeds)

            def run_torch(x: torch.Tensor = x, v: torch.Tensor = v, model: Any = wrapper) -> Any:
                amap, score = model(x, v)
                return amap.numpy(), score.numpy()

            with torch.inference_mode():
                ort_out, torch_out = run_ort(), run_torch()
                times = interleaved({"ort": run_ort, "torch": run_torch}, repeats, warmup, pause_s)
            ref = np.asarray(torch_out[1], dtype=np.float64)
            score_err = float(np.max(np.abs(np.asarray(ort_out[1]) - ref) / np.maximum(np.abs(ref), 1e-12)))
            row: dict[str, Any] = {"path": name, "batch": bs, "score_max_rel_diff": score_err}
            for side in ("ort", "torch"):
                s = summarize(times[side])
                row[side] = {
                    "per_batch": s,
                    "per_image": {k: (val / bs if k.endswith("_ms") else val) for k, val in s.items()},
                }
            row["ratio_ort_torch"] = (
                row["ort"]["per_batch"]["median_ms"] / row["torch"]["per_batch"]["median_ms"]
            )
            row["paired_ratio_median"] = _paired_ratio(times["ort"], times["torch"])
            row["raw_ms"] = times
            rows.append(row)
            print(
                f"  {name} batch {bs}: ORT {row['ort']['per_batch']['median_ms']:.2f} ms, torch "
                f"{row['torch']['per_batch']['median_ms']:.2f} ms (ORT/torch {row['ratio_ort_torch']:.2f})",
                flush=True,
            )
        del session, reference, wrapper
    return rows


# -- spectral ops --------------------------------------------------------------------------------------------


def _ort_op(module: Any, example: Any, n_out: int, threads: int) -> Any:
    """Export ``module`` alone (gemm mode, dynamic batch) with the export API; an ORT session for it."""
    from trainer.export.onnx import to_onnx_proto

    proto = to_onnx_proto(module, (example,), ["x"], [f"y{i}" for i in range(n_out)], 18, "gemm")
    return _ort_session(proto.SerializeToString(), threads)


def _fft_band_split(lh_mask: Any, lw_mask: Any) -> Callable[[Any], Any]:
    """SDM's split in its FFT form ``Re(ifft2(fft2(F) * M))`` (reference only; the model uses MatMuls)."""
    import torch

    mask = lh_mask[:, None] * lw_mask[None, :]

    def split(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.fft.ifft2(torch.fft.fft2(f.float()) * mask).real
        return low, f - low

    return split


def spectral_ops(
    model: Any,
    info: Any,
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    threads: int,
    with_ort: bool = True,
    pause_s: float = 0.0,
) -> list[dict[str, Any]]:
    """Per scale and batch size: each spectral op of the inference path, gemm vs torch.fft (ms)."""
    import torch

    from trainer.models.masf.spectral import lowpass_1d
    from trainer.models.masf.ttsa import PhasePerturbation

    gen = torch.Generator().manual_seed(0)
    channels = model.teacher.cfg.channels
    cases: list[tuple[str, int | None, Any, tuple[int, ...], str]] = []  # op, scale, module, shape, kind
    for scale, (c, (h, w)) in enumerate(zip(channels, model.map_sizes, strict=True)):
        # per-scale banks only (a joint bank has one embedder over several scales)
        per_scale_bank = model.use_bank and not model.joint and scale in model.bank_layers
        embedder = model.embedders[model.bank_layers.index(scale)] if per_scale_bank else None
        if embedder is not None and embedder.spectral:
            magnitude = embedder.spectral_magnitude
            cases.append(
                ("bank channel DFT magnitude (ChannelDFTMagnitude)", scale, magnitude, (h, w, c), "dft")
            )
        if model.use_student and model.sdms[scale].enabled:
            cases.append(("SDM band split", scale, model.sdms[scale].spectral_split, (c, h, w), "split"))
    cfg = info.config
    height, width = model.input_size
    rotation = PhasePerturbation(height, width, cfg.tta.views, cfg.tta.sigma, cfg.tta.seed).spectral
    cases.append((f"TTSA phase rotation ({cfg.tta.views} views)", None, rotation, (3, height, width), "dft"))
    rows = []
    for op_name, where, module, shape, kind in cases:
        if kind == "dft":
            gemm, fft = copy.deepcopy(module).eval(), copy.deepcopy(module).eval()
            gemm.set_mode("gemm")
            fft.set_mode("fft")
            n_out = 1
        else:  # the band split: MatMuls in both modes; its FFT form for reference
            gemm = module.eval()
            fft = _fft_band_split(lowpass_1d(shape[1], module.ratio), lowpass_1d(shape[2], module.ratio))
            n_out = 2
        session = _ort_op(gemm, torch.randn(2, *shape, generator=gen), n_out, threads) if with_ort else None
        for bs in batch_sizes:
            x = torch.randn(bs, *shape, generator=gen)
            fns: dict[str, Callable[[], object]] = {
                "gemm_torch": functools.partial(gemm, x),
                "fft_torch": functools.partial(fft, x),
            }
            if session is not None:
                fns["gemm_ort"] = functools.partial(session.run, None, {"x": x.numpy()})
            with torch.inference_mode():
                times = interleaved(fns, repeats, warmup, pause_s, block_ms=OP_BLOCK_MS)
            med = {k: float(np.median(v)) for k, v in times.items()}
            rows.append(
                {
                    "op": op_name,
                    "scale": where,
                    "input_shape": [bs, *shape],
                    "batch": bs,
                    "fft_in_model": kind == "dft",
                    **{f"{k}_median_ms": v for k, v in med.items()},
                    "ratio_gemm_fft_torch": med["gemm_torch"] / med["fft_torch"],
                    "raw_ms": times,
                }
            )
    return rows


# -- the whole benchmark -------------------------------------------------------------------------------------


def run_benchmark(
    run_dir: Path,
    out: Path,
    images_dir: Path | None = None,
    verify_data: Path | None = None,
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 2,
    batch_sizes: Sequence[int] = (1, 8),
    rss_iters: int = 50,
    pause_ms: float = 5.0,
    reuse_bundles: bool = False,
    ort_ops: bool = True,
) -> dict[str, Any]:
    """Run every part of the benchmark (see the module docstring); returns the JSON document."""
    import torch

    from engines.preprocess import preprocess_batch, valid_masks
    from trainer.runs import load_run

    run_dir, out = Path(run_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, info = load_run(run_dir)
        spec = info.preprocess
        backbone = str(info.config.backbone.name)
        result: dict[str, Any] = {
            "schema": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(threads),
            "settings": {
                "repeats": repeats,
                "warmup": warmup,
                "threads": threads,
                "batch_sizes": list(batch_sizes),
                "rss_iters": rss_iters,
                "pause_ms": pause_ms,
                "op_block_ms": OP_BLOCK_MS,
            },
            "run": {
                "dir": str(run_dir.resolve()),
                "backbone": backbone,
                "input_size": [spec.height, spec.width],
                "color": spec.color,
                "resize": spec.resize,
                "tta_views": int(info.config.tta.views),
                "tta_sigma": float(info.config.tta.sigma),
                "bank_sizes": [len(b) for b in model.bank_list()] if model.use_bank else [],
                "is_issue_target": (backbone, (spec.height, spec.width)) == TARGET_MODEL,
            },
        }
        print(f"bundles ({backbone}, {spec.height}x{spec.width})", flush=True)
        result["bundles"] = export_bundles(run_dir, out, threads, verify_data, reuse_bundles)

        n = max(batch_sizes)
        images, source = make_frames(spec, n, images_dir)
        batch, geometries = preprocess_batch(images, spec)
        valid = valid_masks(geometries)
        frames = out / "frames.npy"
        np.save(frames, batch)
        result["frames"] = {"source": source, "shape": list(batch.shape)}
        result["preprocess"] = preprocess_cost(images, spec, batch_sizes, repeats)

        print("latency (ORT vs torch eager)", flush=True)
        result["latency"] = latency(
            run_dir, result["bundles"], batch, valid, batch_sizes, repeats, warmup, threads, pause_ms / 1e3
        )
        print("spectral ops (gemm vs torch.fft)", flush=True)
        result["spectral_ops"] = spectral_ops(
            model, info, batch_sizes, repeats, warmup, threads, ort_ops, pause_ms / 1e3
        )
        print("peak RSS (child processes)", flush=True)
        plain = Path(result["bundles"]["plain"]["path"])
        result["rss"] = [
            child_rss("ort", plain, frames, threads, rss_iters),
            child_rss("torch", plain, frames, threads, rss_iters, run_dir),
        ]
        b1 = {r["path"]: r for r in result["latency"] if r["batch"] == 1}
        result["target"] = {
            "rule": "ORT at least as fast as PyTorch eager at batch 1 (median)",
            **{f"met_{p}": bool(r["ratio_ort_torch"] <= 1.0) for p, r in b1.items()},
        }
    finally:
        torch.set_num_threads(previous_threads)
    (out / "engines.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# -- report --------------------------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def markdown(result: Mapping[str, Any], command: str) -> str:
    """The Markdown report of a :func:`run_benchmark` result."""
    m, s, run = result["machine"], result["settings"], result["run"]
    date = datetime.fromisoformat(result["created"]).strftime("%Y-%m-%d %H:%M")
    load = m.get("load_average")
    at_start = f"; load average at start {load[0]:.2f}" if load else ""
    lines = [
        f"Measured {date} UTC on {m['node']} ({m['platform']}, {m['cpu_count']} CPUs, {m['cpu_model']}"
        f"{at_start}), Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, onnx "
        f"{m['onnx']}; command: `{command}`",
        "",
        f"Run `{run['dir']}`: {run['backbone']} at {run['input_size'][0]}x{run['input_size'][1]} "
        f"({run['color']}, {run['resize']}), bank sizes {run['bank_sizes']}, TTSA {run['tta_views']} views. "
        f"Threads per side: {s['threads']}; timed calls: {s['repeats']} after {s['warmup']} warm-up calls "
        f"each, ORT and torch alternating, with a {s['pause_ms']:g} ms pause before each call. Frames: "
        f"{result['frames']['source']}.",
    ]
    if not run["is_issue_target"]:
        name, (h, w) = TARGET_MODEL
        lines += ["", f"**Not the issue's configuration** ({name} at {h}x{w}): a trial run, not a result."]
    lines += [
        "",
        "**Latency, model only** (uint8 frames in, map and score out; ms, median / p90)",
        "",
        "| path | batch | ORT per batch | torch per batch | ORT per image | torch per image | ORT/torch "
        "(medians) | ORT/torch (paired) | score diff (rel) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["latency"]:
        o, t = r["ort"], r["torch"]
        label = "TTSA" if r["path"] == "tta" else "plain"
        lines.append(
            f"| {label} | {r['batch']} | {o['per_batch']['median_ms']:.2f} / {o['per_batch']['p90_ms']:.2f} "
            f"| {t['per_batch']['median_ms']:.2f} / {t['per_batch']['p90_ms']:.2f} "
            f"| {o['per_image']['median_ms']:.2f} / {o['per_image']['p90_ms']:.2f} "
            f"| {t['per_image']['median_ms']:.2f} / {t['per_image']['p90_ms']:.2f} "
            f"| {r['ratio_ort_torch']:.3f} | {r['paired_ratio_median']:.3f} | {r['score_max_rel_diff']:.1e} |"
        )
    pre = ", ".join(
        f"batch {p['batch']}: {p['median_ms']:.2f} ms ({p['per_image_median_ms']:.2f} ms per image)"
        for p in result["preprocess"]
    )
    lines += ["", f"Preprocessing (raw image -> uint8 model frame, not in the times above): {pre}."]
    tgt = result["target"]
    met = ", ".join(
        f"{'TTSA' if k == 'met_tta' else 'plain'}: {'met' if v else 'NOT met'}"
        for k, v in tgt.items()
        if k.startswith("met_")
    )
    lines += ["", f"Target, {tgt['rule']}: {met}."]

    with_ort = any("gemm_ort_median_ms" in r for r in result["spectral_ops"])
    lines += [
        "",
        "**Spectral ops, gemm vs torch.fft** (one op alone, median ms per call, from blocks of back-to-back "
        f"calls of about {s.get('op_block_ms', OP_BLOCK_MS):g} ms; torch eager unless marked ORT)",
        "",
        "| op | scale | input | gemm (torch) | torch.fft | gemm/fft | "
        + ("gemm (ORT) |" if with_ort else ""),
        "|---|---|---|---|---|---|" + ("---|" if with_ort else ""),
    ]
    for r in result["spectral_ops"]:
        scale = "input" if r["scale"] is None else str(r["scale"])
        fft_label = f"{r['fft_torch_median_ms']:.3f}" + ("" if r["fft_in_model"] else " (fft2 form, unused)")
        shape = "x".join(map(str, r["input_shape"]))
        row = f"| {r['op']} | {scale} | {shape} | {r['gemm_torch_median_ms']:.3f} | {fft_label} "
        row += f"| {r['ratio_gemm_fft_torch']:.2f} |"
        if with_ort:
            row += f" {r['gemm_ort_median_ms']:.3f} |"
        lines.append(row)
    lines += [
        "",
        "SDM's band split is the same MatMuls in both spectral modes; its FFT form is timed only to show "
        "what the MatMul form costs against it.",
        "",
        "**Bundles** (spectral mode gemm)",
        "",
        "| bundle | model.onnx MB | all files MB | files | spectral constants MB | nodes | parity map / "
        "score (rel) | export s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in result["bundles"].values():
        p = b["parity"]
        parity = (
            f"{p['map_max_rel_err']:.1e} / {p['score_max_rel_err']:.1e}"
            if p.get("map_max_rel_err") is not None
            else "n/a"
        )
        label = f"TTSA ({b['tta_views']} views)" if b["tta"] else "plain"
        lines.append(
            f"| {label} | {_mb(b['onnx_bytes'])} | {_mb(b['total_bytes'])} | {b['n_files']} "
            f"| {_mb(b['spectral_constants']['bytes'])} | {b['n_nodes']} | {parity} "
            f"| {b['export_seconds']:.0f} |"
        )
    lines += [
        "",
        f"**Peak RSS** (child process: load the plain bundle, {s['rss_iters']} inferences at batch 1)",
        "",
        "| process | peak RSS MiB | after imports MiB | after loading MiB | median ms (batch 1, alone) |",
        "|---|---|---|---|---|",
    ]
    for r in result["rss"]:
        label = "ORT only (numpy + onnxruntime, no torch)" if r["kind"] == "ort" else "PyTorch eager"
        lines.append(
            f"| {label} | {r['peak_rss_mib']:.0f} | {r['after_import_mib']:.0f} | {r['after_load_mib']:.0f} "
            f"| {r['median_ms']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="trained run (lite0 at 256x256 for issue 3)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "engines")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    parser.add_argument("--images", type=Path, default=None, help="real images (default: generated parts)")
    parser.add_argument(
        "--verify-data",
        type=Path,
        default=None,
        help="export parity on DIR/test (default: calibration images)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads and torch threads")
    parser.add_argument("--rss-iters", type=int, default=50, help="inferences of the RSS child processes")
    parser.add_argument("--pause-ms", type=float, default=5.0, help="pause before each timed model call")
    parser.add_argument(
        "--reuse-bundles", action="store_true", help="keep bundles in --out exported from the same weights"
    )
    parser.add_argument("--no-ort-ops", action="store_true", help="skip timing the spectral ops in ORT")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or args.rss_iters < 1:
        parser.error("--repeats, --threads and --rss-iters must be >= 1, --warmup >= 0")
    command = ".venv/bin/python benchmarks/engine_bench.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    result = run_benchmark(
        args.run,
        args.out,
        images_dir=args.images,
        verify_data=args.verify_data,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        rss_iters=args.rss_iters,
        pause_ms=args.pause_ms,
        reuse_bundles=args.reuse_bundles,
        ort_ops=not args.no_ort_ops,
    )
    report = markdown(result, command)
    print(report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report + "\n")
    print(f"JSON: {args.out / 'engines.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
