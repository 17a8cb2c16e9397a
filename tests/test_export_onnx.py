"""Tests for engines.export: the ONNX graph (gemm: no DFT, TensorRT 10 ops), spectral scopes, parity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from engine_support import ExportedBundle
from onnx import TensorProto, helper
from torch import nn

from engines.bundle import GRAPH_INPUTS, GRAPH_OUTPUTS, Bundle, sha256_file
from engines.errors import ExportError
from engines.export.trt_ops import op_counts, supported_ops_table, trt10_issues, unsupported_ops
from engines.preprocess import preprocess
from trainer.data import read_image
from trainer.export.onnx import export_onnx, spectral_scopes, to_onnx_proto
from trainer.export.parity import MAP_RTOL, SCORE_RTOL, check_parity, ort_session
from trainer.models.masf.samb import PatchEmbedder
from trainer.models.masf.spectral import set_spectral_mode
from trainer.models.masf.ttsa import PhasePerturbation
from trainer.runs import load_run
from trainer.train import calibration_for

torch.set_num_threads(1)

SPECTRAL_OPS = {"MatMul", "Slice", "Mul", "Add", "Sqrt", "Sub", "Concat", "Split"}


@pytest.fixture(scope="module")
def graph(exported: ExportedBundle) -> onnx.ModelProto:
    return onnx.load(str(Bundle.open(exported.path).onnx_path))


# ---------------------------------------------------------------- the exported gemm graph


def test_gemm_graph_is_valid_with_dynamic_batch(graph: onnx.ModelProto) -> None:
    onnx.checker.check_model(graph, full_check=True)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [18]

    def io(values: list[onnx.ValueInfoProto]) -> list[tuple[str, int, list[str | int]]]:
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    assert io(list(graph.graph.input)) == [
        ("image", TensorProto.UINT8, ["N", 64, 64, 3]),
        ("valid", TensorProto.UINT8, ["N", 1, 64, 64]),
    ]
    assert io(list(graph.graph.output)) == [
        ("anomaly_map", TensorProto.FLOAT, ["N", 1, 64, 64]),
        ("score", TensorProto.FLOAT, ["N"]),
    ]


def test_gemm_graph_has_no_dft_and_parses_on_tensorrt10(graph: onnx.ModelProto) -> None:
    ops = op_counts(graph)
    assert "DFT" not in ops and "STFT" not in ops
    assert unsupported_ops(graph) == []
    assert trt10_issues(graph) == []
    # the inference path is all there: teacher convs, the bank search, fusion upsampling and the blur
    assert ops["Conv"] > 50 and ops["Resize"] == 3 and ops["MatMul"] >= 9
    # one k-best search per scale's bank, in two steps (a ReduceMin over groups, a second TopK) where
    # the bank is large enough to group (KNNScorer): here at least one of the three
    assert ops["TopK"] == 3 + ops.get("ReduceMin", 0) >= 4
    assert set(ops) <= set(supported_ops_table()["supported"])


def test_spectral_nodes_carry_a_spectral_scope(graph: onnx.ModelProto) -> None:
    scopes = spectral_scopes(graph)
    assert sorted(scopes) == [
        "model.embedders.0.spectral_magnitude",
        "model.embedders.1.spectral_magnitude",
        "model.embedders.2.spectral_magnitude",
        "model.sdms.0.spectral_split",
        "model.sdms.1.spectral_split",
        "model.sdms.2.spectral_split",
    ]
    spectral = [n for n in graph.graph.node if "spectral" in n.name]
    assert len(spectral) == sum(scopes.values())
    assert {n.op_type for n in spectral} <= SPECTRAL_OPS
    assert sum(n.op_type == "MatMul" for n in spectral) == 9  # 2 per band split, 1 per channel spectrum
    names = [n.name for n in graph.graph.node]
    assert len(set(names)) == len(names)
    assert any(n.startswith("model.teacher.backbone.") for n in names)


def test_export_record_in_the_manifest(exported: ExportedBundle) -> None:
    bundle = Bundle.open(exported.path)
    rec = bundle.manifest["export"]
    assert rec["spectral_mode"] == "gemm" and rec["tta"] is False and rec["opset"] == 18
    assert rec["calibration_path"] == bundle.manifest["calibration"]["path"] == "plain"
    assert [i["name"] for i in rec["inputs"]] == list(GRAPH_INPUTS)
    assert [o["name"] for o in rec["outputs"]] == list(GRAPH_OUTPUTS)
    assert rec["inputs"][0] == {"name": "image", "dtype": "uint8", "shape": ["N", 64, 64, 3]}
    assert rec["sha256"] == sha256_file(bundle.onnx_path) == bundle.manifest["files"]["model.onnx"]["sha256"]
    assert rec["tensorrt10"]["issues"] == []
    parity = rec["parity"]
    assert parity["passed"] is True and parity["n_images"] == 5 and parity["batch_sizes"] == [1, 8]
    assert parity["map_max_rel_err"] < MAP_RTOL and parity["score_max_rel_err"] < SCORE_RTOL
    assert parity["verdict_mismatches"] == 0
    assert "calibration images" in parity["images"]


# ---------------------------------------------------------------- parity on generated images


def test_parity_batch_1_and_n_with_a_letterboxed_image(exported: ExportedBundle, synth_data: Path) -> None:
    model, info = load_run(exported.run)
    images = [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))[:5]]
    images.append(np.ascontiguousarray(images[-1][10:70, :]))  # 60x96: letterboxed, padding rows
    threshold = calibration_for(info, tta=False).threshold
    bundle = Bundle.open(exported.path)
    res = check_parity(model, bundle.onnx_path, images, info.preprocess, threshold, batch_sizes=(1, 3))
    assert res["n_images"] == 6 and res["batch_sizes"] == [1, 3]
    assert res["passed"], res
    assert res["map_max_rel_err"] < MAP_RTOL
    assert res["score_max_rel_err"] < SCORE_RTOL
    assert res["verdict_mismatches"] == 0
    # the graph really drops the padding from the score: all-valid vs letterbox mask differ on that image
    sess = ort_session(bundle.onnx_path, 1)
    frame, geom = preprocess(images[-1], info.preprocess)
    assert not geom.valid_mask().all()
    valid = geom.valid_mask()[None, None].astype(np.uint8)
    _, masked = sess.run(None, {"image": frame[None], "valid": valid})
    _, unmasked = sess.run(None, {"image": frame[None], "valid": np.ones_like(valid)})
    assert masked[0] <= unmasked[0]
    amap, _ = sess.run(None, {"image": frame[None], "valid": valid})
    assert float(masked[0]) == pytest.approx(float(amap[0, 0][geom.valid_mask()].max()), rel=1e-6)


def test_a_score_at_the_threshold_within_tolerance_is_not_a_verdict_mismatch(
    exported: ExportedBundle, synth_data: Path
) -> None:
    """A threshold floored just above the highest calibration score (1e-6 of the spread) leaves that
    image's verdict to numerical noise: it is counted apart, while a clear verdict must still agree."""
    model, info = load_run(exported.run)
    images = [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))[:4]]
    bundle = Bundle.open(exported.path)
    ref = check_parity(model, bundle.onnx_path, images, info.preprocess, 0.0, batch_sizes=(1,))
    scores = np.sort(
        np.asarray(
            [
                model(torch.from_numpy(f[None]).permute(0, 3, 1, 2).float()).pred_score.item()
                for f in [preprocess(im, info.preprocess)[0] for im in images]
            ]
        )
    )
    assert ref["verdicts_at_threshold"] == 0 and ref["verdict_mismatches"] == 0
    at = check_parity(model, bundle.onnx_path, images, info.preprocess, float(scores[-1]), batch_sizes=(1,))
    assert at["verdicts_at_threshold"] == 1 and at["passed"], at
    between = float(scores[-2] + scores[-1]) / 2
    clear = check_parity(model, bundle.onnx_path, images, info.preprocess, between, batch_sizes=(1,))
    assert clear["verdicts_at_threshold"] == 0 and clear["verdict_mismatches"] == 0 and clear["passed"]


