"""FP32 spectral primitives shared by the MASF components.

Every FFT, magnitude and spectral loss in MASF goes through this module. Each function casts its input
to float32 and runs with autocast disabled, whatever the caller's precision: FFT magnitudes of feature
maps overflow FP16 (the paper's NaNs on carpet/grid), so the spectral path is an FP32 island by
construction, not by convention.

Band splitting uses separable low-pass masks, so ``F_low = L_h @ F @ L_w^T`` with real symmetric matrices
``L = Re(IDFT · diag(m) · DFT)``: mathematically the same as ``Re(ifft2(fft2(F) * M))`` for the
rectangular mask ``M = m_h m_w^T``, and export-friendly (two MatMuls, no DFT node).

The inference path has two more DFTs, each wrapped in a small :class:`SpectralOp` module with two modes:

* ``"fft"`` (default, used in training): ``torch.fft``;
* ``"gemm"``: the same DFT as real matrix products with precomputed cos/sin matrices (non-persistent
  buffers, so state dicts do not change), for graphs without DFT nodes (TensorRT 10 has no DFT op).

:class:`ChannelDFTMagnitude` is ``|rfft|`` along the last dim (SAMB's channel spectrum) and
:class:`SpectralPhaseRotation` is ``Re(IDFT2(DFT2(x) * exp(i eps)))`` (TTSA's phase-perturbed views).
Both run in FP32 with autocast disabled in either mode; gemm and fft agree within FP32 rounding (tested).
:func:`set_spectral_mode` switches every spectral module of a model. Modules that own a spectral op keep it
under an attribute whose name contains ``spectral``, so exported node names carry a ``spectral`` scope.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "SPECTRAL_MODES",
    "ChannelDFTMagnitude",
    "SpectralOp",
    "SpectralPhaseRotation",
    "amplitude_mse",
    "band_matrix",
    "dft_matrices",
    "fp32",
    "lowpass_1d",
    "odd_symmetric",
    "set_spectral_mode",
]

SPECTRAL_MODES = ("fft", "gemm")


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


# -- DFT as matrix products ---------------------------------------------------------------------------------


def dft_matrices(n: int, bins: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary basis of the orthonormal ``n``-point DFT, first ``bins`` frequencies.

    ``C[j, k] = cos(2 pi j k / n) / sqrt(n)`` and ``S[j, k] = sin(2 pi j k / n) / sqrt(n)``, so the DFT of a
    real row vector ``x [..., n]`` is ``x @ C - i (x @ S)``. The angle uses ``j k mod n`` (exact integers)
    and is evaluated in float64.

    Args:
        n: transform length.
        bins: number of frequencies ``k = 0 .. bins - 1`` (default ``n``; ``n // 2 + 1`` for ``rfft``).

    Returns:
        ``(C, S)``, each ``[n, bins]`` float32.
    """
    bins = n if bins is None else bins
    j = torch.arange(n, dtype=torch.int64)[:, None]
    k = torch.arange(bins, dtype=torch.int64)[None, :]
    angle = (j * k % n).to(torch.float64) * (2.0 * math.pi / n)
    scale = 1.0 / math.sqrt(n)
    return (torch.cos(angle) * scale).to(torch.float32), (torch.sin(angle) * scale).to(torch.float32)


def _check_mode(mode: str) -> str:
    if mode not in SPECTRAL_MODES:
        raise ValueError(f"spectral mode must be one of {SPECTRAL_MODES}, got {mode!r}")
    return mode


