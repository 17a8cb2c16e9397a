"""ONNX Runtime backend (CPU by default): the edge's embedded inference path.

Imports only numpy, onnxruntime and ``engines.*`` (never torch or timm; tested in a subprocess). The
session is created once, in ``__init__``, with the requested execution providers and nothing else: a
provider that is not available is an error, never a silent fallback to another one. A ``plugin``-mode
bundle (cuFFT TensorRT plugin nodes, no ONNX Runtime kernel) is refused with what to do instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.backends.base import Backend
from engines.bundle import GRAPH_INPUTS, GRAPH_OUTPUTS, Bundle
from engines.errors import BackendError, BundleError

__all__ = ["OrtBackend"]


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendError(
            f"backend 'onnxruntime' needs the onnxruntime package ({err}): pip install 'masf-edge[engines]' "
            "(or onnxruntime alone on the edge)"
        ) from None
    return onnxruntime


class OrtBackend(Backend):
    """Runs the bundle's ONNX graph with ONNX Runtime.

    Args:
        bundle: the opened bundle.
        intra_op_threads: threads inside one op (None: ONNX Runtime's default, all cores).
        providers: execution providers, in order (default: CPU only). Every one must be available.
    """

    name = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        intra_op_threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ) -> None:
        super().__init__(bundle)
        if bundle.manifest["export"]["spectral_mode"] == "plugin":
            raise BackendError(
                f"bundle {bundle.path} has spectral mode 'plugin' (cuFFT TensorRT plugin nodes), which ONNX "
                "Runtime cannot run: use backend 'tensorrt', or re-export with masf-engine export "
                "--spectral-mode gemm (or dft)"
            )
        ort = _import_ort()
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendError(
                f"ONNX Runtime execution provider(s) {missing} not available here (available: "
                f"{ort.get_available_providers()}): install the matching onnxruntime build or use the CPU "
                "provider"
            )
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.inter_op_num_threads = 1
        try:
            # The graph is loaded from bytes checked against the manifest in the same read: a file
            # swapped after Bundle.open is never run.
            graph = bundle.read_verified(bundle.manifest["export"]["file"])
            self._session = ort.InferenceSession(graph, opts, providers=list(providers))
        except BundleError:
            raise
        except Exception as err:  # onnxruntime raises its own exception types (InvalidGraph, Fail, ...)
            raise BundleError(
                f"bundle {bundle.path}: ONNX Runtime cannot load {bundle.onnx_path.name} "
                f"({type(err).__name__}): re-export with masf-engine export"
            ) from None
        self.providers = tuple(self._session.get_providers())
        self._check_io()

    @classmethod
    def from_bundle(cls, path: str | Path, **options: Any) -> OrtBackend:
        """Open and verify the bundle at ``path``; ``options``: ``intra_op_threads``, ``providers``."""
        return cls(Bundle.open(path), **options)

    def _check_io(self) -> None:
        names_in = tuple(i.name for i in self._session.get_inputs())
        names_out = tuple(o.name for o in self._session.get_outputs())
        if names_in != GRAPH_INPUTS or names_out != GRAPH_OUTPUTS:
            raise BundleError(
                f"bundle {self.bundle.path}: graph has inputs {names_in} and outputs {names_out}, expected "
                f"{GRAPH_INPUTS} and {GRAPH_OUTPUTS}: re-export with masf-engine export"
            )
        shape = self._session.get_inputs()[0].shape
        if list(shape[1:]) != [*self.spec.size, 3]:
            raise BundleError(
                f"bundle {self.bundle.path}: graph input {shape} does not match the preprocessing "
                f"{self.spec.height}x{self.spec.width}: re-export with masf-engine export"
            )

    def _forward(self, batch: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = self._session.run(list(GRAPH_OUTPUTS), {GRAPH_INPUTS[0]: batch, GRAPH_INPUTS[1]: valid})
        return np.asarray(amap), np.asarray(score)

    def close(self) -> None:
        """Drop the session (its memory is freed once no reference remains)."""
        super().close()
        self._session = None
