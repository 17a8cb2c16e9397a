"""Tests for trainer.models.masf.amfd: masks, masked views, the student and the distillation loss."""

from __future__ import annotations

import pytest
import torch

from trainer.models.masf.amfd import (
    AMFDStudent,
    _frequency_view,
    cosine_distance,
    distill_loss,
    frequency_mask,
    spatial_mask,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- masks


def test_spatial_mask_drops_exact_number_of_blocks() -> None:
    n, h, w = 4, 64, 64
    keep = spatial_mask((n, h, w), 0.35, generator=_gen(0))
    assert keep.shape == (n, 1, h, w)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    n_blocks = (h // 2) * (w // 2)
    n_drop = round(0.35 * n_blocks)
    blocks = keep.view(n, h // 2, 2, w // 2, 2)
    # every 2x2 block is uniformly kept or dropped
    assert torch.equal(blocks.amin(dim=(2, 4)), blocks.amax(dim=(2, 4)))
    dropped = (blocks.amax(dim=(2, 4)) == 0).sum(dim=(1, 2))
    assert dropped.tolist() == [n_drop] * n
    frac = 1.0 - keep.mean(dim=(1, 2, 3))
    assert torch.allclose(frac, torch.full((n,), 0.35), atol=1e-3)


def test_spatial_mask_odd_size_is_cropped() -> None:
    keep = spatial_mask((2, 7, 9), 0.5, generator=_gen(1))
    assert keep.shape == (2, 1, 7, 9)
    assert 0 < float(keep.mean()) < 1


def test_frequency_mask_drops_exact_number_of_bins() -> None:
    n, h, w = 3, 16, 24
    keep = frequency_mask((n, h, w), 0.25, generator=_gen(2))
    wf = w // 2 + 1
    assert keep.shape == (n, 1, h, wf)
    n_drop = round(0.25 * h * wf)
    assert (keep == 0).sum(dim=(1, 2, 3)).tolist() == [n_drop] * n


@pytest.mark.parametrize("fn", [spatial_mask, frequency_mask])
def test_masks_differ_across_samples_and_are_reproducible(fn) -> None:
    a = fn((4, 16, 16), 0.3, generator=_gen(7))
    b = fn((4, 16, 16), 0.3, generator=_gen(7))
    c = fn((4, 16, 16), 0.3, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    for i in range(1, 4):
        assert not torch.equal(a[0], a[i])


def test_zero_ratio_masks_keep_everything() -> None:
    assert spatial_mask((2, 8, 8), 0.0).min() == 1.0
    assert frequency_mask((2, 8, 8), 0.0).min() == 1.0


def test_frequency_view_zeroes_masked_rfft_bins() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 5, 8, 12)
    keep = frequency_mask((2, 8, 12), 0.25, generator=_gen(4))
    view = _frequency_view(x, keep)
    assert view.shape == x.shape and view.dtype == x.dtype
    spec = torch.fft.rfft2(view, norm="ortho")
    ref = torch.fft.rfft2(x, norm="ortho")
    dropped = (keep == 0).expand_as(spec)
    # Masked bins are gone. The DC/Nyquist columns (w = 0, w/2) hold each bin twice (k and -k) and
    # irfft2 keeps only their Hermitian part, so a bin dropped on one side only is halved there:
    # check the interior columns, where every bin is independent.
    interior = dropped.clone()
    interior[..., 0] = False
    interior[..., -1] = False
    assert spec[interior].abs().max() < 1e-5
    kept = (keep == 1).expand_as(spec).clone()
    kept[..., 0] = False
    kept[..., -1] = False
    torch.testing.assert_close(spec[kept], ref[kept], atol=1e-5, rtol=1e-5)
    full = _frequency_view(x, torch.ones_like(keep))
    torch.testing.assert_close(full, x, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- student


def _student(**kw) -> AMFDStudent:
    torch.manual_seed(0)
    args = {"in_dim": 16, "out_channels": 24, "heads": 4, "kv_pool": 2, "blocks": 1}
    args.update(kw)
    return AMFDStudent(**args)


@pytest.mark.parametrize("kv_pool", [1, 2, 4])
def test_student_output_shape(kv_pool: int) -> None:
    stu = _student(kv_pool=kv_pool)
    f = torch.randn(2, 16, 12, 8)
    assert stu(f).shape == (2, 24, 12, 8)
    spatial, freq = stu.masked_views(f, 0.35, 0.25, generator=_gen(0))
    assert spatial.shape == freq.shape == f.shape
    assert stu(spatial, freq).shape == (2, 24, 12, 8)


def test_student_without_attention() -> None:
    stu = _student(attention=False, blocks=0)
    assert not hasattr(stu, "to_q")
    assert stu(torch.randn(1, 16, 4, 4)).shape == (1, 24, 4, 4)


def test_student_inference_ignores_freq_view_none() -> None:
    stu = _student().eval()
    f = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(stu(f), stu(f, f))
    # the frequency view feeds keys/values: changing it changes the output
    assert (stu(f, torch.randn_like(f)) - stu(f)).abs().max() > 1e-4


def test_masked_views_apply_the_masks() -> None:
    stu = _student()
    torch.manual_seed(1)
    f = torch.randn(2, 16, 8, 8) + 3.0
    spatial, freq = stu.masked_views(f, 0.5, 0.25, generator=_gen(5))
    zero_pos = (spatial == 0).all(dim=1)
    assert float(zero_pos.float().mean()) == pytest.approx(0.5, abs=1e-6)
    assert not (freq - f).abs().max() < 1e-3
    same_s, same_f = stu.masked_views(f, 0.0, 0.0)
    assert same_s is f and same_f is f


def test_heads_not_dividing_width_raises() -> None:
    with pytest.raises(ValueError, match="divisible"):
        AMFDStudent(in_dim=18, out_channels=8, heads=4)


def test_gradients_flow_to_student_params() -> None:
    stu = _student()
    torch.manual_seed(2)
    f = torch.randn(2, 16, 8, 8)
    t = torch.randn(2, 24, 8, 8)
    spatial, freq = stu.masked_views(f, 0.35, 0.25, generator=_gen(6))
    loss = distill_loss(t, stu(spatial, freq))
    loss.backward()
    params = dict(stu.named_parameters())
    assert len(params) > 10
    for name, p in params.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name in ("to_q.weight", "to_kv.weight", "pos_k.weight", "out.weight", "proj.weight"):
        assert params[name].grad.abs().sum() > 0, name


# ---------------------------------------------------------------- loss


def test_distill_loss_zero_when_equal_positive_otherwise() -> None:
    torch.manual_seed(3)
    t = torch.randn(2, 8, 8, 8)
    assert float(distill_loss(t, t.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(t, t.clone(), relative=False)) == pytest.approx(0.0, abs=1e-6)
    s = t + 0.5 * torch.randn_like(t)
    assert float(distill_loss(t, s)) > 1e-3
    assert float(distill_loss(t, -t)) == pytest.approx(2.0, abs=1e-5)  # cos = -1, same amplitude


def test_distill_loss_terms() -> None:
    torch.manual_seed(4)
    t = torch.randn(2, 8, 6, 6)
    s = torch.randn(2, 8, 6, 6)
    cos = 1 - torch.nn.functional.cosine_similarity(t, s, dim=1)
    assert cosine_distance(t, s).shape == (2, 6, 6)
    torch.testing.assert_close(cosine_distance(t, s), cos, atol=1e-6, rtol=0)
    no_spec = distill_loss(t, s, spectral_weight=0.0)
    assert float(no_spec) == pytest.approx(float(cos.mean()), abs=1e-6)
    # positive scale: cosine term unchanged, relative spectral term unchanged
    assert float(distill_loss(t, 3 * s, spectral_weight=0.0)) == pytest.approx(float(no_spec), abs=1e-6)
    with_spec = distill_loss(t, s, spectral_weight=0.5)
    assert float(with_spec) > float(no_spec)
    assert with_spec.dtype == torch.float32


def test_distill_loss_fp16_inputs_finite() -> None:
    torch.manual_seed(5)
    t = (200 + 20 * torch.randn(1, 8, 32, 32)).half()
    s = (t.float() + torch.randn(1, 8, 32, 32)).half()
    loss = distill_loss(t, s, relative=False)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, distill_loss(t.float(), s.float(), relative=False), rtol=1e-5, atol=1e-6)