class SpectralOp(nn.Module):
    """Base of the modules that compute a DFT; ``mode`` is ``"fft"`` (torch.fft) or ``"gemm"`` (MatMuls).

    Args:
        mode: initial spectral mode.
    """

    def __init__(self, mode: str = "fft") -> None:
        super().__init__()
        self.mode = _check_mode(mode)

    def set_mode(self, mode: str) -> None:
        """Switch between ``"fft"`` and ``"gemm"`` (no other state changes)."""
        self.mode = _check_mode(mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class ChannelDFTMagnitude(SpectralOp):
    """``|rfft(x, dim=-1, norm="ortho")|``: ``[..., n] -> [..., n // 2 + 1]`` float32.

    In ``gemm`` mode one MatMul with ``[C | S]`` (``[n, 2 (n // 2 + 1)]``) gives the real and imaginary
    parts; the magnitude is ``sqrt(re^2 + im^2)``, computed in FP32 (its square overflows FP16).

    Args:
        n: length of the last dim.
        mode: ``"fft"`` or ``"gemm"``.
    """

    basis: torch.Tensor

    def __init__(self, n: int, mode: str = "fft") -> None:
        super().__init__(mode)
        self.n = n
        self.bins = n // 2 + 1
        cos, sin = dft_matrices(n, self.bins)
        self.register_buffer("basis", torch.cat([cos, sin], dim=1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., n]`` (real) -> magnitudes ``[..., n // 2 + 1]`` float32."""
        with fp32(x.device):
            x = x.float()
            if self.mode == "fft":
                return torch.fft.rfft(x, dim=-1, norm="ortho").abs()
            y = torch.matmul(x, self.basis.float())  # [..., 2B]: re | -im (the sign does not matter)
            re, im = y[..., : self.bins], y[..., self.bins :]
            return torch.sqrt(re * re + im * im)


class SpectralPhaseRotation(SpectralOp):
    """``V`` phase-rotated copies ``Re(IDFT2(DFT2(x) * exp(i eps_v)))`` of real ``x [N, C, H, W]``.

    ``eps [V, H, W]`` must be odd-symmetric on the FFT grid (:func:`odd_symmetric`): the rotated spectrum
    is then Hermitian and the result real. Orthonormal transforms; output ``[V, N, C, H, W]`` float32.

    ``gemm`` mode uses that symmetry: a real DFT along W (``W // 2 + 1`` bins), a complex DFT along H, the
    rotation, the inverse complex DFT along H and a complex-to-real inverse along W (bins ``0 < k < W/2``
    counted twice). Each complex product is one real MatMul with a block matrix, four MatMuls in all:

    * ``[Yr | Yi] = x @ [C_W | -S_W]``;
    * ``[Xr; Xi] = [[C_H, S_H], [-S_H, C_H]] @ [Yr; Yi]`` (stacked along H);
    * ``[Ur; Ui] = [[C_H, -S_H], [S_H, C_H]] @ [Zr; Zi]`` after the rotation ``Z = X exp(i eps)``;
    * ``x' = [Ur | Ui] @ [a C_W^T; -a S_W^T]`` with ``a_k = 1`` for DC and Nyquist, else 2.

    Args:
        eps: phase noise ``[V, H, W]`` (odd-symmetric).
        mode: ``"fft"`` or ``"gemm"``.
    """

    cos_eps: torch.Tensor
    sin_eps: torch.Tensor
    fwd_w: torch.Tensor
    fwd_h: torch.Tensor
    inv_h: torch.Tensor
    inv_w: torch.Tensor

    def __init__(self, eps: torch.Tensor, mode: str = "fft") -> None:
        super().__init__(mode)
        if eps.ndim != 3:
            raise ValueError(f"eps must be [V, H, W], got {tuple(eps.shape)}")
        views, h, w = eps.shape
        self.views, self.height, self.width = int(views), int(h), int(w)
        self.bins = w // 2 + 1
        eps = eps.double()
        self.register_buffer("cos_eps", torch.cos(eps).float()[:, None, None], persistent=False)
        self.register_buffer("sin_eps", torch.sin(eps).float()[:, None, None], persistent=False)
        ch, sh = dft_matrices(h)
        cw, sw = dft_matrices(w, self.bins)
        weight = torch.full((self.bins, 1), 2.0)
        weight[0] = 1.0
        if w % 2 == 0:
            weight[-1] = 1.0
        self.register_buffer("fwd_w", torch.cat([cw, -sw], dim=1), persistent=False)  # [W, 2B]
        self.register_buffer("fwd_h", torch.cat([torch.cat([ch, sh], 1), torch.cat([-sh, ch], 1)]), False)
        self.register_buffer("inv_h", torch.cat([torch.cat([ch, -sh], 1), torch.cat([sh, ch], 1)]), False)
        self.register_buffer("inv_w", torch.cat([weight * cw.T, -weight * sw.T]), persistent=False)  # [2B, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, C, H, W]`` (real) -> rotated copies ``[V, N, C, H, W]`` float32."""
        if x.shape[-2:] != (self.height, self.width):
            raise ValueError(f"built for {self.height}x{self.width} inputs, got {tuple(x.shape[-2:])}")
        with fp32(x.device):
            x = x.float()
            if self.mode == "fft":
                spec = torch.fft.fft2(x, norm="ortho")  # [N, C, H, W] complex
                # [N, C, H, W] x [V, 1, 1, H, W] -> [V, N, C, H, W] (no op on the complex tensor but fft)
                re, im = self._rotate(spec.real, spec.imag, self.cos_eps, self.sin_eps)
                return torch.fft.ifft2(torch.complex(re, im), norm="ortho").real
            return self._gemm(x)

    @staticmethod
    def _rotate(
        re: torch.Tensor, im: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(re + i im) * (cos + i sin)`` without complex tensors."""
        return re * cos - im * sin, re * sin + im * cos

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        h, b = self.height, self.bins
        y = torch.matmul(x, self.fwd_w.float())  # [N, C, H, 2B]
        y = torch.cat([y[..., :b], y[..., b:]], dim=-2)  # [N, C, 2H, B]: Yr over Yi
        spec = torch.matmul(self.fwd_h.float(), y)[None]  # [1, N, C, 2H, B]: Xr over Xi
        cos, sin = self.cos_eps[..., :b].float(), self.sin_eps[..., :b].float()
        zr, zi = self._rotate(spec[..., :h, :], spec[..., h:, :], cos, sin)  # [V, N, C, H, B] each
        u = torch.matmul(self.inv_h.float(), torch.cat([zr, zi], dim=-2))  # [V, N, C, 2H, B]
        u = torch.cat([u[..., :h, :], u[..., h:, :]], dim=-1)  # [V, N, C, H, 2B]: Ur | Ui
        return torch.matmul(u, self.inv_w.float())  # [V, N, C, H, W]


def set_spectral_mode(model: nn.Module, mode: str) -> int:
    """Set ``mode`` (``"fft"`` or ``"gemm"``) on every :class:`SpectralOp` inside ``model``.

    Returns:
        The number of spectral modules switched (0 for a model without any, e.g. ``bank.spectral: false``
        and no TTSA).

    Raises:
        ValueError: unknown mode.
    """
    _check_mode(mode)
    ops = [m for m in model.modules() if isinstance(m, SpectralOp)]
    for op in ops:
        op.set_mode(mode)
    return len(ops)
