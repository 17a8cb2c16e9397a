"""ONNX -> TensorRT engine, with the spectral subgraph and the bank distances kept in FP32.

One builder for NVIDIA TensorRT (10.x, 11.x) and TensorRT-RTX: both share ``Builder``, ``OnnxParser``,
``IBuilderConfig`` (workspace pool, optimisation profile, TF32 flag) and ``build_serialized_network``.
Two precision strategies for FP16:

* ``strongly_typed`` (default): the FP32 graph is converted to a mixed-precision graph with explicit Casts
  (:mod:`engines.export.mixed_precision`) and parsed into a ``STRONGLY_TYPED`` network, where every
  layer's type follows from the graph. The only mode of TensorRT-RTX and TensorRT 11.
* ``weak_typing`` (TensorRT 10 only): the FP32 graph in a weakly typed network with ``BuilderFlag.FP16``
  and ``OBEY_PRECISION_CONSTRAINTS``; every layer from the island (its ONNX node name, from the layer's
  ``[ONNX Layer: ...]`` metadata or its name, has a scope in ``fp32_scopes``), and every constant that
  only the island reads, gets ``layer.precision = float32`` and ``set_output_type(j, float32)``
  (:func:`select_fp32_layers` is the pure selection, :func:`apply_fp32_constraints` applies it).
  Some 10.0.x builds ignored these constraints (NVIDIA/TensorRT#3941): prefer strong typing.

A ``plugin``-mode graph (cuFFT ``masf::CuFFTDFT`` nodes, :mod:`engines.export.plugin`) gets its plugin
registered (:func:`engines.tensorrt.dft_plugin.register_dft_plugin`, ``tensorrt.plugin``) before it is
parsed; a TensorRT without that API (TensorRT-RTX 1.7, TensorRT < 10.6) is a :class:`BuildError` before
parsing. The plugin nodes are in the spectral scopes, so they stay in the FP32 island, and the plugin
declares FP32 only.

TF32 is cleared in every build, so FP32 GEMMs of the spectral island are true FP32. The optimisation
profile spans batch 1..``max_batch`` on ``image`` and ``valid``. A timing cache is loaded and saved where
the API uses it (TensorRT; in TensorRT-RTX it is a no-op and is skipped). Each build writes the engine
and its :class:`~engines.tensorrt.record.BuildRecord` next to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines.bundle import GRAPH_INPUTS, GRAPH_OUTPUTS, sha256_file
from engines.errors import BuildError, EngineError
from engines.export.mixed_precision import DEFAULT_FP32_SCOPES, in_scopes, node_scope
from engines.fileio import write_atomic
from engines.tensorrt import TensorRTModule, gpu_info, import_tensorrt
from engines.tensorrt.record import BuildRecord, record_path

__all__ = [
    "PRECISIONS",
    "LayerInfo",
    "apply_fp32_constraints",
    "build_engine",
    "describe_layers",
    "normalize_sm",
    "parse_onnx",
    "register_graph_plugins",
    "select_fp32_layers",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
_FLOAT_TYPES = {"FLOAT", "HALF", "BF16"}
_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.*?)\]")


def _name(enum_value: Any) -> str:
    return str(getattr(enum_value, "name", str(enum_value).rpartition(".")[2]))


# -- layer selection for weakly typed builds -----------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    """A network layer as plain data (for :func:`select_fp32_layers`).

    Attributes:
        index: position in the network.
        name: TensorRT layer name (the ONNX parser uses the node name, plus a suffix for helper layers).
        onnx_node: the ONNX node it came from (``[ONNX Layer: ...]`` metadata, else ``name``).
        type: layer type name (``CONVOLUTION``, ``MATRIX_MULTIPLY``, ``CONSTANT``, ...).
        inputs: names of its input tensors; ``outputs``: of its output tensors.
        output_dtypes: data type names of its outputs (``FLOAT``, ``HALF``, ``INT64``, ...).
    """

    index: int
    name: str
    onnx_node: str
    type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    output_dtypes: tuple[str, ...]

    @property
    def is_float(self) -> bool:
        """Whether it produces a floating-point tensor."""
        return any(d in _FLOAT_TYPES for d in self.output_dtypes)


def describe_layers(network: Any) -> list[LayerInfo]:
    """Every layer of a parsed ``INetworkDefinition`` (TensorRT or TensorRT-RTX) as :class:`LayerInfo`."""
    out = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        meta = _ONNX_LAYER.search(str(getattr(layer, "metadata", "") or ""))
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        out.append(
            LayerInfo(
                index=i,
                name=str(layer.name),
                onnx_node=meta.group(1) if meta else str(layer.name),
                type=_name(layer.type),
                inputs=tuple(t.name for t in ins if t is not None),
                outputs=tuple(t.name for t in outs),
                output_dtypes=tuple(_name(t.dtype) for t in outs),
            )
        )
    return out


def select_fp32_layers(
    layers: Sequence[LayerInfo], scopes: Sequence[str] = DEFAULT_FP32_SCOPES
) -> list[LayerInfo]:
    """The layers to pin to FP32 in a weakly typed FP16 build (pure function).

    A layer is selected when it produces a float tensor, is not a ``SHAPE`` layer, and its ONNX node's
    module path has a component containing one of ``scopes``. A float ``CONSTANT`` layer, or a helper
    layer the parser added (``ONNXTRT_*``, e.g. a broadcast of a constant), is selected when every layer
    that reads it is selected (the DFT bases, band matrices and memory banks, with their broadcasts).

    Returns:
        The selected layers in network order.
    """
    island = {
        info.index
        for info in layers
        if info.is_float and info.type != "SHAPE" and in_scopes(node_scope(info.onnx_node), scopes)
    }
    readers: dict[str, list[int]] = {}
    for info in layers:
        for name in info.inputs:
            readers.setdefault(name, []).append(info.index)
    for info in reversed(layers):  # readers come later in the network: one backward pass
        feeder = info.type == "CONSTANT" or (info.name == info.onnx_node and info.name.startswith("ONNXTRT_"))
        if feeder and info.is_float and info.index not in island:
            users = [r for name in info.outputs for r in readers.get(name, [])]
            if users and all(u in island for u in users):
                island.add(info.index)
    return [info for info in layers if info.index in island]


def apply_fp32_constraints(network: Any, trt: Any, scopes: Sequence[str] = DEFAULT_FP32_SCOPES) -> list[str]:
    """Pin the island of a weakly typed network to FP32 (TensorRT 10 API).

    Sets ``layer.precision = trt.float32`` (except on constants) and ``layer.set_output_type(j,
    trt.float32)`` on every float output of the layers of :func:`select_fp32_layers`. Takes effect with
    ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``.

    Returns:
        Names of the pinned layers.
    """
    pinned = []
    for info in select_fp32_layers(describe_layers(network), scopes):
        layer = network.get_layer(info.index)
        if info.type != "CONSTANT":
            layer.precision = trt.float32
        for j, dtype in enumerate(info.output_dtypes):
            if dtype in _FLOAT_TYPES:
                layer.set_output_type(j, trt.float32)
        pinned.append(info.name)
    return pinned


# -- parsing -------------------------------------------------------------------------------------------------


def _capture_logger(trt: Any) -> Any:
    class _Capture(trt.ILogger):
        """Keeps errors for the one-line messages; drops the rest (TensorRT is verbose)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())

    return _Capture()


