"""SAMB: Spectral-Aware Memory Bank (one per scale). Sampler, bank and scorer are separate roles.

* :class:`PatchEmbedder` turns teacher features into prototypes: ``p`` is the locally aggregated feature
  (``aggregate x aggregate`` average, stride 1); ``p_spec = MLP(pad_to_C(|rfft(p)|))`` is a descriptor of
  the channel spectrum of ``p`` (FP32); the prototype is ``L2norm(p + p_spec)`` (``normalize`` and
  ``spectral`` are switchable). The paper gives no loss for the MLP, so it is a fixed, seeded
  random-feature map (see README): it is deterministic and adds a shift-invariant channel-spectrum
  descriptor without being fitted to the normal data.
* :class:`JointEmbedder` (``bank.embedding: joint``, PatchCore's design) concatenates several teacher
  scales into one prototype: each scale is aggregated, the coarser ones are bilinearly upsampled to the
  finest chosen scale, and the channels are concatenated (e.g. 40 + 112 = 152 channels at stride 8);
  one bank and one nearest-neighbour search then score all scales together.
* :class:`GreedyCoresetSampler` picks prototypes by greedy k-center (farthest-point) selection, seeded,
  on a random projection, in bounded memory.
* :class:`MemoryBank` holds the prototypes as a buffer (in ``state_dict``, moves with ``.to()``, exports).
* :class:`KNNScorer` scores a query as the mean Euclidean distance to its ``k`` nearest prototypes: the
  neighbours are selected with ``|y|^2 - 2 x.y`` (MatMul + TopK: export-friendly, no N x M x C tensor),
  their distances recomputed exactly as ``|x - y|``; chunks split positions (never the batch, so a graph
  with a dynamic batch exports) and the bank (so one step holds at most ``N x chunk x bank_chunk``
  scores, whatever the bank size).

The channel spectrum ``|rfft(p)|`` is computed by ``PatchEmbedder.spectral_magnitude``
(:class:`~trainer.models.masf.spectral.ChannelDFTMagnitude`): ``torch.fft`` or, for export, a MatMul
(see :func:`~trainer.models.masf.spectral.set_spectral_mode`).

Shapes: features ``[N, C, h, w]`` -> embeddings ``[N, h, w, C]`` -> bank ``[M, C]`` -> scores ``[N, h, w]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.masf.spectral import ChannelDFTMagnitude, fp32

__all__ = [
    "GreedyCoresetSampler",
    "JointEmbedder",
    "KNNScorer",
    "MemoryBank",
    "PatchEmbedder",
    "RandomSampler",
    "bank_capacity",
]


class PatchEmbedder(nn.Module):
    """Teacher features -> patch prototypes.

    Args:
        channels: ``C``.
        aggregate: local averaging window (odd; 1 disables).
        spectral: add ``p_spec`` (False: the "without spectral prototype" variant).
        normalize: L2-normalise the prototype.
        seed: seed of the fixed MLP weights.
        spectral_mode: ``"fft"`` or ``"gemm"`` for ``|rfft|`` (see ``spectral.set_spectral_mode``).
        count_pad: the averaging window counts the zero padding at the map border (anomalib's
            ``AvgPool2d`` default: border prototypes shrink towards zero) instead of averaging only the
            cells inside the map.
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
        count_pad: bool = False,
    ) -> None:
        super().__init__()
        if aggregate < 1 or aggregate % 2 == 0:
            raise ValueError(f"bank.aggregate must be a positive odd int, got {aggregate}")
        self.aggregate = aggregate
        self.count_pad = count_pad
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
                p, self.aggregate, stride=1, padding=self.aggregate // 2, count_include_pad=self.count_pad
            )
        p = p.permute(0, 2, 3, 1)
        if self.spectral:
            p = p + self._spectral(p)
        if self.normalize:
            p = F.normalize(p, dim=-1)
        return p


