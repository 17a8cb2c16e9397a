"""Tests for engines.tensorrt.dft_plugin (the cuFFT DFT plugin), on a machine without a GPU.

What runs here: the plugin's shape rule and transform (with numpy standing in for CuPy) against ONNX
Runtime's ``DFT``; the registered functions against the ``tensorrt.plugin`` (QDP) signature rules, with a
stand-in module; the clear errors for a TensorRT without ``tensorrt.plugin`` (TensorRT-RTX 1.7 here) and
for a missing CuPy. Registering with the real ``tensorrt.plugin``, building and running the engine need
NVIDIA TensorRT >= 10.6 and a GPU: skipped here with the reason, run by ``make gpu-check``.
"""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.errors import BackendError
from engines.export.plugin import PLUGIN_ATTRS, dft_to_plugin
from engines.tensorrt import import_tensorrt
from engines.tensorrt.dft_plugin import (
    CUPY_HINT,
    PLUGIN_ID,
    DFTParams,
    define_plugin,
    dft,
    plugin_api_problem,
    register_dft_plugin,
    run_on_device,
)

ROOT = Path(__file__).resolve().parents[1]
HAS_CUPY = importlib.util.find_spec("cupy") is not None


def _onnx_dft(x: np.ndarray, params: DFTParams) -> np.ndarray:
    """ONNX Runtime's DFT (opset 18) of ``x`` with ``params``."""
    inputs, inits = ["x"], []
    if params.dft_length:
        inputs.append("n")
        inits.append(numpy_helper.from_array(np.array(params.dft_length, np.int64), "n"))
    node = helper.make_node(
        "DFT", inputs, ["y"], axis=params.axis, inverse=params.inverse, onesided=params.onesided
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


CASES = [
    ((2, 3, 16, 1), DFTParams(2, 0, 1, 0)),  # rfft over 16 real samples (the bank's channel spectrum)
    ((2, 3, 16, 1), DFTParams(-2, 0, 1, 20)),  # negative axis, zero-padded to 20
    ((2, 8, 6, 2), DFTParams(2, 0, 0, 0)),  # complex fft along W
    ((2, 8, 6, 2), DFTParams(1, 0, 0, 0)),  # complex fft along H
    ((2, 8, 6, 2), DFTParams(-3, 1, 0, 0)),  # inverse along H (1 / n scaling)
    ((3, 8, 6, 2), DFTParams(2, 1, 0, 4)),  # inverse, truncated to 4
    ((2, 5, 1), DFTParams(1, 0, 0, 0)),  # full fft of a real signal
    ((4, 7, 1), DFTParams(1, 0, 1, 0)),  # odd length rfft
]


@pytest.mark.parametrize(("shape", "params"), CASES)
def test_shape_rule_and_transform_match_onnx_dft(shape: tuple[int, ...], params: DFTParams) -> None:
    from engines.tensorrt.dft_plugin import output_dims

    x = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    want = _onnx_dft(x, params)
    assert list(want.shape) == output_dims(list(shape), params)
    got = dft(np, x, params)
    assert got.dtype == np.complex64 and got.shape == want.shape[:-1]
    got_ri = got.view(np.float32).reshape(want.shape)  # the plugin's output buffer layout
    np.testing.assert_allclose(got_ri, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_invalid_attributes() -> None:
    from engines.tensorrt.dft_plugin import output_dims

    with pytest.raises(ValueError, match=r"axis 3 is invalid for a rank-4 input"):
        output_dims([2, 3, 16, 1], DFTParams(3, 0, 0, 0))  # the real/complex dim is no signal axis
    with pytest.raises(ValueError, match=r"axis -5 is invalid"):
        output_dims([2, 3, 16, 1], DFTParams(-5, 0, 0, 0))
    with pytest.raises(ValueError, match=r"inverse one-sided DFT is not supported"):
        output_dims([2, 3, 16, 1], DFTParams(1, 1, 1, 0))
    with pytest.raises(ValueError, match=r"last input dim must be 1 \(real\) or 2"):
        dft(np, np.zeros((2, 4, 3), np.float32), DFTParams(1, 0, 0, 0))


# ---------------------------------------------------------------- tensorrt.plugin registration (QDP)


class _Desc:
    def __init__(self, shape: list[int], dtype: str) -> None:
        self.shape_expr, self.dtype = shape, dtype


class _StandIn(types.ModuleType):
    """Just enough of ``tensorrt.plugin``: records the decorated functions by kind."""

    class TensorDesc:
        pass

    class Tensor:
        pass

    class AutoTuneCombination:
        def __init__(self, io_types: str, layouts: str = "") -> None:
            self.io_types, self.layouts = io_types, layouts

    def __init__(self) -> None:
        super().__init__("tensorrt.plugin")
        self.defined: dict[str, tuple[str, Any]] = {}

    def _decorator(self, kind: str, plugin_id: str) -> Any:
        def wrap(fn: Any) -> Any:
            self.defined[kind] = (plugin_id, fn)
            return fn

        return wrap

    def register(self, plugin_id: str) -> Any:
        return self._decorator("register", plugin_id)

    def impl(self, plugin_id: str) -> Any:
        return self._decorator("impl", plugin_id)

    def autotune(self, plugin_id: str) -> Any:
        return self._decorator("autotune", plugin_id)

    @staticmethod
    def from_shape_expr(dims: tuple[Any, ...], dtype: Any) -> _Desc:
        return _Desc(list(dims), dtype)


def test_registered_functions_follow_the_qdp_signature_rules() -> None:
    """The schema tensorrt.plugin enforces: tensors, then the attributes (annotated with classes, not
    strings), impl = (tensors, attributes, outputs, stream), autotune = (tensors, outputs)."""
    trtp = _StandIn()
    fns = define_plugin(trtp, "float32")
    assert {k: v[0] for k, v in trtp.defined.items()} == dict.fromkeys(
        ("register", "autotune", "impl"), PLUGIN_ID
    )
    reg, tune, impl = (inspect.signature(fns[k]) for k in ("register", "autotune", "impl"))
    assert list(reg.parameters) == ["inp0", *PLUGIN_ATTRS]
    assert reg.parameters["inp0"].annotation is trtp.TensorDesc and reg.return_annotation is trtp.TensorDesc
    assert all(reg.parameters[a].annotation is int for a in PLUGIN_ATTRS)  # objects: no postponed annotations
    assert list(impl.parameters) == ["inp0", *PLUGIN_ATTRS, "outputs", "stream"]
    assert impl.parameters["inp0"].annotation is trtp.Tensor and impl.parameters["stream"].annotation is int
    assert impl.parameters["outputs"].annotation == tuple[trtp.Tensor] and impl.return_annotation is None
    assert list(tune.parameters) == ["inp0", "outputs"]
    assert tune.return_annotation == list[trtp.AutoTuneCombination]
    # the attribute names are exactly what the surgery writes on the ONNX node (plugin_namespace aside)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1])
    node = helper.make_node("DFT", ["x"], ["y"], axis=1)
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    plugin, _ = dft_to_plugin(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    written = [a.name for a in plugin.graph.node[0].attribute if a.name != "plugin_namespace"]
    assert sorted(written) == sorted(list(reg.parameters)[1:])
    # the descriptor: FP32 only, output shape by the shape rule; one FP32 -> FP32 combination
    out = fns["register"](_Desc([2, 3, 16, 1], "float32"), 2, 0, 1, 0)
    assert out.shape_expr == [2, 3, 9, 2] and out.dtype == "float32"
    with pytest.raises(ValueError, match=r"takes a float32 input \(the FP32 spectral island\)"):
        fns["register"](_Desc([2, 3, 16, 1], "float16"), 2, 0, 1, 0)
    (combo,) = fns["autotune"](_Desc([2, 3, 16, 1], "float32"), (out,))
    assert (combo.io_types, combo.layouts) == ("FP32, FP32", "LINEAR")


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed here")
def test_missing_cupy_is_a_one_line_error_naming_the_wheel() -> None:
    trtp = _StandIn()
    impl = define_plugin(trtp, "float32")["impl"]
    tensor = types.SimpleNamespace(data_ptr=0, shape=(2, 3, 16, 1))
    with pytest.raises(BackendError) as err:
        impl(tensor, 2, 0, 1, 0, (types.SimpleNamespace(data_ptr=0, shape=(2, 3, 9, 2)),), 0)
    message = str(err.value)
    assert "\n" not in message and message.endswith(CUPY_HINT)
    assert "cupy-cuda13x" in message and "masf-edge[gpu]" in message
    with pytest.raises(BackendError, match=r"needs CuPy"):
        run_on_device(0, (1, 4, 1), 0, (1, 4, 2), DFTParams(1, 0, 0, 0), 0)


def test_importing_the_plugin_module_needs_neither_tensorrt_nor_cupy() -> None:
    code = (
        "import sys, engines.tensorrt.dft_plugin, engines.export.plugin; "
        "heavy = ('tensorrt', 'tensorrt_rtx', 'cupy', 'torch', 'timm', 'pycuda'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- with the TensorRT installed here


def _rt_or_skip() -> Any:
    try:
        return import_tensorrt()
    except BackendError as err:
        pytest.skip(str(err))


def test_tensorrt_without_the_plugin_api_is_a_clear_error() -> None:
    """TensorRT-RTX 1.7 ships ``tensorrt_rtx.plugin`` without its implementation, its networks have no
    ``add_plugin_v3`` and its ONNX parser aborts the process on a Python plugin: refused up front."""
    rt = _rt_or_skip()
    problem = plugin_api_problem(rt)
    if problem is None:
        pytest.skip(f"{rt.flavour} {rt.version} has tensorrt.plugin (see the next test)")
    assert "\n" not in problem
    assert problem.startswith("the cuFFT plugin (spectral mode 'plugin') needs NVIDIA TensorRT >= 10.6")
    assert problem.endswith("or re-export the bundle with --spectral-mode gemm or dft")
    with pytest.raises(BackendError, match=r"cannot take it"):
        register_dft_plugin(rt)


def test_registration_with_the_real_plugin_api() -> None:
    rt = _rt_or_skip()
    problem = plugin_api_problem(rt)
    if problem is not None:
        pytest.skip(f"no usable tensorrt.plugin here ({rt.flavour} {rt.version}): make gpu-check builds it")
    register_dft_plugin(rt)
    assert register_dft_plugin(rt) is False  # once per process
    creator = rt.trt.get_plugin_registry().get_creator("CuFFTDFT", "1", "masf")
    assert creator is not None
