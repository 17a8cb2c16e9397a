"""Which ONNX ops of a graph the TensorRT 10 ONNX parser cannot take (torch-free; needs ``onnx``).

The operator list is data, kept next to this module in ``trt10_supported_ops.json`` with its source
(onnx-tensorrt ``docs/operators.md``, TensorRT 10.15 edition, and ``docs/Changelog.md`` for the release
that added an operator after 10.0). :func:`unsupported_ops` lists the op types of a model that a given
TensorRT 10.x version does not parse; :func:`trt10_issues` adds the restrictions this project runs into
(TopK's constant ``K < 3840``, constant reduction axes, the opset range of the version, UINT8 graph inputs
that only a Cast may read: TensorRT's ``DataType.UINT8`` is an I/O type that must be converted to float
before any other layer uses it).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["constant_values", "op_counts", "supported_ops_table", "trt10_issues", "unsupported_ops"]

OPS_FILE = Path(__file__).with_name("trt10_supported_ops.json")
_CONSTANT_AXES = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze", "Unsqueeze",
}  # fmt: skip
_UINT8_READERS = {"Cast", "Shape"}
"""Ops that may read a UINT8 graph input in TensorRT (Cast to float/half; Shape reads only the dims)."""


@functools.lru_cache(maxsize=1)
def supported_ops_table() -> dict[str, Any]:
    """The parsed ``trt10_supported_ops.json`` (source, opset ranges, supported ops, restrictions)."""
    return dict(json.loads(OPS_FILE.read_text(encoding="utf-8")))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, str | Path):
        return onnx.load(str(model), load_external_data=False)
    return model


def op_counts(model: Any) -> dict[str, int]:
    """``{op_type: count}`` over the main graph of an ``onnx.ModelProto`` (or a path), sorted by name."""
    counts = Counter(node.op_type for node in _load(model).graph.node)
    return dict(sorted(counts.items()))


def unsupported_ops(model: Any, trt_version: str = "10.0") -> list[str]:
    """Op types of ``model`` that TensorRT ``trt_version`` (10.x) does not parse.

    An op counts as supported when the table marks it supported and it was not added after
    ``trt_version`` (default 10.0: the graph must parse on every TensorRT 10 release). Ops of non-default
    domains (custom ops) are reported as ``domain::Op``.

    Args:
        model: ``onnx.ModelProto`` or a path to a ``.onnx`` file.
        trt_version: ``"10.0"`` ... ``"10.15"``.

    Returns:
        Sorted op types; empty when every op is supported.
    """
    table = supported_ops_table()
    supported = set(table["supported"])
    added = table["added_in"]
    target = _version_tuple(trt_version)
    bad = set()
    for node in _load(model).graph.node:
        if node.domain not in ("", "ai.onnx"):
            bad.add(f"{node.domain}::{node.op_type}")
        elif node.op_type not in supported or (
            node.op_type in added and _version_tuple(added[node.op_type]) > target
        ):
            bad.add(node.op_type)
    return sorted(bad)


def constant_values(graph: Any) -> dict[str, np.ndarray]:
    """``{tensor name: value}`` of a graph's initializers and ``Constant`` node outputs."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def trt10_issues(model: Any, trt_version: str = "10.0") -> list[str]:
    """Everything in ``model`` that TensorRT ``trt_version`` would reject: unsupported ops and restrictions.

    Checks: unsupported op types, the default-domain opset against the version's opset range, every
    TopK's ``K`` (a constant below 3840) and ``sorted``, constant ``axes`` of Reduce*/(Un)Squeeze, and
    that UINT8 graph inputs go only into Cast (or Shape) nodes.

    Returns:
        One line per problem; empty when the graph should parse.
    """
    model = _load(model)
    table = supported_ops_table()
    issues = [f"unsupported op {op}" for op in unsupported_ops(model, trt_version)]
    ranges = {_version_tuple(v): r for v, r in table["opset_range"].items()}
    known = [v for v in sorted(ranges) if v <= _version_tuple(trt_version)]
    lo, hi = ranges[known[-1]] if known else ranges[min(ranges)]
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not lo <= opset.version <= hi:
            issues.append(f"opset {opset.version} outside TensorRT {trt_version}'s range {lo}..{hi}")
    issues += _uint8_input_issues(model.graph)
    constants = constant_values(model.graph)
    max_k = int(table["topk_max_k"])
    for node in model.graph.node:
        if node.op_type == "TopK":
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                issues.append(f"TopK {node.name}: K is not a constant")
            elif int(np.max(k)) > max_k:
                issues.append(f"TopK {node.name}: K = {int(np.max(k))} exceeds TensorRT's limit {max_k}")
            if any(a.name == "sorted" and a.i == 0 for a in node.attribute):
                issues.append(f"TopK {node.name}: sorted must be 1")
        elif node.op_type in _CONSTANT_AXES and len(node.input) > 1:
            axes = node.input[1]
            if axes and axes not in constants:  # "" = optional input left out
                issues.append(f"{node.op_type} {node.name}: axes must be a constant")
    return issues


def _uint8_input_issues(graph: Any) -> list[str]:
    from onnx import TensorProto

    uint8_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.UINT8}
    issues = []
    for node in graph.node:
        if node.op_type in _UINT8_READERS:
            continue
        for name in sorted(uint8_inputs & set(node.input)):
            msg = f"{node.op_type} {node.name}: reads the UINT8 input {name!r}"
            issues.append(f"{msg} (TensorRT needs a Cast to float first)")
    return issues
