"""Tests for trainer.models.masf.spectral: band matrices, odd symmetry and the FP32 spectral island."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.models.masf.sdm import BandSplit
from trainer.models.masf.spectral import (
    SPECTRAL_MODES,
    ChannelDFTMagnitude,
    SpectralOp,
    SpectralPhaseRotation,
    amplitude_mse,
    band_matrix,
    dft_matrices,
    lowpass_1d,
    odd_symmetric,
    set_spectral_mode,
)

FP16_MAX = 65504.0


def _fft_lowpass(f: torch.Tensor, ratio: float) -> torch.Tensor:
    """Reference: ``Re(ifft2(fft2(F) * M))`` with the rectangular mask ``M = m_h m_w^T`` (float64)."""
    h, w = f.shape[-2:]
    mask = lowpass_1d(h, ratio).double()[:, None] * lowpass_1d(w, ratio).double()[None, :]
    return torch.fft.ifft2(torch.fft.fft2(f.double()) * mask).real


def _band_lowpass(f: torch.Tensor, ratio: float) -> torch.Tensor:
    h, w = f.shape[-2:]
    return band_matrix(h, ratio) @ f @ band_matrix(w, ratio).T


def test_lowpass_1d_keeps_dc_and_central_band() -> None:
    m = lowpass_1d(16, 0.3)
    freqs = torch.fft.fftfreq(16)
    assert m.dtype == torch.float32
    assert m[0] == 1.0
    assert torch.equal(m.bool(), freqs.abs() <= 0.15)
    assert int(m.sum()) == 5  # f = 0, +-1/16, +-2/16
    assert torch.equal(lowpass_1d(16, 1e-6), torch.eye(16)[0])  # ratio -> 0: DC only
    assert torch.equal(lowpass_1d(15, 1.0), torch.ones(15))


@pytest.mark.parametrize(("h", "w", "ratio"), [(16, 16, 0.3), (16, 24, 0.3), (15, 9, 0.5), (8, 32, 0.1)])
def test_band_matrix_equals_fft_lowpass(h: int, w: int, ratio: float) -> None:
    torch.manual_seed(0)
    f = torch.randn(2, 3, h, w)
    got = _band_lowpass(f, ratio)
    want = _fft_lowpass(f, ratio)
    assert got.shape == f.shape
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    # not trivially the identity or zero
    assert (got - f).abs().max() > 0.1
    assert got.abs().max() > 0.01


def test_band_matrix_is_real_symmetric_projection() -> None:
    lm = band_matrix(24, 0.3).double()
    torch.testing.assert_close(lm, lm.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(lm @ lm, lm, atol=1e-6, rtol=0)  # ideal filter: idempotent
    assert float(torch.trace(lm)) == pytest.approx(float(lowpass_1d(24, 0.3).sum()), abs=1e-5)
    torch.testing.assert_close(band_matrix(10, 1.0), torch.eye(10), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 10), (16, 24)])
def test_odd_symmetric(h: int, w: int) -> None:
    torch.manual_seed(1)
    e = odd_symmetric(torch.randn(h, w))
    for i in range(h):
        for j in range(w):
            assert e[(-i) % h, (-j) % w] == pytest.approx(-float(e[i, j]), abs=1e-6)
    assert e[0, 0] == 0.0
    if h % 2 == 0:
        assert e[h // 2, 0] == 0.0
    if h % 2 == 0 and w % 2 == 0:
        assert e[h // 2, w // 2] == 0.0
    assert e.abs().max() > 0.1


def test_odd_symmetric_keeps_hermitian_spectrum() -> None:
    torch.manual_seed(2)
    x = torch.randn(12, 10, dtype=torch.float64)
    eps = odd_symmetric(torch.randn(12, 10, dtype=torch.float64))
    spec = torch.fft.fft2(x) * torch.exp(1j * eps)
    back = torch.fft.ifft2(spec)
    assert back.imag.abs().max() < 1e-12


def test_amplitude_mse_zero_for_identical_inputs() -> None:
    torch.manual_seed(3)
    t = torch.randn(2, 4, 8, 8)
    assert float(amplitude_mse(t, t.clone())) == 0.0
    assert float(amplitude_mse(t, t.clone(), relative=False)) == 0.0
    # amplitude only: a circular shift has the same amplitude spectrum
    shifted = torch.roll(t, shifts=(2, 3), dims=(2, 3))
    assert float(amplitude_mse(shifted, t)) < 1e-10


def test_amplitude_mse_relative_vs_raw() -> None:
    torch.manual_seed(4)
    t = torch.randn(3, 4, 8, 8)
    s = torch.randn(3, 4, 8, 8)
    fs = torch.fft.fft2(s.double(), norm="ortho").abs()
    ft = torch.fft.fft2(t.double(), norm="ortho").abs()
    raw = ((fs - ft) ** 2).mean(dim=(1, 2, 3))
    rel = raw / (ft**2).mean(dim=(1, 2, 3))
    assert float(amplitude_mse(s, t, relative=False)) == pytest.approx(float(raw.mean()), rel=1e-5)
    assert float(amplitude_mse(s, t, relative=True)) == pytest.approx(float(rel.mean()), rel=1e-5)
    # raw scales with the feature magnitude squared, relative is scale-free
    assert float(amplitude_mse(10 * s, 10 * t, relative=False)) == pytest.approx(
        100 * float(raw.mean()), rel=1e-4
    )
    assert float(amplitude_mse(10 * s, 10 * t)) == pytest.approx(float(rel.mean()), rel=1e-4)
    assert amplitude_mse(s, t).dtype == torch.float32
    assert amplitude_mse(s, t).ndim == 0


def _large_fp16_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Realistic large-magnitude feature maps (values ~ 200) of 64x64, representable in fp16."""
    torch.manual_seed(5)
    t = (200.0 + 20.0 * torch.randn(2, 4, 64, 64)).half()
    s = (t.float() + 5.0 * torch.randn(2, 4, 64, 64)).half()
    return s, t