def _parser_summary(parser: Any, path: Path) -> str:
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errors:
        return f"TensorRT's ONNX parser rejected {path.name} without saying why: check it with onnx.checker"
    first = errors[0]
    code = _name(first.code())
    node = first.node_name() or (f"#{first.node()}" if first.node() >= 0 else "")
    where = f"node {node} ({first.node_operator()}): " if node else ""
    desc = " ".join(str(first.desc()).split())[:300]
    hint = (
        "not an ONNX model (corrupt or truncated file): re-export the bundle"
        if code == "MODEL_DESERIALIZE_FAILED"
        else "check the graph with engines.export.trt_ops.trt10_issues"
    )
    head = f"TensorRT's ONNX parser rejected {path.name} ({len(errors)} error(s); first {code}"
    return f"{head}: {where}{desc}): {hint}"


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if strongly_typed and flag is not None else 0


def parse_onnx(
    rt: TensorRTModule, onnx_path: str | Path, strongly_typed: bool = True
) -> tuple[Any, Any, Any, Any]:
    """Parse ``onnx_path`` into a new network (registering the plugins it uses first).

    Returns:
        ``(builder, network, parser, logger)`` (keep them alive together).

    Raises:
        BuildError: missing file, the parser's errors summarised in one line, or plugin nodes this
            TensorRT cannot take.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise BuildError(f"ONNX file {path} not found: export a bundle first (masf-engine export)")
    register_graph_plugins(rt, path)  # before the parser meets a plugin node
    trt = rt.trt
    logger = _capture_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        raise BuildError(_parser_summary(parser, path))
    names_in = tuple(network.get_input(i).name for i in range(network.num_inputs))
    names_out = tuple(network.get_output(i).name for i in range(network.num_outputs))
    if names_in != GRAPH_INPUTS or names_out != GRAPH_OUTPUTS:
        raise BuildError(
            f"{path.name}: inputs {names_in} / outputs {names_out}, expected {GRAPH_INPUTS} / "
            f"{GRAPH_OUTPUTS}: build from a bundle's model.onnx"
        )
    return builder, network, parser, logger


def register_graph_plugins(rt: TensorRTModule, onnx_path: str | Path) -> list[str]:
    """Register the plugins the graph at ``onnx_path`` uses (the cuFFT DFT plugin), before parsing it.

    Returns:
        The plugin ids the graph uses (``[]`` for gemm/dft graphs, or a file that is missing or not
        ONNX: :func:`parse_onnx` reports those).

    Raises:
        BuildError: the graph has plugin nodes and ``rt`` cannot take them (says what to do instead).
    """
    from engines.export.plugin import PLUGIN_OP, graph_uses_plugin
    from engines.tensorrt.dft_plugin import plugin_api_problem, register_dft_plugin

    try:
        uses = graph_uses_plugin(onnx_path)
    except Exception:  # missing or not ONNX: reported by the parser or the mixed-precision pass
        return []
    if not uses:
        return []
    problem = plugin_api_problem(rt)
    if problem is not None:  # e.g. TensorRT-RTX 1.7, whose parser would abort the process on the plugin
        raise BuildError(problem)
    register_dft_plugin(rt)
    return [PLUGIN_OP]


# -- build options -------------------------------------------------------------------------------------------


def normalize_sm(value: str) -> str:
    """``"SM86"``, ``"sm86"``, ``"86"`` or ``"8.6"`` -> ``"SM86"``.

    Raises:
        BuildError: not a compute capability.
    """
    text = value.strip().upper().removeprefix("SM").replace(".", "")
    if not text.isdigit() or len(text) not in (2, 3):
        raise BuildError(f"compute capability {value!r}: expected e.g. SM86 or 8.6")
    return f"SM{text}"


def _check_options(
    rt: TensorRTModule, precision: str, max_batch: int, opt_batch: int, workspace_mb: int,
    strongly_typed: bool, hardware_compat: bool, version_compat: bool,
) -> None:  # fmt: skip
    if precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise BuildError(f"need 1 <= opt batch ({opt_batch}) <= max batch ({max_batch})")
    if workspace_mb < 1:
        raise BuildError(f"workspace must be at least 1 MB, got {workspace_mb}")
    if not strongly_typed and not rt.weak_typing:
        raise BuildError(
            f"weak typing (layer precision constraints) needs NVIDIA TensorRT 10; {rt.flavour} {rt.version} "
            "builds only strongly typed networks: use the default strongly typed build"
        )
    if rt.flavour == "tensorrt_rtx" and (hardware_compat or version_compat):
        raise BuildError(
            "TensorRT-RTX has no hardware/version compatibility modes (its engines target compute "
            "capabilities and one TensorRT-RTX release): pass --sm instead"
        )


def _set_targets(
    rt: TensorRTModule, config: Any, compute_capability: str | None, hardware_compat: bool,
    version_compat: bool, gpu: Any,
) -> list[str]:  # fmt: skip
    trt = rt.trt
    if rt.flavour == "tensorrt_rtx":
        if compute_capability is None:
            return []  # TensorRT-RTX default: a portable engine
        sm = normalize_sm(compute_capability)
        if not hasattr(trt.ComputeCapability, sm):
            known = [n for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
            raise BuildError(f"TensorRT-RTX {rt.version} cannot target {sm}: choose one of {known}")
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, sm), 0)
        return [sm]
    if compute_capability is not None and gpu is not None and normalize_sm(compute_capability) != gpu.sm:
        raise BuildError(
            f"NVIDIA TensorRT builds for the GPU it runs on ({gpu.name}, {gpu.sm}), not "
            f"{normalize_sm(compute_capability)}: build on the target GPU (or --hardware-compat for Ampere+)"
        )
    if hardware_compat:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if version_compat:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    return [gpu.sm] if gpu is not None else []


def _add_profile(builder: Any, network: Any, config: Any, max_batch: int, opt_batch: int) -> dict[str, Any]:
    profile = builder.create_optimization_profile()
    shapes: dict[str, Any] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = [int(d) for d in tensor.shape][1:]
        if any(d < 0 for d in rest):
            raise BuildError(f"input {tensor.name} has dynamic dims besides the batch: {list(tensor.shape)}")
        lo, opt, hi = [1, *rest], [opt_batch, *rest], [max_batch, *rest]
        profile.set_shape(tensor.name, lo, opt, hi)
        shapes[tensor.name] = {"min": lo, "opt": opt, "max": hi}
    config.add_optimization_profile(profile)
    return {"inputs": shapes, "max_batch": max_batch, "opt_batch": opt_batch}


def _load_timing_cache(rt: TensorRTModule, config: Any, path: Path | None) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(path) if path else None, "loaded": False, "saved": False}
    if path is None:
        return info
    if rt.flavour == "tensorrt_rtx" or not hasattr(config, "create_timing_cache"):
        info["note"] = f"timing caches are a no-op in {rt.flavour} {rt.version}: not used"
        return info
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    info["loaded"] = bool(data)
    return info


def _save_timing_cache(rt: TensorRTModule, config: Any, info: dict[str, Any]) -> None:
    if info["path"] is None or "note" in info:
        return
    path = Path(info["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, bytes(config.get_timing_cache().serialize()))
    info["saved"] = True


@contextlib.contextmanager
def _native_stdout_to_log() -> Iterator[None]:
    """Send what native code prints on file descriptor 1 during the block to the log (INFO).

    TensorRT-RTX's optimiser prints warnings straight to stdout, which would mix with a command's output.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real stdout (e.g. captured by a test runner)
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.info("tensorrt: %s", line.strip())


