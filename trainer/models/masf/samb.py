"""SAMB: Spectral-Aware Memory Bank (one per scale). Sampler, bank and scorer are separate roles.

* :class:`PatchEmbedder` turns teacher features into prototypes: ``p`` is the locally aggregated feature
  (``aggregate x aggregate`` average, stride 1); ``p_spec = MLP(pad_to_C(|rfft(p)|))`` is a descriptor of
  the channel spectrum of ``p`` (FP32); the prototype is ``L2norm(p + p_spec)`` (``normalize`` and
  ``spectral`` are switchable). The paper gives no loss for the MLP, so it is a fixed, seeded
  random-feature map (see README): it is deterministic and adds a shift-invariant channel-spectrum
  descriptor without being fitted to the normal data.
* :class:`GreedyCoresetSampler` picks prototypes by greedy k-center (farthest-point) selection, seeded.
* :class:`MemoryBank` holds the prototypes as a buffer (in ``state_dict``, moves with ``.to()``, exports).
* :class:`KNNScorer` scores a query as the mean Euclidean distance to its ``k`` nearest prototypes: the
  neighbours are selected with ``|y|^2 - 2 x.y`` (MatMul + TopK: export-friendly, no N x M x C tensor),
  their distances recomputed exactly as ``|x - y|``; chunks split positions, never the batch, so a graph
  with a dynamic batch exports.

The channel spectrum ``|rfft(p)|`` is computed by ``PatchEmbedder.spectral_magnitude``
(:class:`~trainer.models.masf.spectral.ChannelDFTMagnitude`): ``torch.fft`` or, for export, a MatMul
(see :func:`~trainer.models.masf.spectral.set_spectral_mode`).

Shapes: features ``[N, C, h, w]`` -> embeddings ``[N, h, w, C]`` -> bank ``[M, C]`` -> scores ``[N, h, w]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.masf.spectral import ChannelDFTMagnitude, fp32

__all__ = ["GreedyCoresetSampler", "KNNScorer", "MemoryBank", "PatchEmbedder", "RandomSampler"]


class PatchEmbedder(nn.Module):
    """Teacher features -> patch prototypes.

    Args:
        channels: ``C``.
        aggregate: local averaging window (odd; 1 disables).
        spectral: add ``p_spec`` (False: the "without spectral prototype" variant).
        normalize: L2-normalise the prototype.
        seed: seed of the fixed MLP weights.
        spectral_mode: ``"fft"`` or ``"gemm"`` for ``|rfft|`` (see ``spectral.set_spectral_mode``).
    """

    w1: torch.Tensor
    w2: torch.Tensor

    def __init__(
        self,
        channels: int,
        aggregate: int = 3,
        spectral: bool = True,
        normalize: bool = True,
        seed: int = 0,
        spectral_mode: str = "fft",
    ) -> None:
        super().__init__()
        if aggregate < 1 or aggregate % 2 == 0:
            raise ValueError(f"bank.aggregate must be a positive odd int, got {aggregate}")
        self.aggregate = aggregate
        self.spectral = spectral
        self.normalize = normalize
        self.channels = channels
        if spectral:
            gen = torch.Generator().manual_seed(seed)
            w1 = torch.randn(channels, channels, generator=gen) / channels**0.5
            w2 = torch.randn(channels, channels, generator=gen) / channels**0.5
            # Fixed random features: buffers, not parameters (never trained, always saved and exported).
            self.register_buffer("w1", w1)
            self.register_buffer("w2", w2)
            self.spectral_magnitude = ChannelDFTMagnitude(channels, spectral_mode)

    def _spectral(self, p: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` -> ``MLP(pad_to_C(|rfft(p)|))`` ``[..., C]``, in FP32."""
        # Called outside the autocast block: a module called inside one loses its name scope on export.
        mag = self.spectral_magnitude(p)  # [..., C // 2 + 1], FP32 inside
        with fp32(p.device):
            mag = F.pad(mag, (0, self.channels - mag.shape[-1]))
            return F.gelu(mag @ self.w1.float()) @ self.w2.float()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``[N, C, h, w]`` -> prototypes ``[N, h, w, C]`` (float32)."""
        p = feats.float()
        if self.aggregate > 1:
            p = F.avg_pool2d(
                p, self.aggregate, stride=1, padding=self.aggregate // 2, count_include_pad=False
            )
        p = p.permute(0, 2, 3, 1)
        if self.spectral:
            p = p + self._spectral(p)
        if self.normalize:
            p = F.normalize(p, dim=-1)
        return p


class RandomSampler:
    """Uniform random subset (the baseline the coreset is compared against)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"sampler size must be >= 1, got {size}")
        self.size = size
        self.seed = seed

    def run(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` -> indices ``[min(size, N)]``."""
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(features.shape[0], generator=gen)[: self.size]


class GreedyCoresetSampler(RandomSampler):
    """Greedy k-center coreset: each step adds the point farthest from the current selection.

    Covers the feature space with the smallest maximum distance (2-approximation of k-center), unlike a
    random subset, which leaves rare normal patterns uncovered. ``project_dim`` (for wide features)
    selects on a seeded random projection, as PatchCore does; the returned indices refer to the input.
    Cost: ``size`` passes over ``N x D``; memory O(N).
    """

    def __init__(self, size: int, seed: int = 0, project_dim: int | None = 128) -> None:
        super().__init__(size, seed)
        self.project_dim = project_dim

    def run(self, features: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """``[N, D]`` -> indices ``[min(size, N)]`` in selection order."""
        n, d = features.shape
        k = min(self.size, n)
        x = features.float()
        gen = torch.Generator().manual_seed(self.seed)
        if self.project_dim is not None and d > self.project_dim:
            proj = torch.randn(d, self.project_dim, generator=gen) / self.project_dim**0.5
            x = x @ proj
        sq = (x * x).sum(1)
        selected = torch.empty(k, dtype=torch.long)
        current = int(torch.randint(n, (1,), generator=gen))
        min_dist = torch.full((n,), float("inf"))
        steps = range(k)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="coreset", leave=False, mininterval=1.0)
        for i in steps:
            selected[i] = current
            c = x[current]
            dist = sq - 2.0 * (x @ c) + c @ c
            torch.minimum(min_dist, dist, out=min_dist)
            current = int(torch.argmax(min_dist))
        return selected


class MemoryBank(nn.Module):
    """Prototype store for one scale: ``bank [M, C]`` buffer (empty until filled)."""

    bank: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("bank", torch.empty(0, dim))

    def fill(self, prototypes: torch.Tensor) -> None:
        """Replace the bank with ``[M, C]`` prototypes."""
        if prototypes.ndim != 2 or prototypes.shape[1] != self.bank.shape[1]:
            raise ValueError(f"expected [M, {self.bank.shape[1]}] prototypes, got {tuple(prototypes.shape)}")
        self.bank = prototypes.detach().float().contiguous().to(self.bank.device)

    def __len__(self) -> int:
        return int(self.bank.shape[0])


class KNNScorer(nn.Module):
    """Mean Euclidean distance to the ``k`` nearest prototypes, in chunks of ``chunk`` positions per image.

    Note:
        The neighbours are *selected* with ``|y|^2 - 2 x.y`` (the squared distance minus the query's
        constant ``|x|^2``; MatMul + TopK, or ArgMin for ``k == 1``: the same math in ONNX / TensorRT
        form, no ``cdist``; TensorRT's TopK needs ``k < 3840``), and their distances are then
        *recomputed* as ``|x - y|`` from the gathered prototypes. The expanded form cancels
        catastrophically for a query that (nearly) coincides with a prototype: in FP32 its error is
        ~``sqrt(eps) ~ 3e-4`` in the distance, enough for two correct implementations (PyTorch, ONNX
        Runtime) to differ by 1e-3 of the map range on parts with a uniform background. The direct form
        is accurate to FP32 rounding. Chunks split the positions of each image (a static size), never
        the batch, so an exported graph keeps a dynamic batch; one step holds ``N x chunk x M`` scores
        and ``N x chunk x k x C`` gathered prototypes.
    """

    def __init__(self, k: int = 1, chunk: int = 1024) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"bank.k must be >= 1, got {k}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.k = k
        self.chunk = chunk

    def forward(self, queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """``queries [N, h, w, C]`` x ``bank [M, C]`` -> scores ``[N, h, w]`` (float32)."""
        if bank.shape[0] == 0:
            raise ValueError("memory bank is empty: fit the model (masf-train fit) before scoring")
        k = min(self.k, bank.shape[0])
        lead = queries.shape[:-1]
        with fp32(queries.device):
            q = queries.float().flatten(1, -2) if queries.ndim > 2 else queries.float()[:, None]  # [N, P, C]
            b = bank.float()
            b_sq = (b * b).sum(1)
            out = []
            for start in range(0, q.shape[1], self.chunk):
                qc = q[:, start : start + self.chunk]  # [N, p, C]
                # selection only: ranks are right, values near 0 are not (cancellation)
                score = b_sq - 2.0 * torch.matmul(qc, b.T)  # [N, p, M] = d^2 - |q|^2
                if k == 1:
                    idx = score.argmin(dim=-1, keepdim=True)  # [N, p, 1]
                else:
                    idx = torch.topk(score, k, dim=-1, largest=False).indices  # [N, p, k]
                diff = qc[:, :, None, :] - F.embedding(idx, b)  # [N, p, k, C]; Gather rows of b
                out.append((diff * diff).sum(-1).sqrt().mean(-1))
            return torch.cat(out, dim=1).reshape(lead)
