"""Export side of the engines: torch model -> ONNX graph -> bundle (needs torch, onnx, onnxruntime).

Names are imported lazily, so ``engines.export.trt_ops`` (onnx only) can be used without torch.

* :func:`export_onnx` (``engines.export.onnx``): the model's inference path as one ONNX graph;
* :func:`check_parity` (``engines.export.parity``): ONNX Runtime vs PyTorch eager;
* :func:`export_run` (``engines.export.from_run``): run directory -> verified bundle (``masf-engine export``);
* :func:`unsupported_ops`, :func:`trt10_issues` (``engines.export.trt_ops``): TensorRT 10 op check;
* :func:`to_mixed_precision` (``engines.export.mixed_precision``): FP16 graph with an FP32 spectral island;
* :func:`dft_to_plugin`, :func:`plugin_to_dft` (``engines.export.plugin``, onnx only): ``DFT`` nodes to
  cuFFT TensorRT plugin nodes (spectral mode ``plugin``) and back.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "check_parity",
    "dft_to_plugin",
    "export_onnx",
    "export_run",
    "plugin_to_dft",
    "to_mixed_precision",
    "trt10_issues",
    "unsupported_ops",
]

_WHERE = {
    "export_onnx": "engines.export.onnx",
    "check_parity": "engines.export.parity",
    "export_run": "engines.export.from_run",
    "to_mixed_precision": "engines.export.mixed_precision",
    "dft_to_plugin": "engines.export.plugin",
    "plugin_to_dft": "engines.export.plugin",
    "trt10_issues": "engines.export.trt_ops",
    "unsupported_ops": "engines.export.trt_ops",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
