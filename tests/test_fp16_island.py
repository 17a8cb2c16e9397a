"""Why the spectral path is an FP32 island: on a real magnetic-tile image, FP16 spectral math overflows.

The teacher's features of a real grayscale tile go through the spectral computations the way an
all-FP16 engine would run them (DFT as FP16 MatMuls, as in the exported ``gemm`` graph), and through the
FP32 island. The FP16 amplitude spectrum overflows (|X|^2 > 65504) and the FP16 band split loses
precision; the island, fed the same FP16 features, matches the FP32 reference.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MAGNETIC_TILE

from engines.preprocess import PreprocessSpec, preprocess
from trainer.data import read_image
from trainer.models.backbones import create_teacher
from trainer.models.masf.sdm import BandSplit
from trainer.models.masf.spectral import amplitude_mse, dft_matrices

pytestmark = pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason=f"real data not found at {MAGNETIC_TILE}")


@pytest.fixture(scope="module")
def tile_features() -> list[torch.Tensor]:
    """lite0 features (FP32) of a real defective magnetic tile at 288x224."""
    path = sorted((MAGNETIC_TILE / "test" / "crack").glob("*.jpg"))[0]
    frame, _ = preprocess(read_image(path), PreprocessSpec(288, 224, "letterbox", "gray"))
    teacher = create_teacher("tf_efficientnet_lite0")
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return teacher(teacher.normalize(x))


def _amplitude_gemm(f: torch.Tensor) -> torch.Tensor:
    """|DFT2(f)| over the last two dims as MatMuls in f's dtype (orthonormal), like the gemm graph."""
    h, w = f.shape[-2:]
    ch, sh = (m.to(f.dtype) for m in dft_matrices(h))
    cw, sw = (m.to(f.dtype) for m in dft_matrices(w))
    # X = (Ch - i Sh) F (Cw - i Sw)^T with real F
    a, b = ch @ f, -(sh @ f)
    re = a @ cw.T - b @ sw.T
    im = -(a @ sw.T) - b @ cw.T
    return torch.sqrt(re * re + im * im)


def test_all_fp16_amplitude_spectrum_overflows_on_a_real_tile(tile_features: list[torch.Tensor]) -> None:
    f32 = tile_features[0]  # [1, 24, 72, 56], stride 4
    ref = _amplitude_gemm(f32.double()).float()
    assert torch.allclose(_amplitude_gemm(f32), ref, rtol=1e-3, atol=1e-3)  # gemm == DFT in FP32
    half = _amplitude_gemm(f32.half())
    assert ref.max() < 65504  # |X| itself fits FP16 ...
    assert ref.max() ** 2 > 65504  # ... but |X|^2 does not
    assert not torch.isfinite(half).all()  # so the all-FP16 path produces inf on real data
    # The island: the same FP16 features, computed in FP32 inside amplitude_mse, stay finite and exact.
    island = amplitude_mse(f32.half() * 1.01, f32.half(), relative=False)
    reference = amplitude_mse(f32 * 1.01, f32, relative=False)
    assert torch.isfinite(island)
    assert island.item() == pytest.approx(reference.item(), rel=2e-3)


def test_fp16_band_split_is_wrong_where_the_fp32_island_is_right(tile_features: list[torch.Tensor]) -> None:
    f32 = tile_features[0]
    split = BandSplit(f32.shape[-2], f32.shape[-1], 0.3)
    low_ref, _ = split(f32.double())  # BandSplit computes in FP32 whatever the input: the island
    low_island, high_island = split(f32.half())
    assert low_island.dtype == torch.float32 and torch.isfinite(high_island).all()
    scale = low_ref.abs().max()
    assert ((low_island - low_ref).abs().max() / scale) < 2e-3  # only the FP16 input rounding remains
    low_fp16 = (split.lh.half() @ f32.half()) @ split.lw.half()  # the same MatMuls, all in FP16
    err16 = ((low_fp16.float() - low_ref).abs().max() / scale).item()
    err_island = ((low_island - low_ref).abs().max() / scale).item()
    assert err16 > 2 * err_island  # all-FP16 accumulation adds error the island does not have
