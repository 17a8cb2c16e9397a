"""The ``masf::CuFFTDFT`` TensorRT plugin: ONNX ``DFT`` semantics computed with cuFFT through CuPy.

The ``plugin`` spectral mode (:mod:`engines.export.plugin`) replaces each ONNX ``DFT`` node by a
``CuFFTDFT`` node; TensorRT's ONNX parser turns it into this plugin once it is registered with the
quickly deployable plugin API (``tensorrt.plugin``, NVIDIA TensorRT >= 10.6; :func:`register_dft_plugin`):

* ``@trtp.register``: one FP32 input ``[..., n, 1 | 2]`` (real / complex), one FP32 output
  ``[..., m, 2]`` with ``m`` from :func:`output_dims` (``dft_length`` or ``n``; ``m // 2 + 1`` one-sided).
  FP32 only (``@trtp.autotune`` offers the single combination ``FP32, FP32``): the spectral island is FP32.
* ``@trtp.impl``: wraps TensorRT's device pointers as CuPy arrays (``cupy.cuda.UnownedMemory`` +
  ``MemoryPointer``, no copy) and runs ``cupy.fft.fft`` / ``ifft`` / ``rfft`` (cuFFT, single precision) on
  TensorRT's stream (``cupy.cuda.ExternalStream``), then writes the complex result into the output
  buffer on that stream. CuPy caches one cuFFT plan per shape; its work area comes from CuPy's memory pool.

Nothing here imports TensorRT or CuPy at import time (CuPy only inside the impl, so registering, parsing
and building need no CuPy), and never torch. A missing ``tensorrt.plugin`` (TensorRT < 10.6, or
TensorRT-RTX 1.7, whose wheel ships ``tensorrt_rtx.plugin`` without its ``tensorrt_rtx_bindings.plugin``
implementation and whose ONNX parser aborts the process on Python plugins) is a one-line error before
anything is parsed; a missing CuPy is a one-line error naming the wheel to install.

Verified without a GPU: the shape rule and the transform (:func:`output_dims`, :func:`dft` with numpy)
against ONNX Runtime's ``DFT``, and the registered functions' signatures against the QDP schema. Not
verified (no GPU and no NVIDIA TensorRT here): registration with real ``tensorrt.plugin``, the engine
build, and the impl on a GPU (``make gpu-check`` does all three).
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin reads the registered functions'
# annotations as objects (``issubclass(annotation, TensorDesc)``), which postponed annotations would
# turn into strings.

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engines.errors import BackendError
from engines.export.plugin import PLUGIN_NAME, PLUGIN_NAMESPACE
from engines.tensorrt import TensorRTModule

__all__ = [
    "CUPY_HINT",
    "PLUGIN_ID",
    "DFTParams",
    "define_plugin",
    "dft",
    "import_cupy",
    "import_plugin_api",
    "output_dims",
    "plugin_api_problem",
    "register_dft_plugin",
    "run_on_device",
]

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
"""``tensorrt.plugin`` id, ``namespace::name``; the ONNX node's ``op_type`` / ``plugin_namespace``."""
CUPY_HINT = (
    "pip install cupy-cuda13x (CUDA 13 driver; cupy-cuda12x for CUDA 12), i.e. pip install 'masf-edge[gpu]'"
)
_REGISTERED: set[str] = set()
"""TensorRT modules (``trt.__name__``) whose process-wide plugin registry already has the plugin."""


@dataclass(frozen=True)
class DFTParams:
    """The plugin's attributes (those of ONNX ``DFT``).

    Attributes:
        axis: transform axis, counted on the input rank (trailing real/complex dim included); negative
            counts from the back. Valid: ``-rank <= axis <= -2`` or ``0 <= axis <= rank - 2``.
        inverse: 1 for the inverse transform (scaled by ``1 / m``, as ONNX ``DFT``).
        onesided: 1 for the one-sided (real-to-complex) forward transform.
        dft_length: transform length (0: the signal length); the signal is cut or zero-padded to it.
    """

    axis: int
    inverse: int
    onesided: int
    dft_length: int

    def resolve_axis(self, rank: int) -> int:
        """The non-negative axis for an input of rank ``rank``.

        Raises:
            ValueError: the axis is the trailing real/complex dim or outside the input.
        """
        axis = self.axis + rank if self.axis < 0 else self.axis
        if not 0 <= axis <= rank - 2:
            msg = f"{PLUGIN_ID}: axis {self.axis} is invalid for a rank-{rank} input [..., n, 1|2]"
            raise ValueError(msg)
        return axis

    def check(self) -> None:
        """Raise ``ValueError`` on attribute values the plugin does not implement."""
        if self.inverse not in (0, 1) or self.onesided not in (0, 1) or self.dft_length < 0:
            raise ValueError(f"{PLUGIN_ID}: invalid attributes {self}")
        if self.inverse and self.onesided:
            raise ValueError(f"{PLUGIN_ID}: an inverse one-sided DFT is not supported")


