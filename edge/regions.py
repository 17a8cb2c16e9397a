"""Defect regions and the published heatmap, from a model-frame anomaly map.

Regions are the connected components (8-connectivity) of ``anomaly_map >= pixel_threshold`` inside the
placed image (letterbox padding never counts), reported in the **camera frame's** pixel coordinates:
``bbox = [x, y, w, h]`` (integers, clipped to the frame), ``area`` (camera pixels, the component's model
pixels times the scale factors), ``peak`` (the highest map value in it). They are sorted by peak, highest
first, and at most ``max_regions`` are kept.

The heatmap travels as uint8: the map cropped to the placed image (model resolution, so it costs the
same whatever the camera's resolution; turned back to the camera's orientation when the bundle turned
the image to fit its frame) and scaled linearly from ``lo`` (0) to ``hi`` (255); a reader maps
it back with ``value = lo + v / 255 * (hi - lo)`` and resizes it to the frame's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.preprocess import Geometry

__all__ = ["Region", "crop_map", "find_regions", "heatmap_u8"]


@dataclass(frozen=True)
class Region:
    """One connected defect region in camera-frame pixels."""

    bbox: tuple[int, int, int, int]
    area: int
    peak: float

    def to_dict(self) -> dict[str, object]:
        return {"bbox": list(self.bbox), "area": self.area, "peak": self.peak}


def crop_map(anomaly_map: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The placed-image part of a model-frame map, in the camera frame's orientation (a view:
    ``(geometry.height, geometry.width)``, or ``(width, height)`` turned back when the image was turned to
    fit the frame, ``Geometry.turned``)."""
    g = geometry
    crop = anomaly_map[g.top : g.top + g.height, g.left : g.left + g.width]
    return np.rot90(crop, k=-1) if g.turned else crop


def find_regions(
    anomaly_map: np.ndarray, geometry: Geometry, pixel_threshold: float, max_regions: int = 32
) -> list[Region]:
    """Connected regions of ``anomaly_map >= pixel_threshold``, in camera-frame coordinates.

    Args:
        anomaly_map: float32 ``(H, W)`` model-frame map.
        geometry: how the camera frame was placed in the model frame.
        pixel_threshold: map value at and above which a pixel is anomalous.
        max_regions: keep the regions with the highest peaks.

    Returns:
        Regions sorted by peak (highest first); empty when no pixel reaches the threshold or the map is
        not finite.
    """
    crop = crop_map(anomaly_map, geometry)
    if crop.size == 0 or not np.isfinite(pixel_threshold):
        return []
    mask = np.ascontiguousarray(crop >= pixel_threshold, dtype=np.uint8)
    if not mask.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    peaks = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(peaks, labels.ravel().astype(np.intp), crop.ravel().astype(np.float64))
    sx = geometry.orig_width / crop.shape[1]  # camera pixels per model pixel
    sy = geometry.orig_height / crop.shape[0]
    regions = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        x0 = min(geometry.orig_width - 1, int(np.floor(x * sx)))
        y0 = min(geometry.orig_height - 1, int(np.floor(y * sy)))
        x1 = min(geometry.orig_width, max(x0 + 1, int(np.ceil((x + w) * sx))))
        y1 = min(geometry.orig_height, max(y0 + 1, int(np.ceil((y + h) * sy))))
        regions.append(
            Region((x0, y0, x1 - x0, y1 - y0), max(1, round(area * sx * sy)), round(float(peaks[i]), 6))
        )
    regions.sort(key=lambda r: r.peak, reverse=True)
    return regions[:max_regions]


def heatmap_u8(anomaly_map: np.ndarray, geometry: Geometry, lo: float, hi: float) -> np.ndarray:
    """The placed-image part of the map as uint8, ``lo`` -> 0 and ``hi`` -> 255 (clipped; NaN -> 255)."""
    crop = crop_map(anomaly_map, geometry).astype(np.float32)
    span = max(float(hi) - float(lo), 1e-12)
    scaled = np.nan_to_num((crop - float(lo)) * (255.0 / span), nan=255.0, posinf=255.0, neginf=0.0)
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
