"""Inference backends with one interface (:class:`~engines.backends.base.Backend`), selected by name.

``get_backend(name)`` returns the backend class; nothing falls back silently to another backend. Modules
are imported on demand, so ``import engines.backends`` pulls in neither onnxruntime nor torch:

* ``onnxruntime`` (alias ``ort``): :class:`~engines.backends.ort.OrtBackend`, CPU, the edge default;
* ``torch``: the trainer's reference (``trainer.torch_backend.TorchBackend``), found through the
  ``masf_edge.backends`` entry point group, so this package never names the trainer;
* ``tensorrt`` (alias ``trt``): :class:`~engines.backends.tensorrt.TensorRTBackend`, NVIDIA GPU; needs
  TensorRT and pycuda, checked when it is asked for (a clear error says what to install).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from engines.backends.base import Backend, Scores
from engines.errors import BackendError

__all__ = ["BACKENDS", "Backend", "Scores", "get_backend"]

BACKENDS = {
    "onnxruntime": ("engines.backends.ort", "OrtBackend"),
    "tensorrt": ("engines.backends.tensorrt", "TensorRTBackend"),
}
"""The torch-free backends; others (``torch``) are entry points of the group :data:`ENTRY_POINT_GROUP`."""
ENTRY_POINT_GROUP = "masf_edge.backends"
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def get_backend(name: str) -> type[Backend]:
    """The backend class called ``name`` (``onnxruntime``/``ort``, ``torch``, ``tensorrt``/``trt``).

    Raises:
        BackendError: an unknown name, or a backend whose packages are not installed (for ``tensorrt``:
            TensorRT or pycuda); the message says what to use or install.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    plugins = {ep.name: ep.value.split(":") for ep in entry_points(group=ENTRY_POINT_GROUP)}
    known = {**plugins, **BACKENDS}
    if key not in known:
        hint = (
            " (the torch reference needs the trainer: pip install 'masf-edge[trainer]')"
            if key == "torch"
            else ""
        )
        raise BackendError(f"unknown backend {name!r}: choose one of {sorted(known)}{hint}")
    module, cls_name = known[key]
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