def test_naive_fp16_spectrum_overflows() -> None:
    """The island matters: the same FFT magnitudes computed or stored in fp16 overflow."""
    _, t = _large_fp16_pair()
    x = t.float()
    assert torch.isinf((torch.fft.fft2(x).abs() ** 2).half()).any()
    assert torch.isinf(torch.fft.fft2(x).abs().half()).any()  # DC ~ 200 * 4096 > 65504
    # with the orthonormal FFT the magnitude fits, but its square (used by the MSE) does not
    ortho = torch.fft.fft2(x, norm="ortho").abs()
    assert ortho.max() < FP16_MAX
    assert torch.isinf(ortho.half() ** 2).any()


def test_amplitude_mse_fp16_input_finite_and_matches_fp32() -> None:
    s, t = _large_fp16_pair()
    ref_rel = amplitude_mse(s.float(), t.float())
    ref_raw = amplitude_mse(s.float(), t.float(), relative=False)
    assert float(ref_rel) > 0 and float(ref_raw) > 0
    for relative, ref in ((True, ref_rel), (False, ref_raw)):
        got = amplitude_mse(s, t, relative=relative)
        assert got.dtype == torch.float32
        assert torch.isfinite(got)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)


def test_amplitude_mse_under_autocast_stays_fp32() -> None:
    s, t = _large_fp16_pair()
    ref = amplitude_mse(s.float(), t.float(), relative=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = amplitude_mse(s.bfloat16(), t.bfloat16(), relative=False)
    assert got.dtype == torch.float32
    assert torch.isfinite(got)
    # bf16 inputs lose precision (8 bits), so compare loosely against the bf16-rounded fp32 reference
    want = amplitude_mse(s.bfloat16().float(), t.bfloat16().float(), relative=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert float(got) == pytest.approx(float(ref), rel=0.5)


def test_band_split_fp16_input_finite_and_matches_fp32() -> None:
    s, _ = _large_fp16_pair()
    split = BandSplit(64, 64, 0.3)
    low, high = split(s)
    ref_low, ref_high = split(s.float())
    for got, ref in ((low, ref_low), (high, ref_high)):
        assert got.dtype == torch.float32
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(low + high, s.float(), rtol=0, atol=1e-3)
    # the low band of a ~200-valued map carries the mean, far above fp16 epsilon
    assert low.mean() == pytest.approx(float(s.float().mean()), rel=1e-4)


# ---------------------------------------------------------------- DFT as MatMuls ("gemm" mode)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 24])
def test_dft_matrices_match_torch_fft(n: int) -> None:
    cos, sin = dft_matrices(n)
    assert cos.shape == sin.shape == (n, n) and cos.dtype == torch.float32
    want = torch.fft.fft(torch.eye(n, dtype=torch.float64), dim=-1, norm="ortho")
    # row j of the identity transforms to exp(-2 pi i j k / n) / sqrt(n) = C - i S
    torch.testing.assert_close(cos.double(), want.real, atol=1e-7, rtol=0)
    torch.testing.assert_close(-sin.double(), want.imag, atol=1e-7, rtol=0)
    half_cos, _ = dft_matrices(n, n // 2 + 1)
    torch.testing.assert_close(half_cos, cos[:, : n // 2 + 1], atol=0, rtol=0)


@pytest.mark.parametrize("n", [6, 9, 40, 112])
def test_channel_dft_magnitude_gemm_equals_fft(n: int) -> None:
    torch.manual_seed(10)
    x = torch.randn(2, 5, 3, n) * 8.0
    op = ChannelDFTMagnitude(n)
    assert op.mode == "fft"
    ref = op(x)
    want = torch.fft.rfft(x.double(), dim=-1, norm="ortho").abs()
    op.set_mode("gemm")
    got = op(x)
    assert got.shape == ref.shape == (2, 5, 3, n // 2 + 1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6 * float(want.max()))
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-6 * float(ref.max()))


def test_channel_dft_magnitude_fp32_under_autocast_and_fp16_input() -> None:
    torch.manual_seed(11)
    x = (200.0 + 20.0 * torch.randn(4, 64)).half()  # |DC|^2 ~ 2.6e6 overflows fp16
    op = ChannelDFTMagnitude(64, mode="gemm")
    ref = op(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = op(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4)
    assert float(ref.max()) ** 2 > FP16_MAX


@pytest.mark.parametrize(("h", "w"), [(16, 16), (16, 12), (15, 9), (7, 10), (12, 20)])
def test_phase_rotation_gemm_equals_fft(h: int, w: int) -> None:
    gen = torch.Generator().manual_seed(12)
    eps = torch.stack([odd_symmetric(torch.randn(h, w, generator=gen) * 0.5) for _ in range(3)])
    x = torch.randn(2, 3, h, w, generator=gen) * 4.0
    op = SpectralPhaseRotation(eps)
    ref = op(x)
    op.set_mode("gemm")
    got = op(x)
    assert got.shape == ref.shape == (3, 2, 3, h, w)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    # float64 reference of the definition Re(ifft2(fft2(x) e^{i eps}))
    want = torch.fft.ifft2(
        torch.fft.fft2(x.double())[None] * torch.exp(1j * eps.double())[:, None, None]
    ).real
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_phase_rotation_zero_noise_is_identity_in_both_modes() -> None:
    x = torch.randn(1, 2, 8, 6, generator=torch.Generator().manual_seed(13))
    for mode in SPECTRAL_MODES:
        out = SpectralPhaseRotation(torch.zeros(2, 8, 6), mode)(x)
        torch.testing.assert_close(out, x[None].expand(2, -1, -1, -1, -1), atol=1e-5, rtol=0)


def test_phase_rotation_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[V, H, W\]"):
        SpectralPhaseRotation(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="8x6"):
        SpectralPhaseRotation(torch.zeros(1, 8, 6))(torch.zeros(1, 1, 8, 8))


def test_spectral_buffers_are_not_persistent() -> None:
    assert ChannelDFTMagnitude(8).state_dict() == {}
    assert SpectralPhaseRotation(torch.zeros(2, 4, 4)).state_dict() == {}


def test_set_spectral_mode_switches_every_op_and_rejects_unknown_modes() -> None:
    model = nn.ModuleDict(
        {
            "a": ChannelDFTMagnitude(4),
            "b": nn.Sequential(SpectralPhaseRotation(torch.zeros(1, 4, 4))),
            "c": nn.ReLU(),
        }
    )
    assert set_spectral_mode(model, "gemm") == 2
    assert [m.mode for m in model.modules() if isinstance(m, SpectralOp)] == ["gemm", "gemm"]
    assert set_spectral_mode(model, "fft") == 2
    assert set_spectral_mode(nn.ReLU(), "gemm") == 0
    with pytest.raises(ValueError, match="spectral mode"):
        set_spectral_mode(model, "dft")
    with pytest.raises(ValueError, match="spectral mode"):
        ChannelDFTMagnitude(4, mode="cufft")
