"""Tests for engines.tensorrt and engines.tensorrt.builder, with the real TensorRT-RTX builder (no GPU).

TensorRT-RTX (``tensorrt_rtx``) runs its ONNX parser and builder without a GPU, so the exported tiny model
is really built here (strongly typed, target SM86). Its engine inspector needs a deserialised engine,
which needs a GPU; the precision of every layer is therefore checked on the parsed strongly typed
``INetworkDefinition``, where each layer's output type is fixed by the graph's Casts and is what the
builder must honour. Deserialising and running are GPU-only (skipped here, see ``make gpu-check``).
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

import onnx
import pytest
from engine_support import ExportedBundle

from engines.bundle import Bundle
from engines.errors import BackendError, BuildError
from engines.export.mixed_precision import DEFAULT_FP32_SCOPES, in_scopes, node_scope
from engines.tensorrt import gpu_info, import_pycuda, import_tensorrt
from engines.tensorrt.builder import (
    LayerInfo,
    apply_fp32_constraints,
    build_engine,
    describe_layers,
    normalize_sm,
    parse_onnx,
    select_fp32_layers,
)
from engines.tensorrt.record import BuildRecord, record_path

trt_rtx = pytest.importorskip(
    "tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install -e '.[tensorrt-build]')"
)
NO_GPU = (
    "no CUDA GPU here: deserialising or running an engine needs one (run make gpu-check on a GPU machine)"
)


@pytest.fixture(scope="module")
def onnx_path(exported: ExportedBundle) -> Path:
    return Bundle.open(exported.path).onnx_path


@pytest.fixture(scope="module")
def fp16_build(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildRecord, Path]:
    out = tmp_path_factory.mktemp("trt") / "model.fp16.sm86.engine"
    record = build_engine(
        onnx_path, out, "fp16", max_batch=4, opt_batch=2, workspace_mb=256, compute_capability="SM86",
        timing_cache=out.with_name("timing.cache"), flavour="tensorrt_rtx",
    )  # fmt: skip
    return record, out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _island(info: LayerInfo) -> bool:
    return in_scopes(node_scope(info.onnx_node), DEFAULT_FP32_SCOPES)


# ------------------------------------------------------------------ strongly typed FP16 with an FP32 island


def test_fp16_network_keeps_the_spectral_island_fp32(fp16_build: tuple[BuildRecord, Path]) -> None:
    record, out = fp16_build
    assert out.is_file() and out.stat().st_size > 1_000_000  # a real serialised engine
    rt = import_tensorrt("tensorrt_rtx")
    _b, network, _p, _l = parse_onnx(rt, out.with_name(record.network_onnx_file), strongly_typed=True)
    layers = describe_layers(network)
    float_layers = [i for i in layers if i.is_float]
    spectral = [i for i in float_layers if "spectral" in node_scope(i.onnx_node)]
    scorer = [i for i in float_layers if node_scope(i.onnx_node).endswith("scorer")]
    convs = [i for i in layers if i.type == "CONVOLUTION"]
    # the spectral scopes (SDM band split, prototype channel spectrum) and the bank distances: FP32
    assert len(spectral) >= 30 and all(i.output_dtypes[0] == "FLOAT" for i in spectral)
    assert {i.type for i in spectral} >= {"MATRIX_MULTIPLY", "ELEMENTWISE", "UNARY"}
    assert {node_scope(i.onnx_node) for i in spectral} >= {f"model.sdms.{k}.spectral_split" for k in range(3)}
    assert len(scorer) >= 30 and all(i.output_dtypes[0] == "FLOAT" for i in scorer)
    ops = {n.name: n.op_type for n in onnx.load(str(out.with_name(record.network_onnx_file))).graph.node}
    # every k-best search of the three banks (one per bank, two steps where a bank is grouped) is FP32
    graph_topks = [n for n, op in ops.items() if op == "TopK" and node_scope(n).endswith("scorer")]
    assert len(graph_topks) >= 3 and sum(i.type == "TOPK" for i in scorer) == len(graph_topks)
    # every convolution (teacher, student, SDM gates, blur) runs in FP16
    assert len(convs) > 50 and all(i.output_dtypes == ("HALF",) for i in convs)
    # the rest is FP16 but for the parser's own FP32 work: ReduceL2 of FP16 data is computed in FP32
    # (cast, square, reduce, sqrt, cast back), and helper layers broadcast the island's FP32 constants
    readers: dict[str, list[LayerInfo]] = {}
    for info in layers:
        for name in info.inputs:
            readers.setdefault(name, []).append(info)
    others = [i for i in float_layers if not _island(i) and i.type not in ("CAST", "CONSTANT")]
    assert len(others) > 300
    for info in (i for i in others if "FLOAT" in i.output_dtypes):
        if info.onnx_node in ops:
            assert ops[info.onnx_node] == "ReduceL2", info
        else:
            users = [r for name in info.outputs for r in readers.get(name, [])]
            assert info.name.startswith("ONNXTRT_") and users and all(_island(u) for u in users), info
    casts = [i for i in layers if i.type == "CAST" and i.is_float]
    assert {i.output_dtypes[0] for i in casts} == {"FLOAT", "HALF"}
    assert [network.get_output(k).dtype for k in range(2)] == [trt_rtx.float32, trt_rtx.float32]
    assert [network.get_input(k).dtype for k in range(2)] == [trt_rtx.uint8, trt_rtx.uint8]


def test_build_record(fp16_build: tuple[BuildRecord, Path], onnx_path: Path) -> None:
    record, out = fp16_build
    assert record_path(out) == out.with_name("model.fp16.sm86.build.json")
    assert BuildRecord.load(record_path(out)) == record
    assert record.engine_file == out.name and record.engine_sha256 == _sha(out)
    assert record.engine_size == out.stat().st_size
    assert record.onnx_file == "model.onnx" and record.onnx_sha256 == _sha(onnx_path)
    assert record.network_onnx_file == "model.fp16.onnx"
    assert record.network_onnx_sha256 == _sha(out.with_name("model.fp16.onnx"))
    assert (record.tensorrt_flavour, record.tensorrt_version) == ("tensorrt_rtx", trt_rtx.__version__)
    assert record.gpu == (gpu_info().to_dict() if gpu_info() else None)
    assert record.target_sms == ["SM86"] and record.hardware_compatibility == "NONE"
    assert (record.precision, record.strategy) == ("fp16", "strongly_typed")
    assert record.builder_flags[0] == "STRONGLY_TYPED network"
    assert "TF32" not in record.builder_flags  # cleared: true FP32 spectral GEMMs
    assert record.profile["inputs"]["image"] == {
        "min": [1, 64, 64, 3],
        "opt": [2, 64, 64, 3],
        "max": [4, 64, 64, 3],
    }
    assert record.profile["inputs"]["valid"]["max"] == [4, 1, 64, 64] and record.max_batch == 4
    assert record.workspace_mb == 256 and record.fp32_scopes == list(DEFAULT_FP32_SCOPES)
    assert record.fp32_layers["model.scorer"] > 30 and record.build_seconds > 0
    assert not record.timing_cache["loaded"] and "no-op in tensorrt_rtx" in record.timing_cache["note"]


def test_fp32_build(onnx_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.fp32.engine"
    record = build_engine(
        onnx_path, out, "fp32", max_batch=2, compute_capability="sm80", flavour="tensorrt_rtx"
    )
    assert (
        record.network_onnx_file == "model.onnx"
        and record.fp32_scopes == []
        and record.target_sms == ["SM80"]
    )
    assert not (tmp_path / "model.fp16.onnx").exists()
    _b, network, _p, _l = parse_onnx(import_tensorrt("tensorrt_rtx"), onnx_path)
    assert {i.output_dtypes[0] for i in describe_layers(network) if i.is_float} == {"FLOAT"}


def test_deserialising_needs_a_gpu(fp16_build: tuple[BuildRecord, Path]) -> None:
    if gpu_info() is None:
        pytest.skip(NO_GPU)
    try:
        import_pycuda()
    except BackendError as err:
        pytest.skip(str(err))
    runtime = trt_rtx.Runtime(trt_rtx.Logger(trt_rtx.Logger.ERROR))
    assert runtime.deserialize_cuda_engine(fp16_build[1].read_bytes()) is not None


# ------------------------------------------------------------------ weak typing (TensorRT 10): selection


def test_weak_typing_selection_on_the_parsed_network(onnx_path: Path) -> None:
    _b, network, _p, _l = parse_onnx(import_tensorrt("tensorrt_rtx"), onnx_path)
    layers = describe_layers(network)
    chosen = select_fp32_layers(layers)
    names = {i.name for i in chosen}
    assert all(i.onnx_node == i.name or i.name.startswith(i.onnx_node) for i in layers if i.onnx_node)
    # every float layer of the island, none of its shape arithmetic, no convolution
    expected = {i.name for i in layers if i.is_float and i.type != "SHAPE" and _island(i)}
    assert expected <= names and len(expected) > 60
    assert not any(i.type == "CONVOLUTION" or not i.is_float for i in chosen)
    # constants that only the island reads (DFT bases, band matrices, the memory banks), and the
    # parser's helper layers (broadcasts) between them and the island
    constants = {i.name for i in chosen if i.type == "CONSTANT"}
    assert {f"model.embedders.{k}.spectral_magnitude.basis" for k in range(3)} <= constants
    assert {f"model.sdms.{k}.spectral_split.lh" for k in range(3)} <= constants
    assert {f"model.banks.{k}.bank" for k in range(3)} <= constants
    helpers = names - expected - constants
    assert all(name.startswith("ONNXTRT_") for name in helpers)
    # the teacher's weights (read by convolutions) are not pinned
    assert not any("teacher" in name for name in constants)


class _Tensor:
    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.dtype = name, type("DT", (), {"name": dtype})()


class _Layer:
    def __init__(
        self, name: str, kind: str, inputs: list[str], outputs: list[tuple[str, str]], meta: str = ""
    ) -> None:
        self.name, self.metadata = name, meta
        self.type = type("LT", (), {"name": kind})()
        self._in = [_Tensor(n, "FLOAT") for n in inputs]
        self._out = [_Tensor(n, d) for n, d in outputs]
        self.num_inputs, self.num_outputs = len(self._in), len(self._out)
        self.precision: Any = None
        self.output_types: dict[int, Any] = {}

    def get_input(self, j: int) -> _Tensor:
        return self._in[j]

    def get_output(self, j: int) -> _Tensor:
        return self._out[j]

    def set_output_type(self, j: int, dtype: Any) -> None:
        self.output_types[j] = dtype


class _Network:
    def __init__(self, layers: list[_Layer]) -> None:
        self.layers, self.num_layers = layers, len(layers)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]


SPECTRAL_META = "[ONNX Layer: model.sdms.0.spectral_split/node_matmul]"


def test_apply_fp32_constraints_uses_the_tensorrt10_layer_api() -> None:
    """``layer.precision`` and ``set_output_type`` on the island (a stand-in network: no TensorRT 10 here)."""
    fake_trt = type("trt", (), {"float32": "FP32"})
    layers = [
        _Layer("model.teacher.conv/node_conv", "CONVOLUTION", ["x", "w"], [("f", "FLOAT")]),
        _Layer("model.sdms.0.spectral_split.lh", "CONSTANT", [], [("lh", "FLOAT")]),
        _Layer(
            "renamed_by_parser",
            "MATRIX_MULTIPLY",
            ["lh", "f"],
            [("s", "FLOAT")],
            meta=SPECTRAL_META,
        ),
        _Layer("model.scorer/node_topk", "TOPK", ["s"], [("v", "FLOAT"), ("i", "INT32")]),
        _Layer("model.scorer/node_shape", "SHAPE", ["s"], [("shape", "INT64")]),
        _Layer("model.post/node_max", "REDUCE", ["v", "lh2"], [("score", "FLOAT")]),
        _Layer("shared_const", "CONSTANT", [], [("lh2", "FLOAT")]),
    ]
    layers[3]._in.append(_Tensor("lh2", "FLOAT"))
    layers[3].num_inputs = 2
    pinned = apply_fp32_constraints(_Network(layers), fake_trt)
    assert pinned == ["model.sdms.0.spectral_split.lh", "renamed_by_parser", "model.scorer/node_topk"]
    assert [lay.precision for lay in layers] == [None, None, "FP32", "FP32", None, None, None]
    assert layers[1].output_types == {0: "FP32"}  # constants: output type only
    assert layers[3].output_types == {0: "FP32"}  # the INT32 indices keep their type
    assert layers[0].output_types == layers[5].output_types == layers[6].output_types == {}


# ------------------------------------------------------------------ clear errors


def test_missing_and_corrupt_onnx(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"ONNX file .*missing.onnx not found: export a bundle first"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "e.engine", "fp32", flavour="tensorrt_rtx")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage, not protobuf" * 50)
    with pytest.raises(BuildError) as err:
        build_engine(bad, tmp_path / "e.engine", "fp32", compute_capability="SM86", flavour="tensorrt_rtx")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "TensorRT's ONNX parser rejected model.onnx (1 error(s); first MODEL_DESERIALIZE_FAILED"
    )
    assert message.endswith("not an ONNX model (corrupt or truncated file): re-export the bundle")
    with pytest.raises(
        BuildError, match=r"cannot make the mixed-precision graph: .*not a readable ONNX file"
    ):
        build_engine(bad, tmp_path / "e.engine", "fp16", flavour="tensorrt_rtx")
    assert not (tmp_path / "e.engine").exists()


def test_options_tensorrt_rtx_lacks(onnx_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.engine"
    with pytest.raises(BuildError, match=r"weak typing .* needs NVIDIA TensorRT 10; tensorrt_rtx"):
        build_engine(onnx_path, out, "fp16", strongly_typed=False, flavour="tensorrt_rtx")
    with pytest.raises(BuildError, match=r"TensorRT-RTX has no hardware/version compatibility modes"):
        build_engine(onnx_path, out, "fp16", hardware_compat=True, flavour="tensorrt_rtx")
    with pytest.raises(BuildError, match=r"cannot target SM90: choose one of \['SM75', 'SM80', 'SM86'"):
        build_engine(onnx_path, out, "fp32", compute_capability="9.0", flavour="tensorrt_rtx")
    with pytest.raises(BuildError, match=r"need 1 <= opt batch \(9\) <= max batch \(8\)"):
        build_engine(onnx_path, out, "fp16", max_batch=8, opt_batch=9, flavour="tensorrt_rtx")
    with pytest.raises(BuildError, match="precision must be one of"):
        build_engine(onnx_path, out, "int8", flavour="tensorrt_rtx")
    assert not out.exists()
    assert [normalize_sm(s) for s in ("SM86", "sm86", "86", "8.6", "12.0")] == ["SM86"] * 4 + ["SM120"]
    with pytest.raises(BuildError, match=r"expected e\.g\. SM86"):
        normalize_sm("ampere")


def test_missing_tensorrt_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_tensorrt(name: str, *args: Any) -> Any:
        if name.split(".")[0] in ("tensorrt", "tensorrt_rtx", "pycuda"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_tensorrt)
    with pytest.raises(BackendError) as err:
        import_tensorrt()
    assert str(err.value) == (
        "TensorRT is not installed (no tensorrt / tensorrt_rtx module): install NVIDIA TensorRT >= 10 (pip "
        "install tensorrt, from NVIDIA's index, on the GPU machine) or TensorRT-RTX (pip install "
        "'masf-edge[tensorrt-build]', i.e. tensorrt-rtx)"
    )
    with pytest.raises(BackendError, match=r"no tensorrt module\): install NVIDIA TensorRT >= 10"):
        build_engine("unused.onnx", "unused.engine", flavour="tensorrt")
    with pytest.raises(
        BackendError, match=r"pycuda is not installed: install pycuda \(pip install 'masf-edge\[gpu\]'"
    ):
        import_pycuda()
    with pytest.raises(ValueError, match="flavour must be one of"):
        import_tensorrt("tensorflow")


def test_import_prefers_full_tensorrt_then_rtx() -> None:
    rt = import_tensorrt()
    expected = "tensorrt" if importlib.util.find_spec("tensorrt") else "tensorrt_rtx"
    assert rt.flavour == expected and rt.version == rt.trt.__version__
    assert import_tensorrt("tensorrt_rtx").weak_typing is False  # only strongly typed networks


# ------------------------------------------------------------------ plugin-mode graphs (cuFFT DFT plugin)


def _plugin_graph(path: Path) -> Path:
    """A one-node plugin-mode graph: ``rfft`` over 16 samples as a ``masf::CuFFTDFT`` node."""
    from onnx import TensorProto, helper

    from engines.export.plugin import dft_to_plugin

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 1])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, None)
    node = helper.make_node("DFT", ["image"], ["score"], name="model.spectral/node_dft", axis=2, onesided=1)
    graph = helper.make_graph([node], "g", [x], [y])
    plugin, _ = dft_to_plugin(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.save(plugin, str(path))
    return path


def test_plugin_graph_without_tensorrt_plugin_is_refused_before_parsing(
    onnx_path: Path, tmp_path: Path
) -> None:
    """TensorRT-RTX 1.7 has no usable ``tensorrt.plugin`` and its parser aborts the process on a Python
    plugin node: the builder must say so in one line before the parser sees the graph."""
    from engines.tensorrt.builder import register_graph_plugins
    from engines.tensorrt.dft_plugin import plugin_api_problem

    rt = import_tensorrt("tensorrt_rtx")
    if plugin_api_problem(rt) is None:
        pytest.skip("this tensorrt_rtx has tensorrt.plugin: registration is tested in test_dft_plugin")
    path = _plugin_graph(tmp_path / "plugin.onnx")
    out = tmp_path / "e.engine"
    for precision in ("fp32", "fp16"):
        with pytest.raises(BuildError) as err:
            build_engine(path, out, precision, compute_capability="SM86", flavour="tensorrt_rtx")
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith("the cuFFT plugin (spectral mode 'plugin') needs NVIDIA TensorRT >= 10.6")
        assert "--tensorrt tensorrt" in message and "--spectral-mode gemm or dft" in message
    assert not out.exists() and not (tmp_path / "plugin.fp16.onnx").exists()
    with pytest.raises(BuildError, match=r"needs NVIDIA TensorRT >= 10.6"):
        parse_onnx(rt, path)
    assert register_graph_plugins(rt, onnx_path) == []  # gemm graph: nothing to register
    assert register_graph_plugins(rt, tmp_path / "missing.onnx") == []  # left to the parser's error
