"""AMFD + SSCA: masked distillation student with spatial-spectral cross-attention (one per scale).

Training sees two masked views of ``F_spec``:

* spatial view: a fraction ``spatial_ratio`` (0.35) of the 2x2 spatial patches is zeroed;
* frequency view: a fraction ``freq_ratio`` (0.25) of the ``rfft2`` coefficients is zeroed (FP32), then
  transformed back with ``irfft2``.

SSCA is a cross-attention with queries from the spatial view and keys/values from the frequency view,
``heads`` (4) heads. Full attention over 64x64 = 4096 query tokens against 4096 keys costs O(4096^2) per
map on a CPU; we keep every query token but average-pool the key/value view by ``kv_pool`` (4/2/1 at
strides 4/8/16, so K/V always lie on a stride-16 grid: 256 tokens at 256x256). Each query still sees the
whole frequency view, at a coarser grid. Depthwise 3x3 convs on the inputs of Q and K act as
size-agnostic position encodings. Then two residual conv blocks and a 1x1 projection give the student
features ``S`` with the teacher's channel count.

Loss per scale: ``mean(1 - cos(T, S))`` over positions ``+ spectral_weight * MSE(|FFT2(S)|, |FFT2(T)|)``
(weight 0.5, FP32). At inference nothing is masked.

Shapes: ``F_spec [N, D, h, w] -> S [N, C, h, w]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.masf.spectral import amplitude_mse, fp32

__all__ = ["AMFDStudent", "distill_loss", "frequency_mask", "spatial_mask"]


def spatial_mask(
    shape: tuple[int, int, int], ratio: float, patch: int = 2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random keep-mask of ``patch x patch`` blocks: ``[N, 1, h, w]`` of 0/1, ``ratio`` of blocks dropped.

    Exactly ``round(ratio * n_blocks)`` blocks are zeroed per sample (a ratio, not a probability).
    """
    n, h, w = shape
    gh, gw = -(-h // patch), -(-w // patch)
    n_blocks = gh * gw
    n_drop = round(ratio * n_blocks)
    scores = torch.rand(n, n_blocks, generator=generator)
    drop = scores.argsort(dim=1)[:, :n_drop]
    keep = torch.ones(n, n_blocks)
    keep.scatter_(1, drop, 0.0)
    keep = keep.view(n, 1, gh, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return keep[:, :, :h, :w]


def frequency_mask(
    shape: tuple[int, int, int], ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random keep-mask over ``rfft2`` bins: ``[N, 1, h, w // 2 + 1]``, ``ratio`` of bins zeroed."""
    n, h, w = shape
    wf = w // 2 + 1
    n_bins = h * wf
    n_drop = round(ratio * n_bins)
    drop = torch.rand(n, n_bins, generator=generator).argsort(dim=1)[:, :n_drop]
    keep = torch.ones(n, n_bins)
    keep.scatter_(1, drop, 0.0)
    return keep.view(n, 1, h, wf)


def _frequency_view(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero the masked ``rfft2`` coefficients of ``x`` (FP32) and return to the spatial domain."""
    with fp32(x.device):
        spec = torch.fft.rfft2(x.float(), norm="ortho") * keep.to(x.device)
        return torch.fft.irfft2(spec, s=x.shape[-2:], norm="ortho").to(x.dtype)


class _ResBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class AMFDStudent(nn.Module):
    """Student for one scale.

    Args:
        in_dim: ``D``, channels of ``F_spec``.
        out_channels: ``C``, teacher channels at this scale.
        heads: attention heads (paper: 4); ``in_dim`` must be divisible by it.
        kv_pool: average-pool factor for keys/values.
        blocks: residual blocks after the attention (paper: 2).
        attention: False drops SSCA (ablation: a plain conv student).
    """

    def __init__(
        self,
        in_dim: int,
        out_channels: int,
        heads: int = 4,
        kv_pool: int = 1,
        blocks: int = 2,
        attention: bool = True,
    ) -> None:
        super().__init__()
        if in_dim % heads:
            raise ValueError(f"student.width ({in_dim}) must be divisible by student.heads ({heads})")
        self.heads = heads
        self.kv_pool = kv_pool
        self.attention = attention
        if attention:
            self.pos_q = nn.Conv2d(in_dim, in_dim, 3, padding=1, groups=in_dim)
            self.pos_k = nn.Conv2d(in_dim, in_dim, 3, padding=1, groups=in_dim)
            self.norm_q = nn.GroupNorm(1, in_dim)
            self.norm_kv = nn.GroupNorm(1, in_dim)
            self.to_q = nn.Conv2d(in_dim, in_dim, 1)
            self.to_kv = nn.Conv2d(in_dim, 2 * in_dim, 1)
            self.out = nn.Conv2d(in_dim, in_dim, 1)
        self.blocks = nn.Sequential(*[_ResBlock(in_dim) for _ in range(blocks)])
        self.proj = nn.Conv2d(in_dim, out_channels, 1)

    def _cross_attention(self, q_in: torch.Tensor, kv_in: torch.Tensor) -> torch.Tensor:
        """Q from ``q_in [N, D, h, w]``, K/V from pooled ``kv_in``; returns ``[N, D, h, w]``."""
        n, d, h, w = q_in.shape
        q = self.to_q(self.norm_q(q_in + self.pos_q(q_in)))
        kv = kv_in + self.pos_k(kv_in)
        if self.kv_pool > 1:
            kv = F.avg_pool2d(kv, self.kv_pool, ceil_mode=True)
        k, v = self.to_kv(self.norm_kv(kv)).chunk(2, dim=1)
        hd = d // self.heads
        q = q.reshape(n, self.heads, hd, h * w).transpose(2, 3)  # [N, heads, hw, hd]
        k = k.reshape(n, self.heads, hd, -1).transpose(2, 3)  # [N, heads, m, hd]
        v = v.reshape(n, self.heads, hd, -1).transpose(2, 3)
        att = F.scaled_dot_product_attention(q, k, v)  # [N, heads, hw, hd]
        return self.out(att.transpose(2, 3).reshape(n, d, h, w))

    def forward(self, spatial_view: torch.Tensor, freq_view: torch.Tensor | None = None) -> torch.Tensor:
        """Student features ``[N, C, h, w]`` from the (masked) views of ``F_spec`` ``[N, D, h, w]``.

        At inference both views are the unmasked ``F_spec`` (pass ``freq_view=None``).
        """
        if freq_view is None:
            freq_view = spatial_view
        x = spatial_view
        if self.attention:
            x = x + self._cross_attention(spatial_view, freq_view)
        return self.proj(self.blocks(x))

    def masked_views(
        self,
        f_spec: torch.Tensor,
        spatial_ratio: float,
        freq_ratio: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training views of ``F_spec``: ``(spatial view, frequency view)``, both ``[N, D, h, w]``."""
        n, _, h, w = f_spec.shape
        spatial = f_spec
        if spatial_ratio > 0:
            spatial = f_spec * spatial_mask((n, h, w), spatial_ratio, generator=generator).to(f_spec)
        freq = f_spec
        if freq_ratio > 0:
            freq = _frequency_view(f_spec, frequency_mask((n, h, w), freq_ratio, generator=generator))
        return spatial, freq


def cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per-position ``1 - cos(T, S)`` over channels: ``[N, C, h, w] -> [N, h, w]`` (computed in FP32)."""
    with fp32(t.device):
        return 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1, eps=1e-6)


def distill_loss(
    t: torch.Tensor, s: torch.Tensor, spectral_weight: float = 0.5, relative: bool = True
) -> torch.Tensor:
    """``mean(1 - cos(T, S)) + spectral_weight * MSE(|FFT2(S)|, |FFT2(T)|)``; a scalar, FP32.

    ``relative`` normalises the spectral term by the teacher's spectral energy (see ``amplitude_mse``).
    """
    loss = cosine_distance(t, s).mean()
    if spectral_weight > 0:
        loss = loss + spectral_weight * amplitude_mse(s, t, relative)
    return loss
