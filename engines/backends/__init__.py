"""Inference backends with one interface (:class:`~engines.backends.base.Backend`), selected by name.

``get_backend(name)`` returns the backend class; nothing falls back silently to another backend. Modules
are imported on demand, so ``import engines.backends`` pulls in neither onnxruntime nor torch:

* ``onnxruntime`` (alias ``ort``): :class:`~engines.backends.ort.OrtBackend`, CPU, the edge default;
* ``torch``: :class:`~engines.backends.torch_backend.TorchBackend`, the reference (needs the trainer);
* ``tensorrt`` (alias ``trt``): not available in this build yet (a clear error says so).
"""

from __future__ import annotations

import importlib

from engines.backends.base import Backend, Scores
from engines.errors import BackendError

__all__ = ["BACKENDS", "Backend", "Scores", "get_backend"]

BACKENDS = {
    "onnxruntime": ("engines.backends.ort", "OrtBackend"),
    "torch": ("engines.backends.torch_backend", "TorchBackend"),
}
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def get_backend(name: str) -> type[Backend]:
    """The backend class called ``name`` (``onnxruntime``/``ort``, ``torch``).

    Raises:
        BackendError: ``tensorrt`` (not in this build yet), an unknown name, or a backend whose packages
            are not installed; the message says what to use or install.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "tensorrt":
        raise BackendError(
            "backend 'tensorrt' is not available in this build yet (TensorRT engines arrive with "
            "'masf-engine build'); it will need NVIDIA TensorRT >= 10 and pycuda on a GPU machine. "
            "Use backend 'onnxruntime' meanwhile"
        )
    if key not in BACKENDS:
        raise BackendError(
            f"unknown backend {name!r}: choose one of {sorted(BACKENDS)} (or 'tensorrt' later)"
        )
    module, cls_name = BACKENDS[key]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        extra = "trainer" if key == "torch" else "engines"
        raise BackendError(
            f"backend {key!r} cannot be imported ({err}): pip install 'masf-edge[{extra}]'"
        ) from None
    backend: type[Backend] = getattr(mod, cls_name)
    return backend
