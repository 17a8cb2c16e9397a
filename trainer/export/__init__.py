"""Export (torch side): trained model -> ONNX graph -> verified bundle.

* :func:`export_onnx` (``trainer.export.onnx``): the model's inference path as one ONNX graph;
* :func:`check_parity` (``trainer.export.parity``): ONNX Runtime vs PyTorch eager;
* :func:`export_run` (``trainer.export.from_run``): run directory -> verified bundle (``masf-engine
  export``, found by the torch-free CLI through the ``masf_edge.exporters`` entry point).

The bundle format, the ONNX graph tools and the backends are the torch-free contract in :mod:`engines`;
dependencies run one way: trainer -> engines <- edge. Names are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["check_parity", "export_onnx", "export_run"]

_WHERE = {
    "export_onnx": "trainer.export.onnx",
    "check_parity": "trainer.export.parity",
    "export_run": "trainer.export.from_run",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
