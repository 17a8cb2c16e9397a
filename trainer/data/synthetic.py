"""Synthetic parts in MVTec layout, for tests and demos: brushed-metal surfaces with real-looking defects.

Each good image is a machined surface: directional brushing texture, a lighting gradient, a drilled hole
and a chamfered edge, with small random pose and lighting changes. Defects are drawn on top with a
mask: ``scratch`` (thin bright/dark polyline), ``spot`` (stain blob with soft edge), ``crack`` (dark
branching line), ``patch`` (a soft-edged region of another image, or of another place in the same
image, pasted rotated and with another brightness: a CutPaste-like structural or texture defect).

:func:`add_defect` works on any image (RGB or grayscale, any size; sizes are relative to the image), so
the trainer also uses it to put synthetic defects into real calibration images (``trainer/select.py``).
Everything is seeded; numpy + OpenCV only.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "DEFECT_TYPES",
    "SELECTION_DEFECTS",
    "SURFACE_DEFECTS",
    "add_defect",
    "defect_contrast",
    "make_dataset",
    "render_part",
]


def defect_contrast(defective: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    """A drawn defect's measured strength: the mean absolute grey-level change inside ``mask`` (0 for an
    empty mask; colour images: the channels' mean)."""
    m = mask > 0
    if not m.any():
        return 0.0
    diff = np.abs(defective.astype(np.float64) - original.astype(np.float64))
    if diff.ndim == 3:
        diff = diff.mean(axis=2)
    return float(diff[m].mean())


DEFECT_TYPES = ("scratch", "spot", "crack")
# The kinds drawn into calibration images to choose the cue mix (``trainer/select.py``).
SELECTION_DEFECTS = ("scratch", "spot", "crack", "patch")
# Low-contrast surface defects with soft edges: a stain (the surface darker or brighter by 15-30 %, like oil,
# liquid or discolouration) and a smear (the surface's own texture blurred away, like a worn or polished
# area). Not among the selection's kinds (yet): measured as a diagnostic (benchmarks/design_diag.py).
SURFACE_DEFECTS = ("stain", "smear")
_MAX_HALF = 0.3  # largest half-axis of a spot or patch, as a fraction of the image's shorter side


