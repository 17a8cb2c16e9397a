"""Tests for trainer.data.synthetic: defects drawn into any image, with a contrast and a size."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.synthetic import SELECTION_DEFECTS, add_defect, render_part


def _draw(kind: str, gray: bool, **kw: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    img, donor = render_part(rng, 96, 128, gray), render_part(rng, 96, 128, gray)
    out, mask = add_defect(rng, img, kind, donor, **kw)
    return img, out, mask


def _change(img: np.ndarray, out: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change inside the mask, over channels."""
    diff = np.abs(out.astype(np.float64) - img.astype(np.float64)).reshape(*mask.shape, -1).mean(-1)
    return float(diff[mask > 0].mean())


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("kind", (*SELECTION_DEFECTS, "stain"))
def test_strength_scales_the_contrast_and_keeps_the_shape(kind: str, gray: bool) -> None:
    img, full, mask = _draw(kind, gray)
    _, faint, faint_mask = _draw(kind, gray, strength=0.25)
    assert np.array_equal(mask, faint_mask)  # same draws, same place and shape
    assert full.shape == img.shape and full.dtype == np.uint8
    strong, weak = _change(img, full, mask), _change(img, faint, mask)
    assert weak > 1.0, "a faint defect must still change the image"
    assert 0.1 < weak / strong < 0.45, f"strength 0.25 gave {weak:.1f} vs {strong:.1f} at full contrast"


@pytest.mark.parametrize("kind", ["spot", "patch", "stain", "smear"])
def test_scale_grows_regions_and_is_capped(kind: str) -> None:
    areas = [int((_draw(kind, False, scale=s)[2] > 0).sum()) for s in (0.5, 1.0, 2.0, 50.0)]
    assert areas[0] < areas[1] < areas[2], areas
    assert areas[2] > 2.5 * areas[1]  # area grows about with the square of the scale
    # a huge scale is capped: the region stays smaller than the image
    assert areas[3] < 0.5 * 96 * 128, areas


@pytest.mark.parametrize("kind", ["scratch", "crack"])
def test_scale_lengthens_lines(kind: str) -> None:
    lengths = [int((_draw(kind, False, scale=s)[2] > 0).sum()) for s in (0.5, 2.0)]
    assert lengths[1] > 1.5 * lengths[0], lengths


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"strength": 0.0}, "strength"), ({"strength": 1.5}, "strength"), ({"scale": 0.0}, "scale")],
)
def test_bad_strength_or_scale_is_refused(kw: dict[str, float], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        _draw("spot", False, **kw)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown defect type 'dent'"):
        _draw("dent", False)


@pytest.mark.parametrize("gray", [False, True])
def test_surface_defects_are_soft_and_low_contrast(gray: bool) -> None:
    """A stain changes the brightness by 15-30 % with soft edges (no hard step at the mask's border); a
    smear removes the texture (less local variation inside than outside)."""
    img, stain, mask = _draw("stain", gray)
    inside = mask > 0
    ratio = stain.astype(np.float64)[inside].mean() / img.astype(np.float64)[inside].mean()
    assert 0.68 < ratio < 0.88 or 1.12 < ratio < 1.32, ratio
    ring = np.abs(stain.astype(np.float64) - img.astype(np.float64)).reshape(*mask.shape, -1).mean(-1) > 0.5
    assert (ring & ~inside).sum() > 0.2 * inside.sum()  # the change fades out beyond the mask
    # a smear takes away the surface's own texture: on a grainy surface, proportionally to its strength
    rng = np.random.default_rng(3)
    part = render_part(rng, 96, 128, gray).astype(np.float64)
    noise = rng.normal(0, 20, (96, 128) if gray else (96, 128, 1))  # the same grain in every channel
    grainy = np.clip(part + noise, 0, 255).astype(np.uint8)
    smear, mask = add_defect(np.random.default_rng(4), grainy, "smear")
    faint, _ = add_defect(np.random.default_rng(4), grainy, "smear", strength=0.25)
    inside = mask > 0
    assert 0.1 < _change(grainy, faint, mask) / _change(grainy, smear, mask) < 0.45

    def grain(a: np.ndarray) -> np.ndarray:  # horizontal pixel-to-pixel change, channels averaged
        g = a.astype(np.float64).reshape(*a.shape[:2], -1).mean(-1)
        return np.abs(np.diff(g, axis=1))[inside[:, 1:]]

    assert grain(smear).mean() < 0.5 * grain(grainy).mean()


def test_defect_contrast_is_the_mean_change_inside_the_mask() -> None:
    from trainer.data.synthetic import defect_contrast

    original = np.full((4, 4), 100, np.uint8)
    defective = original.copy()
    defective[0, :2] = [70, 130]
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :3] = 1  # the third masked pixel did not change
    assert defect_contrast(defective, original, mask) == pytest.approx(60 / 3)
    assert defect_contrast(defective, original, np.zeros_like(mask)) == 0.0
    rgb = np.stack([defective] * 3, axis=2)
    assert defect_contrast(rgb, np.stack([original] * 3, axis=2), mask) == pytest.approx(20.0)
