"""Export a trained MASF model to ONNX: the whole inference path in one graph, raw scores out.

Graph (opset 18 by default), ``N`` dynamic::

    image uint8 [N, H, W, 3] RGB, valid uint8 [N, 1, H, W] (0 = letterbox padding)
      -> Cast, Transpose -> normalisation -> teacher (lite0 / WRN50 blocks 1-3)
      -> per scale: SDM -> student -> cosine maps; prototypes -> bank distances (chunked MatMul + TopK)
      -> UGHF fusion -> bilinear upsampling -> Gaussian blur -> masked max
      -> anomaly_map float32 [N, 1, H, W], score float32 [N] (raw: no threshold in the graph)

Spectral modes:

* ``gemm`` (default): every DFT is a real MatMul with precomputed cos/sin matrices
  (``trainer.models.masf.spectral``), so the graph has no ``DFT``/``STFT`` node and parses on every
  TensorRT 10 release; the result is checked against the TensorRT 10 op table (``trt_ops``).
* ``dft``: ``torch.fft`` exported as native ONNX ``DFT`` nodes, for ONNX Runtime and TensorRT >= 11.2.
* ``plugin``: the ``dft`` graph with every ``DFT`` node replaced by one ``masf::CuFFTDFT`` custom-op node
  (:mod:`engines.export.plugin`), which TensorRT >= 10.6 runs as a cuFFT plugin registered with
  ``tensorrt.plugin`` (:mod:`engines.tensorrt.dft_plugin`). ONNX Runtime cannot run it, so parity is
  checked on the ``dft`` graph, and the plugin graph is checked to convert back to it exactly.

Exporter: ``torch.export.export`` (non-strict, dynamic batch) then the torch.export-based
``torch.onnx.export``. Exporting the program ourselves matters: the convenience path silently falls back
to a fixed batch when the batch dimension gets specialised; here that is an :class:`ExportError`. The
legacy TorchScript exporter also works on this graph (~20x faster) but is deprecated and leaves shape
arithmetic (``Shape``/``Gather``/``Ceil`` chains for timm's same-padding) in the graph.

Every node name is prefixed with its module path (from the exporter's ``name_scopes`` metadata), e.g.
``model.embedders.0.spectral_magnitude/node_matmul_6``, so tools can find the spectral subgraph
(``spectral`` in the name) to keep it in FP32.
"""

from __future__ import annotations

import ast
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engines.bundle import GRAPH_INPUTS, GRAPH_OUTPUTS, sha256_file
from engines.errors import ExportError, ParityError
from engines.export.plugin import PLUGIN_OP, check_round_trip, dft_to_plugin
from engines.export.trt_ops import op_counts, supported_ops_table, trt10_issues
from trainer.export.parity import check_parity
from trainer.export.wrapper import ExportWrapper

if TYPE_CHECKING:
    from trainer.models.masf import MASF
    from trainer.runs import RunInfo

__all__ = ["EXPORT_SPECTRAL_MODES", "export_onnx", "spectral_scopes", "to_onnx_proto"]

EXPORT_SPECTRAL_MODES = ("gemm", "dft", "plugin")
_TORCH_MODE = {"gemm": "gemm", "dft": "fft", "plugin": "fft"}
_BATCH = "N"
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_MAX_BATCH = 4096


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def to_onnx_proto(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = 18,
    label: str = "gemm",
) -> Any:
    """``torch.export`` with a dynamic dim 0 on every input, then ``torch.onnx``; an ``onnx.ModelProto``.

    Args:
        module: the module to export (eval mode).
        example: example inputs (batch of at least 2, so the batch is not specialised to 1).
        input_names: graph input names, one per example input.
        output_names: graph output names.
        opset: ONNX opset.
        label: what is exported (spectral mode), for error messages.

    Raises:
        ExportError: either exporter failed (the message has the exporter's first line and a hint).
    """
    batch = torch.export.Dim(_BATCH, min=1, max=_MAX_BATCH)
    dynamic = tuple({0: batch} for _ in example)
    try:
        program = torch.export.export(module, example, dynamic_shapes=dynamic, strict=False)
    except Exception as err:
        raise ExportError(
            f"torch.export failed for spectral mode {label!r} ({_first_line(err)}): the model's forward "
            "is not exportable with a dynamic batch"
        ) from err
    try:
        onnx_program = torch.onnx.export(
            program,
            example,
            dynamo=True,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            optimize=True,
            verbose=False,
        )
    except Exception as err:
        dft_like = label in ("dft", "plugin")
        hint = "use --spectral-mode gemm" if dft_like else "report this with the run directory"
        raise ExportError(
            f"torch.onnx could not convert the graph in spectral mode {label!r} ({_first_line(err)}): {hint}"
        ) from err
    if onnx_program is None:  # pragma: no cover - only without dynamo
        raise ExportError("torch.onnx returned no program")
    proto = onnx_program.model_proto
    _name_batch_dim(proto)
    _scope_node_names(proto)
    return proto


