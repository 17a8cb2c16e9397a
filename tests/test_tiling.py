"""engines.tiling: the tile layout, cutting, stitching and the image score of a tiled frame."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engines.tiling import TileGrid, axis_bounds, axis_origins


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [
        (c, t, o)
        for c, t, o in itertools.product((32, 64, 96, 250, 256, 1024, 1000), (32, 64, 256), (0, 16, 31))
    ]
    + [(1024, 256, 128), (1024, 256, 255), (257, 256, 0)],
)
def test_axis_origins_cover_the_frame_with_at_least_the_overlap(length: int, tile: int, overlap: int) -> None:
    if tile > length or overlap >= tile:
        with pytest.raises(ValueError, match="tile"):
            axis_origins(length, tile, overlap)
        return
    origins = axis_origins(length, tile, overlap)
    assert origins[0] == 0
    assert origins[-1] + tile == length
    steps = np.diff(origins)
    assert (steps > 0).all()
    assert (tile - steps >= overlap).all(), "neighbouring tiles overlap by less than asked"
    # as few tiles as the overlap allows: one fewer would leave an overlap below the minimum
    n = len(origins)
    if n > 1:
        assert (n - 2) * (tile - overlap) < length - tile <= (n - 1) * (tile - overlap)
    # evenly spread: steps differ by at most one pixel
    assert steps.size == 0 or steps.max() - steps.min() <= 1


def test_axis_origins_hand_computed() -> None:
    assert axis_origins(1024, 256, 32) == (0, 192, 384, 576, 768)
    assert axis_origins(256, 256, 32) == (0,)
    assert axis_origins(288, 256, 32) == (0, 32)
    assert axis_bounds((0, 192, 384, 576, 768), 256, 1024) == (
        (0, 224),
        (224, 416),
        (416, 608),
        (608, 800),
        (800, 1024),
    )


def test_bounds_partition_and_pick_the_nearest_centre() -> None:
    for length, tile, overlap in [(1024, 256, 32), (300 - 300 % 32 + 32, 64, 16), (1000, 96, 40)]:
        origins = axis_origins(length, tile, overlap)
        bounds = axis_bounds(origins, tile, length)
        assert bounds[0][0] == 0 and bounds[-1][1] == length
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        centres = np.asarray(origins) + (tile - 1) / 2
        for i, (start, stop) in enumerate(bounds):
            assert origins[i] <= start < stop <= origins[i] + tile  # owned pixels lie inside the tile
            for x in (start, stop - 1):
                assert abs(x - centres[i]) <= np.abs(x - centres).min() + 0.5


def test_cut_then_stitch_gives_the_frame_back() -> None:
    rng = np.random.default_rng(0)
    grid = TileGrid(96, 1024, 64, 256, 32)
    assert grid.count == 2 * 5
    frames = rng.random((3, 96, 1024)).astype(np.float32)
    tiles = grid.cut(frames, axis=1)
    assert tiles.shape == (3 * grid.count, 64, 256)
    # image-major, row-major: tile 6 of image 0 is row 1, column 1
    top, left = grid.origins()[6]
    assert (top, left) == (32, 192)
    np.testing.assert_array_equal(tiles[6], frames[0, 32:96, 192:448])
    np.testing.assert_array_equal(tiles[grid.count + 1], frames[1, 0:64, 192:448])
    np.testing.assert_array_equal(grid.stitch(tiles), frames)


def test_cut_works_on_rgb_frames_and_masks() -> None:
    grid = TileGrid(64, 512, 64, 128, 32)
    rgb = np.arange(2 * 64 * 512 * 3, dtype=np.int64).reshape(2, 64, 512, 3) % 251
    masks = (rgb[..., 0] % 2).astype(np.uint8)[:, None]  # [N, 1, H, W]
    t_rgb, t_mask = grid.cut(rgb.astype(np.uint8), axis=1), grid.cut(masks, axis=2)
    assert t_rgb.shape == (2 * grid.count, 64, 128, 3) and t_rgb.flags.c_contiguous
    assert t_mask.shape == (2 * grid.count, 1, 64, 128)
    for k, (top, left) in enumerate(grid.origins()):
        np.testing.assert_array_equal(t_mask[k, 0], masks[0, 0, top : top + 64, left : left + 128])
    with pytest.raises(ValueError, match="64x512"):
        grid.cut(rgb[:, :, :256].astype(np.uint8), axis=1)


def test_stitch_takes_each_pixel_from_its_nearest_tile() -> None:
    grid = TileGrid(64, 1024, 64, 256, 32)
    tiles = np.stack([np.full((64, 256), k, dtype=np.float32) for k in range(grid.count)])
    stitched = grid.stitch(tiles)[0, 0]
    centres = np.asarray(grid.cols) + 127.5
    expected = np.argmin(np.abs(np.arange(1024)[:, None] - centres[None]), axis=1)
    # ties (a pixel exactly between two centres) may go either way
    assert (np.abs(stitched - expected) <= 1).all()
    assert (stitched != expected).sum() <= 2 * (grid.count - 1)
    # a value near a tile's inner edge is never used: it is what the convolution padding spoils
    edge = tiles.copy()
    edge[:, :, :8] = 1e9
    edge[:, :, -8:] = 1e9
    out = grid.stitch(edge)[0]
    assert out[:, 8:-8].max() < 1e9


def test_reduce_scores_is_the_largest_tile_and_keeps_nan() -> None:
    grid = TileGrid(64, 512, 64, 128, 32)
    n = grid.count
    scores = np.arange(2 * n, dtype=np.float32)
    scores[3] = 100.0
    np.testing.assert_array_equal(grid.reduce_scores(scores), [100.0, 2 * n - 1])
    scores[n + 1] = np.nan
    assert np.isnan(grid.reduce_scores(scores)[1])  # a non-finite tile makes the image UNKNOWN
    with pytest.raises(ValueError, match="tile scores"):
        grid.reduce_scores(scores[:-1])


def test_grid_rejects_tiles_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        TileGrid(64, 512, 96, 128, 0)
    with pytest.raises(ValueError, match="overlap"):
        TileGrid(64, 512, 64, 128, 64)
    with pytest.raises(ValueError, match="tile maps"):
        TileGrid(64, 512, 64, 128, 32).stitch(np.zeros((3, 64, 128), dtype=np.float32))
