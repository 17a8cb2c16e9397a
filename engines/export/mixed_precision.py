"""FP16 graph with an FP32 island: the spectral scope and the bank distances stay FP32, the rest is FP16.

FFT magnitudes (sums of squares of feature maps) overflow FP16, and the kNN bank distances lose the
small differences that make up the anomaly score, so a plain FP16 conversion of the exported graph is
wrong. :func:`to_mixed_precision` converts the FP32 ``gemm`` graph of :func:`~trainer.export.onnx.export_onnx`
node by node:

* a node is *FP32* when a component of its module path (the node-name prefix before ``/``, e.g.
  ``model.embedders.0.spectral_magnitude``) contains one of ``fp32_scopes`` (default ``spectral`` and
  ``scorer``: the SDM band split, the prototypes' channel spectrum, TTSA's phase rotation, the kNN
  scorer), and *FP16* otherwise (teacher and student convolutions, normalisation, fusion, blur);
* float initializers go to FP16 unless only FP32 nodes read them (one read by both gets an FP16 copy);
* an explicit ``Cast`` is inserted wherever a float tensor crosses between the two (one per tensor and
  direction, named in its first reader's scope, ``<scope>/cast_to_fp32_<k>``), and ``Cast(to=FLOAT)``
  nodes of the FP16 part are retargeted to FLOAT16;
* the graph's inputs (uint8) and outputs (float32) keep their types: an FP16 output gets a final Cast.

The result is what a strongly typed TensorRT network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``,
the only mode of TensorRT-RTX and TensorRT 11) builds as is: every layer's type follows from the graph,
so the island cannot be "optimised" into FP16. Resize ``roi``/``scales`` stay float32 (ONNX fixes their
type). Torch-free: needs ``onnx`` and numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import ExportError

__all__ = [
    "DEFAULT_FP32_SCOPES",
    "MixedPrecisionReport",
    "in_scopes",
    "node_scope",
    "to_mixed_precision",
    "write_mixed_precision",
]

DEFAULT_FP32_SCOPES = ("spectral", "scorer")
"""Module-path components (substrings) whose nodes stay FP32: spectral ops and the kNN bank distances."""

_FIXED_FLOAT_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
"""Inputs whose ONNX type is float32 whatever the data type (Resize ``roi``/``scales``)."""
_TYPED_BY_ATTRIBUTE = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "Multinomial",
    "Bernoulli", "DequantizeLinear", "QuantizeLinear",
}  # fmt: skip
"""Ops whose float output type is an attribute or fixed: not converted (an FP16 node of these is an error)."""


def node_scope(name: str) -> str:
    """Module path of a node or layer name: the part before the last ``/`` (``""`` when there is none)."""
    return name.rpartition("/")[0]


def in_scopes(path: str, scopes: Iterable[str]) -> bool:
    """Whether a dotted module path has a component containing one of ``scopes``.

    ``in_scopes("model.sdms.0.spectral_split", ["spectral"])`` is True; ``"model.sdms.0"`` is not.
    """
    parts = path.split(".") if path else []
    return any(s in part for part in parts for s in scopes)


@dataclass
class MixedPrecisionReport:
    """What :func:`to_mixed_precision` did (plain JSON types via :meth:`to_dict`).

    Attributes:
        fp32_scopes: the scope patterns of the FP32 island.
        fp32_nodes: names of the original nodes kept in FP32.
        fp16_nodes: number of original nodes converted to FP16.
        casts: names of the inserted Cast nodes (island boundaries and the output casts).
        initializers_fp16: number of float initializers stored as FP16.
        initializers_fp32: number of float initializers kept FP32 (read only by the island or by fixed
            float inputs such as Resize scales).
    """

    fp32_scopes: tuple[str, ...]
    fp32_nodes: list[str] = field(default_factory=list)
    fp16_nodes: int = 0
    casts: list[str] = field(default_factory=list)
    initializers_fp16: int = 0
    initializers_fp32: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (FP32 nodes counted per scope)."""
        per_scope: dict[str, int] = {}
        for name in self.fp32_nodes:
            per_scope[node_scope(name)] = per_scope.get(node_scope(name), 0) + 1
        return {
            "fp32_scopes": list(self.fp32_scopes),
            "fp32_nodes": len(self.fp32_nodes),
            "fp32_nodes_by_scope": dict(sorted(per_scope.items())),
            "fp16_nodes": self.fp16_nodes,
            "casts": len(self.casts),
            "initializers_fp16": self.initializers_fp16,
            "initializers_fp32": self.initializers_fp32,
        }


_HALF_TINY = float(np.finfo(np.float16).smallest_subnormal)