def test_export_rejects_unknown_spectral_mode(trained_run: Path, tmp_path: Path) -> None:
    model, info = load_run(trained_run)
    with pytest.raises(ExportError, match=r"spectral mode must be one of"):
        export_onnx(model, info, tmp_path / "m.onnx", spectral_mode="fftw")
    assert not (tmp_path / "m.onnx").exists()


def _parity_images(synth_data: Path) -> list[np.ndarray]:
    return [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))[1::5][:3]]


def _export_checked(model: Any, info: Any, out: Path, tta: bool, images: list[np.ndarray]) -> dict[str, Any]:
    """``export_onnx`` with its parity check on ``images`` at batch sizes 1 and 2."""
    return export_onnx(model, info, out, tta=tta, parity_images=images, parity_batch_sizes=(1, 2), threads=1)


@pytest.mark.slow
def test_tta_export_gemm_matches_torch(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    """The TTSA path: its views run as a batch inside the graph; the phase rotation is a gemm island."""
    model, info = load_run(trained_run)
    rec = _export_checked(model, info, tmp_path / "tta.onnx", True, _parity_images(synth_data))
    assert rec["tta"] is True and rec["tta_views"] == 2 and rec["calibration_path"] == "tta"
    assert "model.perturb.spectral" in rec["spectral_scopes"]
    assert "DFT" not in rec["ops"] and rec["tensorrt10"]["issues"] == []
    parity = rec["parity"]
    assert parity["passed"] and parity["threshold"] == calibration_for(info, tta=True).threshold
    assert parity["map_max_rel_err"] < MAP_RTOL and parity["score_max_rel_err"] < SCORE_RTOL
    # the model is left as it was: torch.fft mode, no wrapper attached
    assert {m.mode for m in model.modules() if hasattr(m, "set_mode")} == {"fft"}
    assert not hasattr(model, "perturb")


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True])
def test_a_score_with_its_own_cue_mix_exports_with_parity(
    trained_run: Path, synth_data: Path, tmp_path: Path, tta: bool
) -> None:
    """``fusion.score_cos_weight``: the map from the map's mix, the score from its own; torch gives the
    map of the unsplit model and the score of the model at the score's mix, and the exported graph
    (plain and TTSA) computes both as torch does (parity)."""
    from trainer.inference import predict_arrays
    from trainer.models.masf import apply_tta

    model, info = load_run(trained_run)
    assert model.use_student and model.use_bank
    a = model.fusion.map_mix
    s = 1.0 if a < 0.5 else 0.0
    images = _parity_images(synth_data)
    spec, cpu = info.preprocess, torch.device("cpu")
    views = info.config.tta.views, info.config.tta.sigma, info.config.tta.seed

    def run() -> list[Any]:
        return predict_arrays(apply_tta(model, tta, *views)[0], images, spec, cpu)

    plain = run()
    model.fusion.cos_weight, model.fusion.bank_weight = s, 1.0 - s
    at_score_mix = run()
    model.fusion.cos_weight, model.fusion.bank_weight = a, 1.0 - a
    model.fusion.score_cos_weight = s
    split = run()
    for p, q, r in zip(plain, at_score_mix, split, strict=True):
        np.testing.assert_allclose(r.anomaly_map, p.anomaly_map, rtol=1e-5, atol=1e-5)
        assert r.score == pytest.approx(q.score, rel=1e-5, abs=1e-5)
    assert any(abs(p.score - r.score) > 1e-3 for p, r in zip(plain, split, strict=True))
    rec = _export_checked(model, info, tmp_path / "split.onnx", tta, images)
    parity = rec["parity"]
    assert parity["passed"] and rec["tensorrt10"]["issues"] == []
    assert parity["map_max_rel_err"] < MAP_RTOL and parity["score_max_rel_err"] < SCORE_RTOL


