"""Tiled inference for long and high-resolution parts: one frame cut into overlapping model-sized tiles.

A tiled :class:`~engines.preprocess.PreprocessSpec` places each image into a large *frame* (the canvas,
e.g. a 64x1024 line-scan strip at its native resolution) and the model sees that frame as a batch of
overlapping tiles of the model's input size. The layout is a pure function of the frame size, the tile
size and the minimum overlap, so the trainer, every backend and the edge cut and stitch identically.

Layout along one axis (frame length ``C``, tile length ``T <= C``, minimum overlap ``o < T``):

* ``n = 1`` when ``C == T``, else ``n = ceil((C - o) / (T - o))`` tiles;
* tile ``i`` starts at ``round(i * (C - T) / (n - 1))`` (integer arithmetic, half up): the first tile
  starts at 0, the last ends at ``C``, the others are spread evenly, so every overlap is ``>= o``;
* stitching: each frame pixel takes the value of the tile whose centre it is nearest to: the boundary
  between tiles ``i`` and ``i + 1`` is the middle of their overlap, so no value comes from within
  ``overlap / 2`` of a tile's inner edge (where the convolutions' zero padding shows).

Tiles are ordered row-major (top row first) and image-major in a batch: the tiles of image ``k`` are
``k * count ... (k + 1) * count - 1``. The score of an image is the largest score of its tiles (a part
FAILs when any of its tiles does). Torch-free: numpy only.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TileGrid", "axis_bounds", "axis_origins"]


def axis_origins(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Start of every tile along one axis (see the module docstring).

    Raises:
        ValueError: ``tile > length``, ``tile <= 0`` or ``overlap`` not in ``[0, tile)``.
    """
    if tile <= 0 or tile > length:
        raise ValueError(f"a tile of {tile} px does not fit a frame of {length} px")
    if not 0 <= overlap < tile:
        raise ValueError(f"the tile overlap must be in [0, {tile}), got {overlap}")
    if length == tile:
        return (0,)
    n = math.ceil((length - overlap) / (tile - overlap))  # >= 2: length > tile > overlap
    span = length - tile
    return tuple((2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n))


def axis_bounds(origins: tuple[int, ...], tile: int, length: int) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of the frame pixels each tile owns when stitching (a partition of the axis)."""
    cuts = [0]
    for a, b in itertools.pairwise(origins):
        cuts.append((b + a + tile) // 2)  # middle of the overlap [b, a + tile)
    cuts.append(length)
    return tuple((cuts[i], cuts[i + 1]) for i in range(len(origins)))


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one frame.

    Attributes:
        frame_height: Frame (canvas) height in pixels.
        frame_width: Frame width.
        tile_height: Tile (model input) height.
        tile_width: Tile width.
        overlap: Minimum overlap of neighbouring tiles, in pixels, on both axes.
    """

    frame_height: int
    frame_width: int
    tile_height: int
    tile_width: int
    overlap: int

    def __post_init__(self) -> None:
        axis_origins(self.frame_height, self.tile_height, self.overlap)
        axis_origins(self.frame_width, self.tile_width, self.overlap)

    @property
    def rows(self) -> tuple[int, ...]:
        """Top row of each tile row."""
        return axis_origins(self.frame_height, self.tile_height, self.overlap)

    @property
    def cols(self) -> tuple[int, ...]:
        """Left column of each tile column."""
        return axis_origins(self.frame_width, self.tile_width, self.overlap)

    @property
    def count(self) -> int:
        """Tiles per frame."""
        return len(self.rows) * len(self.cols)

    def origins(self) -> list[tuple[int, int]]:
        """``(top, left)`` of every tile, row-major."""
        return [(r, c) for r in self.rows for c in self.cols]

    def cut(self, frames: np.ndarray, axis: int = 1) -> np.ndarray:
        """Cut frames into tiles.

        Args:
            frames: ``[N, ...]`` with the frame's height and width at ``axis`` and ``axis + 1``
                (``[N, H, W, 3]`` frames: ``axis=1``; ``[N, 1, H, W]`` masks: ``axis=2``).

        Returns:
            ``[N * count, ...]`` with the tile's height and width in place of the frame's (C-contiguous).
        """
        h_ax, w_ax = axis, axis + 1
        if frames.shape[h_ax] != self.frame_height or frames.shape[w_ax] != self.frame_width:
            raise ValueError(
                f"expected frames of {self.frame_height}x{self.frame_width} at axes {h_ax},{w_ax}, "
                f"got shape {frames.shape}"
            )
        th, tw = self.tile_height, self.tile_width
        parts = []
        for top, left in self.origins():
            index: list[slice] = [slice(None)] * frames.ndim
            index[h_ax] = slice(top, top + th)
            index[w_ax] = slice(left, left + tw)
            parts.append(frames[tuple(index)])
        stacked = np.stack(parts, axis=1)  # [N, count, ...]
        return np.ascontiguousarray(stacked.reshape((-1, *stacked.shape[2:])))

    def stitch(self, tiles: np.ndarray) -> np.ndarray:
        """Tile maps ``[N * count, th, tw]`` -> frame maps ``[N, H, W]`` (nearest-centre ownership)."""
        th, tw = self.tile_height, self.tile_width
        if tiles.ndim != 3 or tiles.shape[1:] != (th, tw) or tiles.shape[0] % self.count:
            raise ValueError(f"expected [N * {self.count}, {th}, {tw}] tile maps, got {tiles.shape}")
        n = tiles.shape[0] // self.count
        grid = tiles.reshape(n, len(self.rows), len(self.cols), th, tw)
        out = np.empty((n, self.frame_height, self.frame_width), dtype=tiles.dtype)
        row_bounds = axis_bounds(self.rows, th, self.frame_height)
        col_bounds = axis_bounds(self.cols, tw, self.frame_width)
        for i, (top, (r0, r1)) in enumerate(zip(self.rows, row_bounds, strict=True)):
            for j, (left, (c0, c1)) in enumerate(zip(self.cols, col_bounds, strict=True)):
                out[:, r0:r1, c0:c1] = grid[:, i, j, r0 - top : r1 - top, c0 - left : c1 - left]
        return out

    def reduce_scores(self, scores: np.ndarray) -> np.ndarray:
        """Tile scores ``[N * count]`` -> image scores ``[N]``: the largest of each image's tiles."""
        flat = np.asarray(scores).reshape(-1)
        if flat.shape[0] % self.count:
            raise ValueError(f"expected N * {self.count} tile scores, got {flat.shape[0]}")
        return np.asarray(flat.reshape(-1, self.count).max(axis=1))
