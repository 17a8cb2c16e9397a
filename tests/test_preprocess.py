"""Tests for the torch-free preprocessing contract (engines.preprocess)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from typing import Any

import cv2
import numpy as np
import pytest

from engines.preprocess import (
    Geometry,
    PreprocessSpec,
    median_brightness,
    merge_outputs,
    model_inputs,
    preprocess,
    preprocess_batch,
    resolve_input_size,
    resolve_tiling,
    turns,
)
from engines.tiling import TileGrid

LETTERBOX = PreprocessSpec(height=256, width=256, resize="letterbox", color="rgb")
STRETCH = PreprocessSpec(height=256, width=256, resize="stretch", color="rgb")


def _rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _smooth_rgb(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = (xx * 255 // max(1, w - 1)).astype(np.uint8)
    g = (yy * 255 // max(1, h - 1)).astype(np.uint8)
    b = ((xx + yy) % 256).astype(np.uint8)
    return np.ascontiguousarray(np.stack([r, g, b], axis=2))


# --------------------------------------------------------------------------- letterbox / geometry


def test_letterbox_wide_image_keeps_aspect_and_is_centred() -> None:
    img = np.full((100, 400, 3), 200, dtype=np.uint8)
    out, geo = preprocess(img, LETTERBOX)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert geo.region == (96, 0, 64, 256)
    assert geo.orig_size == (100, 400)
    assert geo.scale_y == pytest.approx(0.64) and geo.scale_x == pytest.approx(0.64)
    valid = geo.valid_mask()
    assert valid.dtype == bool and valid.shape == (256, 256)
    assert valid.sum() == 64 * 256
    assert valid[96:160, :].all() and not valid[:96].any() and not valid[160:].any()
    assert (out[valid] == 200).all()
    assert (out[~valid] == 114).all()


def test_letterbox_tall_image_and_custom_pad() -> None:
    spec = PreprocessSpec(height=256, width=256, resize="letterbox", color="rgb", pad_value=0)
    out, geo = preprocess(np.full((400, 100), 77, dtype=np.uint8), spec)
    assert geo.region == (0, 96, 256, 64)
    assert (out[:, 96:160] == 77).all()
    assert (out[:, :96] == 0).all() and (out[:, 160:] == 0).all()


def test_letterbox_non_square_frame() -> None:
    spec = PreprocessSpec(height=736, width=96, resize="letterbox", color="rgb")
    out, geo = preprocess(_rand((800, 100, 3)), spec)
    assert out.shape == (736, 96, 3)
    # 800x100 scaled by min(736/800, 96/100) = 0.92 -> 736x92, centred horizontally.
    assert geo.region == (0, 2, 736, 92)
    assert geo.valid_mask().sum() == 736 * 92


def test_identity_when_sizes_match() -> None:
    img = _rand((256, 256, 3))
    out, geo = preprocess(img, LETTERBOX)
    np.testing.assert_array_equal(out, img)
    assert geo.region == (0, 0, 256, 256)
    assert out is not img and not np.shares_memory(out, img)


def test_to_original_round_trip_of_smooth_map() -> None:
    h, w = 100, 400
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    orig_map = np.sin(xx / 40.0) + np.cos(yy / 25.0)
    _, geo = preprocess(np.zeros((h, w), np.uint8), LETTERBOX)
    model_map = np.zeros((256, 256), np.float32)
    top, left, ph, pw = geo.region
    model_map[top : top + ph, left : left + pw] = cv2.resize(orig_map, (pw, ph), interpolation=cv2.INTER_AREA)
    back = geo.to_original(model_map)
    assert back.shape == (h, w) and back.dtype == np.float32
    assert np.abs(back - orig_map).max() < 0.1
    with pytest.raises(ValueError, match=r"\(256, 256\)"):
        geo.to_original(np.zeros((128, 128), np.float32))


def test_to_original_ignores_padding() -> None:
    _, geo = preprocess(np.zeros((100, 400), np.uint8), LETTERBOX)
    model_map = np.full((256, 256), 5.0, np.float32)
    model_map[~geo.valid_mask()] = 1e6  # padding must never leak back into the original frame
    back = geo.to_original(model_map)
    np.testing.assert_allclose(back, 5.0)


def test_to_model_mask_and_back() -> None:
    h, w = 100, 400
    mask = np.zeros((h, w), bool)
    mask[20:60, 100:300] = True
    _, geo = preprocess(np.zeros((h, w, 3), np.uint8), LETTERBOX)
    m = geo.to_model(mask)
    assert m.dtype == bool and m.shape == (256, 256)
    assert not m[~geo.valid_mask()].any()
    assert m.sum() == pytest.approx(mask.sum() * geo.scale_y * geo.scale_x, rel=0.05)
    back = geo.to_original(m.astype(np.float32)) > 0.5
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.95
    with pytest.raises(ValueError, match=r"\(100, 400\)"):
        geo.to_model(np.zeros((50, 50), bool))


def test_geometry_to_dict() -> None:
    _, geo = preprocess(np.zeros((100, 400), np.uint8), LETTERBOX)
    d = geo.to_dict()
    assert Geometry(**d) == geo  # type: ignore[arg-type]


# --------------------------------------------------------------------------- orientation (orient: auto)

PORTRAIT_AUTO = PreprocessSpec(96, 64, "letterbox", "rgb", orient="auto")


def test_orient_auto_turns_an_image_of_the_other_orientation_to_fill_the_frame() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # landscape into a portrait frame
    frame, geo = preprocess(img, PORTRAIT_AUTO)
    assert geo.turned and geo.region == (0, 0, 96, 64) and geo.orig_size == (64, 96)
    np.testing.assert_array_equal(frame, np.rot90(img))  # a quarter turn counter-clockwise, no resize
    _, kept = preprocess(img, replace(PORTRAIT_AUTO, orient="keep"))
    assert not kept.turned and kept.height * kept.width < 0.5 * 96 * 64  # letterboxed to 43x64
    # maps come back in the image's own orientation, exactly (same size: no resampling)
    back = geo.to_original(frame[..., 0].astype(np.float32))
    np.testing.assert_array_equal(back, img[..., 0].astype(np.float32))
    mask = np.zeros((64, 96), bool)
    mask[5, 80] = True  # (r, c) lands at (w - 1 - c, r) after the turn
    framed = geo.to_model(mask)
    assert framed.sum() == 1 and framed[96 - 1 - 80, 5]
    np.testing.assert_array_equal(geo.to_model(mask * 0.5), framed)  # non-zero, not >= 1, is True
    assert Geometry(**geo.to_dict()) == geo  # type: ignore[arg-type]


def test_orient_auto_turns_only_when_the_orientations_differ() -> None:
    assert turns(64, 96, PORTRAIT_AUTO) and not turns(96, 64, PORTRAIT_AUTO)
    assert not turns(80, 80, PORTRAIT_AUTO)  # a square image has no orientation
    square = PreprocessSpec(64, 64, "letterbox", "rgb", orient="auto")
    assert not turns(64, 96, square)  # nor has a square frame
    assert not turns(64, 96, replace(PORTRAIT_AUTO, orient="keep"))
    # resized and turned: the map still comes back at the image's size and orientation
    img = np.zeros((100, 300), np.uint8)
    img[:, :150] = 200  # left half bright
    frame, geo = preprocess(img, PORTRAIT_AUTO)
    assert geo.turned and frame.shape == (96, 64, 3)
    back = geo.to_original(frame[..., 0].astype(np.float32))
    assert back.shape == (100, 300)
    assert back[:, :140].mean() > 190 and back[:, 160:].mean() < 10


def test_orient_travels_in_the_spec_only_when_set() -> None:
    assert "orient" not in replace(PORTRAIT_AUTO, orient="keep").to_dict()
    d = PORTRAIT_AUTO.to_dict()
    assert d["orient"] == "auto" and PreprocessSpec.from_dict(d) == PORTRAIT_AUTO
    with pytest.raises(ValueError, match="orient"):
        PreprocessSpec.from_dict({**d, "orient": "sideways"})


# --------------------------------------------------------------------------- one scale for the part


def test_max_scale_places_every_image_that_fits_at_one_scale() -> None:
    spec = PreprocessSpec(height=256, width=256, resize="letterbox", color="rgb", max_scale=0.5)
    # Two crops of one surface: letterboxed alone they would be scaled by 1.28 and 0.64; with the part's
    # scale both are placed at 0.5, so a 2-pixel grain is 1 pixel in the frame in both.
    small, geo_small = preprocess(np.full((200, 100, 3), 90, dtype=np.uint8), spec)
    _, geo_large = preprocess(np.full((400, 300, 3), 90, dtype=np.uint8), spec)
    assert geo_small.region == (78, 103, 100, 50)
    assert geo_large.region == (28, 53, 200, 150)
    assert geo_small.scale_y == geo_large.scale_y == 0.5
    assert (small[geo_small.valid_mask()] == 90).all() and (small[~geo_small.valid_mask()] == 114).all()
    # Without the cap each fills the frame on its long side.
    assert preprocess(np.zeros((200, 100, 3), np.uint8), LETTERBOX)[1].region == (0, 64, 256, 128)


def test_max_scale_shrinks_only_the_images_that_do_not_fit() -> None:
    spec = PreprocessSpec(height=256, width=256, resize="letterbox", color="rgb", max_scale=0.5)
    _, geo = preprocess(np.zeros((1024, 256, 3), np.uint8), spec)
    assert geo.region == (0, 96, 256, 64)  # 0.25 = 256 / 1024, as a plain letterbox
    pattern = _rand((300, 200, 3))
    out, geo = preprocess(pattern, spec)
    top, left, h, w = geo.region
    expected = cv2.resize(pattern, (100, 150), interpolation=cv2.INTER_AREA)
    assert (h, w) == (150, 100) and np.array_equal(out[top : top + h, left : left + w], expected)


def test_max_scale_travels_in_the_spec_and_is_validated() -> None:
    spec = PreprocessSpec(height=256, width=256, resize="letterbox", color="rgb", max_scale=0.75)
    d = spec.to_dict()
    assert d["max_scale"] == 0.75 and PreprocessSpec.from_dict(d) == spec
    assert "max_scale" not in LETTERBOX.to_dict()
    for bad in (0, -1.0, float("inf"), float("nan"), "0.5", True):
        with pytest.raises(ValueError, match=r"preprocess\.max_scale must be a positive finite number"):
            PreprocessSpec.from_dict({**d, "max_scale": bad})
    with pytest.raises(ValueError, match="max_scale is only for resize 'letterbox'"):
        PreprocessSpec.from_dict({**d, "resize": "stretch"})


# --------------------------------------------------------------------------- one brightness for the part

BRIGHT = PreprocessSpec(height=64, width=64, resize="letterbox", color="gray", brightness=100.0)


def test_brightness_scales_the_placed_image_by_one_gain_and_leaves_the_padding() -> None:
    img = np.full((32, 64), 40, np.uint8)
    img[:, 32:] = 60  # mean 50: gain 2
    out, geo = preprocess(img, BRIGHT)
    top, left, h, w = geo.region
    region = out[top : top + h, left : left + w, 0]
    assert (h, w) == (32, 64)
    assert (region[:, :32] == 80).all() and (region[:, 32:] == 120).all()
    assert (out[~geo.valid_mask()] == 114).all()  # padding is not scaled
    # Hand case with rounding half up and clipping: mean 100.5, gain 100 / 100.5.
    img = np.array([[1, 200]], np.uint8).repeat(32, 0).repeat(16, 1)
    out, geo = preprocess(img, replace(BRIGHT, height=32, width=32))
    gain = np.float32(100.0 / 100.5)
    expected = [int(np.float32(v) * gain + np.float32(0.5)) for v in (1, 200)]
    assert expected == [1, 199]
    assert sorted(np.unique(out).tolist()) == expected
    bright = np.full((32, 32), 50, np.uint8)
    bright[0, 0] = 255  # gain ~2: 255 clips, the rest doubles
    out, _ = preprocess(bright, replace(BRIGHT, height=32, width=32))
    assert out[0, 0, 0] == 255 and abs(int(out[1, 1, 0]) - 100) <= 1


def test_brightness_makes_two_exposures_of_a_part_nearly_equal() -> None:
    texture = np.random.default_rng(3).normal(120, 30, (64, 64)).clip(0, 255).astype(np.uint8)
    dark = (texture.astype(np.float32) * 0.5 + 0.5).astype(np.uint8)
    a, _ = preprocess(texture, BRIGHT)
    b, _ = preprocess(dark, BRIGHT)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 3 and abs(float(a.mean()) - 100.0) < 0.5 and abs(float(b.mean()) - 100.0) < 0.5
    # Without the field the two stay apart; a black image is left as it is.
    assert abs(float(preprocess(dark, replace(BRIGHT, brightness=None))[0].mean()) - 60) < 1
    assert (preprocess(np.zeros((64, 64), np.uint8), BRIGHT)[0] == 0).all()


def test_brightness_travels_in_the_spec_and_is_validated() -> None:
    d = BRIGHT.to_dict()
    assert d["brightness"] == 100.0 and PreprocessSpec.from_dict(d) == BRIGHT
    assert "brightness" not in LETTERBOX.to_dict()
    for bad in (0, 255, -3.0, float("nan"), "100", True):
        with pytest.raises(ValueError, match=r"preprocess\.brightness must be a number in \(0, 255\)"):
            PreprocessSpec.from_dict({**d, "brightness": bad})


def test_median_brightness_after_the_colour_rule() -> None:
    gray = [np.full((4, 4), v, np.uint8) for v in (10, 30, 200)]
    assert median_brightness(gray, "gray") == 30.0
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 90  # rgb mean 30; gray luminance 0.587 * 90 = 53
    assert median_brightness([rgb], "rgb") == 30.0
    assert median_brightness([rgb], "gray") == float(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).mean())
    assert median_brightness([np.zeros((4, 4), np.uint8)], "gray") == 1.0
    with pytest.raises(ValueError, match="at least one image"):
        median_brightness([], "gray")


# --------------------------------------------------------------------------- stretch / interpolation


def test_stretch_fills_frame() -> None:
    img = _smooth_rgb(100, 400)
    out, geo = preprocess(img, STRETCH)
    assert out.shape == (256, 256, 3)
    assert geo.region == (0, 0, 256, 256)
    assert geo.valid_mask().all()
    assert geo.scale_y == pytest.approx(2.56) and geo.scale_x == pytest.approx(0.64)
    # One axis enlarged -> INTER_LINEAR (documented rule).
    np.testing.assert_array_equal(out, cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR))
    back = geo.to_original(np.ones((256, 256), np.float32))
    assert back.shape == (100, 400)


def test_interpolation_rule_area_down_linear_up() -> None:
    big = _rand((512, 640, 3), seed=1)
    out, _ = preprocess(big, STRETCH)
    np.testing.assert_array_equal(out, cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA))
    small = _rand((64, 64, 3), seed=2)
    out, _ = preprocess(small, STRETCH)
    np.testing.assert_array_equal(out, cv2.resize(small, (256, 256), interpolation=cv2.INTER_LINEAR))
    linear = PreprocessSpec(height=256, width=256, resize="stretch", color="rgb", interpolation="linear")
    out, _ = preprocess(big, linear)
    np.testing.assert_array_equal(out, cv2.resize(big, (256, 256), interpolation=cv2.INTER_LINEAR))


def test_non_contiguous_input_and_input_untouched() -> None:
    base = _rand((200, 800, 3), seed=3)
    view = base[:, ::2]  # 200x400, not C-contiguous
    before = view.copy()
    out_view, geo_view = preprocess(view, LETTERBOX)
    out_copy, geo_copy = preprocess(np.ascontiguousarray(view), LETTERBOX)
    np.testing.assert_array_equal(out_view, out_copy)
    assert geo_view == geo_copy
    np.testing.assert_array_equal(view, before)


# --------------------------------------------------------------------------- colour handling


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_gray_spec_colour_and_gray_versions_score_the_same(resize: str) -> None:
    spec = PreprocessSpec(height=128, width=192, resize=resize, color="gray")
    colour = _smooth_rgb(150, 300)
    gray = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.dstack([colour, _rand((150, 300), seed=4)])
    out_c, geo_c = preprocess(colour, spec)
    for other in (gray, gray3, gray[:, :, None], rgba):
        out_o, geo_o = preprocess(other, spec)
        np.testing.assert_array_equal(out_o, out_c)
        assert geo_o == geo_c
    assert (out_c[..., 0] == out_c[..., 1]).all() and (out_c[..., 1] == out_c[..., 2]).all()


def test_rgb_spec_replicates_gray_input() -> None:
    gray = _rand((300, 200), seed=5)
    out, _ = preprocess(gray, LETTERBOX)
    out3, _ = preprocess(np.repeat(gray[:, :, None], 3, axis=2), LETTERBOX)
    np.testing.assert_array_equal(out, out3)
    assert (out[..., 0] == out[..., 2]).all()


def test_rgb_spec_keeps_channel_order() -> None:
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    out, _ = preprocess(red, STRETCH)
    assert (out[..., 0] == 255).all() and (out[..., 1:] == 0).all()


def test_rgba_drops_alpha() -> None:
    rgb = _rand((120, 90, 3), seed=6)
    rgba = np.dstack([rgb, _rand((120, 90), seed=7)])
    out_rgba, geo_rgba = preprocess(rgba, LETTERBOX)
    out_rgb, geo_rgb = preprocess(rgb, LETTERBOX)
    np.testing.assert_array_equal(out_rgba, out_rgb)
    assert geo_rgba == geo_rgb


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((256, 256, 2), np.float32), "got float32 (256, 256, 2)"),
        (np.zeros((64, 64, 3), np.uint16), "got uint16 (64, 64, 3)"),
        (np.zeros((64, 64, 3), np.float64), "got float64"),
        (np.zeros((64, 64, 2), np.uint8), "got uint8 (64, 64, 2)"),
        (np.zeros((2, 64, 64, 3), np.uint8), "got uint8 (2, 64, 64, 3)"),
        (np.zeros((64,), np.uint8), "got uint8 (64,)"),
    ],
)
def test_bad_image_raises_clear_error(image: np.ndarray, fragment: str) -> None:
    with pytest.raises(ValueError, match="expected uint8 HxW, HxWx3 or HxWx4 image") as info:
        preprocess(image, LETTERBOX)
    assert fragment in str(info.value)


def test_empty_and_non_array_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        preprocess(np.zeros((0, 10, 3), np.uint8), LETTERBOX)
    with pytest.raises(ValueError, match="got list"):
        preprocess([[1, 2], [3, 4]], LETTERBOX)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- batch


def test_batch_matches_single_calls() -> None:
    images = [_rand((100, 400, 3), 8), _rand((300, 200), 9), _rand((256, 256, 4), 10)]
    batch, geos = preprocess_batch(images, LETTERBOX)
    assert batch.shape == (3, 256, 256, 3) and batch.dtype == np.uint8 and batch.flags.c_contiguous
    for i, img in enumerate(images):
        out, geo = preprocess(img, LETTERBOX)
        np.testing.assert_array_equal(batch[i], out)
        assert geos[i] == geo


def test_batch_empty_and_error_names_index() -> None:
    batch, geos = preprocess_batch([], STRETCH)
    assert batch.shape == (0, 256, 256, 3) and geos == []
    with pytest.raises(ValueError, match=r"^image 1: expected uint8"):
        preprocess_batch([_rand((10, 10, 3)), np.zeros((10, 10), np.float32)], STRETCH)


# --------------------------------------------------------------------------- spec (de)serialisation


def test_spec_round_trip_and_defaults() -> None:
    spec = PreprocessSpec(height=736, width=96, resize="stretch", color="gray", pad_value=0)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    minimal = PreprocessSpec.from_dict({"height": 256, "width": 256, "resize": "letterbox", "color": "rgb"})
    assert minimal.pad_value == 114 and minimal.interpolation == "area"
    assert minimal.size == (256, 256)
    np_spec = PreprocessSpec(height=np.int64(64), width=64, resize="stretch", color="rgb")  # type: ignore[arg-type]
    assert type(np_spec.height) is int


_GOOD: dict[str, Any] = {"height": 256, "width": 256, "resize": "letterbox", "color": "rgb"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"height": 250}, "preprocess.height must be a positive multiple of 32, got 250"),
        ({"width": 0}, "preprocess.width must be a positive multiple of 32, got 0"),
        ({"width": -32}, "preprocess.width must be a positive multiple of 32"),
        ({"height": 256.0}, "preprocess.height must be a positive multiple of 32"),
        ({"height": True}, "preprocess.height must be a positive multiple of 32"),
        ({"height": "256"}, "preprocess.height must be a positive multiple of 32"),
        ({"resize": "crop"}, "preprocess.resize must be 'letterbox' or 'stretch', got 'crop'"),
        ({"color": "bgr"}, "preprocess.color must be 'rgb' or 'gray', got 'bgr'"),
        ({"pad_value": 300}, "preprocess.pad_value must be an integer in 0..255, got 300"),
        ({"pad_value": -1}, "preprocess.pad_value"),
        ({"interpolation": "cubic"}, "preprocess.interpolation must be 'area' or 'linear'"),
        ({"mean": [0.5]}, "preprocess.mean is not a known field"),
    ],
)
def test_from_dict_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        PreprocessSpec.from_dict({**_GOOD, **change})
    assert message in str(info.value)


@pytest.mark.parametrize("missing", ["height", "width", "resize", "color"])
def test_from_dict_missing_field(missing: str) -> None:
    d = {k: v for k, v in _GOOD.items() if k != missing}
    with pytest.raises(ValueError, match=rf"preprocess\.{missing} is missing"):
        PreprocessSpec.from_dict(d)


def test_from_dict_not_a_mapping_and_direct_construction_validates() -> None:
    with pytest.raises(ValueError, match="mapping"):
        PreprocessSpec.from_dict([256, 256])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"preprocess\.width"):
        PreprocessSpec(height=256, width=100, resize="letterbox", color="rgb")


# --------------------------------------------------------------------------- resolve_input_size


def test_auto_square_gives_256() -> None:
    assert resolve_input_size("auto", [(384, 384)] * 5) == (256, 256)
    assert resolve_input_size("auto", [(900, 900), (384, 384)]) == (256, 256)
    assert resolve_input_size("auto", [(384, 384)], base=384) == (384, 384)


def _check_auto(hw: tuple[int, int], aspect: float, base: int = 256) -> None:
    h, w = hw
    assert isinstance(h, int) and isinstance(w, int)
    assert h > 0 and w > 0 and h % 32 == 0 and w % 32 == 0
    assert abs(math.log((h / w) / aspect)) < math.log(1.2), (hw, aspect)
    assert abs(math.log(h * w / base**2)) < math.log(1.15), (hw, aspect)


def test_auto_thin_part_keeps_aspect_and_resolution() -> None:
    tall = resolve_input_size("auto", [(800, 100), (1600, 200), (808, 101)])
    _check_auto(tall, 8.0)
    assert tall == (736, 96)
    wide = resolve_input_size("auto", [(100, 800)])
    assert wide == (96, 736)


def test_auto_uses_median_aspect() -> None:
    sizes = [(300, 400)] * 5 + [(100, 800), (4000, 100)]
    _check_auto(resolve_input_size("auto", sizes), 0.75)


def test_auto_clamps_aspect() -> None:
    assert resolve_input_size("auto", [(2000, 100)]) == resolve_input_size("auto", [(800, 100)])
    _check_auto(resolve_input_size("auto", [(400, 100)], max_aspect=2.0), 2.0)


@pytest.mark.parametrize("aspect", [1 / 8, 0.2, 0.37, 0.75, 1.0, 1.16, 1.5, 2.7, 5.0, 8.0])
def test_auto_many_aspects(aspect: float) -> None:
    _check_auto(resolve_input_size("auto", [(round(aspect * 1000), 1000)]), aspect)


def test_explicit_size_and_errors() -> None:
    assert resolve_input_size((320, 480), []) == (320, 480)
    assert resolve_input_size([64, 96], [(1, 1)]) == (64, 96)
    with pytest.raises(ValueError, match="height must be a positive multiple of 32"):
        resolve_input_size((250, 256), [])
    with pytest.raises(ValueError, match="'auto' or"):
        resolve_input_size("big", [(10, 10)])
    with pytest.raises(ValueError, match="'auto' or"):
        resolve_input_size((256, 256, 3), [])
    with pytest.raises(ValueError, match="got none"):
        resolve_input_size("auto", [])
    with pytest.raises(ValueError, match="max_aspect"):
        resolve_input_size("auto", [(10, 10)], max_aspect=0.5)


# --------------------------------------------------------------------------- torch-free


def test_preprocess_never_imports_torch() -> None:
    code = "import sys, engines, engines.preprocess; sys.exit(1 if 'torch' in sys.modules else 0)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preprocess_batch_writes_into_a_reused_buffer() -> None:
    spec = PreprocessSpec(32, 64, "letterbox", "rgb")
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (40, 50, 3), dtype=np.uint8),
        rng.integers(0, 255, (20, 90), dtype=np.uint8),
    ]
    fresh, geoms = preprocess_batch(images, spec)
    buf = np.full((2, 32, 64, 3), 7, dtype=np.uint8)  # stale content from an earlier batch
    reused, geoms2 = preprocess_batch(images, spec, out=buf)
    assert reused is buf and geoms2 == geoms
    np.testing.assert_array_equal(reused, fresh)  # padding rewritten too, nothing of the old batch left
    with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 array of shape \(2, 32, 64, 3\)"):
        preprocess_batch(images, spec, out=np.empty((3, 32, 64, 3), np.uint8))


# ---------------------------------------------------------------------------------------------- tiling


def _tiled(**kw: object) -> PreprocessSpec:
    base: dict[str, object] = {
        "height": 64,
        "width": 256,
        "resize": "letterbox",
        "color": "gray",
        "tile_frame": (64, 1024),
        "tile_overlap": 32,
    }
    base.update(kw)
    return PreprocessSpec(**base)  # type: ignore[arg-type]


def test_tiled_spec_round_trips_and_names_bad_fields() -> None:
    spec = _tiled()
    assert spec.tiled and spec.frame_size == (64, 1024) and spec.size == (64, 256)
    assert spec.grid.count == 5
    d = spec.to_dict()
    assert d["tiles"] == {"frame_height": 64, "frame_width": 1024, "overlap": 32}
    assert PreprocessSpec.from_dict(d) == spec
    plain = spec.tile_spec()
    assert not plain.tiled and "tiles" not in plain.to_dict() and plain.grid.count == 1
    with pytest.raises(ValueError, match=r"preprocess.tiles.frame_width"):
        PreprocessSpec.from_dict({**d, "tiles": {"frame_height": 64, "overlap": 0}})
    with pytest.raises(ValueError, match=r"preprocess.tiles.extra"):
        PreprocessSpec.from_dict({**d, "tiles": {**d["tiles"], "extra": 1}})
    with pytest.raises(ValueError, match=r"preprocess.tiles: a tile of 256 px does not fit"):
        _tiled(tile_frame=(64, 224))
    with pytest.raises(ValueError, match=r"preprocess.tiles.frame_width must be a positive multiple of 32"):
        _tiled(tile_frame=(64, 1000))
    with pytest.raises(ValueError, match="not tiled"):
        PreprocessSpec(height=64, width=64, resize="stretch", color="rgb", tile_overlap=8)


def test_tiled_preprocess_places_the_image_in_the_frame_and_model_inputs_are_its_tiles() -> None:
    spec = _tiled()
    rng = np.random.default_rng(1)
    strip = rng.integers(0, 256, (64, 1024), dtype=np.uint8)
    short = rng.integers(0, 256, (32, 256), dtype=np.uint8)  # half the scale: letterboxed into the frame
    batch, geoms = preprocess_batch([strip, short], spec)
    assert batch.shape == (2, 64, 1024, 3)
    np.testing.assert_array_equal(batch[0, :, :, 0], strip)  # native resolution: no resize at all
    assert geoms[1].region == (0, 256, 64, 512)  # centred
    inputs, valid = model_inputs(batch, geoms, spec)
    assert inputs.shape == (10, 64, 256, 3) and valid.shape == (10, 1, 64, 256)
    np.testing.assert_array_equal(inputs[1], batch[0, :, 192:448])
    # the second image covers the middle half of its frame: its first and last tiles are all padding
    assert valid[5].sum() == 0 and valid[9].sum() == 0 and valid[7].all()
    maps = inputs[..., 0].astype(np.float32)
    scores = maps.reshape(10, -1).max(axis=1)
    stitched, image_scores = merge_outputs(maps[:, None], scores, spec)
    assert stitched.shape == (2, 64, 1024)
    np.testing.assert_array_equal(stitched[:, :, :, None], batch[..., :1].astype(np.float32))
    np.testing.assert_array_equal(image_scores, [strip.max(), batch[1].max()])
    # untiled specs pass through unchanged
    plain = spec.tile_spec()
    b2, g2 = preprocess_batch([strip[:, :256]], plain)
    i2, v2 = model_inputs(b2, g2, plain)
    assert i2 is b2 and v2.shape == (1, 1, 64, 256)


def test_resolve_tiling_keeps_native_resolution_up_to_max_tiles() -> None:
    # a 16:1 line-scan strip stays at its native 64x1024: 5 tiles 64 px high
    assert resolve_tiling([(64, 1024)] * 3) == ((64, 1024), (64, 256), 32, 1.0)
    # a square 384 px part: native, 2x2 tiles
    assert resolve_tiling([(384, 384)]) == ((384, 384), (256, 256), 32, 1.0)
    # a 2048 px image is scaled down until at most max_tiles tiles are needed
    frame, tile, overlap, scale = resolve_tiling([(2048, 2048)], max_tiles=16)
    assert tile == (256, 256) and scale < 1.0
    assert TileGrid(*frame, *tile, overlap).count <= 16
    bigger = _round32(2048 * scale / 0.9)  # the step before: too many tiles
    assert TileGrid(bigger, bigger, *tile, overlap).count > 16
    # a fixed scale is taken as is; the median size decides the frame
    assert resolve_tiling([(100, 1000), (64, 1024), (64, 1100)], scale=2.0)[0] == (128, 2048)
    assert resolve_tiling([(64, 1024)], tile=32, overlap=32)[1:3] == ((32, 32), 16)
    with pytest.raises(ValueError, match="sizes"):
        resolve_tiling([])
    with pytest.raises(ValueError, match="scale"):
        resolve_tiling([(64, 64)], scale="big")


def _round32(x: float) -> int:
    return max(32, 32 * int(np.floor(x / 32 + 0.5)))
