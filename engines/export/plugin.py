"""``plugin`` spectral mode: every ONNX ``DFT`` node of a ``dft`` graph becomes one cuFFT plugin node.

The custom op is what TensorRT's ONNX parser maps to a plugin of its registry: ``op_type`` is the plugin
name (:data:`PLUGIN_NAME`, ``CuFFTDFT``) and the string attribute ``plugin_namespace`` its namespace
(:data:`PLUGIN_NAMESPACE`, ``masf``); every other attribute is handed to the plugin as a field. The node
lives in the ONNX domain ``masf`` (opset 1), so ONNX tools accept the graph; ONNX Runtime cannot run it
(no kernel for ``masf::CuFFTDFT``). The plugin itself is :mod:`engines.tensorrt.dft_plugin` (cuFFT through
CuPy, registered with ``tensorrt.plugin``).

A replacement node keeps the DFT's name (so its ``spectral`` scope, which keeps it in the FP32 island),
its signal input and its output, and has the same layout as ONNX ``DFT``: input ``[..., n, 1]`` (real) or
``[..., n, 2]`` (complex), output ``[..., m, 2]`` complex, ``m = n`` (or ``dft_length``), ``m // 2 + 1``
when ``onesided``. Attributes (all ints): ``axis`` (as in ``DFT``, may be negative: counted on the input
rank, the trailing real/complex dim included), ``inverse``, ``onesided`` and ``dft_length`` (0: the
signal length). ``DFT`` opset 17-19 has ``axis`` as an attribute, opset 20 as a third input (constant
here). ``dft_length`` must be a constant: a length computed at run time is an :class:`ExportError`.

:func:`plugin_to_dft` is the exact reverse, so a test can run both graphs through ONNX Runtime and check
the surgery is lossless; export checks the reverse structurally (:func:`check_round_trip`). Torch-free:
needs only ``onnx`` and numpy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.errors import ExportError
from engines.export.trt_ops import constant_values

__all__ = [
    "PLUGIN_ATTRS",
    "PLUGIN_DOMAIN",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_OP",
    "DFTNodeSpec",
    "check_round_trip",
    "dft_to_plugin",
    "graph_uses_plugin",
    "plugin_nodes",
    "plugin_to_dft",
]

PLUGIN_NAME = "CuFFTDFT"
"""Plugin name = ONNX ``op_type`` of the replacement node."""
PLUGIN_NAMESPACE = "masf"
"""Plugin namespace = the node's ``plugin_namespace`` attribute (and its ONNX domain)."""
PLUGIN_DOMAIN = "masf"
PLUGIN_OP = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
PLUGIN_ATTRS = ("axis", "inverse", "onesided", "dft_length")
"""The plugin's attributes, in the order of its ``tensorrt.plugin`` registration."""
_DEFAULT_AXIS = {17: 1, 20: -2}
"""``DFT`` default axis: opset 17-19 attribute default 1, opset 20 input default -2."""


@dataclass(frozen=True)
class DFTNodeSpec:
    """What one ``DFT`` (or plugin) node computes.

    Attributes:
        name: node name (module path + ``/`` + exporter name).
        signal: input tensor name; ``output``: output tensor name.
        axis: transform axis as written in the graph (may be negative).
        inverse, onesided: 0 or 1.
        dft_length: transform length (0: the signal length).
    """

    name: str
    signal: str
    output: str
    axis: int
    inverse: int
    onesided: int
    dft_length: int

    def attrs(self) -> dict[str, int]:
        """The plugin attributes, ``{name: value}`` in :data:`PLUGIN_ATTRS` order."""
        return {k: int(getattr(self, k)) for k in PLUGIN_ATTRS}


