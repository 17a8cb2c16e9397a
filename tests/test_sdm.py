"""Tests for trainer.models.masf.sdm: the band split and the SDM module."""

from __future__ import annotations

import pytest
import torch

from trainer.models.masf.sdm import SDM, BandSplit
from trainer.models.masf.spectral import lowpass_1d


def _outside_band(h: int, w: int, ratio: float) -> torch.Tensor:
    keep = lowpass_1d(h, ratio)[:, None] * lowpass_1d(w, ratio)[None, :]
    return keep == 0


@pytest.mark.parametrize(("h", "w"), [(16, 16), (16, 24), (9, 12)])
def test_low_plus_high_reconstructs(h: int, w: int) -> None:
    torch.manual_seed(0)
    f = torch.randn(2, 5, h, w)
    low, high = BandSplit(h, w, 0.3)(f)
    assert low.shape == high.shape == f.shape
    torch.testing.assert_close(low + high, f, atol=1e-5, rtol=0)
    assert high.abs().max() > 0.1 and low.abs().max() > 0.01


@pytest.mark.parametrize(("h", "w", "ratio"), [(16, 16, 0.3), (16, 24, 0.3), (32, 20, 0.5)])
def test_low_band_has_no_energy_outside_the_band(h: int, w: int, ratio: float) -> None:
    torch.manual_seed(1)
    f = torch.randn(2, 3, h, w)
    low, high = BandSplit(h, w, ratio)(f)
    outside = _outside_band(h, w, ratio)
    spec_low = torch.fft.fft2(low.double()).abs()
    spec_high = torch.fft.fft2(high.double()).abs()
    spec_f = torch.fft.fft2(f.double()).abs()
    assert outside.any() and (~outside).any()
    assert spec_low[..., outside].max() < 1e-4
    assert spec_high[..., ~outside].max() < 1e-4
    # inside the band, the low part carries the input's spectrum unchanged
    torch.testing.assert_close(spec_low[..., ~outside], spec_f[..., ~outside], atol=1e-4, rtol=1e-5)


def test_ratio_one_keeps_everything() -> None:
    torch.manual_seed(2)
    f = torch.randn(1, 4, 10, 14)
    low, high = BandSplit(10, 14, 1.0)(f)
    torch.testing.assert_close(low, f, atol=1e-5, rtol=0)
    assert high.abs().max() < 1e-5


def test_low_band_of_constant_map_is_the_map() -> None:
    f = torch.full((1, 2, 8, 12), 3.5)
    low, high = BandSplit(8, 12, 0.1)(f)
    torch.testing.assert_close(low, f, atol=1e-5, rtol=0)
    assert high.abs().max() < 1e-5


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01, 2.0])
def test_invalid_ratio_raises(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"sdm\.ratio"):
        BandSplit(8, 8, ratio)
    with pytest.raises(ValueError, match=r"sdm\.ratio"):
        SDM(4, 8, 8, 8, ratio=ratio)


def test_sdm_output_shape_and_gradients() -> None:
    torch.manual_seed(3)
    sdm = SDM(in_channels=12, out_channels=16, height=8, width=12, ratio=0.3)
    f = torch.randn(3, 12, 8, 12, requires_grad=True)
    out = sdm(f)
    assert out.shape == (3, 16, 8, 12)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    for name, p in sdm.named_parameters():
        assert p.grad is not None, name


def test_sdm_uses_both_bands() -> None:
    """Changing only the high band (or only the low band) of the input changes the output."""
    torch.manual_seed(4)
    sdm = SDM(6, 8, 16, 16, ratio=0.3).eval()
    f = torch.randn(2, 6, 16, 16)
    low, high = sdm.spectral_split(f)
    base = sdm(f)
    assert (sdm(low + 2 * high) - base).abs().max() > 1e-3
    assert (sdm(2 * low + high) - base).abs().max() > 1e-3


def test_sdm_disabled_is_plain_projection() -> None:
    torch.manual_seed(5)
    sdm = SDM(12, 16, 8, 8, enabled=False)
    assert not hasattr(sdm, "spectral_split") and not hasattr(sdm, "gate")
    out = sdm(torch.randn(2, 12, 8, 8))
    assert out.shape == (2, 16, 8, 8)
    # no band matrices: any map size works
    assert sdm(torch.randn(1, 12, 5, 7)).shape == (1, 16, 5, 7)


def test_wrong_map_size_raises() -> None:
    sdm = SDM(4, 8, 8, 8)
    with pytest.raises(ValueError, match=r"8x8"):
        sdm(torch.randn(1, 4, 8, 16))
    with pytest.raises(ValueError):
        BandSplit(16, 24, 0.3)(torch.randn(1, 1, 24, 16))


def test_band_matrices_are_not_saved() -> None:
    sdm = SDM(4, 8, 8, 8)
    assert not any(k.endswith(("lh", "lw")) for k in sdm.state_dict())
