"""Tests for edge.regions: connected regions in camera-frame pixels and the uint8 heatmap."""

from __future__ import annotations

import numpy as np

from edge.regions import find_regions, heatmap_u8
from engines.preprocess import PreprocessSpec, preprocess


def test_regions_are_in_camera_frame_coordinates_through_the_letterbox() -> None:
    spec = PreprocessSpec(64, 64, "letterbox", "rgb")
    image = np.zeros((100, 200, 3), dtype=np.uint8)  # placed as 64x32 (scale 0.32), top 16
    _, geom = preprocess(image, spec)
    assert (geom.top, geom.height, geom.width) == (16, 32, 64)
    amap = np.zeros((64, 64), dtype=np.float32)
    amap[16 + 8 : 16 + 12, 32:40] = 5.0  # a 4x8 model-pixel blob
    amap[16 + 20, 4] = 3.0  # a single pixel
    amap[2, 2] = 99.0  # on the letterbox padding: never a region
    regions = find_regions(amap, geom, pixel_threshold=1.0)
    assert [r.peak for r in regions] == [5.0, 3.0]
    x, y, w, h = regions[0].bbox
    assert (x, y, w, h) == (100, 25, 25, 13)  # 32/0.32, 8/0.32, ceil(40/0.32)-100, ceil(12/0.32)-25
    assert regions[0].area == round(32 * (200 / 64) * (100 / 32))
    assert regions[1].bbox[2] >= 1 and regions[1].bbox[3] >= 1


def test_regions_and_heatmap_of_a_turned_image_are_in_the_camera_orientation() -> None:
    spec = PreprocessSpec(96, 64, "letterbox", "rgb", orient="auto")
    _, geom = preprocess(np.zeros((64, 96, 3), np.uint8), spec)  # landscape, turned into the frame
    assert geom.turned
    amap = np.zeros((96, 64), dtype=np.float32)
    amap[10:20, 20:30] = 4.0  # frame (r, c) shows camera pixel (row c, column 95 - r)
    regions = find_regions(amap, geom, pixel_threshold=1.0)
    assert len(regions) == 1 and regions[0].bbox == (76, 20, 10, 10) and regions[0].area == 100
    heat = heatmap_u8(amap, geom, 0.0, 4.0)
    assert heat.shape == (64, 96) and heat[20:30, 76:86].min() == 255 and heat.sum() == 255 * 100


def test_no_regions_below_the_threshold_or_for_nan_threshold() -> None:
    spec = PreprocessSpec(32, 32, "stretch", "rgb")
    _, geom = preprocess(np.zeros((32, 32, 3), np.uint8), spec)
    amap = np.full((32, 32), 0.5, np.float32)
    assert find_regions(amap, geom, 1.0) == []
    assert find_regions(amap, geom, float("nan")) == []


def test_heatmap_scaling_and_crop() -> None:
    spec = PreprocessSpec(64, 64, "letterbox", "rgb")
    _, geom = preprocess(np.zeros((100, 200, 3), np.uint8), spec)
    amap = np.zeros((64, 64), np.float32)
    amap[16:48, :] = np.linspace(0.0, 2.0, 64, dtype=np.float32)[None, :]
    amap[20, 20] = np.nan
    heat = heatmap_u8(amap, geom, lo=0.0, hi=2.0)
    assert heat.shape == (32, 64) and heat.dtype == np.uint8
    assert heat[0, 0] == 0 and heat[0, -1] == 255 and heat[4, 20] == 255  # NaN is shown as the worst