def _onnx_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _scalar(constants: dict[str, np.ndarray], node: Any, slot: int, what: str) -> int | None:
    """The constant int at input ``slot`` of ``node`` (None when the optional input is absent)."""
    if len(node.input) <= slot or not node.input[slot]:
        return None
    value = constants.get(node.input[slot])
    if value is None or value.size != 1:
        raise ExportError(
            f"DFT node {node.name}: {what} is computed at run time; the cuFFT plugin needs a constant: use "
            "--spectral-mode dft (ONNX Runtime, TensorRT >= 11.2) or gemm"
        )
    return int(value.reshape(-1)[0])


def _dft_spec(node: Any, opset: int, constants: dict[str, np.ndarray]) -> DFTNodeSpec:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    length = _scalar(constants, node, 1, "dft_length")
    if opset >= 20:
        axis = _scalar(constants, node, 2, "axis")
        axis = _DEFAULT_AXIS[20] if axis is None else axis
    else:
        axis = int(attrs.get("axis", _DEFAULT_AXIS[17]))
    inverse, onesided = int(attrs.get("inverse", 0)), int(attrs.get("onesided", 0))
    if length is not None and length < 1:
        raise ExportError(f"DFT node {node.name}: dft_length must be positive, got {length}")
    if inverse and onesided:
        raise ExportError(
            f"DFT node {node.name}: an inverse one-sided DFT is not supported by the cuFFT plugin: use "
            "--spectral-mode dft or gemm"
        )
    return DFTNodeSpec(node.name, node.input[0], node.output[0], axis, inverse, onesided, length or 0)


def _plugin_spec(node: Any) -> DFTNodeSpec:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    missing = [k for k in PLUGIN_ATTRS if k not in attrs]
    if missing:
        raise ExportError(f"plugin node {node.name} lacks attributes {missing}: re-export the bundle")
    values = {k: int(attrs[k]) for k in PLUGIN_ATTRS}
    return DFTNodeSpec(node.name, node.input[0], node.output[0], **values)


def plugin_nodes(model: Any) -> list[Any]:
    """The cuFFT plugin nodes of a graph (``masf::CuFFTDFT``), in graph order."""
    return [n for n in model.graph.node if n.domain == PLUGIN_DOMAIN and n.op_type == PLUGIN_NAME]


def graph_uses_plugin(model: Any) -> bool:
    """Whether ``model`` (an ``onnx.ModelProto`` or a path) has cuFFT plugin nodes."""
    import onnx

    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    return bool(plugin_nodes(model))


def _drop_unused_initializers(graph: Any, candidates: Iterable[str]) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    drop = set(candidates) - used
    if drop:
        keep = [init for init in graph.initializer if init.name not in drop]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        # the exporter also lists initializers in value_info
        infos = [v for v in graph.value_info if v.name not in drop]
        del graph.value_info[:]
        graph.value_info.extend(infos)


def _set_domain(model: Any, domain: str, version: int | None) -> None:
    from onnx import helper

    kept = [o for o in model.opset_import if o.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    if version is not None:
        model.opset_import.append(helper.make_opsetid(domain, version))


def _set_prop(model: Any, key: str, value: str) -> None:
    from onnx import helper

    props = {p.key: p.value for p in model.metadata_props}
    props[key] = value
    helper.set_model_props(model, props)


def dft_to_plugin(model: Any) -> tuple[Any, list[DFTNodeSpec]]:
    """Replace every ``DFT`` node of ``model`` by a cuFFT plugin node (see the module docstring).

    Args:
        model: an ``onnx.ModelProto`` with ``DFT`` nodes (the ``dft`` export); not modified.

    Returns:
        ``(plugin_model, specs)``: the new model (``masf.spectral_mode = plugin``) and one
        :class:`DFTNodeSpec` per replaced node, in graph order.

    Raises:
        ExportError: no ``DFT`` node, a ``DFT`` with a run-time length or axis, an inverse one-sided DFT,
            or ``DFT`` inside a subgraph (not supported).
    """
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for node in graph.node:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise ExportError(f"node {node.name} ({node.op_type}) has a subgraph: not supported here")
    opset = _onnx_opset(out)
    constants = constant_values(graph)
    specs: list[DFTNodeSpec] = []
    freed: list[str] = []
    nodes = []
    for node in graph.node:
        if node.op_type != "DFT" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        spec = _dft_spec(node, opset, constants)
        specs.append(spec)
        freed += [name for name in node.input[1:] if name]
        attrs: dict[str, Any] = {"plugin_namespace": PLUGIN_NAMESPACE, **spec.attrs()}
        nodes.append(
            helper.make_node(
                PLUGIN_NAME, [spec.signal], [spec.output], name=spec.name, domain=PLUGIN_DOMAIN, **attrs
            )
        )
        nodes[-1].metadata_props.extend(node.metadata_props)
    if not specs:
        raise ExportError("the graph has no DFT node to replace: export it with --spectral-mode dft first")
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph, freed)
    _set_domain(out, PLUGIN_DOMAIN, 1)
    _set_prop(out, "masf.spectral_mode", "plugin")
    return out, specs


