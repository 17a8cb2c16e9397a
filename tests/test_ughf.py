"""Tests for trainer.models.masf.ughf: cue normalisation, scale fusion and the map post-processing."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.models.masf.ughf import UGHF, MapPostprocess, MASFOutput, gaussian_kernel_1d

# ---------------------------------------------------------------- fusion


@pytest.mark.parametrize("learned", [True, False])
def test_fusion_weights_sum_to_one(learned: bool) -> None:
    fusion = UGHF(3, learned=learned)
    w = fusion.scale_weights().detach()
    assert w.shape == (3,)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(w, torch.full((3,), 1 / 3))
    with torch.no_grad():
        fusion.log_var.copy_(torch.tensor([0.5, -1.0, 2.0]))
    w2 = fusion.scale_weights().detach()
    assert float(w2.sum()) == pytest.approx(1.0, abs=1e-6)
    if learned:
        assert fusion.log_var.requires_grad
        torch.testing.assert_close(w2, torch.softmax(-torch.tensor([0.5, -1.0, 2.0]), 0))
        assert int(w2.argmax()) == 1  # the lowest variance gets the largest weight
    else:
        assert not fusion.log_var.requires_grad
        torch.testing.assert_close(w2, torch.full((3,), 1 / 3))


def test_uncertainty_loss_formula() -> None:
    fusion = UGHF(3)
    log_var = [0.3, -0.2, 1.1]
    losses = [0.5, 2.0, 0.1]
    with torch.no_grad():
        fusion.log_var.copy_(torch.tensor(log_var))
    want = sum(math.exp(-s) * loss + s for s, loss in zip(log_var, losses, strict=True))
    got = fusion.uncertainty_loss(torch.tensor(losses))
    assert float(got.detach()) == pytest.approx(want, rel=1e-6)
    got.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    want_grad = torch.tensor([1 - math.exp(-s) * loss for s, loss in zip(log_var, losses, strict=True)])
    torch.testing.assert_close(fusion.log_var.grad, want_grad)
    plain = UGHF(3, learned=False)
    assert float(plain.uncertainty_loss(torch.tensor(losses))) == pytest.approx(sum(losses))


def test_set_statistics_normalises_mean_map_to_zero() -> None:
    fusion = UGHF(2, cos_weight=0.6, bank_weight=0.4)
    assert not bool(fusion.stats_ready)
    fusion.set_statistics(cos=[(0.2, 0.05), (0.3, 0.1)], bank=[(1.5, 0.5), (2.0, 0.25)])
    assert bool(fusion.stats_ready)
    cos = torch.full((2, 4, 4), 0.3)
    bank = torch.full((2, 4, 4), 2.0)
    assert fusion.scale_map(1, cos, bank).abs().max() < 1e-6
    assert fusion.scale_map(1, cos, bank).shape == (2, 1, 4, 4)
    # one std above the mean on both cues -> 1
    out = fusion.scale_map(0, torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), 2.0))
    torch.testing.assert_close(out, torch.ones(1, 1, 2, 2))
    # mixed: cos +2 sd, bank -1 sd -> 0.6 * 2 + 0.4 * -1
    out = fusion.scale_map(0, torch.full((1, 2, 2), 0.3), torch.full((1, 2, 2), 1.0))
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), 0.8))


def test_set_statistics_clamps_zero_std_and_partial() -> None:
    fusion = UGHF(1)
    fusion.set_statistics(cos=[(1.0, 0.0)], bank=None)
    assert float(fusion.cos_std[0]) == pytest.approx(1e-6)
    assert float(fusion.bank_std[0]) == 1.0 and float(fusion.bank_mean[0]) == 0.0
    assert torch.isfinite(fusion.scale_map(0, torch.full((1, 2, 2), 1.0), None)).all()


def test_scale_map_with_one_cue() -> None:
    fusion = UGHF(1, cos_weight=0.6, bank_weight=0.4)
    fusion.set_statistics(cos=[(1.0, 2.0)], bank=[(3.0, 0.5)])
    cos = torch.full((1, 3, 3), 5.0)
    bank = torch.full((1, 3, 3), 4.0)
    # a single cue is not down-weighted by its mixing weight
    torch.testing.assert_close(fusion.scale_map(0, cos, None), torch.full((1, 1, 3, 3), 2.0))
    torch.testing.assert_close(fusion.scale_map(0, None, bank), torch.full((1, 1, 3, 3), 2.0))
    with pytest.raises(ValueError, match="at least one cue"):
        fusion.scale_map(0, None, None)


def test_fusion_forward_upsamples_and_weights() -> None:
    fusion = UGHF(2, learned=True)
    with torch.no_grad():
        fusion.log_var.copy_(torch.tensor([0.0, math.log(3.0)]))  # weights 0.75 / 0.25
    cos = [torch.full((1, 8, 8), 1.0), torch.full((1, 4, 4), 2.0)]
    bank = [torch.full((1, 8, 8), 1.0), torch.full((1, 4, 4), 2.0)]
    out = fusion(cos, bank, (32, 32))
    assert out.shape == (1, 1, 32, 32)
    torch.testing.assert_close(out, torch.full((1, 1, 32, 32), 0.75 * 1.0 + 0.25 * 2.0))
    assert fusion(None, bank, (16, 16)).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("bank_scales", [None, [1]])
def test_the_score_mix_fuses_the_same_cues_with_its_own_weights(bank_scales: list[int] | None) -> None:
    # per-scale banks (one map per scale) and one joint bank map at scale 1 alike
    gen = torch.Generator().manual_seed(0)
    cos = [torch.randn(2, 8, 8, generator=gen), torch.randn(2, 4, 4, generator=gen)]
    bank = [torch.randn(2, 8, 8, generator=gen), torch.randn(2, 4, 4, generator=gen)]
    if bank_scales is not None:
        bank = [bank[1]]
    split = UGHF(2, 0.5, 0.5, learned=False, bank_scales=bank_scales, score_cos_weight=0.25)
    assert split.map_mix == 0.5 and split.score_weights() == (0.25, 0.75)
    mixed = UGHF(2, 0.25, 0.75, learned=False, bank_scales=bank_scales)
    torch.testing.assert_close(split(cos, bank, (16, 16), split.score_weights()), mixed(cos, bank, (16, 16)))
    torch.testing.assert_close(
        split(cos, bank, (16, 16)), UGHF(2, 0.5, 0.5, False, bank_scales)(cos, bank, (16, 16))
    )
    # a score mix of one cue leaves the other out (its maps may be absent)
    bank_only = split(None, bank, (16, 16), (0.0, 1.0))
    torch.testing.assert_close(bank_only, UGHF(2, 0.0, 1.0, False, bank_scales)(cos, bank, (16, 16)))


def test_a_score_mix_equal_to_the_maps_is_no_split() -> None:
    assert UGHF(1, 0.6, 0.4, score_cos_weight=None).score_weights() is None
    assert UGHF(1, 0.6, 0.4, score_cos_weight=0.6).score_weights() is None
    assert UGHF(1, 1.2, 0.8, score_cos_weight=0.6).score_weights() is None  # the map's mix, unnormalised
    assert UGHF(1, 0.6, 0.4, score_cos_weight=1.0).score_weights() == (1.0, 0.0)


# ---------------------------------------------------------------- post-processing


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0])
def test_gaussian_kernel(sigma: float) -> None:
    k = gaussian_kernel_1d(sigma)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert k.numel() == 2 * max(1, math.ceil(4 * sigma)) + 1
    torch.testing.assert_close(k, k.flip(0))
    assert int(k.argmax()) == k.numel() // 2


def test_smoothing_constant_map_stays_constant() -> None:
    post = MapPostprocess(sigma=4.0)
    m = torch.full((2, 1, 20, 30), 3.25)
    out = post.smooth(m)
    assert out.shape == m.shape
    torch.testing.assert_close(out, m, atol=1e-5, rtol=0)


def test_smoothing_spreads_a_peak_and_keeps_mass() -> None:
    post = MapPostprocess(sigma=2.0)
    m = torch.zeros(1, 1, 41, 41)
    m[0, 0, 20, 20] = 1.0
    out = post.smooth(m)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)  # far from the border
    assert float(out.max()) < 0.1
    assert int(out.flatten().argmax()) == 20 * 41 + 20
    torch.testing.assert_close(out[0, 0], out[0, 0].T, atol=1e-7, rtol=0)
    assert MapPostprocess(sigma=0.0).smooth(m) is m


def test_max_vs_topk_mean_scores() -> None:
    m = torch.zeros(2, 1, 10, 10)
    m[0, 0, 0, 0] = 10.0
    m[1, 0, :2, :5] = 4.0  # 10 pixels
    peak = MapPostprocess(sigma=0, reduce="max")
    topk = MapPostprocess(sigma=0, reduce="topk_mean", topk_fraction=0.1)  # k = 10
    torch.testing.assert_close(peak.score(m), torch.tensor([10.0, 4.0]))
    torch.testing.assert_close(topk.score(m), torch.tensor([1.0, 4.0]))
    with pytest.raises(ValueError, match=r"score\.reduce"):
        MapPostprocess(reduce="mean")


@pytest.mark.parametrize("reduce", ["max", "topk_mean"])
def test_valid_mask_excludes_padding(reduce: str) -> None:
    torch.manual_seed(0)
    post = MapPostprocess(sigma=0, reduce=reduce, topk_fraction=0.05)
    m = torch.rand(2, 1, 16, 16)
    valid = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    valid[:, :, 4:12, :] = True  # letterbox: rows 0-3 and 12-15 are padding
    base = post.score(m, valid)
    spiked = m.clone()
    spiked[:, :, 0, 0] = 1e6
    spiked[:, :, 15, :] = 500.0
    torch.testing.assert_close(post.score(spiked, valid), base)
    torch.testing.assert_close(post.score(spiked, valid.float()), base)
    assert (post.score(spiked) > 100).all()  # without the mask the padding wins
    if reduce == "max":
        torch.testing.assert_close(base, m[:, :, 4:12].flatten(1).max(1).values)


def test_topk_mean_with_fewer_valid_pixels_than_k() -> None:
    """Padding never enters the score, even when k exceeds the number of valid pixels."""
    post = MapPostprocess(sigma=0, reduce="topk_mean", topk_fraction=0.5)  # k = 8 of 16
    m = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    valid = torch.zeros(1, 1, 4, 4)
    valid[..., 0, :] = 1  # 4 valid pixels: 0, 1, 2, 3
    torch.testing.assert_close(post.score(m, valid), torch.tensor([1.5]))
    full = MapPostprocess(sigma=0, reduce="topk_mean", topk_fraction=1.0)
    torch.testing.assert_close(full.score(m, valid), torch.tensor([1.5]))
    torch.testing.assert_close(full.score(m), torch.tensor([7.5]))


def test_forward_returns_named_output() -> None:
    post = MapPostprocess(sigma=1.0)
    m = torch.rand(3, 1, 12, 12)
    out = post(m)
    assert isinstance(out, MASFOutput)
    assert out.anomaly_map.shape == (3, 1, 12, 12)
    assert out.pred_score.shape == (3,)
    torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).max(1).values)


def test_the_score_is_taken_from_the_score_map_smoothed_alike() -> None:
    post = MapPostprocess(sigma=1.0, reduce="max")
    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 4, 4] = 1.0
    scored = torch.zeros(1, 1, 16, 16)
    scored[0, 0, 10, 10] = 5.0
    out = post(m, None, scored)
    torch.testing.assert_close(out.anomaly_map, post.smooth(m))
    torch.testing.assert_close(out.pred_score, post.smooth(scored).flatten(1).max(dim=1).values)
    assert float(out.pred_score) > float(post(m).pred_score)
