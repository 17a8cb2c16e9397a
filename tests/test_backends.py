"""Tests for engines.backends: one interface, ONNX Runtime vs PyTorch, input checks, no silent fallback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import ExportedBundle, run_python

from engines.backends import Backend, Scores, get_backend
from engines.backends.base import full_frame_geometry
from engines.backends.ort import OrtBackend
from engines.bundle import Bundle, update_bundle
from engines.errors import BackendError, BundleError, InputError
from engines.preprocess import model_inputs, preprocess_batch
from trainer.data import read_image
from trainer.export.parity import MAP_RTOL, SCORE_RTOL
from trainer.torch_backend import TorchBackend

pytestmark = pytest.mark.slow  # the session's exported bundles (plain and tiled) are made here first

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ort_backend(exported: ExportedBundle) -> OrtBackend:
    return OrtBackend.from_bundle(exported.path, intra_op_threads=1)


@pytest.fixture(scope="module")
def images(synth_data: Path) -> list[np.ndarray]:
    """Four generated test images (good and defective) plus a non-square crop (letterboxed) and a gray one."""
    imgs = [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))[::4][:4]]
    imgs.append(np.ascontiguousarray(imgs[1][:, 20:80]))  # 96x60
    imgs.append(np.ascontiguousarray(imgs[2][:, :, 1]))  # HxW gray -> replicated to RGB
    return imgs


def test_get_backend_by_name_without_fallback() -> None:
    assert get_backend("onnxruntime") is OrtBackend
    assert get_backend("ORT") is OrtBackend
    assert get_backend("torch") is TorchBackend
    try:
        from engines.backends.tensorrt import TensorRTBackend, check_available

        check_available()
    except BackendError as err:  # no TensorRT or pycuda here: the same clear error, never a fallback
        for name in ("tensorrt", "trt"):
            with pytest.raises(BackendError, match=r"needs TensorRT and pycuda.*nothing falls back"):
                get_backend(name)
        assert "install" in str(err)
    else:  # a GPU machine with TensorRT and pycuda
        assert get_backend("trt") is TensorRTBackend
    with pytest.raises(
        BackendError, match=r"unknown backend 'openvino': choose one of \['onnxruntime', 'tensorrt'"
    ):
        get_backend("openvino")


def test_unavailable_execution_provider_is_an_error(exported: ExportedBundle) -> None:
    with pytest.raises(BackendError, match=r"CUDAExecutionProvider.*not available"):
        OrtBackend.from_bundle(exported.path, providers=("CUDAExecutionProvider",))


def test_ort_scores_list_and_preprocessed_batch(ort_backend: OrtBackend, images: list[np.ndarray]) -> None:
    scores = ort_backend.infer(images)
    assert isinstance(scores, Scores) and len(scores) == 6
    assert scores.anomaly_map.shape == (6, 64, 64) and scores.anomaly_map.dtype == np.float32
    assert scores.score.shape == (6,) and scores.score.dtype == np.float32
    assert np.isfinite(scores.anomaly_map).all()
    assert scores.geometries[4].left > 0  # the 96x60 crop is letterboxed
    # the same pixels preprocessed by the caller give the same numbers (batch of 1 and of N)
    batch, geoms = preprocess_batch(images, ort_backend.spec)
    again = ort_backend.infer(batch, geoms)
    np.testing.assert_allclose(again.score, scores.score, rtol=1e-6, atol=0)
    one = ort_backend.infer([images[4]])
    assert one.score[0] == pytest.approx(float(scores.score[4]), rel=1e-5)
    np.testing.assert_allclose(one.anomaly_map[0], scores.anomaly_map[4], rtol=0, atol=1e-5)
    # verdicts at the bundle's threshold
    assert (
        ort_backend.threshold == ort_backend.bundle.manifest["calibration"]["by_path"]["plain"]["threshold"]
    )
    np.testing.assert_array_equal(scores.failed(ort_backend.threshold), scores.score >= ort_backend.threshold)


def test_preprocessed_batch_without_geometries_is_full_frame(ort_backend: OrtBackend) -> None:
    batch = np.full((2, 64, 64, 3), 128, np.uint8)
    out = ort_backend.infer(batch)
    assert out.geometries == [full_frame_geometry(64, 64)] * 2
    assert out.score[0] == pytest.approx(float(out.score[1]), rel=1e-6)


def test_ort_matches_the_torch_reference(
    exported: ExportedBundle, ort_backend: OrtBackend, images: list[np.ndarray]
) -> None:
    with TorchBackend.from_bundle(exported.path) as ref:
        assert ref.name == "torch" and ref.threshold == ort_backend.threshold
        want = ref.infer(images)
    got = ort_backend.infer(images)
    _assert_parity(got, want, ref.threshold)
    assert got.geometries == want.geometries


def _assert_parity(got: Scores, want: Scores, threshold: float) -> None:
    """Maps within the export's relative tolerance of their range, scores within theirs, same verdicts."""
    n = len(want)
    ranges = np.ptp(want.anomaly_map.reshape(n, -1), axis=1)
    map_err = np.abs(got.anomaly_map - want.anomaly_map).reshape(n, -1).max(axis=1) / ranges
    assert map_err.max() < MAP_RTOL
    np.testing.assert_allclose(got.score, want.score, rtol=SCORE_RTOL, atol=0)
    np.testing.assert_array_equal(got.failed(threshold), want.failed(threshold))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 64, 64, 3), np.float32), "wrong dtype: expected a uint8 batch"),
        (np.zeros((2, 32, 64, 3), np.uint8), r"wrong size: expected a model-frame batch \[N, 64, 64, 3\]"),
        (np.zeros((2, 64, 64, 4), np.uint8), "wrong channels: expected 3"),
        (np.zeros((0, 64, 64, 3), np.uint8), "empty batch"),
        (np.zeros((64, 64, 3), np.uint8), "wrap a single image in a list"),
        ([], "no images"),
        ([np.zeros((10, 10, 3), np.float64)], "image 0: expected uint8"),
        ([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 2), np.uint8)], "image 1: expected uint8 HxW"),
        ("frame.png", "expected a list of uint8 images"),
    ],
)
def test_bad_input_is_a_clear_error(ort_backend: OrtBackend, bad: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ort_backend.infer(bad)  # type: ignore[arg-type]


def test_geometries_must_match_the_batch(ort_backend: OrtBackend) -> None:
    batch = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(InputError, match=r"need 2 geometries"):
        ort_backend.infer(batch, [full_frame_geometry(64, 64)])
    with pytest.raises(InputError, match=r"only accepted with a preprocessed batch"):
        ort_backend.infer([batch[0]], [full_frame_geometry(64, 64)])


def test_plugin_mode_bundle_is_refused_with_what_to_do(exported: ExportedBundle, tmp_path: Path) -> None:
    """A plugin-mode graph has cuFFT TensorRT plugin nodes, which ONNX Runtime has no kernel for."""
    copy = tmp_path / "plugin.bundle"
    shutil.copytree(exported.path, copy)
    export = {**Bundle.open(copy).manifest["export"], "spectral_mode": "plugin"}
    update_bundle(copy, {}, {"export": export})
    with pytest.raises(BackendError) as err:
        get_backend("onnxruntime").from_bundle(copy)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"bundle {copy} has spectral mode 'plugin' (cuFFT TensorRT plugin nodes), which ONNX Runtime cannot "
        "run: use backend 'tensorrt', or re-export with masf-engine export --spectral-mode gemm (or dft)"
    )