def _example_frames(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Example ``(image, valid)`` for the graph: a batch of 2 seeded uint8 frames."""
    h, w = size
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=gen)
    return image, torch.ones(2, 1, h, w, dtype=torch.uint8)


def _name_batch_dim(proto: Any) -> None:
    """Rename the exporter's batch symbol (``s40``, ...) to ``N`` everywhere; error if it was specialised."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_param:
        raise ExportError(f"the exported graph has a fixed batch ({dim.dim_value}): expected a dynamic batch")
    pattern = re.compile(rf"\b{re.escape(dim.dim_param)}\b")
    for info in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(_BATCH, d.dim_param)


def _scope_node_names(proto: Any) -> None:
    """Prefix each node name with its module path, e.g. ``model.sdms.0.spectral_split/node_matmul``.

    The path comes from the exporter's ``name_scopes`` metadata; a node without it (e.g. a ``Split``
    created by the optimiser) takes the scope of the node that produces its first input.
    """
    scope_of_value: dict[str, str] = {}
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scope = ""
        if _SCOPES_KEY in meta:
            scopes = ast.literal_eval(meta[_SCOPES_KEY])
            scope = scopes[-2] if len(scopes) >= 2 else ""
        elif node.input:
            scope = scope_of_value.get(node.input[0], "")
        for out in node.output:
            scope_of_value[out] = scope
        if scope:
            node.name = f"{scope}/{node.name}"


def spectral_scopes(proto: Any) -> dict[str, int]:
    """``{module path: node count}`` of the nodes whose path has a ``spectral`` component."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        scope = node.name.rpartition("/")[0]
        if any("spectral" in part for part in scope.split(".")):
            counts[scope] = counts.get(scope, 0) + 1
    return dict(sorted(counts.items()))


def _set_modes(model: torch.nn.Module, modes: dict[torch.nn.Module, str] | str) -> dict[torch.nn.Module, str]:
    """Set spectral modes (one for all, or per module); returns the previous ones."""
    from trainer.models.masf.spectral import SpectralOp

    previous: dict[torch.nn.Module, str] = {}
    for m in model.modules():
        if isinstance(m, SpectralOp):
            previous[m] = m.mode
            m.set_mode(modes if isinstance(modes, str) else modes.get(m, m.mode))
    return previous


def _io_record(proto: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    def entry(info: Any) -> dict[str, Any]:
        tt = info.type.tensor_type
        shape = [d.dim_param or int(d.dim_value) for d in tt.shape.dim]
        return {
            "name": info.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
            "shape": shape,
        }

    return [entry(i) for i in proto.graph.input], [entry(o) for o in proto.graph.output]


def export_onnx(
    model: MASF,
    info: RunInfo,
    path: str | Path,
    spectral_mode: str = "gemm",
    tta: bool = False,
    opset: int = 18,
    parity_images: Sequence[np.ndarray] | None = None,
    parity_batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = None,
) -> dict[str, Any]:
    """Export ``model`` (a loaded run) to ``path`` and return the export record.

    The model is left as it was (its spectral modes are restored; TTSA wraps it from outside).

    Args:
        model: the trained model (eval mode, CPU), e.g. from ``trainer.runs.load_run``.
        info: the run's :class:`~trainer.runs.RunInfo` (input size, TTSA settings, calibration).
        path: where to write the ``.onnx`` file.
        spectral_mode: ``"gemm"`` (no DFT nodes), ``"dft"`` (native ONNX DFT) or ``"plugin"`` (cuFFT
            plugin nodes for TensorRT; parity is checked on the equivalent ``dft`` graph).
        tta: export the TTSA path (its views run as a batch inside the graph).
        opset: ONNX opset (18: supported by TensorRT 10.0+ and ONNX Runtime >= 1.14).
        parity_images: raw uint8 images; when given, ONNX Runtime is compared with PyTorch eager on them.
        parity_batch_sizes: batch sizes of the parity run.
        threads: ONNX Runtime intra-op threads for the parity run.

    Returns:
        The export record: format, file, opset, exporter, spectral mode, tta, inputs/outputs (names,
        dtypes, shapes with ``"N"`` for the batch), op counts, spectral scopes, TensorRT 10 issues, sha256,
        size, export time and the parity numbers (or None); in ``plugin`` mode also ``plugin`` (op,
        node count, the graph parity ran on).

    Raises:
        ExportError: unknown option, exporter failure, a ``DFT`` node or a TensorRT 10 problem in ``gemm``
            mode, a graph without a dynamic batch, a ``DFT`` the cuFFT plugin cannot take (``plugin``).
        ParityError: the graph does not match PyTorch within the tolerances (the file is written).
    """
    import onnx

    from trainer.models.masf import apply_tta
    from trainer.train import calibration_for

    if spectral_mode not in EXPORT_SPECTRAL_MODES:
        raise ExportError(f"spectral mode must be one of {EXPORT_SPECTRAL_MODES}, got {spectral_mode!r}")
    path = Path(path)
    cfg = info.config
    deployed, applied = apply_tta(model, tta, cfg.tta.views, cfg.tta.sigma, cfg.tta.seed)
    deployed.eval()
    t0 = time.perf_counter()
    previous = _set_modes(deployed, _TORCH_MODE[spectral_mode])
    try:
        proto = to_onnx_proto(
            ExportWrapper(deployed).eval(),
            _example_frames(info.input_size),
            GRAPH_INPUTS,
            GRAPH_OUTPUTS,
            opset,
            spectral_mode,
        )
    finally:
        _set_modes(deployed, previous)
    proto.producer_name = "masf-engine"
    onnx.helper.set_model_props(
        proto, {"masf.spectral_mode": spectral_mode, "masf.tta": str(bool(applied)).lower()}
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:
        raise ExportError(f"the exported graph fails onnx.checker ({_first_line(err)})") from err
    dft_proto, plugin_specs = proto, None
    if spectral_mode == "plugin":
        proto, plugin_specs = dft_to_plugin(dft_proto)
        check_round_trip(dft_proto, proto)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as err:
            raise ExportError(f"the plugin graph fails onnx.checker ({_first_line(err)})") from err
    ops = op_counts(proto)
    issues = trt10_issues(proto)
    dft_ops = sorted(set(ops) & {"DFT", "STFT"})
    if spectral_mode == "gemm" and (dft_ops or issues):
        raise ExportError(f"gemm export is not TensorRT 10 compatible: {dft_ops + issues}")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    export_s = time.perf_counter() - t0
    inputs, outputs = _io_record(proto)
    calibration_path = "tta" if applied else "plain"
    table = supported_ops_table()
    record: dict[str, Any] = {
        "format": "onnx",
        "file": path.name,
        "opset": int(opset),
        "exporter": f"torch.export + torch.onnx (dynamo) {torch.__version__}, onnx {onnx.__version__}",
        "spectral_mode": spectral_mode,
        "tta": bool(applied),
        "tta_views": int(cfg.tta.views) if applied else 1,
        "calibration_path": calibration_path,
        "inputs": inputs,
        "outputs": outputs,
        "ops": ops,
        "spectral_scopes": spectral_scopes(proto),
        "tensorrt10": {
            "checked_against": f"TensorRT {table['source']['tensorrt_version']} op table, ops since 10.0",
            "issues": issues,
        },
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "export_seconds": round(export_s, 2),
        "parity": None,
    }
    if plugin_specs is not None:
        record["plugin"] = {
            "op": PLUGIN_OP,
            "nodes": len(plugin_specs),
            "replaces": "every ONNX DFT node of the dft graph (checked to convert back exactly)",
            "parity_graph": "dft (ONNX Runtime has no kernel for the plugin op)",
        }
    if parity_images is not None:
        threshold = calibration_for(info, bool(applied)).threshold
        _set_modes(deployed, "fft")
        try:
            with tempfile.TemporaryDirectory(prefix="masf-parity-") as tmp:
                parity_path = path
                if plugin_specs is not None:  # same maths, runnable by ONNX Runtime
                    parity_path = Path(tmp) / "model.dft.onnx"
                    onnx.save(dft_proto, str(parity_path))
                parity = check_parity(
                    deployed, parity_path, parity_images, info.preprocess, threshold, parity_batch_sizes,
                    threads,
                )  # fmt: skip
        finally:
            _set_modes(deployed, previous)
        record["parity"] = parity
        if not parity["passed"]:
            raise ParityError(
                f"ONNX Runtime does not match PyTorch on {parity['n_images']} images: map error "
                f"{parity['map_max_rel_err']:.2e} (max {parity['tolerances']['map_rel']:g}), score error "
                f"{parity['score_max_rel_err']:.2e} (max {parity['tolerances']['score_rel']:g}), "
                f"{parity['verdict_mismatches']} verdict mismatches: do not deploy this graph"
            )
    return record