def output_dims(dims: Sequence[Any], params: DFTParams) -> list[Any]:
    """Output dims for input dims ``dims`` (ints, or ``tensorrt.plugin`` ShapeExprs: ``//`` and ``+``).

    ``[..., n, c] -> [..., m, 2]``: ``m = dft_length or n``, ``m // 2 + 1`` when one-sided.
    """
    params.check()
    axis = params.resolve_axis(len(dims))
    out = list(dims)
    length = params.dft_length or dims[axis]
    out[axis] = length // 2 + 1 if params.onesided else length
    out[-1] = 2
    return out


def dft(xp: Any, x: Any, params: DFTParams) -> Any:
    """ONNX ``DFT`` of ``x`` with array module ``xp`` (``cupy`` on the GPU, ``numpy`` in tests).

    Args:
        xp: ``cupy`` or ``numpy``.
        x: C-contiguous float32 ``[..., n, 1]`` (real) or ``[..., n, 2]`` (complex, interleaved).
        params: the node's attributes.

    Returns:
        Complex64 ``[..., m]`` (viewed as float32 ``[..., m, 2]`` it is the ONNX output).
    """
    params.check()
    axis = params.resolve_axis(x.ndim)
    if x.shape[-1] == 2:
        signal = x.view(xp.complex64).reshape(x.shape[:-1])  # interleaved re/im: a zero-copy view
    elif x.shape[-1] == 1:
        signal = x.reshape(x.shape[:-1])
    else:
        raise ValueError(f"{PLUGIN_ID}: the last input dim must be 1 (real) or 2 (complex), got {x.shape}")
    n = params.dft_length or None
    if params.onesided:
        y = xp.fft.rfft(signal, n=n, axis=axis)
    elif params.inverse:
        y = xp.fft.ifft(signal, n=n, axis=axis)
    else:
        y = xp.fft.fft(signal, n=n, axis=axis)
    return y.astype(xp.complex64, copy=False)


def import_cupy() -> Any:
    """Import CuPy (the plugin's cuFFT binding).

    Raises:
        BackendError: CuPy is not installed (the message names the wheel).
    """
    try:
        return importlib.import_module("cupy")
    except ImportError as err:
        raise BackendError(
            f"the cuFFT plugin of a plugin-mode bundle needs CuPy ({err}): {CUPY_HINT}"
        ) from None


def _device_array(cp: Any, ptr: int, shape: tuple[int, ...], owner: Any) -> Any:
    """A float32 CuPy array over TensorRT's device buffer ``ptr`` (not owned, not copied)."""
    size = 4
    for d in shape:
        size *= int(d)
    memory = cp.cuda.UnownedMemory(int(ptr), size, owner)
    return cp.ndarray(shape, dtype=cp.float32, memptr=cp.cuda.MemoryPointer(memory, 0))


def run_on_device(
    x_ptr: int, x_shape: Sequence[int], y_ptr: int, y_shape: Sequence[int], params: DFTParams, stream: int,
    owner: Any = None,
) -> None:  # fmt: skip
    """Compute the DFT of the device tensor at ``x_ptr`` into the one at ``y_ptr`` on CUDA ``stream``.

    GPU only (written against CuPy's API; run by ``make gpu-check``, not on a machine without a GPU).

    Raises:
        BackendError: CuPy is missing.
    """
    cp = import_cupy()
    with cp.cuda.ExternalStream(int(stream)):
        x = _device_array(cp, x_ptr, tuple(int(d) for d in x_shape), owner)
        y = _device_array(cp, y_ptr, tuple(int(d) for d in y_shape), owner)
        result = dft(cp, x, params)  # cuFFT on the current (TensorRT's) stream
        y.view(cp.complex64).reshape(result.shape)[...] = result  # copy kernel on the same stream