def test_close_and_context_manager(exported: ExportedBundle) -> None:
    with OrtBackend.from_bundle(exported.path, intra_op_threads=1) as b:
        assert isinstance(b, Backend) and b.providers == ("CPUExecutionProvider",)
        b.infer([np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(RuntimeError, match=r"closed"):
        b.infer([np.zeros((64, 64, 3), np.uint8)])
    b.close()  # idempotent


def test_corrupt_bundle_is_refused_by_the_backend(exported: ExportedBundle, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exported.path, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx checksum mismatch"):
        OrtBackend.from_bundle(copy)


def test_torch_backend_refuses_a_run_with_other_weights(exported: ExportedBundle, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(exported.run, run)
    with open(run / "model.safetensors", "ab") as fh:
        fh.write(b" ")
    with pytest.raises(BundleError, match=r"other weights than the bundle was exported from"):
        TorchBackend.from_bundle(exported.path, run_dir=run)
    with pytest.raises(BundleError, match=r"is not available: pass run_dir="):
        TorchBackend.from_bundle(exported.path, run_dir=tmp_path / "missing")


def test_ort_backend_imports_neither_torch_nor_timm(exported: ExportedBundle) -> None:
    code = (
        "import sys, numpy as np\n"
        "import engines.backends.ort as o\n"
        "from engines.backends import get_backend\n"
        "b = get_backend('onnxruntime').from_bundle(sys.argv[1], intra_op_threads=1)\n"
        "s = b.infer([np.full((50, 80, 3), 90, np.uint8)])\n"
        "assert s.score.shape == (1,)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'trainer'))\n"
        "print('LOADED', bad)\n"
    )
    res = run_python(code, str(exported.path))
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout


def test_tiled_bundle_scores_the_same_on_every_backend(
    tiled_bundle: ExportedBundle, strip_data: Path
) -> None:
    """A tiled bundle: frames cut into tiles, one batch, maps stitched, the largest tile score; ONNX
    Runtime and the torch reference agree on the stitched maps, the scores and the verdicts."""
    paths = sorted((strip_data / "test").rglob("*.png"))
    images = [read_image(p) for p in paths]
    images.append(np.ascontiguousarray(images[-1][:, :300]))  # a shorter strip: letterboxed into the frame
    with OrtBackend.from_bundle(tiled_bundle.path, intra_op_threads=1) as ort_b:
        assert (
            ort_b.spec.tiled and ort_b.bundle.frame_size == (64, 512) and ort_b.bundle.input_size == (64, 128)
        )
        got = ort_b.infer(images)
        # a preprocessed batch of frames gives the same as the raw images
        frames, geoms = preprocess_batch(images, ort_b.spec)
        again = ort_b.infer(frames, geoms)
        with pytest.raises(InputError, match=r"\[N, 64, 512, 3\]"):
            ort_b.infer(np.zeros((1, 64, 128, 3), np.uint8))  # a tile is not a frame
        # the score is the largest tile score: each tile of the first image alone through the graph
        tiles, valid = model_inputs(frames, geoms, ort_b.spec)
        tile_scores = np.concatenate(
            [ort_b._forward(tiles[i : i + 1], valid[i : i + 1])[1] for i in range(5)]
        )
    np.testing.assert_array_equal(again.score, got.score)
    assert got.anomaly_map.shape == (len(images), 64, 512)
    with TorchBackend.from_bundle(tiled_bundle.path) as ref:
        want = ref.infer(images)
    _assert_parity(got, want, ref.threshold)
    assert got.score[0] == pytest.approx(tile_scores.max(), rel=1e-6)
