"""FP32 spectral primitives shared by the MASF components.

Every FFT, magnitude and spectral loss in MASF goes through this module. Each function casts its input
to float32 and runs with autocast disabled, whatever the caller's precision: FFT magnitudes of feature
maps overflow FP16 (the paper's NaNs on carpet/grid), so the spectral path is an FP32 island by
construction, not by convention.

Band splitting uses separable low-pass masks, so ``F_low = L_h @ F @ L_w^T`` with real symmetric matrices
``L = Re(IDFT · diag(m) · DFT)``: mathematically the same as ``Re(ifft2(fft2(F) * M))`` for the
rectangular mask ``M = m_h m_w^T``, and export-friendly (two MatMuls, no DFT node).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = [
    "amplitude_mse",
    "band_matrix",
    "fp32",
    "lowpass_1d",
    "odd_symmetric",
]


@contextlib.contextmanager
def fp32(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` for the enclosed block (callers also cast inputs to float32)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def lowpass_1d(n: int, ratio: float) -> torch.Tensor:
    """Keep-mask over the ``n`` FFT bins of one axis: the central ``ratio`` of the shifted spectrum.

    A bin with frequency ``f`` (cycles per sample, ``torch.fft.fftfreq``) is kept when
    ``|f| <= ratio / 2``. The DC bin is always kept, so ``ratio -> 0`` gives the mean.

    Returns:
        ``[n]`` float32 mask of 0/1.
    """
    freqs = torch.fft.fftfreq(n, dtype=torch.float64)
    return (freqs.abs() <= ratio / 2 + 1e-12).to(torch.float32)


def band_matrix(n: int, ratio: float) -> torch.Tensor:
    """Real ``[n, n]`` matrix of the 1-D ideal low-pass ``Re(IDFT diag(m) DFT)`` (orthonormal DFT).

    ``m`` is symmetric in frequency, so the operator maps real signals to real signals and the matrix is
    real and symmetric. Built in float64, returned as float32.
    """
    m = lowpass_1d(n, ratio).to(torch.float64)
    eye = torch.eye(n, dtype=torch.complex128)
    spec = torch.fft.fft(eye, dim=0, norm="ortho") * m[:, None]
    return torch.fft.ifft(spec, dim=0, norm="ortho").real.to(torch.float32)


def amplitude_mse(s: torch.Tensor, t: torch.Tensor, relative: bool = True) -> torch.Tensor:
    """``MSE(|FFT2(s)|, |FFT2(t)|)`` over ``[N, C, H, W]`` maps, in FP32 (orthonormal FFT).

    Args:
        s: student maps.
        t: teacher maps (the target).
        relative: divide by ``mean(|FFT2(t)|^2)`` (per sample), so the term is scale-free like the cosine
            term; False gives the paper's raw MSE, whose size follows the feature magnitude.

    Returns:
        A scalar tensor.
    """
    with fp32(s.device):
        fs = torch.fft.fft2(s.float(), norm="ortho").abs()
        ft = torch.fft.fft2(t.float(), norm="ortho").abs()
        err = ((fs - ft) ** 2).mean(dim=(1, 2, 3))
        if relative:
            err = err / (ft**2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
        return err.mean()


def odd_symmetric(noise: torch.Tensor) -> torch.Tensor:
    """Make ``[H, W]`` noise odd-symmetric on the FFT grid: ``e(-k) = -e(k)`` (indices mod H, W).

    A phase perturbation with this symmetry keeps the spectrum of a real image Hermitian, so the inverse
    FFT is real and the amplitude spectrum is kept exactly. Self-conjugate bins (DC, Nyquist) get 0.
    The variance of the free entries is kept (division by sqrt 2).
    """
    flipped = torch.roll(torch.flip(noise, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return (noise - flipped) / (2.0**0.5)
