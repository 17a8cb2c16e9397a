"""Smoke test of benchmarks/engine_bench.py on the tiny run (64x64): every part runs, the JSON is whole.

The numbers themselves mean nothing here (2 repeats on a tiny model); the benchmark proper runs on a
lite0 run at 256x256 (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import load_benchmark
from engine_support import ExportedBundle


def _load_script() -> ModuleType:
    # the file is named like the ``engines`` package, so it is loaded under another module name
    return load_benchmark("engine_bench.py", "bench_engines")


def _numbers(doc: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in ``doc`` (bools excluded) with its dotted path."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _numbers(value, f"{path}[{i}]")
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        yield path, float(doc)


def _positive(path: str) -> bool:
    """Numbers that must be > 0: times, sizes, memory, ratios."""
    leaf = path.rsplit(".", 1)[-1].split("[")[0]
    return leaf.endswith(("_ms", "_bytes", "_mib", "bytes")) or "ratio" in leaf or leaf in ("raw_ms", "n")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_engine_benchmark_smoke(trained_run: Path, exported: ExportedBundle, tmp_path: Path) -> None:
    bench = _load_script()
    # To stay within ~30 s: the session's shared plain bundle (same run, gemm) is reused, as
    # --reuse-bundles does (one export less; the TTSA bundle is exported here), and the spectral ops are
    # exported to ORT one by one (~1 s each) only in the check at the end.
    shutil.copytree(exported.path, tmp_path / "bundle_plain")
    result = bench.run_benchmark(
        trained_run,
        tmp_path,
        repeats=2,
        warmup=1,
        threads=1,
        rss_iters=2,
        pause_ms=1.0,
        reuse_bundles=True,
        ort_ops=False,
    )
    doc = json.loads((tmp_path / "engines.json").read_text())
    assert doc == json.loads(json.dumps(result))
    assert set(doc) >= {
        "machine", "settings", "run", "bundles", "frames", "preprocess", "latency", "spectral_ops", "rss",
        "target",
    }  # fmt: skip
    assert doc["run"]["input_size"] == [64, 64] and not doc["run"]["is_issue_target"]

    # two gemm bundles, plain and TTSA, exported with their parity check
    assert set(doc["bundles"]) == {"plain", "tta"}
    for name, b in doc["bundles"].items():
        assert b["tta"] is (name == "tta") and b["reused"] is (name == "plain")
        assert b["parity"]["passed"] is True
        assert 0 < b["onnx_bytes"] < b["total_bytes"] and b["spectral_constants"]["bytes"] > 0
        assert (Path(b["path"]) / "manifest.json").is_file()

    # latency: both paths, batch 1 and 8, both sides, 2 timed calls each
    assert {(r["path"], r["batch"]) for r in doc["latency"]} == {
        (p, b) for p in ("plain", "tta") for b in (1, 8)
    }
    for r in doc["latency"]:
        assert len(r["raw_ms"]["ort"]) == len(r["raw_ms"]["torch"]) == 2
        assert r["ort"]["per_image"]["median_ms"] == pytest.approx(
            r["ort"]["per_batch"]["median_ms"] / r["batch"]
        )
        assert r["score_max_rel_diff"] < 1e-4  # the same model on both sides
    assert {p["batch"] for p in doc["preprocess"]} == {1, 8}

    # spectral ops: |rfft| and the SDM split at each of the 3 scales, the TTSA rotation (torch only here)
    ops = {(r["op"].split(" (")[0], r["scale"], r["batch"]) for r in doc["spectral_ops"]}
    for scale in range(3):
        for bs in (1, 8):
            assert ("bank channel DFT magnitude", scale, bs) in ops and ("SDM band split", scale, bs) in ops
    assert ("TTSA phase rotation", None, 1) in ops and ("TTSA phase rotation", None, 8) in ops
    assert all("gemm_ort_median_ms" not in r for r in doc["spectral_ops"])

    # peak RSS: an ORT-only child (no torch) and a torch child
    rss = {r["kind"]: r for r in doc["rss"]}
    assert set(rss) == {"ort", "torch"} and rss["ort"]["n_heavy_modules"] == 0
    assert rss["torch"]["n_heavy_modules"] > 0
    for r in rss.values():
        assert r["peak_rss_mib"] >= r["after_load_mib"] >= r["after_import_mib"] > 0
        # not inherited from this (large) test process: the kernel's own peak of the child agrees
        assert r["peak_rss_mib"] == pytest.approx(r["vm_hwm_mib"], rel=0.1)
    assert rss["ort"]["peak_rss_mib"] < rss["torch"]["peak_rss_mib"]

    numbers = list(_numbers(doc))
    assert all(math.isfinite(v) for _, v in numbers), [p for p, v in numbers if not math.isfinite(v)]
    assert all(v > 0 for p, v in numbers if _positive(p)), [p for p, v in numbers if _positive(p) and v <= 0]

    report = bench.markdown(doc, "benchmarks/engine_bench.py --run RUN")
    assert "Not the issue's configuration" in report and "ORT only" in report
    assert report.count("\n| plain |") == 3 and report.count("\n| TTSA |") == 2


def test_spectral_op_alone_in_ort(trained_run: Path) -> None:
    """The gemm op exported alone (as the benchmark times it in ORT) computes the torch.fft result."""
    import numpy as np
    import torch

    from trainer.models.masf.spectral import ChannelDFTMagnitude
    from trainer.runs import load_run

    bench = _load_script()
    model, _ = load_run(trained_run)
    op = model.embedders[0].spectral_magnitude  # [N, 16, 16, C] prototypes of scale 0 at 64x64
    assert isinstance(op, ChannelDFTMagnitude)
    h, w = model.map_sizes[0]
    x = torch.randn(3, h, w, op.n, generator=torch.Generator().manual_seed(0))
    op.set_mode("gemm")
    session = bench._ort_op(op, x[:2], 1, threads=1)
    op.set_mode("fft")
    (got,) = session.run(None, {"x": x.numpy()})  # dynamic batch: 3, exported with 2
    np.testing.assert_allclose(got, op(x).numpy(), rtol=1e-4, atol=1e-5)
