"""Tests for trainer.models.masf.ttsa: phase-perturbed views and the TTA wrapper contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.models.masf.spectral import SpectralPhaseRotation, set_spectral_mode
from trainer.models.masf.ttsa import PhasePerturbation, TTSAWrapper, apply_tta
from trainer.models.masf.ughf import MapPostprocess, MASFOutput


def _input(n: int = 2, h: int = 16, w: int = 12) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 3, h, w)


@pytest.mark.parametrize(("h", "w"), [(16, 12), (15, 9)])
def test_views_keep_the_amplitude_spectrum(h: int, w: int) -> None:
    x = _input(2, h, w)
    views = PhasePerturbation(h, w, views=4, sigma=0.3, seed=0)(x).view(4, 2, 3, h, w)
    amp_x = torch.fft.fft2(x.double()).abs()
    for v in views:
        amp_v = torch.fft.fft2(v.double()).abs()
        assert float(((amp_v - amp_x).abs() / amp_x.clamp_min(1e-3)).max()) < 1e-4
        # a real, different image
        assert v.dtype == torch.float32 and not torch.is_complex(v)
        assert float((v - x).abs().max()) > 0.05


def test_inverse_fft_is_real_without_discarding() -> None:
    """The perturbed spectrum is Hermitian: the imaginary part that ``.real`` drops is ~0."""
    x = _input().double()
    pert = PhasePerturbation(16, 12, views=3, sigma=0.5, seed=1)
    spec = torch.fft.fft2(x, norm="ortho")[None]
    cos, sin = pert.cos_eps.double(), pert.sin_eps.double()
    perturbed = torch.complex(spec.real * cos - spec.imag * sin, spec.real * sin + spec.imag * cos)
    full = torch.fft.ifft2(perturbed, norm="ortho")
    assert float(full.imag.abs().max()) < 1e-10
    assert float(full.real.abs().max()) > 0.5


def test_view_mean_and_energy_kept() -> None:
    x = _input()
    views = PhasePerturbation(16, 12, views=3, sigma=0.2, seed=0)(x).view(3, *x.shape)
    for v in views:
        torch.testing.assert_close(v.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            v.square().sum(dim=(-2, -1)), x.square().sum(dim=(-2, -1)), rtol=1e-4, atol=0
        )


def test_views_are_deterministic_for_a_seed() -> None:
    x = _input()
    a = PhasePerturbation(16, 12, views=3, seed=7)
    b = PhasePerturbation(16, 12, views=3, seed=7)
    c = PhasePerturbation(16, 12, views=3, seed=8)
    torch.testing.assert_close(a(x), a(x), atol=0, rtol=0)
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    assert float((a(x) - c(x)).abs().max()) > 1e-3
    # views of one input differ from each other (independent noise per view)
    v = a(x).view(3, *x.shape)
    assert float((v[0] - v[1]).abs().max()) > 1e-3


def test_output_shape_view_major_and_noise_shared_by_channels() -> None:
    x = _input(n=2)
    pert = PhasePerturbation(16, 12, views=5, sigma=0.1)
    out = pert(x)
    assert out.shape == (10, 3, 16, 12)
    assert pert.cos_eps.shape == (5, 1, 1, 16, 12)
    # view-major layout: rows i*N .. i*N+N-1 are view i of every input
    one = pert(x[1:2])  # a single input gives the views of sample 1 at positions 1, 3, 5, ...
    torch.testing.assert_close(out.view(5, 2, 3, 16, 12)[:, 1], one, atol=1e-5, rtol=0)
    # the same phase noise on every channel: identical channels stay identical
    same = x[:, :1].repeat(1, 3, 1, 1)
    v = pert(same)
    torch.testing.assert_close(v[:, 0], v[:, 2], atol=0, rtol=0)


def test_zero_sigma_gives_the_input_back() -> None:
    x = _input()
    out = PhasePerturbation(16, 12, views=2, sigma=0.0)(x)
    torch.testing.assert_close(out, x.repeat(2, 1, 1, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(16, 12), (15, 9), (8, 8)])
def test_gemm_mode_views_equal_fft_views(h: int, w: int) -> None:
    x = _input(2, h, w) * 50.0
    pert = PhasePerturbation(h, w, views=3, sigma=0.3, seed=4)
    assert isinstance(pert.spectral, SpectralPhaseRotation)
    ref = pert(x)
    assert set_spectral_mode(pert, "gemm") == 1
    got = pert(x)
    assert got.shape == ref.shape == (6, 3, h, w)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    gemm = PhasePerturbation(h, w, views=3, sigma=0.3, seed=4, spectral_mode="gemm")
    torch.testing.assert_close(gemm(x), got, atol=0, rtol=0)
    assert pert.state_dict() == {}  # noise and DFT matrices are rebuilt from the seed, never saved


def test_wrapper_spectral_mode_switches_the_perturbation() -> None:
    model = _TinyModel()
    wrapped, _ = apply_tta(model, enabled=True, views=2, sigma=0.2, seed=1)
    x = torch.rand(2, 3, 16, 12) * 255
    ref = wrapped(x)
    assert set_spectral_mode(wrapped, "gemm") == 1
    got = wrapped(x)
    torch.testing.assert_close(got.anomaly_map, ref.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.pred_score, ref.pred_score, atol=1e-5, rtol=0)


def test_invalid_views_raises() -> None:
    with pytest.raises(ValueError, match=r"tta\.views"):
        PhasePerturbation(8, 8, views=0)


def test_fp16_input_keeps_dtype() -> None:
    x = (_input() * 50).half()
    out = PhasePerturbation(16, 12, views=2)(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


class _Teacher(nn.Module):
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / 255.0


class _TinyModel(nn.Module):
    """Stand-in with the MASF inference interface: the fused map is the channel mean."""

    input_size = (16, 12)

    def __init__(self, split: bool = False) -> None:
        super().__init__()
        self.teacher = _Teacher()
        self.post = MapPostprocess(sigma=0)
        self.split = split  # the score from its own map, the channel maximum

    def fused_maps(
        self, x_norm: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.valid_seen = valid  # the wrapper hands each view its frame's letterbox mask
        scored = x_norm.amax(dim=1, keepdim=True) if self.split else None
        return x_norm.mean(dim=1, keepdim=True), scored

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> MASFOutput:
        fused, scored = self.fused_maps(self.teacher.normalize(x))
        return self.post(fused, valid, scored)


def test_apply_tta_disabled_returns_same_model() -> None:
    model = _TinyModel()
    out, applied = apply_tta(model, enabled=False)
    assert out is model
    assert applied is False


def test_apply_tta_enabled_wraps_and_averages_views() -> None:
    model = _TinyModel()
    wrapped, applied = apply_tta(model, enabled=True, views=4, sigma=0.2, seed=3)
    assert applied is True
    assert isinstance(wrapped, TTSAWrapper)
    assert wrapped.model is model
    assert wrapped.input_size == (16, 12)
    x = torch.rand(2, 3, 16, 12) * 255
    out = wrapped(x)
    assert out.anomaly_map.shape == (2, 1, 16, 12)
    assert out.pred_score.shape == (2,)
    views = wrapped.perturb(x / 255.0).mean(dim=1, keepdim=True).view(4, 2, 1, 16, 12).mean(0)
    torch.testing.assert_close(out.anomaly_map, views, atol=1e-6, rtol=0)
    assert float((out.anomaly_map - model(x).anomaly_map).abs().max()) > 1e-4
    # the base model is untouched
    assert not hasattr(model, "perturb")
    # each view gets its own frame's letterbox mask (view-major, as the views are)
    valid = torch.zeros(2, 1, 16, 12)
    valid[0, :, 2:14], valid[1, :, :, 3:9] = 1, 1
    wrapped(x, valid)
    assert model.valid_seen.shape == (8, 1, 16, 12)
    for v in range(4):
        torch.testing.assert_close(model.valid_seen[2 * v : 2 * v + 2], valid)


def test_a_score_with_its_own_map_is_averaged_over_the_views_as_the_map_is() -> None:
    model = _TinyModel(split=True)
    wrapped, _ = apply_tta(model, enabled=True, views=3, sigma=0.2, seed=3)
    assert isinstance(wrapped, TTSAWrapper)
    x = torch.rand(2, 3, 16, 12) * 255
    out = wrapped(x)
    views = wrapped.perturb(model.teacher.normalize(x)).reshape(3, 2, 3, 16, 12)
    torch.testing.assert_close(out.anomaly_map, views.mean(dim=2, keepdim=True).mean(dim=0))
    torch.testing.assert_close(out.pred_score, views.amax(dim=2).mean(dim=0).flatten(1).max(dim=1).values)
