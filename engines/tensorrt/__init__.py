"""TensorRT engines: build (``builder``) and run (``runtime``) with NVIDIA TensorRT or TensorRT-RTX.

Nothing here imports TensorRT, pycuda or torch at import time. :func:`import_tensorrt` finds a TensorRT
Python package when it is needed:

* ``tensorrt``: NVIDIA TensorRT 10.x/11.x (servers, Jetson). Builds for the GPU it runs on, so it needs
  a GPU even to build; the runtime (:mod:`engines.tensorrt.runtime`) uses it with pycuda;
* ``tensorrt_rtx``: TensorRT for RTX (PyPI ``tensorrt-rtx``). Its builder and ONNX parser also run on a
  machine without a GPU (targets chosen with a compute capability such as ``SM86``), which is how the
  build is tested here; only strongly typed networks.

Both expose the same ``Builder`` / ``OnnxParser`` / ``IBuilderConfig`` API where the builder uses them.
:func:`gpu_info` reports the GPU (name, compute capability) through pycuda or ``nvidia-smi``.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from engines.errors import BackendError

__all__ = [
    "FLAVOURS",
    "INSTALL_HINT",
    "GpuInfo",
    "TensorRTModule",
    "gpu_info",
    "import_pycuda",
    "import_tensorrt",
]

FLAVOURS = ("tensorrt", "tensorrt_rtx")
"""Python modules of the two TensorRT flavours, in the order :func:`import_tensorrt` tries them."""
INSTALL_HINT = {
    "tensorrt": "NVIDIA TensorRT >= 10 (pip install tensorrt, from NVIDIA's index, on the GPU machine)",
    "tensorrt_rtx": "TensorRT-RTX (pip install 'masf-edge[tensorrt-build]', i.e. tensorrt-rtx)",
    "pycuda": "pycuda (pip install 'masf-edge[gpu]' on a machine with an NVIDIA GPU, CUDA toolkit, driver)",
}
"""What to install, per missing package."""


@dataclass(frozen=True)
class TensorRTModule:
    """An imported TensorRT Python package.

    Attributes:
        trt: the module (``tensorrt`` or ``tensorrt_rtx``).
        flavour: its name, one of :data:`FLAVOURS`.
        version: ``trt.__version__``.
    """

    trt: Any
    flavour: str
    version: str

    @property
    def major(self) -> int:
        """Major version number."""
        return int(self.version.split(".")[0])

    @property
    def weak_typing(self) -> bool:
        """Whether weakly typed networks (FP16 builder flag, layer precisions) exist: TensorRT 10 only."""
        return self.flavour == "tensorrt" and hasattr(self.trt.BuilderFlag, "FP16")


def import_tensorrt(flavour: str | None = None) -> TensorRTModule:
    """Import TensorRT: ``flavour`` ``"tensorrt"`` or ``"tensorrt_rtx"``, or None to try both in that order.

    Raises:
        BackendError: the package is not installed (the message says what to install).
        ValueError: unknown flavour.
    """
    if flavour is not None and flavour not in FLAVOURS:
        raise ValueError(f"TensorRT flavour must be one of {FLAVOURS} or None, got {flavour!r}")
    for name in (flavour,) if flavour else FLAVOURS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return TensorRTModule(module, name, str(getattr(module, "__version__", "unknown")))
    wanted = [flavour] if flavour else list(FLAVOURS)
    hints = " or ".join(INSTALL_HINT[n] for n in wanted)
    raise BackendError(f"TensorRT is not installed (no {' / '.join(wanted)} module): install {hints}")


def import_pycuda() -> Any:
    """Import ``pycuda.driver`` (not ``pycuda.autoinit``: contexts are managed by the runtime).

    Raises:
        BackendError: pycuda is not installed.
    """
    try:
        return importlib.import_module("pycuda.driver")
    except ImportError:
        raise BackendError(f"pycuda is not installed: install {INSTALL_HINT['pycuda']}") from None


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA GPU.

    Attributes:
        name: e.g. ``"NVIDIA H100 80GB HBM3"``.
        compute_capability: ``(major, minor)``, e.g. ``(9, 0)``.
        source: how it was found (``"pycuda"`` or ``"nvidia-smi"``).
    """

    name: str
    compute_capability: tuple[int, int]
    source: str

    @property
    def sm(self) -> str:
        """Compute capability as TensorRT-RTX spells it, e.g. ``"SM86"``."""
        return f"SM{self.compute_capability[0]}{self.compute_capability[1]}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (compute capability as ``"8.6"``)."""
        major, minor = self.compute_capability
        return {"name": self.name, "compute_capability": f"{major}.{minor}", "source": self.source}


def _gpu_from_pycuda(device: int) -> GpuInfo | None:
    try:
        cuda = importlib.import_module("pycuda.driver")
        cuda.init()
        if device >= cuda.Device.count():
            return None
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return GpuInfo(str(dev.name()), (int(major), int(minor)), "pycuda")
    except Exception:  # not installed, no driver, no device: no GPU from this source
        return None


def _gpu_from_nvidia_smi(device: int) -> GpuInfo | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader", f"--id={device}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        name, cap = (p.strip() for p in out.splitlines()[0].rsplit(",", 1))
        major, minor = (int(p) for p in cap.split("."))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return GpuInfo(name, (major, minor), "nvidia-smi")


def gpu_info(device: int = 0) -> GpuInfo | None:
    """Name and compute capability of CUDA device ``device``, or None where there is no usable GPU."""
    return _gpu_from_pycuda(device) or _gpu_from_nvidia_smi(device)
