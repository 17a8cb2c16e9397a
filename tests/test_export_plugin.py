"""Tests for engines.export.plugin: DFT -> cuFFT plugin nodes and back, on the tiny trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from engines.errors import ExportError
from engines.export.mixed_precision import to_mixed_precision
from engines.export.plugin import (
    PLUGIN_ATTRS,
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    check_round_trip,
    dft_to_plugin,
    graph_uses_plugin,
    plugin_nodes,
    plugin_to_dft,
)
from engines.export.trt_ops import op_counts
from engines.preprocess import preprocess_batch
from trainer.data import read_image
from trainer.export.onnx import export_onnx, spectral_scopes
from trainer.export.parity import MAP_RTOL, SCORE_RTOL
from trainer.runs import load_run

pytestmark = pytest.mark.slow  # its module fixtures export the tiny run in two spectral modes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images(synth_data: Path) -> list[np.ndarray]:
    return [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))[::5][:3]]


@pytest.fixture(scope="module")
def dft_graph(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    """The tiny run exported in ``dft`` mode (native ONNX DFT nodes), no parity run."""
    model, info = load_run(trained_run)
    path = tmp_path_factory.mktemp("dft") / "model.onnx"
    export_onnx(model, info, path, spectral_mode="dft")
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def plugin_export(
    trained_run: Path, images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    """The tiny run exported in ``plugin`` mode through ``export_onnx``, with its parity check."""
    model, info = load_run(trained_run)
    path = tmp_path_factory.mktemp("plugin") / "model.onnx"
    record = export_onnx(
        model, info, path, spectral_mode="plugin", parity_images=images, parity_batch_sizes=(1, 2), threads=1
    )
    return record, path


def _session(model: onnx.ModelProto) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feeds(images: list[np.ndarray], trained_run: Path) -> dict[str, np.ndarray]:
    _, info = load_run(trained_run)
    batch, geoms = preprocess_batch(images, info.preprocess)
    valid = np.stack([g.valid_mask() for g in geoms])[:, None].astype(np.uint8)
    return {"image": batch, "valid": valid}


# ---------------------------------------------------------------- the surgery on the real graph


def test_surgery_replaces_every_dft_and_nothing_else(dft_graph: onnx.ModelProto) -> None:
    dfts = [n for n in dft_graph.graph.node if n.op_type == "DFT"]
    assert len(dfts) >= 3  # one channel spectrum per scale of the bank embedders
    plugin, specs = dft_to_plugin(dft_graph)
    onnx.checker.check_model(plugin, full_check=True)
    assert "DFT" not in op_counts(plugin)
    nodes = plugin_nodes(plugin)
    assert [n.name for n in nodes] == [n.name for n in dfts] == [s.name for s in specs]
    assert all(n.domain == PLUGIN_DOMAIN and n.op_type == PLUGIN_NAME for n in nodes)
    assert all("spectral" in n.name.rpartition("/")[0] for n in nodes)  # FP32 island scope kept
    for node, dft, spec in zip(nodes, dfts, specs, strict=True):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_namespace": PLUGIN_NAMESPACE.encode(), **spec.attrs()}
        assert set(attrs) - {"plugin_namespace"} == set(PLUGIN_ATTRS)
        assert list(node.input) == [dft.input[0]] and list(node.output) == list(dft.output)
    # the channel spectrum is a one-sided real FFT over the channels, with a constant length
    assert all(s.onesided == 1 and s.inverse == 0 and s.dft_length > 0 for s in specs)
    # every other node is byte-identical and in the same order; graph I/O unchanged
    others = [n.SerializeToString() for n in dft_graph.graph.node if n.op_type != "DFT"]
    assert [n.SerializeToString() for n in plugin.graph.node if n.domain != PLUGIN_DOMAIN] == others
    assert plugin.graph.input == dft_graph.graph.input and plugin.graph.output == dft_graph.graph.output
    # only the dft_length constants the DFTs read are gone
    dropped = {i.name for i in dft_graph.graph.initializer} - {i.name for i in plugin.graph.initializer}
    lengths = {n.input[1] for n in dfts if len(n.input) > 1 and n.input[1]}
    assert dropped == lengths - {name for n in plugin.graph.node for name in n.input}
    assert (PLUGIN_DOMAIN, 1) in [(o.domain, o.version) for o in plugin.opset_import]
    assert {p.key: p.value for p in plugin.metadata_props}["masf.spectral_mode"] == "plugin"
    assert graph_uses_plugin(plugin) and not graph_uses_plugin(dft_graph)
    assert dft_graph.graph.node[0].op_type != PLUGIN_NAME  # the input model is left as it was
    assert [n.op_type for n in dft_graph.graph.node].count("DFT") == len(dfts)


def test_round_trip_equals_the_dft_graph_in_onnxruntime(
    dft_graph: onnx.ModelProto, images: list[np.ndarray], trained_run: Path
) -> None:
    plugin, _ = dft_to_plugin(dft_graph)
    back = plugin_to_dft(plugin)
    check_round_trip(dft_graph, plugin)
    onnx.checker.check_model(back, full_check=True)
    assert [(n.name, n.op_type) for n in back.graph.node] == [
        (n.name, n.op_type) for n in dft_graph.graph.node
    ]
    feeds = _feeds(images, trained_run)
    want = _session(dft_graph).run(None, feeds)
    got = _session(back).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)  # the same ops on the same data: bit-identical
    with pytest.raises(Exception, match=r"CuFFTDFT"):  # ONNX Runtime has no kernel for the plugin op
        _session(plugin)


def test_round_trip_check_catches_a_changed_transform(dft_graph: onnx.ModelProto) -> None:
    plugin, _ = dft_to_plugin(dft_graph)
    for attr in plugin_nodes(plugin)[0].attribute:
        if attr.name == "dft_length":
            attr.i += 1
    with pytest.raises(ExportError, match=r"changed in the plugin round trip"):
        check_round_trip(dft_graph, plugin)


def test_plugin_nodes_stay_in_the_fp32_island(dft_graph: onnx.ModelProto) -> None:
    plugin, _ = dft_to_plugin(dft_graph)
    mixed, report = to_mixed_precision(plugin)
    names = {n.name for n in plugin_nodes(plugin)}
    assert names <= set(report.fp32_nodes)
    types = {v.name: v.type.tensor_type.elem_type for v in (*mixed.graph.value_info, *mixed.graph.input)}
    producers = {o: n for n in mixed.graph.node for o in n.output}
    assert len(plugin_nodes(mixed)) == len(names) >= 3
    for node in plugin_nodes(mixed):
        assert types[node.output[0]] == TensorProto.FLOAT
        src = producers[node.input[0]]
        assert src.op_type == "Cast" or types.get(node.input[0]) == TensorProto.FLOAT, src
        if src.op_type == "Cast":
            assert helper.get_attribute_value(src.attribute[0]) == TensorProto.FLOAT


# ---------------------------------------------------------------- export_onnx in plugin mode


def test_plugin_export_record_and_parity(plugin_export: tuple[dict[str, Any], Path]) -> None:
    record, path = plugin_export
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = op_counts(graph)
    assert record["spectral_mode"] == "plugin" and "DFT" not in ops
    assert ops[PLUGIN_NAME] == record["plugin"]["nodes"] == len(plugin_nodes(graph)) >= 3
    assert record["plugin"]["op"] == f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
    assert {p.key: p.value for p in graph.metadata_props}["masf.spectral_mode"] == "plugin"
    assert sum(spectral_scopes(graph).values()) >= len(plugin_nodes(graph))
    parity = record["parity"]  # run on the equivalent dft graph (ONNX Runtime cannot run the plugin)
    assert parity["passed"] and parity["verdict_mismatches"] == 0
    assert parity["map_max_rel_err"] < MAP_RTOL and parity["score_max_rel_err"] < SCORE_RTOL
    assert "dft" in record["plugin"]["parity_graph"]
    assert record["sha256"] and record["file"] == path.name


# ---------------------------------------------------------------- what the plugin cannot take


def _dft_model(opset: int, length: Any = None, axis_input: Any = None, **attrs: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 3, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inputs, graph_inputs, inits = ["x"], [x], []
    if length is not None or axis_input is not None:
        inputs.append("")
    if isinstance(length, int):
        inputs[1] = "n"
        inits.append(numpy_helper.from_array(np.array(length, np.int64), "n"))
    elif length == "dynamic":
        inputs[1] = "n"
        graph_inputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, []))
    if axis_input is not None:
        inputs.append("axis")
        inits.append(numpy_helper.from_array(np.array(axis_input, np.int64), "axis"))
    node = helper.make_node("DFT", inputs, ["y"], name="model.spectral/node_dft", **attrs)
    graph = helper.make_graph([node], "g", graph_inputs, [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_dynamic_length_and_inverse_onesided_are_errors() -> None:
    with pytest.raises(ExportError, match=r"dft_length is computed at run time.*--spectral-mode dft"):
        dft_to_plugin(_dft_model(18, "dynamic", axis=1))
    with pytest.raises(ExportError, match=r"inverse one-sided DFT is not supported"):
        dft_to_plugin(_dft_model(18, axis=1, inverse=1, onesided=1))
    with pytest.raises(ExportError, match=r"no DFT node to replace: export it with --spectral-mode dft"):
        dft_to_plugin(helper.make_model(helper.make_graph([], "g", [], [])))
    with pytest.raises(ExportError, match=r"no cuFFT plugin node"):
        plugin_to_dft(_dft_model(18, axis=1))


@pytest.mark.parametrize(
    ("opset", "length", "axis_input", "attrs"),
    [
        (18, 12, None, {"axis": 1, "onesided": 1}),  # rfft, zero-padded to 12
        (18, 5, None, {"axis": -3}),  # negative axis, truncated to 5
        (18, None, None, {}),  # DFT-17 default axis 1
        (20, None, 1, {"inverse": 1}),  # DFT-20: axis is an input
        (20, None, None, {}),  # DFT-20 default axis -2
    ],
)
def test_small_graphs_round_trip_in_onnxruntime(
    opset: int, length: int | None, axis_input: int | None, attrs: dict[str, int]
) -> None:
    model = _dft_model(opset, length, axis_input, **attrs)
    plugin, (spec,) = dft_to_plugin(model)
    assert spec.dft_length == (length or 0)
    x = np.random.default_rng(0).normal(size=(2, 8, 3, 1)).astype(np.float32)
    want = _session(model).run(None, {"x": x})[0]
    got = _session(plugin_to_dft(plugin)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