def plugin_to_dft(model: Any) -> Any:
    """The reverse of :func:`dft_to_plugin`: every plugin node back to an ONNX ``DFT`` node.

    ``dft_length`` (and, for opset >= 20, ``axis``) become int64 initializers named
    ``<node name>/dft_length`` (``/axis``). The result runs in ONNX Runtime.

    Raises:
        ExportError: the graph has no plugin node, or one lacks an attribute.
    """
    import onnx
    from onnx import TensorProto, helper

    if not plugin_nodes(model):
        raise ExportError("the graph has no cuFFT plugin node to convert back")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    opset = _onnx_opset(out)
    nodes, added = [], []
    for node in graph.node:
        if not (node.domain == PLUGIN_DOMAIN and node.op_type == PLUGIN_NAME):
            nodes.append(node)
            continue
        spec = _plugin_spec(node)
        inputs = [spec.signal]
        attrs: dict[str, Any] = {"inverse": spec.inverse, "onesided": spec.onesided}
        if spec.dft_length or opset >= 20:
            inputs.append("")
            if spec.dft_length:
                inputs[1] = f"{spec.name}/dft_length"
                added.append(helper.make_tensor(inputs[1], TensorProto.INT64, [], [spec.dft_length]))
        if opset >= 20:
            inputs.append(f"{spec.name}/axis")
            added.append(helper.make_tensor(inputs[2], TensorProto.INT64, [], [spec.axis]))
        else:
            attrs["axis"] = spec.axis
        dft = helper.make_node("DFT", inputs, [spec.output], name=spec.name, **attrs)
        dft.metadata_props.extend(node.metadata_props)
        nodes.append(dft)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    _set_domain(out, PLUGIN_DOMAIN, None)
    _set_prop(out, "masf.spectral_mode", "dft")
    return out


def check_round_trip(dft_model: Any, plugin_model: Any) -> None:
    """Check that ``plugin_model`` converts back to the transforms of ``dft_model`` (structural check).

    Same nodes in the same order (plugin nodes in place of the ``DFT`` nodes), and every transform with
    the same name, input, output, axis, direction, sidedness and length.

    Raises:
        ExportError: naming the first difference.
    """
    back = plugin_to_dft(plugin_model)
    opset = _onnx_opset(dft_model)
    want = [(n.name, n.op_type) for n in dft_model.graph.node]
    got = [(n.name, n.op_type) for n in back.graph.node]
    if want != got:
        raise ExportError("the plugin graph does not convert back to the dft graph's nodes: report this")
    c_want, c_got = constant_values(dft_model.graph), constant_values(back.graph)
    for a, b in zip(dft_model.graph.node, back.graph.node, strict=True):
        if a.op_type == "DFT" and _dft_spec(a, opset, c_want) != _dft_spec(b, opset, c_got):
            raise ExportError(f"DFT node {a.name} changed in the plugin round trip: report this")
