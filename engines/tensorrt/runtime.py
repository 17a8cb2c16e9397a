"""Run a bundle's TensorRT engine with TensorRT + pycuda (GPU only; written against TensorRT 10's API).

:func:`open_engine` picks the bundle's engine that fits the running TensorRT and GPU (build record vs
``trt.__version__`` and the device's compute capability). None fits: a :class:`BackendError` naming
each engine's problem, or, with ``rebuild=True`` (explicit), a new engine is built from the bundle's
ONNX on this machine and added to the bundle.

:class:`EngineRunner` deserialises the engine once and allocates everything once, for the profile's
largest batch: page-locked host buffers (``cuda.pagelocked_empty``) and device buffers
(``cuda.mem_alloc``) per I/O tensor, their addresses bound with ``set_tensor_address``, one CUDA stream.
Per call: copy the frames into the page-locked input buffers, ``memcpy_htod_async``,
``set_input_shape`` (only when the batch size changes), ``execute_async_v3``, ``memcpy_dtoh_async``,
one stream synchronise. No GPU or pinned memory is allocated per frame; the returned arrays are copies
owned by the caller. Batches larger than the profile run in chunks.

The CUDA context is the device's primary context, pushed for each call and popped after, so a runner
can be used from any one thread at a time (a lock serialises calls). Nothing is imported at module
import time: tensorrt and pycuda are imported by :func:`open_engine` / :class:`EngineRunner`.

A ``plugin``-mode bundle's engine holds ``masf::CuFFTDFT`` plugin layers: :func:`open_engine` registers
the plugin (``tensorrt.plugin``) before the engine is deserialised and checks that CuPy, which runs its
cuFFT calls, is installed (written against the real APIs; unverified without a GPU: ``make gpu-check``).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engines.bundle import GRAPH_INPUTS, GRAPH_OUTPUTS, Bundle
from engines.errors import BackendError, BundleError
from engines.tensorrt import TensorRTModule, gpu_info, import_pycuda, import_tensorrt
from engines.tensorrt.record import BuildRecord

__all__ = ["EngineRunner", "open_engine"]


class EngineRunner:
    """One deserialised engine with its buffers, stream and execution context (see the module docstring).

    Args:
        engine_path: the serialised engine.
        record: its build record (sha256 checked; ``version_compatible`` allows the engine's host code).
        rt: the TensorRT module to run it with (the record's flavour).
        device: CUDA device index.

    Raises:
        BundleError: the engine file does not match its record.
        BackendError: pycuda missing, no such device, or TensorRT cannot deserialise the engine.
    """

    def __init__(
        self, engine_path: str | Path, record: BuildRecord, rt: TensorRTModule, device: int = 0
    ) -> None:
        engine_path = Path(engine_path)
        blob = engine_path.read_bytes()  # hashed and deserialised from the same bytes: no check-then-use race
        if hashlib.sha256(blob).hexdigest() != record.engine_sha256:
            raise BundleError(f"engine {engine_path} does not match its build record: rebuild it")
        self.record = record
        self.rt = rt
        self._lock = threading.Lock()
        self._closed = False
        cuda = import_pycuda()
        self._cuda = cuda
        cuda.init()
        if device >= cuda.Device.count():
            raise BackendError(f"CUDA device {device} not found ({cuda.Device.count()} device(s))")
        self._cuda_ctx = cuda.Device(device).retain_primary_context()
        self._cuda_ctx.push()
        try:
            self._setup(blob)
        except BaseException:
            self._cuda_ctx.pop()
            self._cuda_ctx.detach()
            raise
        self._cuda_ctx.pop()

    def _setup(self, blob: bytes) -> None:
        trt, cuda = self.rt.trt, self._cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.record.version_compatible:
            self._runtime.engine_host_code_allowed = True  # the lean runtime inside the plan
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise BackendError(
                f"{self.rt.flavour} {self.rt.version} could not deserialise {self.record.engine_file} (see "
                "the TensorRT log): rebuild it on this machine (masf-engine build)"
            )
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        if inputs != GRAPH_INPUTS or outputs != GRAPH_OUTPUTS:
            raise BackendError(
                f"engine I/O {inputs} -> {outputs}, expected {GRAPH_INPUTS} -> {GRAPH_OUTPUTS}"
            )
        self._context = engine.create_execution_context()
        self._stream = cuda.Stream()
        self._context.set_optimization_profile_async(0, self._stream.handle)
        max_shapes = {n: tuple(engine.get_tensor_profile_shape(n, 0)[2]) for n in inputs}
        self.max_batch = int(max_shapes[GRAPH_INPUTS[0]][0])
        for name, shape in max_shapes.items():
            self._context.set_input_shape(name, shape)
        self._batch = self.max_batch
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, Any] = {}
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self._host[name] = cuda.pagelocked_empty(shape, dtype)
            self._device[name] = cuda.mem_alloc(max(self._host[name].nbytes, 1))
            self._context.set_tensor_address(name, int(self._device[name]))
        self._stream.synchronize()

    def _set_batch(self, k: int) -> None:
        if k != self._batch:
            for name in GRAPH_INPUTS:
                self._context.set_input_shape(name, (k, *self._host[name].shape[1:]))
            self._batch = k

    def run(self, image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score a preprocessed batch.

        Args:
            image: uint8 ``[N, H, W, 3]``; valid: uint8 ``[N, 1, H, W]``.

        Returns:
            ``(anomaly_map float32 [N, 1, H, W], score float32 [N])``.
        """
        if self._closed:
            raise RuntimeError("TensorRT engine runner is closed")
        cuda = self._cuda
        n = image.shape[0]
        maps = np.empty((n, *self._host[GRAPH_OUTPUTS[0]].shape[1:]), np.float32)
        scores = np.empty((n,), np.float32)
        with self._lock:
            self._cuda_ctx.push()
            try:
                for start in range(0, n, self.max_batch):
                    k = min(self.max_batch, n - start)
                    self._set_batch(k)
                    for name, array in zip(GRAPH_INPUTS, (image, valid), strict=True):
                        self._host[name][:k] = array[start : start + k]
                        cuda.memcpy_htod_async(self._device[name], self._host[name][:k], self._stream)
                    if not self._context.execute_async_v3(self._stream.handle):
                        raise BackendError(f"TensorRT failed to run {self.record.engine_file} (see its log)")
                    for name in GRAPH_OUTPUTS:
                        cuda.memcpy_dtoh_async(self._host[name][:k], self._device[name], self._stream)
                    self._stream.synchronize()
                    maps[start : start + k] = self._host[GRAPH_OUTPUTS[0]][:k]
                    scores[start : start + k] = self._host[GRAPH_OUTPUTS[1]][:k]
            finally:
                self._cuda_ctx.pop()
        return maps, scores

    def close(self) -> None:
        """Free the device buffers and TensorRT objects, release the CUDA context (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._cuda_ctx.push()
            try:
                for allocation in self._device.values():
                    allocation.free()
                self._device.clear()
                self._host.clear()
                del self._context, self._engine, self._runtime, self._stream
            finally:
                self._cuda_ctx.pop()
                self._cuda_ctx.detach()


def _prepare_dft_plugin(rt: TensorRTModule) -> None:
    """A plugin-mode bundle: register the cuFFT plugin before deserialising, and check CuPy is there.

    Raises:
        BackendError: no ``tensorrt.plugin`` in ``rt``, or no CuPy (each says what to do).
    """
    from engines.tensorrt.dft_plugin import import_cupy, register_dft_plugin

    register_dft_plugin(rt)
    import_cupy()  # the plugin's impl runs cuFFT through CuPy: say so now, not at the first frame


def open_engine(
    bundle: Bundle,
    device: int = 0,
    precision: str | None = None,
    engine: str | None = None,
    rebuild: bool = False,
    max_batch: int = 8,
    flavour: str | None = None,
) -> tuple[Bundle, EngineRunner]:
    """Load the bundle's engine that runs on this machine (or rebuild one from the bundle's ONNX).

    Args:
        bundle: the opened (verified) bundle.
        device: CUDA device index.
        precision: only engines of this precision (``fp16``/``fp32``; None: any, rebuild: ``fp16``).
        engine: a specific engine file of the bundle.
        rebuild: when no engine fits, build one here from ``model.onnx`` and add it to the bundle.
        max_batch: largest batch of a rebuilt engine.
        flavour: TensorRT flavour to use (None: ``tensorrt``, else ``tensorrt_rtx``).

    Returns:
        ``(bundle, runner)``: the bundle (re-opened after a rebuild) and the engine runner.

    Raises:
        BackendError: TensorRT/pycuda missing, no GPU, or no fitting engine without ``rebuild`` (the
            message lists each engine's problem and the command that builds one); for a ``plugin``-mode
            bundle also a TensorRT without ``tensorrt.plugin`` or a missing CuPy.
    """
    from engines.tensorrt.bundle_engines import build_bundle_engine, select_engine

    rt = import_tensorrt(flavour)
    import_pycuda()
    if bundle.manifest["export"]["spectral_mode"] == "plugin":
        _prepare_dft_plugin(rt)
    gpu = gpu_info(device)
    if gpu is None:
        raise BackendError(f"backend 'tensorrt': no CUDA GPU {device} found (pycuda / nvidia-smi)")
    entry, record, problems = select_engine(
        bundle, rt.flavour, rt.version, gpu.compute_capability, precision, engine
    )
    if entry is None and rebuild:
        sm = gpu.sm if rt.flavour == "tensorrt_rtx" else None
        bundle, _ = build_bundle_engine(
            bundle.path, precision or "fp16", max_batch, compute_capability=sm, flavour=rt.flavour
        )
        entry, record, problems = select_engine(
            bundle, rt.flavour, rt.version, gpu.compute_capability, precision, engine
        )
    if entry is None or record is None:
        found = "; ".join(problems) if problems else "the bundle has no TensorRT engine"
        raise BackendError(
            f"bundle {bundle.path}: no engine runs on {gpu.name} ({gpu.sm}) with {rt.flavour} {rt.version} "
            f"({found}): build one here with masf-engine build --bundle {bundle.path}, or pass rebuild=True"
        )
    return bundle, EngineRunner(bundle.file(entry["file"]), record, rt, device)
