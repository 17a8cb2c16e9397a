"""Position cue: where on the part a teacher embedding is normal.

The bank and the student judge each patch against every normal patch, wherever it was; a region that is
normal somewhere on the part but not *here* (a shade, a grinding direction, a texture that belongs to
another place of the part) goes unseen. This cue keeps one Gaussian of the teacher's joint embedding
(scales 1 and 2, 3x3 average without the padding, the coarse scale upsampled: the plain joint prototype)
per cell of a ``G x G`` grid laid over each image's valid box (the placed part without letterbox padding,
so parts of different sizes and aspect ratios share the grid), as PaDiM does per pixel, and scores each
position by its Mahalanobis distance to its cell's Gaussian.

Static shapes for export: each image's box is resampled to ``R x R`` positions (bilinear, as
``F.interpolate(..., align_corners=False)`` on the cropped box), so every grid cell owns the same
``(R / G)^2`` positions in every image and the distances are one batched product with the ``G^2`` cells'
Cholesky factors; the distances are resampled back onto the box (0 off the part) and standardised with
the fit images' statistics. Both resamplings are ``grid_sample`` with grids computed from the valid mask
(ONNX ``GridSample``), the box from ``ReduceMax`` / ``Where`` / ``ReduceMin``: no data-dependent shape.
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


def _axis(start: torch.Tensor, end: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """Source coordinates (``[N, out]``, in cells of an axis of ``size``) of ``out`` samples spread over
    ``[start, end)`` as ``F.interpolate(align_corners=False)`` places them, clamped inside the range,
    normalised for ``grid_sample(align_corners=False)``."""
    i = torch.arange(out, device=start.device, dtype=torch.float32)
    step = (end - start)[:, None] / out
    src = start[:, None] + ((i[None, :] + 0.5) * step - 0.5).clamp(min=0)
    src = torch.minimum(src, end[:, None] - 1)
    return (2 * src + 1) / size - 1


def box_to_grid(feats: torch.Tensor, box: torch.Tensor, out: int) -> torch.Tensor:
    """``[N, C, h, w]`` -> ``[N, C, out, out]``: each image's ``box`` resampled bilinearly to ``out x out``
    (``F.interpolate(crop, (out, out), mode="bilinear", align_corners=False)`` of the cropped box)."""
    h, w = feats.shape[-2:]
    ys = _axis(box[:, 0], box[:, 1], out, h)  # [N, out]
    xs = _axis(box[:, 2], box[:, 3], out, w)
    grid = torch.stack(
        [xs[:, None, :].expand(-1, out, -1), ys[:, :, None].expand(-1, -1, out)], dim=-1
    )  # [N, out, out, 2]
    return F.grid_sample(feats, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grid_to_box(values: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, 1, R, R]`` -> ``[N, 1, h, w]``: each image's values resampled bilinearly onto its ``box`` of an
    ``h x w`` grid (as ``F.interpolate`` of the ``R x R`` values to the box's size), 0 outside the box."""
    r = values.shape[-1]
    h, w = size
    rows = torch.arange(h, device=values.device, dtype=torch.float32)[None, :]
    cols = torch.arange(w, device=values.device, dtype=torch.float32)[None, :]
    r0, r1, c0, c1 = (box[:, k : k + 1] for k in range(4))
    sy = ((rows - r0 + 0.5) * r / (r1 - r0) - 0.5).clamp(0, r - 1)  # [N, h], in the R grid's cells
    sx = ((cols - c0 + 0.5) * r / (c1 - c0) - 0.5).clamp(0, r - 1)
    grid = torch.stack(
        [
            ((2 * sx + 1) / r - 1)[:, None, :].expand(-1, h, -1),
            ((2 * sy + 1) / r - 1)[:, :, None].expand(-1, -1, w),
        ],
        dim=-1,
    )
    back = F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((rows >= r0) & (rows < r1))[:, None, :, None] & ((cols >= c0) & (cols < c1))[:, None, None, :]
    return back * inside.float()