def _to_half(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as float16; non-zero values that would round to 0 keep their sign at the smallest FP16.

    An ``eps`` such as ``clamp_min(1e-12)`` would otherwise become 0 and turn into a division by zero.

    Raises:
        ExportError: a finite value beyond the FP16 range.
    """
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    if not np.all(np.isfinite(half) | ~np.isfinite(array)):
        raise ExportError(f"{what} overflows FP16: add its scope to fp32_scopes")
    tiny = (half == 0) & (array != 0)
    if np.any(tiny):
        half[tiny] = np.copysign(_HALF_TINY, array[tiny]).astype(np.float16)
    return half


def _elem_types(model: Any) -> dict[str, int]:
    """Element type of every value of the main graph (after shape inference)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as err:
        raise ExportError(f"shape inference failed on the FP32 graph ({err}): re-export the bundle") from err
    graph = inferred.graph
    types: dict[str, int] = {}
    for info in (*graph.input, *graph.output, *graph.value_info):
        types[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


class _Converter:
    """One conversion (state shared by the steps of :func:`to_mixed_precision`)."""

    def __init__(self, model: Any, scopes: tuple[str, ...]) -> None:
        from onnx import TensorProto

        self.model = model
        self.graph = model.graph
        self.scopes = scopes
        self.float, self.half = TensorProto.FLOAT, TensorProto.FLOAT16
        self.types = _elem_types(model)
        self.inits = {init.name: init for init in self.graph.initializer}
        self.report = MixedPrecisionReport(scopes)
        self.casts: dict[tuple[str, int], str] = {}
        self.new_nodes: dict[int, list[Any]] = {}  # insert before original node index
        self.names = {n.name for n in self.graph.node} | set(self.types)
        self.producer_type: dict[str, int] = {}  # float value -> its new type

    def _unique(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def _check_supported(self) -> None:
        for node in self.graph.node:
            if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
                raise ExportError(f"node {node.name} ({node.op_type}) has a subgraph: not supported here")
        if any(f.name for f in self.model.functions):
            raise ExportError("the graph uses ONNX functions: not supported by the mixed-precision pass")

    def island(self, node: Any) -> bool:
        return in_scopes(node_scope(node.name), self.scopes)

    def run(self) -> MixedPrecisionReport:
        self._check_supported()
        nodes = list(self.graph.node)
        fp32 = [self.island(n) for n in nodes]
        self._split_outputs(nodes, fp32)
        self._convert_initializers(self._initializer_wants(nodes, fp32))
        for index, (node, keep) in enumerate(zip(nodes, fp32, strict=True)):
            self._convert_node(index, node, keep)
            if keep:
                self.report.fp32_nodes.append(node.name)
            else:
                self.report.fp16_nodes += 1
        self._rebuild(nodes)
        self._retype_value_info()
        return self.report

    # -- initializers ------------------------------------------------------------------------------------

    def _wanted_type(self, node: Any, slot: int, keep: bool) -> int:
        if slot in _FIXED_FLOAT_INPUTS.get(node.op_type, ()):
            return self.float
        return self.float if keep else self.half

    def _initializer_wants(self, nodes: Sequence[Any], fp32: Sequence[bool]) -> dict[str, set[int]]:
        wants: dict[str, set[int]] = {}
        for node, keep in zip(nodes, fp32, strict=True):
            for slot, name in enumerate(node.input):
                if name in self.inits and self.inits[name].data_type == self.float:
                    wants.setdefault(name, set()).add(self._wanted_type(node, slot, keep))
        return wants

    def _convert_initializers(self, wants: dict[str, set[int]]) -> None:
        from onnx import numpy_helper

        self.init_alias: dict[tuple[str, int], str] = {}
        for name, types in wants.items():
            init = self.inits[name]
            if self.half in types:
                half = _to_half(numpy_helper.to_array(init), f"initializer {name}")
                if self.float in types:  # read by both: an FP16 copy next to the FP32 original
                    copy_name = self._unique(f"{name}_fp16")
                    self.graph.initializer.append(numpy_helper.from_array(half, copy_name))
                    self.init_alias[(name, self.half)] = copy_name
                    self.report.initializers_fp32 += 1
                else:
                    init.CopyFrom(numpy_helper.from_array(half, name))
                    self.types[name] = self.half
                self.report.initializers_fp16 += 1
            else:
                self.report.initializers_fp32 += 1

    # -- nodes ---------------------------------------------------------------------------------------------

    def _value_type(self, name: str) -> int:
        if name in self.producer_type:
            return self.producer_type[name]
        return self.types.get(name, 0)

    def _cast(self, index: int, value: str, to: int, reader: Any) -> str:
        from onnx import helper

        key = (value, to)
        if key not in self.casts:
            suffix = "fp32" if to == self.float else "fp16"
            scope = node_scope(reader.name)
            node_name = self._unique(f"{scope}/cast_to_{suffix}" if scope else f"cast_to_{suffix}")
            out = self._unique(f"{value}_{suffix}")
            cast = helper.make_node("Cast", [value], [out], name=node_name, to=to)
            self.new_nodes.setdefault(index, []).append(cast)
            self.casts[key] = out
            self.types[out] = to
            self.report.casts.append(node_name)
        return self.casts[key]

    def _convert_node(self, index: int, node: Any, keep: bool) -> None:
        from onnx import numpy_helper

        if not keep and node.op_type in _TYPED_BY_ATTRIBUTE:
            raise ExportError(
                f"{node.op_type} node {node.name} cannot run in FP16: add its scope to fp32_scopes"
            )
        for slot, name in enumerate(node.input):
            if not name:
                continue
            original = self.types.get(name, 0)
            if original not in (self.float, self.half):
                continue
            want = self._wanted_type(node, slot, keep)
            alias = self.init_alias.get((name, want))
            if alias is not None:
                node.input[slot] = alias
            elif self._value_type(name) != want:
                node.input[slot] = self._cast(index, name, want, node)
        out_type = self.float if keep else self.half
        if not keep and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == self.float:
                    attr.i = self.half
        if not keep and node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == self.float:
                    half = _to_half(numpy_helper.to_array(attr.t), f"node {node.name}")
                    attr.t.CopyFrom(numpy_helper.from_array(half))
        for name in node.output:
            if self.types.get(name) == self.float:
                self.producer_type[name] = out_type

    def _split_outputs(self, nodes: Sequence[Any], fp32: Sequence[bool]) -> None:
        """FP16-made graph outputs: the node writes ``<name>_fp16``, a final Cast writes ``<name>``."""
        from onnx import helper

        producers = {out: i for i, n in enumerate(nodes) for out in n.output}
        for info in self.graph.output:
            name = info.name
            index = producers.get(name)
            if index is None or fp32[index] or self.types.get(name) != self.float:
                continue
            inner = self._unique(f"{name}_fp16")
            for node in nodes:
                node.output[:] = [inner if v == name else v for v in node.output]
                node.input[:] = [inner if v == name else v for v in node.input]
            self.types[inner] = self.float  # converted like any other FP32 value of the FP16 part
            cast_name = self._unique(f"output/cast_{name}_to_fp32")
            cast = helper.make_node("Cast", [inner], [name], name=cast_name, to=self.float)
            self.new_nodes.setdefault(len(nodes), []).append(cast)
            self.report.casts.append(cast_name)

    def _rebuild(self, nodes: Sequence[Any]) -> None:
        ordered: list[Any] = []
        for index, node in enumerate(nodes):
            ordered.extend(self.new_nodes.get(index, []))
            ordered.append(node)
        ordered.extend(self.new_nodes.get(len(nodes), []))
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        used = {name for n in ordered for name in n.input}
        keep = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    def _retype_value_info(self) -> None:
        stored = {init.name: init.data_type for init in self.graph.initializer}
        for info in self.graph.value_info:  # the exporter lists initializers in value_info too
            new = stored.get(info.name, self.producer_type.get(info.name))
            if new is not None:
                info.type.tensor_type.elem_type = new


def to_mixed_precision(
    model: Any, fp32_scopes: Sequence[str] = DEFAULT_FP32_SCOPES
) -> tuple[Any, MixedPrecisionReport]:
    """Convert an FP32 graph to FP16 with an FP32 island (see the module docstring).

    Args:
        model: the FP32 ``onnx.ModelProto`` (not modified) or a path to it.
        fp32_scopes: module-path component substrings whose nodes stay FP32.

    Returns:
        ``(mixed_model, report)``; the model passes ``onnx.checker`` (full check).

    Raises:
        ExportError: the graph has subgraphs or functions, an FP16 node of an attribute-typed op, an
            initializer that overflows FP16, or the result fails the checker.
    """
    import onnx

    if isinstance(model, str | Path):
        model = onnx.load(str(model))
    scopes = tuple(fp32_scopes)
    if not scopes:
        raise ExportError("fp32_scopes is empty: the spectral island needs at least one scope")
    mixed = onnx.ModelProto()
    mixed.CopyFrom(model)
    report = _Converter(mixed, scopes).run()
    onnx.helper.set_model_props(
        mixed,
        {
            **{p.key: p.value for p in model.metadata_props},
            "masf.precision": "fp16-mixed",
            "masf.fp32_scopes": ",".join(scopes),
        },
    )
    try:
        onnx.checker.check_model(mixed, full_check=True)
    except Exception as err:
        raise ExportError(f"the mixed-precision graph fails onnx.checker ({err})") from err
    return mixed, report


def write_mixed_precision(
    src: str | Path, dst: str | Path, fp32_scopes: Sequence[str] = DEFAULT_FP32_SCOPES
) -> MixedPrecisionReport:
    """Read the FP32 graph at ``src``, convert it and save it to ``dst``.

    Raises:
        ExportError: ``src`` is missing or not an ONNX graph, or see :func:`to_mixed_precision`.
    """
    import onnx

    src = Path(src)
    if not src.is_file():
        raise ExportError(f"{src}: no such ONNX file")
    try:
        model = onnx.load(str(src))
    except Exception as err:
        raise ExportError(f"{src}: not a readable ONNX file ({type(err).__name__})") from None
    mixed, report = to_mixed_precision(model, fp32_scopes)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(mixed, str(dst))
    return report
