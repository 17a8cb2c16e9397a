"""TensorRT backend (NVIDIA GPU): the bundle's engine through TensorRT + pycuda.

Importing this module imports neither TensorRT nor pycuda (nor torch). :func:`check_available` says
what is missing before anything is loaded; ``get_backend("tensorrt")`` calls it, so a CPU machine gets a
clear error instead of a silent fallback to another backend. :meth:`TensorRTBackend.from_bundle` picks
the engine that fits the GPU and TensorRT version (see :func:`engines.tensorrt.runtime.open_engine`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends.base import Backend
from engines.bundle import Bundle
from engines.errors import BackendError
from engines.tensorrt import FLAVOURS, INSTALL_HINT

__all__ = ["TensorRTBackend", "check_available"]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_available() -> None:
    """Raise a :class:`BackendError` naming what to install when TensorRT or pycuda is missing."""
    missing = []
    if not any(_installed(f) for f in FLAVOURS):
        missing.append(f"TensorRT: {INSTALL_HINT['tensorrt']}")
    if not _installed("pycuda"):
        missing.append(INSTALL_HINT["pycuda"])
    if missing:
        raise BackendError(
            "backend 'tensorrt' needs TensorRT and pycuda on a machine with an NVIDIA GPU; install "
            + " and ".join(missing)
            + " (or use backend 'onnxruntime': nothing falls back automatically)"
        )


class TensorRTBackend(Backend):
    """Runs the bundle's TensorRT engine on a CUDA GPU.

    Args:
        bundle: the opened bundle.
        runner: the loaded engine (:class:`~engines.tensorrt.runtime.EngineRunner`).
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, runner: Any) -> None:
        super().__init__(bundle)
        self.runner = runner
        self.engine_file: str = runner.record.engine_file

    @classmethod
    def from_bundle(cls, path: str | Path, **options: Any) -> TensorRTBackend:
        """Open the bundle and load the engine that runs here.

        Options:
            device: CUDA device (default 0); precision: ``fp16``/``fp32``/None; engine: a file name;
            rebuild: build an engine from the bundle's ONNX when none fits (default False);
            max_batch: of a rebuilt engine (default 8); flavour: ``tensorrt``/``tensorrt_rtx``/None.

        Raises:
            BackendError: TensorRT or pycuda missing, no GPU, or no fitting engine (see ``open_engine``).
            BundleError: invalid bundle or build record.
        """
        check_available()
        from engines.tensorrt.runtime import open_engine

        allowed = {"device", "precision", "engine", "rebuild", "max_batch", "flavour"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(f"unknown TensorRTBackend options: {unknown} (allowed: {sorted(allowed)})")
        bundle, runner = open_engine(Bundle.open(path), **options)
        return cls(bundle, runner)

    def _forward(self, batch: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.runner.run(batch, valid)
        return maps, scores

    def close(self) -> None:
        """Release the engine, its buffers and the CUDA context."""
        if not self._closed:
            self.runner.close()
        super().close()
