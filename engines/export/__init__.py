"""ONNX graph tools of the engines (onnx only, torch-free).

Exporting a trained model (torch -> ONNX -> bundle, with the parity check) is the trainer's job:
:mod:`trainer.export`. What stays here works on ONNX graphs alone, for the TensorRT builder and the tests:

* :func:`unsupported_ops`, :func:`trt10_issues` (``engines.export.trt_ops``): TensorRT 10 op check;
* :func:`to_mixed_precision` (``engines.export.mixed_precision``): FP16 graph with an FP32 spectral island;
* :func:`dft_to_plugin`, :func:`plugin_to_dft` (``engines.export.plugin``): ``DFT`` nodes to cuFFT
  TensorRT plugin nodes (spectral mode ``plugin``) and back.

Names are imported lazily, so importing this package pulls in nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["dft_to_plugin", "plugin_to_dft", "to_mixed_precision", "trt10_issues", "unsupported_ops"]

_WHERE = {
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
