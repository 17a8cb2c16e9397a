"""TTSA: Test-Time Spectral Augmentation.

``n`` views ``v_i = IFFT2(|FFT2(x)| * exp(i (phi + eps_i)))`` of the normalised input, ``eps_i ~ N(0,
sigma^2)`` per frequency bin (shared by the three channels), amplitude kept; the fused anomaly maps of the
views are averaged and the image score is taken from the averaged map.

The noise is drawn once from a seeded generator and stored as buffers (``cos eps``, ``sin eps``), so the
same image always gets the same score, in torch and in an exported graph. ``eps`` is made odd-symmetric
on the FFT grid (``eps(-k) = -eps(k)``): the perturbed spectrum stays Hermitian, the inverse FFT is real
without discarding an imaginary part, and the amplitude spectrum is kept exactly.

Follows timm's ``apply_test_time_pool`` contract: :func:`apply_tta` wraps the model from outside and
returns ``(model, applied)``; the base model is left unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from trainer.models.masf.masf import MASF
from trainer.models.masf.spectral import SpectralPhaseRotation, odd_symmetric
from trainer.models.masf.ughf import MASFOutput

__all__ = ["PhasePerturbation", "TTSAWrapper", "apply_tta"]

_logger = logging.getLogger(__name__)


class PhasePerturbation(nn.Module):
    """Seeded phase noise for ``[N, C, H, W]`` inputs; ``forward`` returns ``[views * N, C, H, W]``.

    The DFTs run in :attr:`spectral` (:class:`~trainer.models.masf.spectral.SpectralPhaseRotation`):
    ``torch.fft`` or, for export, real MatMuls (``spectral_mode="gemm"``, see ``set_spectral_mode``).

    Args:
        height: input height ``H``.
        width: input width ``W``.
        views: number of views ``V``.
        sigma: std of the phase noise (radians).
        seed: seed of the noise.
        spectral_mode: ``"fft"`` or ``"gemm"``.
    """

    def __init__(
        self,
        height: int,
        width: int,
        views: int = 5,
        sigma: float = 0.1,
        seed: int = 0,
        spectral_mode: str = "fft",
    ) -> None:
        super().__init__()
        if views < 1:
            raise ValueError(f"tta.views must be >= 1, got {views}")
        gen = torch.Generator().manual_seed(seed)
        eps = torch.stack(
            [odd_symmetric(torch.randn(height, width, generator=gen) * sigma) for _ in range(views)]
        )
        self.views = views
        self.spectral = SpectralPhaseRotation(eps, spectral_mode)

    @property
    def cos_eps(self) -> torch.Tensor:
        """``cos(eps)``, ``[V, 1, 1, H, W]``."""
        return self.spectral.cos_eps

    @property
    def sin_eps(self) -> torch.Tensor:
        """``sin(eps)``, ``[V, 1, 1, H, W]``."""
        return self.spectral.sin_eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, C, H, W]`` -> views ``[V * N, C, H, W]`` (view-major, dtype of ``x``)."""
        n, c, h, w = x.shape
        views = self.spectral(x)  # [V, N, C, H, W] float32
        return views.reshape(self.views * n, c, h, w).to(x.dtype)


class TTSAWrapper(nn.Module):
    """Averages the fused maps of the phase-perturbed views of each input (see module docstring); a
    score with its own cue mix is taken from the views' average of its own map."""

    def __init__(self, model: MASF, views: int, sigma: float, seed: int) -> None:
        super().__init__()
        self.model = model
        h, w = model.input_size
        self.perturb = PhasePerturbation(h, w, views, sigma, seed)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.model.input_size

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> MASFOutput:
        """``x [N, 3, H, W]`` RGB in [0, 255] -> averaged :class:`MASFOutput`."""
        n = x.shape[0]
        views = self.perturb(self.model.teacher.normalize(x))
        v = None if valid is None else valid.repeat(self.perturb.views, 1, 1, 1)  # view-major, as the views
        maps, scored = self.model.fused_maps(views, v)  # [V * N, 1, H, W] each

        def mean(m: torch.Tensor) -> torch.Tensor:
            return m.reshape(self.perturb.views, n, *m.shape[1:]).mean(dim=0)

        out: MASFOutput = self.model.post(mean(maps), valid, None if scored is None else mean(scored))
        return out


def apply_tta(
    model: MASF, enabled: bool, views: int = 5, sigma: float = 0.1, seed: int = 0
) -> tuple[nn.Module, bool]:
    """Wrap ``model`` with TTSA when ``enabled``; returns ``(model, applied)``, base model untouched."""
    if not enabled:
        _logger.info("TTSA not applied: disabled in the config")
        return model, False
    return TTSAWrapper(model, views, sigma, seed), True
