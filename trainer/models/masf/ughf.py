"""UGHF: Uncertainty-Guided Hierarchical Fusion, plus the map post-processing (upsample, smooth, score).

Per scale ``l``, the two anomaly cues are first put on a common footing with statistics of good images
(mean and std over all pixels of the calibration images, stored as buffers):
``c_l = (cos_l - mu_c) / sd_c``, ``b_l = (bank_l - mu_b) / sd_b``, then ``s_l = 0.6 c_l + 0.4 b_l``.
Scales are fused with learned log-variances: ``map = sum_l softmax(-log_var)_l * up(s_l)``. The
log-variances are learned the standard way (Kendall et al.): the training loss is
``sum_l exp(-log_var_l) * L_l + log_var_l`` over the per-scale distillation losses ``L_l``; a scale the
student reproduces reliably gets a larger weight. With ``learned=False`` the scales get equal weights.

The bank need not have one map per scale (``bank.layers``, ``bank.embedding``): its maps are listed with
the scale each belongs to (``bank_scales``). When it has one map at every scale, the cues are mixed per
scale as above. Otherwise the two cues are fused separately, ``C = sum_l w_l up(c_l)`` and
``B = sum_j v_j up(b_j)`` with ``v`` the scale weights of the bank's scales renormalised (one joint map:
``v = 1``), then mixed ``(0.6 C + 0.4 B) / 1`` with the same cue weights: for one map per scale the two
forms are the same sum.

The image score may be taken from another mix of the same cues than the map (``score_cos_weight``:
the distillation cue's share of the score's mix, the bank's being the rest; ``None``: the map's own
mix). A part can localise best with both cues and separate good from defective parts best with one;
the map and the score are then two fusions of the same per-scale cues, each smoothed alike.

Post-processing: bilinear upsampling to the input size, a Gaussian blur (``sigma`` px, separable,
replicate padding), then the image score: the map maximum, or the mean of the top ``topk_fraction`` of
pixels. Pixels outside the ``valid`` mask (letterbox padding) never contribute to the score.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UGHF", "MASFOutput", "MapPostprocess"]


class MASFOutput(NamedTuple):
    """Inference output. ``anomaly_map``: ``[N, 1, H, W]``; ``pred_score``: ``[N]``."""

    anomaly_map: torch.Tensor
    pred_score: torch.Tensor


class UGHF(nn.Module):
    cos_mean: torch.Tensor
    cos_std: torch.Tensor
    bank_mean: torch.Tensor
    bank_std: torch.Tensor
    stats_ready: torch.Tensor

    """Normalise, mix and fuse the per-scale maps.

    Args:
        n_scales: number of scales ``L``.
        cos_weight: weight of the distillation cue (paper 0.6).
        bank_weight: weight of the memory-bank cue (paper 0.4).
        learned: learn the scale weights from the distillation losses (False: equal weights).
        score_cos_weight: the distillation cue's share of the image score's mix (``None``: the map's).
    """

    def __init__(
        self,
        n_scales: int,
        cos_weight: float = 0.6,
        bank_weight: float = 0.4,
        learned: bool = True,
        bank_scales: list[int] | None = None,
        score_cos_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.n_scales = n_scales
        self.cos_weight = cos_weight
        self.bank_weight = bank_weight
        self.score_cos_weight = score_cos_weight
        self.learned = learned
        # the scale each bank map belongs to (default: one map per scale)
        self.bank_scales = list(range(n_scales)) if bank_scales is None else list(bank_scales)
        self.per_scale = self.bank_scales == list(range(n_scales))
        n_bank = len(self.bank_scales)
        self.log_var = nn.Parameter(torch.zeros(n_scales), requires_grad=learned)
        self.register_buffer("cos_mean", torch.zeros(n_scales))
        self.register_buffer("bank_mean", torch.zeros(n_bank))
        self.register_buffer("cos_std", torch.ones(n_scales))
        self.register_buffer("bank_std", torch.ones(n_bank))
        self.register_buffer("stats_ready", torch.zeros((), dtype=torch.bool))

    @property
    def map_mix(self) -> float:
        """The distillation cue's share of the map's mix."""
        return self.cos_weight / (self.cos_weight + self.bank_weight)

    def score_weights(self) -> tuple[float, float] | None:
        """The image score's ``(distillation, bank)`` weights when its mix differs from the map's, else
        ``None`` (the score is taken from the map)."""
        s = self.score_cos_weight
        if s is None or abs(s - self.map_mix) < 1e-9:
            return None
        return s, 1.0 - s

    def scale_weights(self) -> torch.Tensor:
        """``[L]`` weights that sum to 1."""
        if not self.learned:
            return torch.full((self.n_scales,), 1.0 / self.n_scales, device=self.log_var.device)
        return torch.softmax(-self.log_var, dim=0)

    def uncertainty_loss(self, losses: torch.Tensor) -> torch.Tensor:
        """``[L]`` per-scale losses -> the weighted training loss (plain sum when not learned)."""
        if not self.learned:
            return losses.sum()
        return torch.sum(torch.exp(-self.log_var) * losses + self.log_var)

    def set_statistics(
        self, cos: list[tuple[float, float]] | None, bank: list[tuple[float, float]] | None
    ) -> None:
        """Store ``(mean, std)`` per scale of each cue, measured on good images."""
        for prefix, stats in (("cos", cos), ("bank", bank)):
            if stats is None:
                continue
            mean = torch.tensor([m for m, _ in stats], dtype=torch.float32)
            std = torch.tensor([max(s, 1e-6) for _, s in stats], dtype=torch.float32)
            getattr(self, f"{prefix}_mean").copy_(mean)
            getattr(self, f"{prefix}_std").copy_(std)
        self.stats_ready.fill_(True)

    def scale_map(
        self,
        l: int,
        cos: torch.Tensor | None,
        bank: torch.Tensor | None,
        cue_weights: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Normalised mix of the cues of scale ``l``; inputs ``[N, h, w]``, output ``[N, 1, h, w]``.
        ``cue_weights``: ``(distillation, bank)`` weights instead of the map's."""
        cw, bw = cue_weights or (self.cos_weight, self.bank_weight)
        terms: list[tuple[float, torch.Tensor]] = []
        if cos is not None and cw > 0:
            terms.append((cw, (cos - self.cos_mean[l]) / self.cos_std[l]))
        if bank is not None and bw > 0:
            terms.append((bw, (bank - self.bank_mean[l]) / self.bank_std[l]))
        if not terms:
            raise ValueError("UGHF needs at least one cue (student or bank)")
        if len(terms) == 1:
            return terms[0][1][:, None]
        total = sum(w for w, _ in terms)
        mixed = terms[0][0] * terms[0][1] + terms[1][0] * terms[1][1]
        return (mixed / total)[:, None]

    def forward(
        self,
        cos_maps: list[torch.Tensor] | None,
        bank_maps: list[torch.Tensor] | None,
        size: tuple[int, int],
        cue_weights: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Per-scale ``[N, h_l, w_l]`` cues -> fused map ``[N, 1, H, W]`` (before smoothing).
        ``cue_weights``: ``(distillation, bank)`` weights instead of the map's (e.g.
        :meth:`score_weights`); a cue of weight 0 is left out."""
        weights = self.scale_weights()
        if not self.per_scale:
            return self._fuse_separately(cos_maps, bank_maps, size, weights, cue_weights)
        fused = None
        for l in range(self.n_scales):
            s = self.scale_map(
                l, cos_maps[l] if cos_maps else None, bank_maps[l] if bank_maps else None, cue_weights
            )
            s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            fused = weights[l] * s if fused is None else fused + weights[l] * s
        assert fused is not None
        return fused

    def _fuse_separately(
        self,
        cos_maps: list[torch.Tensor] | None,
        bank_maps: list[torch.Tensor] | None,
        size: tuple[int, int],
        weights: torch.Tensor,
        cue_weights: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """``(a C + b B) / (a + b)``: each cue fused over its own maps first (see the module docstring)."""
        cw, bw = cue_weights or (self.cos_weight, self.bank_weight)

        def up(m: torch.Tensor) -> torch.Tensor:
            return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)

        terms: list[tuple[float, torch.Tensor]] = []
        if cos_maps is not None and cw > 0:
            c = sum(weights[l] * up((m - self.cos_mean[l]) / self.cos_std[l]) for l, m in enumerate(cos_maps))
            terms.append((cw, c))  # type: ignore[arg-type]
        if bank_maps is not None and bw > 0:
            v = weights[self.bank_scales]
            v = v / v.sum()
            b = sum(v[j] * up((m - self.bank_mean[j]) / self.bank_std[j]) for j, m in enumerate(bank_maps))
            terms.append((bw, b))  # type: ignore[arg-type]
        if not terms:
            raise ValueError("UGHF needs at least one cue (student or bank)")
        if len(terms) == 1:
            return terms[0][1]
        total = terms[0][0] + terms[1][0]
        return (terms[0][0] * terms[0][1] + terms[1][0] * terms[1][1]) / total


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``ceil(4 sigma)``: ``[2r + 1]``."""
    radius = max(1, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


class MapPostprocess(nn.Module):
    kernel: torch.Tensor

    """Gaussian smoothing and the image score.

    Args:
        sigma: blur sigma in pixels of the input frame (0 disables).
        reduce: ``"max"`` or ``"topk_mean"``.
        topk_fraction: fraction of the map's pixels averaged by ``topk_mean``.
    """

    def __init__(self, sigma: float = 4.0, reduce: str = "max", topk_fraction: float = 0.01) -> None:
        super().__init__()
        if reduce not in ("max", "topk_mean"):
            raise ValueError(f"score.reduce must be 'max' or 'topk_mean', got {reduce!r}")
        self.sigma = sigma
        self.reduce = reduce
        self.topk_fraction = topk_fraction
        kernel = gaussian_kernel_1d(sigma) if sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel, persistent=False)

    def with_reduce(self, reduce: str) -> MapPostprocess:
        """The same smoothing with another image score ``reduce``, on this module's device."""
        return MapPostprocess(self.sigma, reduce, self.topk_fraction).to(self.kernel.device)

    def with_sigma(self, sigma: float) -> MapPostprocess:
        """The same image score with another smoothing ``sigma``, on this module's device."""
        return MapPostprocess(sigma, self.reduce, self.topk_fraction).to(self.kernel.device)

    def smooth(self, m: torch.Tensor) -> torch.Tensor:
        """``[N, 1, H, W]`` -> blurred map of the same shape."""
        if self.sigma <= 0:
            return m
        r = self.kernel.numel() // 2
        kx = self.kernel.view(1, 1, 1, -1)
        ky = self.kernel.view(1, 1, -1, 1)
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), kx)
        return F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), ky)

    def score(self, m: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, 1, H, W]`` map (+ optional bool/0-1 ``valid`` of the same shape) -> ``[N]`` scores."""
        flat = m.flatten(1)
        keep = None
        if valid is not None:
            keep = valid.flatten(1) > 0
            flat = torch.where(keep, flat, torch.full_like(flat, -1e4))
        if self.reduce == "max":
            return flat.max(dim=1).values
        k = max(1, round(self.topk_fraction * flat.shape[1]))
        top, idx = flat.topk(k, dim=1)
        if keep is None:
            return top.mean(dim=1)
        # Fewer valid pixels than k: average only the valid ones among the top k (no -1e4 fill values).
        w = keep.gather(1, idx).to(top.dtype)
        return (top * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def forward(
        self, m: torch.Tensor, valid: torch.Tensor | None = None, score_map: torch.Tensor | None = None
    ) -> MASFOutput:
        """Smoothed map and image score of ``m``; the score from ``score_map`` (smoothed alike) instead
        when given (:meth:`UGHF.score_weights`)."""
        smoothed = self.smooth(m)
        scored = smoothed if score_map is None else self.smooth(score_map)
        return MASFOutput(smoothed, self.score(scored, valid))
