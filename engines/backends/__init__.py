"""Inference backends with one interface (:class:`~engines.backends.base.Backend`), selected by name.

``get_backend(name)`` returns the backend class; nothing falls back silently to another backend. Modules
are imported on demand, so ``import engines.backends`` pulls in neither onnxruntime nor torch:

* ``onnxruntime`` (alias ``ort``): :class:`~engines.backends.ort.OrtBackend`, CPU, the edge default;
* ``torch``: :class:`~engines.backends.torch_backend.TorchBackend`, the reference (needs the trainer);
* ``tensorrt`` (alias ``trt``): :class:`~engines.backends.tensorrt.TensorRTBackend`, NVIDIA GPU; needs
  TensorRT and pycuda, checked when it is asked for (a clear error says what to install).
"""

from __future__ import annotations

import importlib

from engines.backends.base import Backend, Scores
from engines.errors import BackendError

__all__ = ["BACKENDS", "Backend", "Scores", "get_backend"]

BACKENDS = {
    "onnxruntime": ("engines.backends.ort", "OrtBackend"),
    "torch": ("engines.backends.torch_backend", "TorchBackend"),
    "tensorrt": ("engines.backends.tensorrt", "TensorRTBackend"),
}
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def get_backend(name: str) -> type[Backend]:
    """The backend class called ``name`` (``onnxruntime``/``ort``, ``torch``, ``tensorrt``/``trt``).

    Raises:
        BackendError: an unknown name, or a backend whose packages are not installed (for ``tensorrt``:
            TensorRT or pycuda); the message says what to use or install.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {sorted(BACKENDS)}")
    module, cls_name = BACKENDS[key]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        extra = "trainer" if key == "torch" else "engines"
        raise BackendError(
            f"backend {key!r} cannot be imported ({err}): pip install 'masf-edge[{extra}]'"
        ) from None
    if key == "tensorrt":
        mod.check_available()
    backend: type[Backend] = getattr(mod, cls_name)
    return backend