# ---------------------------------------------------------------- both spectral modes on the spectral ops


class _SpectralOps(nn.Module):
    """The two DFTs of the inference path (channel spectrum and TTSA phase rotation), small."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = PatchEmbedder(16, aggregate=1, normalize=False, seed=3)
        self.perturb = PhasePerturbation(8, 6, views=2, sigma=0.3, seed=5)

    def forward(self, feats: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(feats), self.perturb(image)


@pytest.mark.parametrize("mode", ["gemm", "dft"])
def test_spectral_ops_export_in_both_modes(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    module = _SpectralOps().eval()
    feats, image = torch.randn(2, 16, 3, 4, generator=gen) * 5, torch.randn(2, 3, 8, 6, generator=gen)
    ref = [t.numpy() for t in module(feats, image)]  # torch.fft reference
    set_spectral_mode(module, "gemm" if mode == "gemm" else "fft")
    proto = to_onnx_proto(module, (feats, image), ["feats", "image"], ["proto", "views"], 18, mode)
    ops = op_counts(proto)
    if mode == "gemm":
        assert "DFT" not in ops and unsupported_ops(proto) == []
        assert set(spectral_scopes(proto)) == {"embed.spectral_magnitude", "perturb.spectral"}
    else:
        assert ops["DFT"] >= 3  # rfft, fft2 (2 axes) and ifft2 (2 axes) as native ONNX DFT nodes
        assert "DFT" in unsupported_ops(proto)
        assert any("unsupported op DFT" in i for i in trt10_issues(proto))
    sess = _session(proto)
    # dynamic batch: a batch of 3 works and matches torch
    feats3, image3 = torch.randn(3, 16, 3, 4, generator=gen) * 5, torch.randn(3, 3, 8, 6, generator=gen)
    set_spectral_mode(module, "fft")
    for (f, x), want in (
        ((feats, image), ref),
        ((feats3, image3), [t.numpy() for t in module(feats3, image3)]),
    ):
        got = sess.run(None, {"feats": f.numpy(), "image": x.numpy()})
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(np.abs(w).max()))


def _session(proto: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- the TensorRT 10 op table


def test_op_table_has_its_source_and_flags_dft() -> None:
    table = supported_ops_table()
    assert "onnx-tensorrt" in table["source"]["repository"]
    assert table["source"]["tensorrt_version"].startswith("10.")
    assert "DFT" in table["unsupported"] and "DFT" not in table["supported"]
    assert {"MatMul", "TopK", "Conv", "Resize", "ReduceMin"} <= set(table["supported"])
    assert json.dumps(table)  # plain data


def _tiny_graph(op: str, k: int = 3, opset: int = 18) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if op == "TopK":
        kt = helper.make_tensor("k", TensorProto.INT64, [1], [k])
        idx = helper.make_tensor_value_info("i", TensorProto.INT64, None)
        node = helper.make_node("TopK", ["x", "k"], ["y", "i"], name="topk")
        graph = helper.make_graph([node], "g", [x], [y, idx], initializer=[kt])
    else:
        node = helper.make_node(op, ["x"], ["y"], name="n")
        graph = helper.make_graph([node], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_ops_and_restrictions() -> None:
    assert unsupported_ops(_tiny_graph("Relu")) == []
    assert unsupported_ops(_tiny_graph("Unique")) == ["Unique"]
    # STFT was added in TensorRT 10.5: unsupported for "every TensorRT 10", fine for 10.15
    assert unsupported_ops(_tiny_graph("STFT")) == ["STFT"]
    assert unsupported_ops(_tiny_graph("STFT"), trt_version="10.15") == []
    assert trt10_issues(_tiny_graph("TopK", k=100)) == []
    assert trt10_issues(_tiny_graph("TopK", k=5000)) == ["TopK topk: K = 5000 exceeds TensorRT's limit 3839"]
    assert trt10_issues(_tiny_graph("Relu", opset=21)) == ["opset 21 outside TensorRT 10.0's range 9..20"]
    assert trt10_issues(_tiny_graph("Relu", opset=21), trt_version="10.15") == []
    # reduction axes computed at run time are rejected by TensorRT
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("ReduceMax", ["x", "axes"], ["y"], name="rmax")
    dyn = helper.make_model(
        helper.make_graph([node], "g", [x, axes], [y]), opset_imports=[helper.make_opsetid("", 18)]
    )
    assert trt10_issues(dyn) == ["ReduceMax rmax: axes must be a constant"]


def test_uint8_inputs_must_be_cast_first() -> None:
    """TensorRT takes UINT8 only in a Cast: a Transpose of the uint8 frame is rejected by its parser."""
    img = helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 4, 4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    transpose_first = [
        helper.make_node("Transpose", ["image"], ["t"], name="permute", perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["t"], ["y"], name="cast", to=TensorProto.FLOAT),
    ]
    cast_first = [
        helper.make_node("Cast", ["image"], ["c"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["c"], ["y"], name="permute", perm=[0, 3, 1, 2]),
    ]
    for nodes, expected in (
        (
            transpose_first,
            ["Transpose permute: reads the UINT8 input 'image' (TensorRT needs a Cast to float first)"],
        ),
        (cast_first, []),
    ):
        model = helper.make_model(
            helper.make_graph(nodes, "g", [img], [y]), opset_imports=[helper.make_opsetid("", 18)]
        )
        assert trt10_issues(model) == expected


def test_tiled_bundle_pins_its_tiling_and_passes_parity_on_stitched_maps(
    tiled_bundle: ExportedBundle,
) -> None:
    bundle = Bundle.open(tiled_bundle.path)
    spec = bundle.preprocess
    assert bundle.manifest["preprocess"]["tiles"] == {"frame_height": 64, "frame_width": 512, "overlap": 32}
    assert spec.tiled and spec.grid.count == 5
    # the graph takes one tile; the frame is cut and stitched outside it, identically on every backend
    rec = bundle.manifest["export"]
    assert rec["inputs"][0] == {"name": "image", "dtype": "uint8", "shape": ["N", 64, 128, 3]}
    assert rec["parity"]["passed"] is True and rec["parity"]["verdict_mismatches"] == 0
    assert "64x512 frame in 5 tiles of 64x128" in tiled_bundle.stdout
