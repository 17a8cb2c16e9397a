"""SDM: Spectral Decomposition Module (one per teacher scale).

``F_low = Re(ifft2(fft2(F) * M))`` keeps the central ``ratio`` (default 0.3) of the shifted spectrum,
``F_high = F - F_low`` (the same as ``Re(ifft2(fft2(F) * (1 - M)))`` by linearity). A spectral attention
(two 1x1 convs with GELU on the pooled bands) gives sigmoid channel gates for each band; the gated bands
are concatenated and fused by 1x1 conv + BN + GELU into ``F_spec``.

Shapes: ``F [N, C, h, w] -> F_spec [N, D, h, w]``.

The band split runs in FP32 as two real matrix products with precomputed band matrices (see
``spectral.band_matrix``), which is exactly the FFT form and exports without DFT nodes. It lives in
``SDM.spectral_split`` so that exported node names carry a ``spectral`` scope (FP32 pinning in TensorRT).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models.masf.spectral import band_matrix, fp32

__all__ = ["SDM", "BandSplit"]


class BandSplit(nn.Module):
    """Ideal separable low/high-pass split of ``[N, C, h, w]`` maps, in FP32.

    Args:
        height: map height ``h``.
        width: map width ``w``.
        ratio: kept central fraction of the spectrum per axis, in (0, 1].
    """

    lh: torch.Tensor
    lw: torch.Tensor

    def __init__(self, height: int, width: int, ratio: float) -> None:
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"sdm.ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.register_buffer("lh", band_matrix(height, ratio), persistent=False)
        self.register_buffer("lw", band_matrix(width, ratio), persistent=False)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, C, h, w]`` -> ``(F_low, F_high)``, both float32 of the same shape."""
        if f.shape[-2:] != (self.lh.shape[0], self.lw.shape[0]):
            raise ValueError(
                f"SDM built for {self.lh.shape[0]}x{self.lw.shape[0]} maps, got {tuple(f.shape[-2:])}"
            )
        with fp32(f.device):
            f32 = f.float()
            low = torch.matmul(
                torch.matmul(self.lh.float(), f32), self.lw.float()
            )  # L_h F L_w^T, L symmetric
            return low, f32 - low


class SDM(nn.Module):
    """Spectral decomposition + spectral attention + fusion.

    Args:
        in_channels: teacher channels ``C`` at this scale.
        out_channels: ``D``, the width of ``F_spec``.
        height: map height.
        width: map width.
        ratio: low-pass ratio (paper: 0.3).
        reduction: hidden width of the gate MLP is ``max(8, 2C // reduction)``.
        enabled: when False the module is a plain 1x1 conv + BN + GELU (the "without SDM" ablation).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        height: int,
        width: int,
        ratio: float = 0.3,
        reduction: int = 4,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.enabled = enabled
        c = in_channels
        if enabled:
            self.spectral_split = BandSplit(height, width, ratio)
            hidden = max(8, 2 * c // reduction)
            self.gate = nn.Sequential(nn.Conv2d(2 * c, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 2 * c, 1))
            fuse_in = 2 * c
        else:
            fuse_in = c
        self.fuse = nn.Sequential(
            nn.Conv2d(fuse_in, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.GELU()
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """``[N, C, h, w]`` teacher features -> ``F_spec [N, D, h, w]``."""
        if not self.enabled:
            return self.fuse(f)
        low, high = self.spectral_split(f)
        low, high = low.to(f.dtype), high.to(f.dtype)
        pooled = torch.cat([low.mean(dim=(2, 3), keepdim=True), high.mean(dim=(2, 3), keepdim=True)], dim=1)
        g_low, g_high = torch.sigmoid(self.gate(pooled)).chunk(2, dim=1)
        return self.fuse(torch.cat([low * g_low, high * g_high], dim=1))