def _network_graph(
    onnx_path: Path, precision: str, strongly_typed: bool, scopes: Sequence[str], network_onnx: Path
) -> tuple[Path, Any]:
    """The graph to parse: the mixed-precision graph for an FP16 strongly typed build, else the source."""
    if precision != "fp16" or not strongly_typed:
        return onnx_path, None
    from engines.export.mixed_precision import write_mixed_precision

    if not onnx_path.is_file():
        raise BuildError(f"ONNX file {onnx_path} not found: export a bundle first (masf-engine export)")
    try:
        report = write_mixed_precision(onnx_path, network_onnx, scopes)
    except EngineError as err:
        raise BuildError(f"cannot make the mixed-precision graph: {err}") from None
    return network_onnx, report.to_dict()["fp32_nodes_by_scope"]


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    precision: str = "fp16",
    max_batch: int = 8,
    opt_batch: int | None = None,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    compute_capability: str | None = None,
    strongly_typed: bool = True,
    hardware_compat: bool = False,
    version_compat: bool = False,
    fp32_scopes: Sequence[str] = DEFAULT_FP32_SCOPES,
    flavour: str | None = None,
    network_onnx_path: str | Path | None = None,
) -> BuildRecord:
    """Build a TensorRT engine from the bundle graph ``onnx_path`` and write it with its build record.

    Args:
        onnx_path: the FP32 graph (a bundle's ``model.onnx``).
        out_path: engine file to write; the record goes to :func:`~engines.tensorrt.record.record_path`.
        precision: ``"fp16"`` (FP32 island kept) or ``"fp32"``.
        max_batch: largest batch of the optimisation profile (smallest: 1).
        opt_batch: batch TensorRT tunes for (default ``max_batch``).
        workspace_mb: workspace memory pool limit.
        timing_cache: timing cache file to load (if present) and save (TensorRT only).
        compute_capability: TensorRT-RTX target (``"SM86"``; None: its portable default). With TensorRT it
            must be the local GPU's (TensorRT builds for the GPU it runs on).
        strongly_typed: FP16 from the mixed-precision graph (default) or, False, weak typing with layer
            precision constraints (TensorRT 10 only).
        hardware_compat: TensorRT ``AMPERE_PLUS`` hardware compatibility.
        version_compat: TensorRT ``VERSION_COMPATIBLE`` engine.
        fp32_scopes: scopes of the FP32 island.
        flavour: ``"tensorrt"``, ``"tensorrt_rtx"`` or None (the first one installed).
        network_onnx_path: where the mixed-precision graph is written (default: next to the engine,
            ``<onnx stem>.fp16.onnx``).

    Returns:
        The build record (also written next to the engine).

    Raises:
        BuildError: missing or corrupt ONNX, parser errors, an option this TensorRT lacks, build failure,
            a plugin-mode graph with a TensorRT that has no ``tensorrt.plugin``.
        BackendError: no TensorRT installed (the message says what to install).
    """
    t0 = time.perf_counter()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    opt = max_batch if opt_batch is None else opt_batch
    rt = import_tensorrt(flavour)
    _check_options(
        rt, precision, max_batch, opt, workspace_mb, strongly_typed, hardware_compat, version_compat
    )
    trt = rt.trt
    plugins = register_graph_plugins(rt, onnx_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    network_onnx = Path(network_onnx_path or out_path.with_name(f"{onnx_path.stem}.fp16.onnx"))
    parse_path, island = _network_graph(onnx_path, precision, strongly_typed, fp32_scopes, network_onnx)
    builder, network, _parser, logger = parse_onnx(rt, parse_path, strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # true FP32 for the spectral GEMMs
    fp32_layers: Any = island
    strategy = "strongly_typed"
    if precision == "fp16" and not strongly_typed:
        strategy = "weak_typing"
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        fp32_layers = apply_fp32_constraints(network, trt, fp32_scopes)
    elif not strongly_typed:
        strategy = "weak_typing"
    gpu = gpu_info()
    targets = _set_targets(rt, config, compute_capability, hardware_compat, version_compat, gpu)
    profile = _add_profile(builder, network, config, max_batch, opt)
    cache_info = _load_timing_cache(rt, config, Path(timing_cache) if timing_cache else None)
    with _native_stdout_to_log():
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        why = logger.errors[-1] if logger.errors else "no error message"
        raise BuildError(f"TensorRT could not build {parse_path.name}: {' '.join(why.split())[:400]}")
    _save_timing_cache(rt, config, cache_info)
    write_atomic(out_path, bytes(serialized))
    flags = [n for n, f in trt.BuilderFlag.__members__.items() if config.get_flag(f)]
    hw = "NONE" if rt.flavour == "tensorrt_rtx" else _name(config.hardware_compatibility_level)
    record = BuildRecord(
        engine_file=out_path.name,
        engine_sha256=sha256_file(out_path),
        engine_size=out_path.stat().st_size,
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        network_onnx_file=parse_path.name,
        network_onnx_sha256=sha256_file(parse_path),
        tensorrt_flavour=rt.flavour,
        tensorrt_version=rt.version,
        gpu=gpu.to_dict() if gpu is not None else None,
        target_sms=targets,
        hardware_compatibility=hw,
        version_compatible="VERSION_COMPATIBLE" in flags,
        precision=precision,
        strategy=strategy,
        builder_flags=(["STRONGLY_TYPED network"] if _network_flags(trt, strongly_typed) else []) + flags,
        profile=profile,
        workspace_mb=int(workspace_mb),
        timing_cache=cache_info,
        fp32_scopes=list(fp32_scopes) if precision == "fp16" else [],
        fp32_layers=fp32_layers,
        build_seconds=round(time.perf_counter() - t0, 2),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra={"plugins": plugins} if plugins else {},
    )
    record.save(record_path(out_path))
    return record
