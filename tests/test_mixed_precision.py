"""Tests for engines.export.mixed_precision: FP16 graph with an FP32 spectral/bank island, checked in ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from engine_support import ExportedBundle
from onnx import TensorProto, helper, numpy_helper

from engines.bundle import Bundle
from engines.errors import ExportError
from engines.export.mixed_precision import (
    DEFAULT_FP32_SCOPES,
    in_scopes,
    node_scope,
    to_mixed_precision,
    write_mixed_precision,
)
from engines.preprocess import preprocess_batch
from trainer.data import read_image

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
# Measured on the 18 generated test images (tiny lite0 model, 64x64): max map difference 1.8 % of the map
# range, max score difference 1.5 % relative, identical verdicts. Nearly all of it comes from the FP16
# teacher convolutions (with the teacher also in FP32: 0.12 % / 0.11 %); the tolerances leave ~2.5x room.
MAP_TOL, SCORE_TOL = 0.05, 0.04


@pytest.fixture(scope="module")
def fp32_graph(exported: ExportedBundle) -> onnx.ModelProto:
    return onnx.load(str(Bundle.open(exported.path).onnx_path))


@pytest.fixture(scope="module")
def mixed(fp32_graph: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    model, report = to_mixed_precision(fp32_graph)
    return model, report.to_dict()


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


def test_scope_helpers() -> None:
    assert node_scope("model.sdms.0.spectral_split/node_matmul") == "model.sdms.0.spectral_split"
    assert node_scope("node_permute") == ""
    assert in_scopes("model.sdms.0.spectral_split", DEFAULT_FP32_SCOPES)
    assert in_scopes("model.scorer", DEFAULT_FP32_SCOPES)
    assert in_scopes("model.model.perturb.spectral", DEFAULT_FP32_SCOPES)  # TTSA inside its wrapper
    assert not in_scopes("model.sdms.0", DEFAULT_FP32_SCOPES)
    assert not in_scopes("model.teacher.backbone.blocks.0.0.bn1", DEFAULT_FP32_SCOPES)
    assert not in_scopes("", DEFAULT_FP32_SCOPES)


def test_island_is_fp32_and_the_rest_fp16(
    fp32_graph: onnx.ModelProto, mixed: tuple[onnx.ModelProto, dict]
) -> None:
    model, report = mixed
    onnx.checker.check_model(model, full_check=True)
    types = _types(model)
    # graph inputs stay uint8, outputs float32
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
        ("image", TensorProto.UINT8),
        ("valid", TensorProto.UINT8),
    ]
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [
        ("anomaly_map", FLOAT),
        ("score", FLOAT),
    ]
    island = [
        n
        for n in model.graph.node
        if n.op_type != "Cast" and in_scopes(node_scope(n.name), DEFAULT_FP32_SCOPES)
    ]
    float_outs = [o for n in island for o in n.output if types[o] in (FLOAT, HALF)]
    assert len(float_outs) > 40 and all(types[o] == FLOAT for o in float_outs)
    assert {n.op_type for n in island} >= {"MatMul", "TopK", "Sqrt", "Gather", "Sub"}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in fp32_graph.graph.node) > 50
    assert all(types[n.output[0]] == HALF and types[n.input[1]] == HALF for n in convs)
    # the bank and the DFT bases stay FP32; conv weights are stored as FP16
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert inits["model.banks.0.bank"] == FLOAT
    assert inits["model.embedders.0.spectral_magnitude.basis"] == FLOAT
    assert inits["model.sdms.0.spectral_split.lh"] == FLOAT
    # every inserted Cast converts between the two types, at the island boundary or the outputs
    casts = [
        n
        for n in model.graph.node
        if n.op_type == "Cast" and n.name not in {c.name for c in fp32_graph.graph.node}
    ]
    assert len(casts) == report["casts"] > 6
    for cast in casts:
        assert {types[cast.input[0]], types[cast.output[0]]} == {FLOAT, HALF}
    assert {c.name for c in casts} >= {"output/cast_anomaly_map_to_fp32", "output/cast_score_to_fp32"}
    # the report counts the island per scope; TTSA is off in this bundle (no perturb.spectral)
    scopes = report["fp32_nodes_by_scope"]
    assert {s for s in scopes if "spectral_split" in s} == {
        f"model.sdms.{i}.spectral_split" for i in range(3)
    }
    assert {f"model.embedders.{i}.spectral_magnitude" for i in range(3)} <= set(scopes)
    assert scopes["model.scorer"] > 30
    assert report["fp16_nodes"] + report["fp32_nodes"] == len(fp32_graph.graph.node)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["masf.precision"] == "fp16-mixed" and props["masf.spectral_mode"] == "gemm"


def test_onnxruntime_maps_close_to_fp32_and_same_verdicts(
    exported: ExportedBundle, mixed: tuple[onnx.ModelProto, dict], synth_data: Path
) -> None:
    bundle = Bundle.open(exported.path)
    images = [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))]
    batch, geoms = preprocess_batch(images, bundle.preprocess)
    valid = np.stack([g.valid_mask() for g in geoms])[:, None].astype(np.uint8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"])
        for m in (str(bundle.onnx_path), mixed[0].SerializeToString())
    ]
    (ref_map, ref_score), (map16, score16) = (s.run(None, {"image": batch, "valid": valid}) for s in sessions)
    assert map16.dtype == np.float32 and score16.dtype == np.float32 and np.all(np.isfinite(map16))
    ranges = np.ptp(ref_map.reshape(len(images), -1), axis=1)
    map_err = np.abs(map16 - ref_map).reshape(len(images), -1).max(axis=1) / ranges
    score_err = np.abs(score16 - ref_score) / np.abs(ref_score)
    assert map_err.max() < MAP_TOL and score_err.max() < SCORE_TOL
    assert map_err.max() > 1e-5  # really computed in FP16 (ORT runs the FP16 convolutions)
    threshold = bundle.threshold
    assert np.array_equal(score16 >= threshold, ref_score >= threshold)
    assert 0 < int(np.sum(ref_score >= threshold)) < len(images)  # both verdicts occur


def _graph(nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_small_values_shared_initializers_and_resize_scales() -> None:
    x = helper.make_tensor_value_info("x", FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", FLOAT, [1, 1, 8, 8])
    z = helper.make_tensor_value_info("z", FLOAT, [1, 1, 4, 4])
    inits = [
        numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half_w"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Clip", ["x", "eps"], ["c"], name="model.post/clip"),
        helper.make_node("Mul", ["c", "half_w"], ["m"], name="model.post/mul"),
        helper.make_node("Resize", ["m", "", "scales"], ["y"], name="model.post/resize"),
        helper.make_node("Mul", ["x", "half_w"], ["z"], name="model.scorer/mul"),
    ]
    model, report = to_mixed_precision(_graph(nodes, [x], [y, z], inits))
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert stored["eps"].dtype == np.float16 and stored["eps"] > 0  # not rounded to 0 (no eps = 0 division)
    assert stored["scales"].dtype == np.float32  # Resize scales are float32 by definition
    assert stored["half_w"].dtype == np.float32 and stored["half_w_fp16"].dtype == np.float16  # shared
    assert report.initializers_fp16 == 2 and report.fp32_nodes == ["model.scorer/mul"]
    x_in = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 7
    out_y, out_z = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x_in})
    assert out_y.dtype == np.float32 and out_y.shape == (1, 1, 8, 8)
    assert np.array_equal(out_z, x_in * 0.5)  # the FP32 node sees the FP32 input
    assert np.allclose(out_y[..., ::2, ::2], np.maximum(x_in, 1e-12) * 0.5, atol=2e-3)


def test_errors(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", FLOAT, [2])
    y = helper.make_tensor_value_info("y", FLOAT, [2])
    big = numpy_helper.from_array(np.array([1e6, 1.0], np.float32), "big")
    overflow = _graph([helper.make_node("Mul", ["x", "big"], ["y"], name="model.post/mul")], [x], [y], [big])
    with pytest.raises(ExportError, match=r"initializer big overflows FP16: add its scope to fp32_scopes"):
        to_mixed_precision(overflow)
    to_mixed_precision(overflow, ["post"])  # fine once that scope stays FP32
    with pytest.raises(ExportError, match="fp32_scopes is empty"):
        to_mixed_precision(overflow, [])
    with pytest.raises(ExportError, match="no such ONNX file"):
        write_mixed_precision(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        write_mixed_precision(tmp_path / "bad.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