def define_plugin(trtp: Any, float32: Any) -> dict[str, Callable[..., Any]]:
    """Register ``masf::CuFFTDFT`` with the ``tensorrt.plugin`` module ``trtp``.

    Args:
        trtp: ``tensorrt.plugin`` (or a stand-in with ``register``, ``impl``, ``autotune``,
            ``TensorDesc``, ``Tensor``, ``AutoTuneCombination`` and ``from_shape_expr``).
        float32: the TensorRT float32 data type (``trt.float32``).

    Returns:
        The decorated functions, ``{"register": ..., "autotune": ..., "impl": ...}``.
    """

    # The attribute names and their order are PLUGIN_ATTRS: the parser passes the ONNX node's
    # attributes by name, and QDP checks the impl's signature against this one.
    @trtp.register(PLUGIN_ID)
    def cufft_dft_desc(
        inp0: trtp.TensorDesc, axis: int, inverse: int, onesided: int, dft_length: int
    ) -> trtp.TensorDesc:
        if inp0.dtype != float32:
            msg = f"{PLUGIN_ID} takes a float32 input (the FP32 spectral island), got {inp0.dtype}"
            raise ValueError(msg)
        dims = output_dims(list(inp0.shape_expr), DFTParams(axis, inverse, onesided, dft_length))
        return trtp.from_shape_expr(tuple(dims), dtype=float32)

    @trtp.autotune(PLUGIN_ID)
    def cufft_dft_autotune(
        inp0: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32, FP32", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def cufft_dft_impl(
        inp0: trtp.Tensor, axis: int, inverse: int, onesided: int, dft_length: int,
        outputs: tuple[trtp.Tensor], stream: int,
    ) -> None:  # fmt: skip
        out = outputs[0]
        params = DFTParams(axis, inverse, onesided, dft_length)
        run_on_device(inp0.data_ptr, tuple(inp0.shape), out.data_ptr, tuple(out.shape), params, stream, inp0)

    return {"register": cufft_dft_desc, "autotune": cufft_dft_autotune, "impl": cufft_dft_impl}


def import_plugin_api(rt: TensorRTModule) -> Any:
    """``tensorrt.plugin`` (or ``tensorrt_rtx.plugin``) of the TensorRT module ``rt``.

    Raises:
        BackendError: this TensorRT has no usable Python plugin API (see :func:`plugin_api_problem`).
    """
    problem = plugin_api_problem(rt)
    if problem is not None:
        raise BackendError(problem)
    return importlib.import_module(f"{rt.trt.__name__}.plugin")


def plugin_api_problem(rt: TensorRTModule) -> str | None:
    """Why ``rt`` cannot take the cuFFT plugin (a one-line message saying what to do), or None."""
    try:
        importlib.import_module(f"{rt.trt.__name__}.plugin")
    except ImportError as err:
        reason = f"no {rt.trt.__name__}.plugin ({err})"
    else:
        if hasattr(rt.trt, "INetworkDefinition") and not hasattr(rt.trt.INetworkDefinition, "add_plugin_v3"):
            reason = "its networks take no plugin layers"
        else:
            return None
    return (
        f"the cuFFT plugin (spectral mode 'plugin') needs NVIDIA TensorRT >= 10.6 with tensorrt.plugin; "
        f"{rt.flavour} {rt.version} cannot take it ({reason}): use NVIDIA TensorRT (--tensorrt tensorrt) "
        "on the GPU machine, or re-export the bundle with --spectral-mode gemm or dft"
    )


def register_dft_plugin(rt: TensorRTModule) -> bool:
    """Register ``masf::CuFFTDFT`` in ``rt``'s plugin registry (once per process and TensorRT module).

    Call it before parsing a plugin-mode graph and before deserialising its engine. Needs no GPU and no
    CuPy (the impl imports CuPy when TensorRT first runs the plugin).

    Returns:
        True when it registered now, False when it was registered before.

    Raises:
        BackendError: ``rt`` has no usable ``tensorrt.plugin`` (see :func:`plugin_api_problem`).
    """
    name = str(rt.trt.__name__)
    if name in _REGISTERED:
        return False
    trtp = import_plugin_api(rt)
    define_plugin(trtp, rt.trt.float32)
    _REGISTERED.add(name)
    return True
