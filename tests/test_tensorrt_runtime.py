"""Tests for engines.tensorrt.runtime and engines.backends.tensorrt (TensorRT + pycuda, GPU only).

Without a GPU only the CPU-side contract is tested: nothing is imported at module import time, missing
pycuda/TensorRT and a bundle without a fitting engine are clear errors. Running an engine is skipped
with the reason (``make gpu-check`` runs it on a GPU machine); on a machine with an RTX GPU, pycuda and
tensorrt-rtx, the last test builds and runs the engine against ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_support import ExportedBundle

from engines.backends import get_backend
from engines.backends.ort import OrtBackend
from engines.backends.tensorrt import TensorRTBackend, check_available
from engines.bundle import Bundle
from engines.errors import BackendError
from engines.tensorrt import gpu_info
from engines.tensorrt.runtime import open_engine

ROOT = Path(__file__).resolve().parents[1]
HAS_PYCUDA = importlib.util.find_spec("pycuda") is not None
HAS_TRT = any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx"))


def test_modules_import_neither_tensorrt_nor_pycuda() -> None:
    code = (
        "import sys, engines.backends.tensorrt, engines.tensorrt.runtime, engines.tensorrt.builder, "
        "engines.tensorrt.bundle_engines; "
        "heavy = ('tensorrt', 'tensorrt_rtx', 'pycuda', 'torch'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(HAS_PYCUDA and HAS_TRT, reason="TensorRT and pycuda are installed here")
def test_missing_packages_are_a_clear_error_without_fallback(exported: ExportedBundle) -> None:
    message = (
        r"backend 'tensorrt' needs TensorRT and pycuda on a machine with an NVIDIA GPU; install .*pycuda"
    )
    with pytest.raises(BackendError, match=message + r".*nothing falls back automatically"):
        check_available()
    for name in ("tensorrt", "TRT"):
        with pytest.raises(BackendError, match=message):
            get_backend(name)
    with pytest.raises(BackendError, match=message):
        TensorRTBackend.from_bundle(exported.path)
    if HAS_TRT:  # the runtime needs pycuda as well: said before anything is loaded
        with pytest.raises(BackendError, match=r"pycuda is not installed: install pycuda \(pip install"):
            open_engine(Bundle.open(exported.path))


def test_no_fitting_engine_lists_the_problems(exported: ExportedBundle) -> None:
    if not (HAS_PYCUDA and HAS_TRT) or gpu_info() is None:
        pytest.skip("needs TensorRT, pycuda and a CUDA GPU (no GPU in this session; make gpu-check)")
    with pytest.raises(
        BackendError, match=r"no engine runs on .*the bundle has no TensorRT engine.*masf-engine build"
    ):
        open_engine(Bundle.open(exported.path))


def test_engine_runs_and_matches_onnxruntime(
    exported: ExportedBundle, tmp_path: Path, synth_data: Path
) -> None:
    gpu = gpu_info()
    if not (HAS_PYCUDA and importlib.util.find_spec("tensorrt_rtx")) or gpu is None:
        pytest.skip("needs an RTX GPU, pycuda and tensorrt-rtx (no GPU in this session; make gpu-check)")
    from trainer.data import read_image

    bundle = tmp_path / "b"
    shutil.copytree(exported.path, bundle)
    images = [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))]
    with TensorRTBackend.from_bundle(bundle, rebuild=True, max_batch=4, flavour="tensorrt_rtx") as trt:
        out = trt.infer(images)  # 18 images: chunks of 4 and a last one of 2 (shape changes)
        again = trt.infer(images[:1])
    ref = OrtBackend.from_bundle(bundle, intra_op_threads=1).infer(images)
    ranges = np.ptp(ref.anomaly_map.reshape(len(images), -1), axis=1)
    err = np.abs(out.anomaly_map - ref.anomaly_map).reshape(len(images), -1).max(axis=1) / ranges
    assert err.max() < 0.05 and np.array_equal(out.failed(trt.threshold), ref.failed(trt.threshold))
    assert np.allclose(again.score, out.score[:1], rtol=1e-3)


def test_plugin_bundle_needs_the_plugin_api_and_cupy() -> None:
    """Before a plugin-mode engine is deserialised: the plugin is registered, and CuPy must be there."""
    from engines.tensorrt import import_tensorrt
    from engines.tensorrt.dft_plugin import plugin_api_problem
    from engines.tensorrt.runtime import _prepare_dft_plugin

    try:
        rt = import_tensorrt()
    except BackendError as err:
        pytest.skip(str(err))
    if plugin_api_problem(rt) is not None:  # TensorRT-RTX 1.7 here
        with pytest.raises(BackendError, match=r"needs NVIDIA TensorRT >= 10.6 with tensorrt.plugin"):
            _prepare_dft_plugin(rt)
    elif importlib.util.find_spec("cupy") is None:
        with pytest.raises(BackendError, match=r"needs CuPy .*pip install cupy-cuda13x"):
            _prepare_dft_plugin(rt)
    else:
        pytest.skip("tensorrt.plugin and CuPy are installed: make gpu-check runs a plugin engine")