def render_part(
    rng: np.random.Generator, height: int = 128, width: int = 128, gray: bool = False
) -> np.ndarray:
    """One defect-free part: uint8 ``[H, W, 3]`` RGB (or ``[H, W]`` when ``gray``)."""
    noise = rng.normal(0.0, 1.0, (height, width)).astype(np.float32)
    k = max(3, (width // 8) | 1)
    brushed = cv2.GaussianBlur(noise, (k, 1), 0) * 18.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    light = 25.0 * (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    base = 150.0 + rng.uniform(-6, 6) + light + brushed
    cy = height / 2 + rng.uniform(-2, 2)
    cx = width / 2 + rng.uniform(-2, 2)
    r = min(height, width) * 0.14
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    base = np.where(dist < r, 55.0 + 10 * np.cos(dist), base)
    base = np.where((dist >= r) & (dist < r * 1.25), 205.0, base)
    edge = int(min(height, width) * 0.08)
    base[:edge] *= 0.7
    base[-edge:] *= 0.7
    img = np.clip(base, 0, 255).astype(np.uint8)
    if gray:
        return img
    tint = np.array([1.0, 0.98, 0.93], dtype=np.float32) * rng.uniform(0.97, 1.03)
    return np.clip(img[..., None].astype(np.float32) * tint, 0, 255).astype(np.uint8)


def _blend(base: np.ndarray, layer: np.ndarray, paint: np.ndarray, strength: float) -> np.ndarray:
    """``base`` with ``paint`` laid over it at opacity ``layer * strength`` (``layer``: ``[H, W]``)."""
    alpha = layer * strength
    if base.ndim == 3:
        alpha = alpha[..., None]
    return base * (1 - alpha) + paint * alpha


def _patch(
    rng: np.random.Generator, img: np.ndarray, donor: np.ndarray | None, strength: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a rotated, re-lit, soft-edged ellipse of ``donor`` (or of ``img`` elsewhere) into ``img``."""
    h, w = img.shape[:2]
    src = img if donor is None or donor.shape != img.shape else donor
    side = min(h, w)
    ah, aw = (max(2, int(side * min(_MAX_HALF, rng.uniform(0.05, 0.12) * scale))) for _ in range(2))
    cy, cx = int(rng.uniform(0.2, 0.8) * h), int(rng.uniform(0.2, 0.8) * w)
    # the region of the source: another place (never the same one), rotated by 90/180/270 degrees
    sy, sx = (h - 1 - cy) if h > 4 * ah else cy, int(rng.uniform(0.2, 0.8) * w)
    y0, x0 = max(0, sy - ah), max(0, sx - aw)
    piece = src[y0 : y0 + 2 * ah, x0 : x0 + 2 * aw].astype(np.float32)
    gain = rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.2, 1.4)])
    piece = np.rot90(piece, int(rng.integers(1, 4))) * gain
    ph, pw = piece.shape[:2]
    top, left = min(max(0, cy - ph // 2), h - ph), min(max(0, cx - pw // 2), w - pw)
    shape = np.zeros((ph, pw), np.float32)
    cv2.ellipse(shape, (pw // 2, ph // 2), (max(1, pw // 2 - 1), max(1, ph // 2 - 1)), 0, 0, 360, 1.0, -1)
    soft = cv2.GaussianBlur(shape, (0, 0), 1.0)
    canvas = img.astype(np.float32)
    region = canvas[top : top + ph, left : left + pw]
    canvas[top : top + ph, left : left + pw] = _blend(region, soft, piece, strength)
    mask = np.zeros((h, w), np.uint8)
    mask[top : top + ph, left : left + pw] = (soft > 0.5).astype(np.uint8) * 255
    return np.clip(canvas, 0, 255).astype(np.uint8), mask


def add_defect(
    rng: np.random.Generator,
    img: np.ndarray,
    kind: str,
    donor: np.ndarray | None = None,
    strength: float = 1.0,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` into a copy of ``img`` (uint8 ``[H, W]`` or ``[H, W, 3]``).

    Returns the defective image and its uint8 mask ``[H, W]`` (255 = defect). ``donor`` (same shape as
    ``img``) is the image a ``patch`` is cut from; without one, it comes from elsewhere in ``img``.
    ``strength`` in (0, 1] is the fraction of the full contrast: the defect is blended over the part with
    that opacity (1 = opaque); ``scale`` > 0 multiplies its size (line length and width, blob and patch
    axes, capped so a region stays inside the part). Neither changes the random draws: the same ``rng``
    state gives the same defect at any strength and size.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    if not scale > 0.0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    if kind == "patch":
        return _patch(rng, img, donor, strength, scale)
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    layer = np.zeros((h, w), np.float32)  # how much of the defect's colour each pixel takes
    paint: float | np.ndarray
    if kind == "scratch":
        start = np.array([w * rng.uniform(0.2, 0.8), h * 0.2])
        pts = np.cumsum(rng.normal(0, max(h, w) * 0.08 * scale, (5, 2)), axis=0) + start
        pts = np.clip(pts, 0, [w - 1, h - 1]).astype(np.int32)
        paint = float(rng.choice([30, 240]))
        thick = max(1, int(min(h, w) * scale / 64))
        cv2.polylines(layer, [pts], False, 1.0, thick)
        cv2.polylines(mask, [pts], False, 255, thick + 1)
    elif kind == "spot":
        center = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h))
        axes = tuple(
            int(min(h, w) * min(_MAX_HALF, rng.uniform(lo, hi) * scale))
            for lo, hi in ((0.05, 0.1), (0.04, 0.08))
        )
        cv2.ellipse(mask, center, axes, rng.uniform(0, 180), 0, 360, 255, -1)
        layer = 0.7 * cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.5)
        paint = np.array([90, 60, 30], np.float32) if img.ndim == 3 else 60.0
    elif kind == "crack":
        x, y = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        paint = 20.0
        for _ in range(3):
            pts = [(x, y)]
            heading = rng.uniform(0, 2 * np.pi)
            for _ in range(6):
                heading += rng.normal(0, 0.5)
                step = min(h, w) * 0.05 * scale
                pts.append((pts[-1][0] + step * np.cos(heading), pts[-1][1] + step * np.sin(heading)))
            arr = np.clip(np.array(pts), 0, [w - 1, h - 1]).astype(np.int32)
            cv2.polylines(layer, [arr], False, 1.0, 1)
            cv2.polylines(mask, [arr], False, 255, 2)
    elif kind in SURFACE_DEFECTS:
        center = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h))
        axes = tuple(
            max(2, int(min(h, w) * min(_MAX_HALF, rng.uniform(0.06, 0.14) * scale))) for _ in range(2)
        )
        core = np.zeros((h, w), np.float32)
        cv2.ellipse(core, center, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        soft = cv2.GaussianBlur(core, (0, 0), max(1.0, min(axes) / 3))
        layer = (soft / max(float(soft.max()), 1e-6)).astype(np.float32)  # soft edges, opaque middle
        mask = (layer > 0.5).astype(np.uint8) * 255
        gain = float(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.3)]))
        sigma = max(3.0, min(axes) / 2)
        if kind == "stain":
            paint = img.astype(np.float64) * gain
        else:
            paint = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma).astype(np.float64)
    else:
        raise ValueError(
            f"unknown defect type {kind!r}; expected one of {SELECTION_DEFECTS + SURFACE_DEFECTS}"
        )
    canvas = _blend(img.astype(np.float64), layer, np.asarray(paint, np.float64), strength)
    return np.clip(canvas, 0, 255).astype(np.uint8), mask


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"cannot write {path}")


def make_dataset(
    root: str | Path,
    n_train: int = 30,
    n_test_good: int = 6,
    n_test_defect: int = 4,
    height: int = 128,
    width: int = 128,
    gray: bool = False,
    seed: int = 0,
    defect_types: tuple[str, ...] = DEFECT_TYPES,
) -> Path:
    """Write an MVTec-layout data set under ``root`` and return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _write(root / "train" / "good" / f"{i:03d}.png", render_part(rng, height, width, gray))
    for i in range(n_test_good):
        _write(root / "test" / "good" / f"{i:03d}.png", render_part(rng, height, width, gray))
    for kind in defect_types:
        for i in range(n_test_defect):
            img, mask = add_defect(rng, render_part(rng, height, width, gray), kind)
            _write(root / "test" / kind / f"{i:03d}.png", img)
            _write(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return root
