"""Position cue: where on the part a teacher embedding is normal.

The bank and the student judge each patch against every normal patch, wherever it was; a region that is
normal somewhere on the part but not *here* (a shade, a grinding direction, a texture that belongs to
another place of the part) goes unseen. This cue keeps one Gaussian of the teacher's joint embedding
(scales 1 and 2, 3x3 average without the padding, the coarse scale upsampled: the plain joint prototype)
per cell of a ``G x G`` grid laid over each image's valid box (the placed part without letterbox padding,
so parts of different sizes and aspect ratios share the grid), as PaDiM does per pixel, and scores each
position by its Mahalanobis distance to its cell's Gaussian.

In the graph: the box from the mask (``ReduceMax`` / ``Where`` / ``ReduceMin``), each position's cell
from its place in the box (``Floor``), then the positions **regrouped by cell**: each box side cut into
``grid`` runs of at most ``ceil(side / grid)`` positions, so every cell owns a static block of
``S = ceil(h / grid) * ceil(w / grid)`` slots; one ``GatherElements`` puts each cell's positions into its
slots, one batched ``MatMul`` applies every cell's triangular precision factor to its own block (each
factor read once, none copied), and a second ``GatherElements`` reads each position's distance back from
its slot. The same distances as a per-position gather of the factors (which copied ``h * w`` factors of
``C x C`` per image: 3-4x slower on a CPU), to float rounding. A form with each box resampled to a fixed
grid, or one shared covariance, was cheaper still but measurably weaker on calibration data
(``benchmarks/RESULTS.md``, session 18).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.masf.samb import JointEmbedder

SHRINK = 0.01  # covariance shrinkage, relative to the mean variance


def valid_cells(valid: torch.Tensor | None, n: int, size: tuple[int, int]) -> torch.Tensor:
    """Letterbox mask ``[N, 1, H, W]`` (1 = image pixel; ``None``: all) -> float ``[N, 1, h, w]`` at a
    feature grid whose stride divides the frame: 1 where at least half the covered pixels are real."""
    if valid is None:
        return torch.ones(n, 1, *size)
    sh, sw = valid.shape[-2] // size[0], valid.shape[-1] // size[1]
    if (sh * size[0], sw * size[1]) != tuple(valid.shape[-2:]):
        raise ValueError(f"frame {tuple(valid.shape[-2:])} is not a multiple of the feature grid {size}")
    return (F.avg_pool2d(valid.float(), (sh, sw)) >= 0.5).float()


def valid_box(cells: torch.Tensor) -> torch.Tensor:
    """``[N, 1, h, w]`` 0/1 -> float ``[N, 4]``: each image's box ``(r0, r1, c0, c1)`` (end exclusive) of
    its valid cells; the whole grid for an image without any."""
    h, w = cells.shape[-2:]
    rows, cols = cells.amax(dim=3)[:, 0] > 0, cells.amax(dim=2)[:, 0] > 0  # [N, h], [N, w]
    ri, ci = torch.arange(h, device=cells.device), torch.arange(w, device=cells.device)
    r0 = torch.where(rows, ri, h).amin(1)
    r1 = torch.where(rows, ri + 1, 0).amax(1)
    c0 = torch.where(cols, ci, w).amin(1)
    c1 = torch.where(cols, ci + 1, 0).amax(1)
    empty = r1 <= r0
    r0, r1 = torch.where(empty, 0, r0), torch.where(empty, h, r1)
    c0, c1 = torch.where(empty, 0, c0), torch.where(empty, w, c1)
    return torch.stack([r0, r1, c0, c1], 1).float()


def _axis_cells(lo: torch.Tensor, hi: torch.Tensor, n: int, grid: int) -> torch.Tensor:
    """Box sides ``lo``/``hi`` ``[N, 1]`` along an axis of ``n`` positions -> each position's cell along
    it, float ``[N, n]`` (off the box: the nearest edge cell)."""
    idx = torch.arange(n, device=lo.device, dtype=torch.float32)[None, :]
    # numerator first: small integers and halves, exact in float32, so the quotient rounds once
    return torch.floor((idx - lo + 0.5) * grid / (hi - lo)).clamp(0, grid - 1)


def position_cells(box: torch.Tensor, size: tuple[int, int], grid: int) -> torch.Tensor:
    """Each position's grid cell ``[N, h * w]`` (int64, row-major ``row_cell * grid + col_cell``): its place
    in its image's ``box`` (``[N, 4]``, :func:`valid_box`) cut into ``grid x grid`` equal cells; positions
    outside the box get the nearest edge cell (the cue is zeroed there)."""
    h, w = size
    rc = _axis_cells(box[:, 0:1], box[:, 1:2], h, grid)  # [N, h]
    cc = _axis_cells(box[:, 2:3], box[:, 3:4], w, grid)  # [N, w]
    return (rc[:, :, None] * grid + cc[:, None, :]).reshape(box.shape[0], h * w).long()


def _axis_slots(
    lo: torch.Tensor, hi: torch.Tensor, n: int, grid: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of :func:`cell_blocks`: each position's cell and offset in its cell's run (``[N, n]``
    each, int64; off the box: clamped, never read), and the position in each cell's ``ceil(n / grid)``
    slots (``[N, grid, per]``, int64; slots past a cell's run: clamped, never read back)."""
    per = -(-n // grid)
    idx = torch.arange(n, device=lo.device, dtype=torch.float32)[None, :]
    cell = _axis_cells(lo, hi, n, grid)  # non-decreasing inside the box: each cell owns one run
    inside = (idx >= lo) & (idx < hi)
    cells = torch.arange(grid, device=lo.device, dtype=torch.float32)[None, :, None]
    member = (cell[:, None, :] == cells) & inside[:, None, :]  # [N, grid, n]
    start = torch.where(member, idx[:, None, :], float(n)).amin(-1)  # [N, grid]; n: no position
    offset = (idx - torch.gather(start, 1, cell.long())).clamp(0, per - 1)
    at = start[:, :, None] + torch.arange(per, device=lo.device, dtype=torch.float32)[None, None, :]
    return cell.long(), offset.long(), at.clamp(0, n - 1).long()


def cell_blocks(box: torch.Tensor, size: tuple[int, int], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's positions regrouped by grid cell (:func:`position_cells`' cells), static shapes:
    ``index`` ``[N, grid^2 * S]``, the position (row-major in ``h x w``) in each cell's ``S`` slots
    (``S = ceil(h / grid) * ceil(w / grid)``, cells row-major, slots row-major within a cell; unused slots
    hold some position, never read back), and ``slot`` ``[N, h * w]``, each position's slot in that layout
    (positions off the box: some slot, to be zeroed)."""
    h, w = size
    n = box.shape[0]
    rc, ro, rat = _axis_slots(box[:, 0:1], box[:, 1:2], h, grid)
    cc, co, cat = _axis_slots(box[:, 2:3], box[:, 3:4], w, grid)
    sr, sc = rat.shape[-1], cat.shape[-1]
    index = rat[:, :, None, :, None] * w + cat[:, None, :, None, :]  # [N, G (rows), G (cols), SR, SC]
    cell = rc[:, :, None] * grid + cc[:, None, :]  # [N, h, w]
    slot = cell * (sr * sc) + ro[:, :, None] * sc + co[:, None, :]
    return index.reshape(n, -1), slot.reshape(n, h * w)


class PositionCue(nn.Module):
    """Per-cell Gaussians of the plain joint embedding over a ``grid x grid`` partition of the part.

    Args:
        channels: the teacher scales' channels used (scales 1 and 2).
        grid: cells per side of the part's grid.
    """

    mean: torch.Tensor  # [G*G, C]
    factor: torch.Tensor  # [G*G, C, C], precision = factor @ factor.T (upper triangular)
    stats: torch.Tensor  # [2]: mean and std of the distance over the fit images' valid cells

    def __init__(self, channels: list[int], grid: int = 16) -> None:
        super().__init__()
        if grid < 1:
            raise ValueError(f"position.grid must be positive, got {grid}")
        self.grid = grid
        self.embedder = JointEmbedder(channels, aggregate=3, spectral=False, normalize=False, count_pad=False)
        c, g2 = self.embedder.channels, grid * grid
        self.register_buffer("mean", torch.zeros(g2, c))
        self.register_buffer("factor", torch.zeros(g2, c, c))
        self.register_buffer("stats", torch.tensor([0.0, 1.0]))

    def _embedded(
        self, feats: list[torch.Tensor], valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher scales 1 and 2 -> (embeddings ``[N, h * w, C]``, each image's box ``[N, 4]``, the valid
        cells ``[N, 1, h, w]``)."""
        emb = self.embedder(feats)  # [N, h, w, C]
        n, h, w, c = emb.shape
        cells = valid_cells(valid, n, (h, w))
        return emb.reshape(n, h * w, c), valid_box(cells), cells

    def embed(self, feats: list[torch.Tensor], valid: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Teacher scales 1 and 2 -> (embeddings ``[N, h * w, C]``, each position's cell ``[N, h * w]``,
        the valid cells ``[N, 1, h, w]``)."""
        x, box, cells = self._embedded(feats, valid)
        h, w = cells.shape[-2:]
        return x, position_cells(box, (h, w), self.grid), cells

    def distances(self, x: torch.Tensor, index: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """``[N, M, C]`` embeddings and their :func:`cell_blocks` -> each position's Mahalanobis distance
        to its cell's Gaussian ``[N, M]``: the positions gathered into their cells' blocks, each block
        times its cell's factor (one batched product), read back from the slots."""
        n, c, g2 = x.shape[0], x.shape[2], self.mean.shape[0]
        blocks = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, c)).reshape(n, g2, -1, c)
        y = torch.matmul(blocks - self.mean[:, None, :], self.factor)  # [N, G*G, S, C]
        d = y.square().sum(-1).clamp_min(0).sqrt().reshape(n, -1)
        return torch.gather(d, 1, slot)

    def raw(self, feats: list[torch.Tensor], valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unstandardised distances on the feature grid ``[N, 1, h, w]`` (0 off the part) and the valid
        cells ``[N, 1, h, w]``."""
        x, box, cells = self._embedded(feats, valid)
        h, w = cells.shape[-2:]
        index, slot = cell_blocks(box, (h, w), self.grid)
        return self.distances(x, index, slot).reshape(cells.shape) * cells, cells

    def standardised(self, dist: torch.Tensor, cells: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """:meth:`raw`'s distances and valid cells -> ``P`` ``[N, 1, H, W]``: standardised with the fit
        images' statistics, 0 on letterbox cells, upsampled to ``size``."""
        p = (dist - self.stats[0]) / self.stats[1] * cells
        return F.interpolate(p, size=size, mode="bilinear", align_corners=False)

    def forward(
        self, feats: list[torch.Tensor], valid: torch.Tensor | None, size: tuple[int, int]
    ) -> torch.Tensor:
        """``P`` ``[N, 1, H, W]`` of teacher scales 1 and 2 (:meth:`raw`, :meth:`standardised`)."""
        return self.standardised(*self.raw(feats, valid), size)


class CellMoments:
    """Per-cell sums for :class:`PositionCue`'s Gaussians, accumulated batch by batch (float64)."""

    def __init__(self, cells: int, channels: int) -> None:
        self.count = torch.zeros(cells, dtype=torch.float64)
        self.sum = torch.zeros(cells, channels, dtype=torch.float64)
        self.outer = torch.zeros(cells, channels, channels, dtype=torch.float64)

    def add(self, x: torch.Tensor, cell: torch.Tensor) -> None:
        """More training positions: embeddings ``[M, C]`` and their cells ``[M]``."""
        x = x.double()
        for k in torch.unique(cell).tolist():
            xs = x[cell == k]
            self.count[k] += xs.shape[0]
            self.sum[k] += xs.sum(0)
            self.outer[k] += xs.T @ xs

    def gaussians(self, shrink: float = SHRINK) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cell's mean ``[G*G, C]`` and a triangular factor ``F`` of its precision (``[G*G, C, C]``,
        precision ``= F @ F.T``) of the covariance shrunk by ``shrink * mean(diag)``: ``F = inv(L).T`` for
        the covariance's Cholesky factor ``L`` (no general inverse: the shrunk covariance is positive
        definite, and a triangular solve per cell is exact and stable)."""
        if float(self.count.min()) < 2:
            raise ValueError("a grid cell has fewer than 2 training positions: too few training images")
        n = self.count[:, None]
        mean = self.sum / n
        cov = (self.outer - n[..., None] * mean[:, :, None] * mean[:, None, :]) / (n[..., None] - 1)
        if not bool(torch.isfinite(cov).all()):
            raise ValueError("the position cue's training features are not finite: check the teacher weights")
        eye = torch.eye(cov.shape[-1], dtype=torch.float64)
        cov = cov + shrink * cov.diagonal(dim1=1, dim2=2).mean(1)[:, None, None] * eye
        factor = torch.stack(
            [torch.linalg.solve_triangular(torch.linalg.cholesky(c), eye, upper=False).T for c in cov]
        )
        return mean.float(), factor.float()