class JointEmbedder(nn.Module):
    """Several teacher scales -> one prototype per position of the finest chosen scale (PatchCore).

    Each scale is averaged over ``aggregate x aggregate`` (stride 1, padding counted or not), the coarser
    ones are upsampled bilinearly (``align_corners=False``) to the finest one's grid, and the channels are
    concatenated in ``layers`` order. The spectral descriptor and the L2 normalisation are applied to the
    concatenated vector when enabled (a :class:`PatchEmbedder` with ``aggregate=1`` does both).

    Args:
        channels: channels of each chosen scale, in order.
        aggregate, spectral, normalize, seed, spectral_mode, count_pad: as :class:`PatchEmbedder`.
    """

    def __init__(
        self,
        channels: list[int],
        aggregate: int = 3,
        spectral: bool = False,
        normalize: bool = False,
        seed: int = 0,
        spectral_mode: str = "fft",
        count_pad: bool = False,
    ) -> None:
        super().__init__()
        if aggregate < 1 or aggregate % 2 == 0:
            raise ValueError(f"bank.aggregate must be a positive odd int, got {aggregate}")
        self.aggregate = aggregate
        self.count_pad = count_pad
        self.channels = sum(channels)
        self.spectral = spectral
        self.head = PatchEmbedder(self.channels, 1, spectral, normalize, seed, spectral_mode)

    @property
    def spectral_magnitude(self) -> ChannelDFTMagnitude:
        """The channel-spectrum op of the joint prototype (only with ``spectral``)."""
        op = self.head.spectral_magnitude
        assert isinstance(op, ChannelDFTMagnitude)
        return op

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``[[N, C_j, h_j, w_j], ...]`` (finest first or not) -> prototypes ``[N, h, w, sum C_j]`` (float32),
        ``h x w`` the largest grid."""
        size = max(((f.shape[-2], f.shape[-1]) for f in feats), key=lambda hw: hw[0] * hw[1])
        parts = []
        for f in feats:
            p = f.float()
            if self.aggregate > 1:
                r = self.aggregate // 2
                p = F.avg_pool2d(p, self.aggregate, stride=1, padding=r, count_include_pad=self.count_pad)
            if (p.shape[-2], p.shape[-1]) != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            parts.append(p)
        return self.head(torch.cat(parts, dim=1))


def bank_capacity(dim: int, max_mb: float) -> int:
    """How many float32 prototypes of ``dim`` channels fit in ``max_mb`` MiB (at least 1)."""
    return max(1, int(max_mb * 2**20 // (4 * dim)))


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


PAD_SCORE = 1e30
"""Selection score of the rows that pad a bank slice to whole groups (``KNNScorer``): above any real one."""

# The pruned coreset step gathers the points it measures; below this many (projected) channels a dense pass
# over every point costs less than the gather (measured on bottle's banks: 24 channels, 2.6x slower with
# the pruning; 128 channels, 2.5x faster), and so it does when more than this share of the points is near:
# the dense pass streams a column-major copy (about 25 ns a point at 128 channels on 2 cores) where the
# pruned pass gathers rows and multiplies them row-major (about 150 ns a point), so it pays below ~15 %.
PRUNE_MIN_DIMS = 64
PRUNE_MAX_SHARE = 0.15


class GreedyCoresetSampler(RandomSampler):
    """Greedy k-center coreset: each step adds the point farthest from the current selection.

    Covers the feature space with the smallest maximum distance (2-approximation of k-center), unlike a
    random subset, which leaves rare normal patterns uncovered. ``project_dim`` (for wide features)
    selects on a seeded Gaussian random projection, as PatchCore does; the returned indices refer to the
    input. Memory: the projection is computed ``chunk`` rows at a time into one ``[N, project_dim]``
    float32 buffer (the input may be FP16), plus four ``[N]`` vectors and the ``[size, project_dim]``
    selected points.

    Speed: the plain algorithm reads all ``N x project_dim`` values at every step (memory-bound). That
    dense pass reads a column-major copy ``[project_dim, N]`` as one ``[1, d] x [d, N]`` product: on a
    2-core CPU 15 ms for 615k x 128 against 51 ms for the row-major matrix-vector product (measured,
    ``benchmarks/coreset_bench.py``), so the copy is kept beside the row-major buffer the pruned steps
    gather from (twice the projection's memory, ``2 x N x project_dim`` float32, for features wide enough to
    prune; narrow ones keep the column-major copy alone). Each point here remembers
    its nearest selected point (its cluster) and each cluster an upper bound of its points' distances
    (its radius). By the triangle inequality, a new point ``c`` cannot come closer to any point of a
    cluster ``j`` whose centre lies at least twice its radius from ``c``, so only the clusters nearer
    than that are re-measured; as the selection grows the clusters shrink and most steps touch a small
    part of the data. The selection is the plain algorithm's (up to float rounding: the pruning keeps a
    margin of ``1e-4`` of the data's scale). Narrow features (fewer than :data:`PRUNE_MIN_DIMS` channels)
    and steps where most points are near take the dense pass.
    """

    def __init__(self, size: int, seed: int = 0, project_dim: int | None = 128, chunk: int = 65536) -> None:
        super().__init__(size, seed)
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.project_dim = project_dim
        self.chunk = chunk
        self.measured = (
            1.0  # after run(): the share of point distances measured (1.0: every point, every step)
        )

    def project(self, features: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``[N, D]`` -> ``[N, d]`` float32 (``d = project_dim`` when ``D > project_dim``), chunked."""
        n, d = features.shape
        proj = None
        if self.project_dim is not None and d > self.project_dim:
            proj = torch.randn(d, self.project_dim, generator=gen) / self.project_dim**0.5
        out = torch.empty(n, proj.shape[1] if proj is not None else d)
        for start in range(0, n, self.chunk):
            x = features[start : start + self.chunk].float()
            out[start : start + x.shape[0]] = x @ proj if proj is not None else x
        return out

    def run(self, features: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """``[N, D]`` -> indices ``[min(size, N)]`` in selection order."""
        n = features.shape[0]
        k = min(self.size, n)
        gen = torch.Generator().manual_seed(self.seed)
        x = self.project(features, gen)
        sq = (x * x).sum(1)
        prune = x.shape[1] >= PRUNE_MIN_DIMS
        xt = x.t().contiguous()  # [d, N]: the dense pass streams it as one row-by-matrix product
        rows = x if prune else None  # the pruned steps gather rows; dense-only runs keep the copy alone
        del x
        sq_row, dist_row = sq.unsqueeze(0), torch.empty(1, n)
        margin = 1e-4 * float(sq.max().sqrt()) if n else 0.0
        selected = torch.empty(k, dtype=torch.long)
        centres = torch.empty(k, xt.shape[0]) if prune else torch.empty(0)
        radius = torch.zeros(k)  # per cluster: an upper bound of its points' distance to its centre
        counts = torch.zeros(k, dtype=torch.long)  # per cluster: its points
        cluster = torch.zeros(n if prune else 0, dtype=torch.long)  # per point: its nearest selected point
        min_dist = torch.full((n,), float("inf"))  # per point: squared distance to it
        dist = dist_row[0]
        current = int(torch.randint(n, (1,), generator=gen))
        measured = 0
        steps = range(k)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="coreset", leave=False, mininterval=1.0)
        for i in steps:
            selected[i] = current
            c = rows[current] if rows is not None else xt[:, current]
            near = None
            if prune:
                centres[i] = c
            if prune and i > 0:
                gap = (centres[:i] - c).square().sum(1).sqrt()
                near = torch.cat([gap < 2.0 * radius[:i] + margin, torch.ones(1, dtype=torch.bool)])
                if int(counts[: i + 1][near].sum()) > n * PRUNE_MAX_SHARE:
                    near = None  # most points are near: one dense pass is cheaper than gathering them
            if near is None:  # every point measured
                # |x|^2 - 2 x.c  (|c|^2 is the same for all)
                torch.addmm(sq_row, c.unsqueeze(0), xt, alpha=-2.0, out=dist_row)
                dist += c @ c
                measured += n
                if not prune:
                    torch.minimum(min_dist, dist, out=min_dist)
                else:
                    moved = (dist < min_dist).nonzero().squeeze(1)
                    self._move(moved, dist[moved], i, min_dist, cluster, counts)
                    # the other clusters only lost points: their radii stay upper bounds
                    radius[i] = min_dist[moved].clamp_min(0).max().sqrt() if moved.numel() else 0.0
            else:  # only the points of the near clusters can come closer (triangle inequality)
                assert rows is not None  # near is only set when pruning
                idx = near[cluster].nonzero().squeeze(1)
                measured += idx.numel()
                d = torch.addmv(sq[idx], rows[idx], c, alpha=-2.0)
                d += c @ c
                closer = d < min_dist[idx]
                self._move(idx[closer], d[closer], i, min_dist, cluster, counts)
                # every point of the near clusters was measured: their radii, exactly
                fresh = torch.zeros(i + 1)
                fresh.scatter_reduce_(0, cluster[idx], min_dist[idx].clamp_min(0).sqrt(), "amax")
                radius[: i + 1] = torch.where(near, fresh, radius[: i + 1])
            current = int(torch.argmax(min_dist))
        self.measured = measured / max(1, k * n)
        return selected

    @staticmethod
    def _move(
        points: torch.Tensor,
        dist: torch.Tensor,
        i: int,
        min_dist: torch.Tensor,
        cluster: torch.Tensor,
        counts: torch.Tensor,
    ) -> None:
        """``points`` (indices) are now nearest to selected point ``i``, at squared distances ``dist``."""
        if i > 0:
            counts.index_add_(0, cluster[points], torch.full_like(points, -1))
        counts[i] = points.numel()
        min_dist[points] = dist
        cluster[points] = i


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
    """Mean Euclidean distance to the ``k`` nearest prototypes, chunked over positions and over the bank.

    Note:
        The neighbours are *selected* with ``|y|^2 - 2 x.y`` (the squared distance minus the query's
        constant ``|x|^2``; MatMul + TopK, or ArgMin for ``k == 1``: the same math in ONNX / TensorRT
        form, no ``cdist``; TensorRT's TopK needs ``k < 3840``), computed as one product of the query
        with a 1 appended and the bank's rows ``[-2 y, |y|^2]`` (no elementwise pass over the
        ``queries x prototypes`` scores: on a CPU that pass cost as much as a third of the product),
        and their distances are then
        *recomputed* as ``|x - y|`` from the gathered prototypes. The expanded form cancels
        catastrophically for a query that (nearly) coincides with a prototype: in FP32 its error is
        ~``sqrt(eps) ~ 3e-4`` in the distance, enough for two correct implementations (PyTorch, ONNX
        Runtime) to differ by 1e-3 of the map range on parts with a uniform background. The direct form
        is accurate to FP32 rounding. Chunks split the positions of each image (a static size), never
        the batch, so an exported graph keeps a dynamic batch. A bank larger than ``bank_chunk`` is
        searched in slices: each slice gives its ``k`` best (MatMul + TopK / ArgMin), and the best ``k``
        of those candidates win (a second TopK over ``k x slices`` values), so one step holds at most
        ``N x chunk x bank_chunk`` scores, and ``N x chunk x k x C`` gathered prototypes.

        Within a bank (slice) of ``m`` prototypes the ``k`` best are found in two steps (``grouped``):
        the scores are cut into groups of ``g ~ sqrt(m)`` prototypes (the slice padded with rows that
        score ``PAD_SCORE``), each group's minimum taken (ReduceMin), the ``k`` groups with the smallest
        minima chosen (TopK over ``m / g`` values), and the ``k`` best of those groups' ``k x g`` scores
        selected (a Gather of those rows + TopK). It is exact: each of the ``k`` smallest scores lies in
        one of those ``k`` groups, because a group holding one of them has a minimum no larger than it, and
        ``k`` other groups with smaller minima would make it at best the ``k + 1``-th. On ONNX Runtime's
        CPU a TopK (or ArgMin) over thousands of scores per query costs several times this (about 4x at
        ``m = 3000``, ``k = 3``); a small slice (fewer than ``4 k`` groups) keeps the one-step TopK. Eager
        PyTorch keeps the one-step form (its TopK is the faster there): both select the same scores, so
        the graph's map and score equal eager's (indices may differ only between tied scores).
    """

    def __init__(self, k: int = 1, chunk: int = 1024, bank_chunk: int = 8192) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"bank.k must be >= 1, got {k}")
        if k >= 3840:
            raise ValueError(f"bank.k must be < 3840 (TensorRT's TopK limit), got {k}")
        if chunk < 1 or bank_chunk < 1:
            raise ValueError(f"chunk sizes must be >= 1, got {chunk} and {bank_chunk}")
        self.k = k
        self.chunk = chunk
        self.bank_chunk = bank_chunk
        self.fused = True  # the selection score in one product (see _scores)
        # the k best in two steps, group minima first (see the class notes): None = in an exported graph
        # only (torch's own TopK is faster eager, ONNX Runtime's slower), True = always, False = never
        self.grouped: bool | None = None

    def _scores(self, qc: torch.Tensor, b_aug: torch.Tensor) -> torch.Tensor:
        """``[N, p, C]`` queries and the bank's ``[m, C + 1]`` rows ``[-2 y, |y|^2]`` -> ``[N, p, m]`` =
        ``|y|^2 - 2 x.y`` in one product (selection only: ranks are right, values near 0 are not).
        ``fused`` off: the product, then ``|y|^2`` added in a second pass (the graph before session 19,
        kept as the latency benchmark's reference)."""
        if not self.fused:
            return b_aug[:, -1] + torch.matmul(qc, b_aug[:, :-1].T)
        return torch.matmul(torch.cat([qc, torch.ones_like(qc[..., :1])], dim=-1), b_aug.T)

    def _group_size(self, m: int, k: int) -> int:
        """Prototypes per group for a slice of ``m`` (``~sqrt(m)``, at least 8); 0: one-step TopK."""
        grouped = torch.compiler.is_exporting() if self.grouped is None else self.grouped
        g = max(8, round(math.sqrt(m)))
        return g if grouped and -(-m // g) >= 4 * k else 0

    def _best(self, qc: torch.Tensor, b_aug: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[N, p, k]`` and row indices ``[N, p, k]`` of the ``k`` best rows of ``b_aug`` (the ``m``
        rows of one slice, ``k <= m``) for each query; ``k == 1`` without grouping: ReduceMin + ArgMin."""
        m = b_aug.shape[0]
        g = self._group_size(m, k)
        if not g:
            score = self._scores(qc, b_aug)
            if k == 1:
                v, i = score.min(dim=-1, keepdim=True)
                return v, i
            v, i = torch.topk(score, k, dim=-1, largest=False)
            return v, i
        groups = -(-m // g)
        if groups * g > m:  # padding rows [0, .., 0, PAD_SCORE]: a constant of the graph, never selected
            pad = b_aug.new_zeros(groups * g - m, b_aug.shape[1])
            pad[:, -1] = PAD_SCORE
            b_aug = torch.cat([b_aug, pad])
        score = self._scores(qc, b_aug).unflatten(-1, (groups, g))  # [N, p, groups, g]
        best_groups = torch.topk(score.amin(dim=-1), k, dim=-1, largest=False).indices  # [N, p, k]
        # the chosen groups' rows of g scores: a Gather of whole rows (no index per score to expand)
        n, p = score.shape[0], score.shape[1]
        first = torch.arange(n * p, device=score.device).view(n, p, 1) * groups  # each query's first group
        cand = score.flatten(0, 2)[(first + best_groups).flatten()].view(n, p, k * g)  # [N, p, k g]
        v, local = torch.topk(cand, k, dim=-1, largest=False)
        # a padding row can only be chosen when scores are not finite (NaN queries): its index is clamped
        # to a real row, so the distance, recomputed from the query, stays NaN instead of failing a Gather
        return v, (torch.gather(best_groups, -1, local // g) * g + local % g).clamp_max(m - 1)

    def _nearest(self, qc: torch.Tensor, b_aug: torch.Tensor, k: int) -> torch.Tensor:
        """Indices ``[N, p, k]`` of the ``k`` best prototypes (rows of ``b_aug``) for each query of ``qc``."""
        m = b_aug.shape[0]
        if m <= self.bank_chunk:
            return self._best(qc, b_aug, k)[1]
        vals, idxs = [], []
        for start in range(0, m, self.bank_chunk):
            sl = b_aug[start : start + self.bank_chunk]
            v, i = self._best(qc, sl, min(k, sl.shape[0]))
            vals.append(v)
            idxs.append(i + start)
        v, i = torch.cat(vals, dim=-1), torch.cat(idxs, dim=-1)  # [N, p, <= k x slices]
        if k == 1:
            return torch.gather(i, -1, v.argmin(dim=-1, keepdim=True))
        return torch.gather(i, -1, torch.topk(v, k, dim=-1, largest=False).indices)

    def forward(self, queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """``queries [N, h, w, C]`` x ``bank [M, C]`` -> scores ``[N, h, w]`` (float32)."""
        if bank.shape[0] == 0:
            raise ValueError("memory bank is empty: fit the model (masf-train fit) before scoring")
        k = min(self.k, bank.shape[0])
        lead = queries.shape[:-1]
        with fp32(queries.device):
            q = queries.float().flatten(1, -2) if queries.ndim > 2 else queries.float()[:, None]  # [N, P, C]
            b = bank.float()
            b_aug = torch.cat([-2.0 * b, (b * b).sum(1, keepdim=True)], dim=1)  # a constant in the graph
            out = []
            for start in range(0, q.shape[1], self.chunk):
                qc = q[:, start : start + self.chunk]  # [N, p, C]
                idx = self._nearest(qc, b_aug, k)  # [N, p, k]
                diff = qc[:, :, None, :] - F.embedding(idx, b)  # [N, p, k, C]; Gather rows of b
                out.append((diff * diff).sum(-1).sqrt().mean(-1))
            return torch.cat(out, dim=1).reshape(lead)