class PositionCue(nn.Module):
    """Per-cell Gaussians of the plain joint embedding over a ``grid x grid`` partition of the part.

    Args:
        channels: the teacher scales' channels used (scales 1 and 2).
        grid: cells per side of the part's grid.
        roi: positions per side of the resampled box (a multiple of ``grid``).
    """

    mean: torch.Tensor  # [G*G, C]
    factor: torch.Tensor  # [G*G, C, C], precision = factor @ factor.T
    stats: torch.Tensor  # [2]: mean and std of the distance over the fit images' valid cells

    def __init__(self, channels: list[int], grid: int = 16, roi: int = 32) -> None:
        super().__init__()
        if grid < 1 or roi % grid:
            raise ValueError(f"position.roi must be a multiple of position.grid, got {roi} and {grid}")
        self.grid, self.roi = grid, roi
        self.embedder = JointEmbedder(channels, aggregate=3, spectral=False, normalize=False, count_pad=False)
        c, g2 = self.embedder.channels, grid * grid
        self.register_buffer("mean", torch.zeros(g2, c))
        self.register_buffer("factor", torch.zeros(g2, c, c))
        self.register_buffer("stats", torch.tensor([0.0, 1.0]))

    def resampled(self, feats: list[torch.Tensor], valid: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Teacher scales 1 and 2 -> (embeddings on each image's resampled box ``[N, C, R, R]``, the valid
        cells ``[N, 1, h, w]``, the boxes ``[N, 4]``)."""
        emb = self.embedder(feats).permute(0, 3, 1, 2)  # [N, C, h, w]
        cells = valid_cells(valid, emb.shape[0], (emb.shape[-2], emb.shape[-1]))
        box = valid_box(cells)
        return box_to_grid(emb, box, self.roi), cells, box

    def cell_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, R, R]`` -> ``[G*G, N * (R/G)^2, C]``: each grid cell's positions of every image."""
        n, c, g, s = x.shape[0], x.shape[1], self.grid, self.roi // self.grid
        x = x.reshape(n, c, g, s, g, s).permute(2, 4, 0, 3, 5, 1)  # [G, G, N, s, s, C]
        return x.reshape(g * g, n * s * s, c)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, R, R]`` resampled embeddings -> Mahalanobis distances ``[N, 1, R, R]`` to each
        position's cell."""
        n, g, s = x.shape[0], self.grid, self.roi // self.grid
        d = self.cell_blocks(x) - self.mean[:, None, :]
        y = torch.bmm(d, self.factor)  # [G*G, N*s*s, C]
        dist = y.square().sum(-1).clamp_min(0).sqrt()  # [G*G, N*s*s]
        return dist.reshape(g, g, n, s, s).permute(2, 0, 3, 1, 4).reshape(n, 1, g * s, g * s)

    def raw(self, feats: list[torch.Tensor], valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unstandardised distances on the feature grid ``[N, 1, h, w]`` (0 off the part) and the valid
        cells ``[N, 1, h, w]``."""
        x, cells, box = self.resampled(feats, valid)
        return grid_to_box(self.distances(x), box, (cells.shape[-2], cells.shape[-1])) * cells, cells

    def forward(
        self, feats: list[torch.Tensor], valid: torch.Tensor | None, size: tuple[int, int]
    ) -> torch.Tensor:
        """``P`` ``[N, 1, H, W]``: the standardised distance, 0 on letterbox cells, upsampled to ``size``."""
        dist, cells = self.raw(feats, valid)
        p = (dist - self.stats[0]) / self.stats[1] * cells
        return F.interpolate(p, size=size, mode="bilinear", align_corners=False)


class CellMoments:
    """Per-cell sums for :class:`PositionCue`'s Gaussians, accumulated batch by batch (float64)."""

    def __init__(self, cells: int, channels: int) -> None:
        self.count = torch.zeros(cells, dtype=torch.float64)
        self.sum = torch.zeros(cells, channels, dtype=torch.float64)
        self.outer = torch.zeros(cells, channels, channels, dtype=torch.float64)

    def add(self, blocks: torch.Tensor) -> None:
        """``[G*G, M, C]`` (:meth:`PositionCue.cell_blocks`) of more training positions."""
        b = blocks.double()
        self.count += b.shape[1]
        self.sum += b.sum(1)
        self.outer += torch.bmm(b.transpose(1, 2), b)

    def gaussians(self, shrink: float = SHRINK) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cell's mean ``[G*G, C]`` and the Cholesky factor ``L`` of its precision (``[G*G, C, C]``,
        precision ``= L @ L.T``) of the covariance shrunk by ``shrink * mean(diag)``."""
        if float(self.count.min()) < 2:
            raise ValueError("a grid cell has fewer than 2 training positions: too few training images")
        n = self.count[:, None]
        mean = self.sum / n
        cov = (self.outer - n[..., None] * mean[:, :, None] * mean[:, None, :]) / (n[..., None] - 1)
        eye = torch.eye(cov.shape[-1], dtype=torch.float64)
        cov = cov + shrink * cov.diagonal(dim1=1, dim2=2).mean(1)[:, None, None] * eye
        factor = torch.linalg.cholesky(torch.linalg.inv(cov))
        return mean.float(), factor.float()
