"""Tests for trainer.data.io (image / mask reading)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.data.io import image_sha256, is_grayscale, read_image, read_mask
from trainer.errors import DataError, UserError


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image), path
    return path


def _rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------- read_image


def test_pure_red_bgr_file_reads_as_rgb_red(tmp_path: Path) -> None:
    bgr = np.zeros((32, 48, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    for ext in (".png", ".jpg", ".bmp", ".tif"):
        img = read_image(_write(tmp_path / f"red{ext}", bgr))
        assert img.shape == (32, 48, 3) and img.dtype == np.uint8
        assert (img[..., 0] >= 250).all(), ext
        assert (img[..., 1:] <= 5).all(), ext


def test_png_colour_round_trip_exact(tmp_path: Path) -> None:
    rgb = _rand((40, 30, 3))
    img = read_image(_write(tmp_path / "c.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    np.testing.assert_array_equal(img, rgb)
    assert img.flags.c_contiguous


def test_gray_png_and_jpg_stay_2d(tmp_path: Path) -> None:
    gray = _rand((50, 70), seed=1)
    png = read_image(_write(tmp_path / "g.png", gray))
    assert png.shape == (50, 70) and png.dtype == np.uint8
    np.testing.assert_array_equal(png, gray)
    smooth = np.tile(np.arange(70, dtype=np.uint8) * 3, (50, 1))
    jpg = read_image(_write(tmp_path / "g.JPG", smooth))
    assert jpg.shape == (50, 70)
    assert np.abs(jpg.astype(int) - smooth).max() <= 8


def test_colour_file_with_equal_channels_stays_3_channel(tmp_path: Path) -> None:
    gray = _rand((20, 20), seed=2)
    img = read_image(_write(tmp_path / "g3.png", np.dstack([gray, gray, gray])))
    assert img.shape == (20, 20, 3)
    assert is_grayscale(img)


def test_16_bit_png_scaled_to_8_bit(tmp_path: Path) -> None:
    gray16 = np.array([[0, 255, 256, 65535], [4096, 32768, 1000, 65280]], np.uint16)
    img = read_image(_write(tmp_path / "g16.png", gray16))
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, (gray16 >> 8).astype(np.uint8))
    bgr16 = np.zeros((4, 4, 3), np.uint16)
    bgr16[..., 2] = 65535
    rgb = read_image(_write(tmp_path / "c16.png", bgr16))
    assert rgb.dtype == np.uint8 and (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()


def test_alpha_dropped(tmp_path: Path) -> None:
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 0] = 255  # blue
    bgra[..., 3] = 10
    img = read_image(_write(tmp_path / "a.png", bgra))
    assert img.shape == (8, 8, 3)
    assert (img[..., 2] == 255).all() and (img[..., :2] == 0).all()


def test_unicode_path(tmp_path: Path) -> None:
    folder = tmp_path / "Prüfteil_測試"
    folder.mkdir()
    target = folder / "bild_ä.png"
    ok, buf = cv2.imencode(".png", _rand((6, 6), seed=3))
    assert ok
    buf.tofile(str(target))
    assert read_image(target).shape == (6, 6)


def test_corrupt_file_raises_data_error_with_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as info:
        read_image(bad)
    msg = str(info.value)
    assert str(bad) in msg and "not a valid PNG/JPEG/BMP/TIFF" in msg and "\n" not in msg
    assert isinstance(info.value, UserError)


def test_empty_missing_and_directory_raise_data_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_image(empty)
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="not found") as info:
        read_image(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(DataError, match="directory"):
        read_image(tmp_path)


def test_float_tiff_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.tiff", np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match="float32"):
        read_image(path)


# --------------------------------------------------------------------------- read_mask


def test_mask_0_255(tmp_path: Path) -> None:
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:9] = 255
    m[0, 0] = 127  # not a defect (> 127 is)
    m[0, 1] = 128
    mask = read_mask(_write(tmp_path / "m.png", m), (10, 12))
    assert mask.dtype == bool and mask.shape == (10, 12)
    expected = m > 127
    np.testing.assert_array_equal(mask, expected)


def test_mask_0_1_and_empty(tmp_path: Path) -> None:
    m = np.zeros((10, 12), np.uint8)
    m[4:6, 4:6] = 1
    mask = read_mask(_write(tmp_path / "m01.png", m), (10, 12, 3))
    assert mask.sum() == 4 and mask[4:6, 4:6].all()
    empty = read_mask(_write(tmp_path / "m0.png", np.zeros((10, 12), np.uint8)), (10, 12))
    assert not empty.any()


def test_colour_and_16_bit_masks(tmp_path: Path) -> None:
    m = np.zeros((6, 6, 3), np.uint8)
    m[1, 1] = (255, 255, 255)
    m[2, 2] = (0, 0, 255)
    assert read_mask(_write(tmp_path / "mc.png", m), (6, 6)).sum() == 2
    m16 = np.zeros((6, 6), np.uint16)
    m16[3, 3] = 65535
    m16[4, 4] = 200  # below half range
    mask16 = read_mask(_write(tmp_path / "m16.png", m16), (6, 6))
    assert mask16.sum() == 1 and mask16[3, 3]


def test_mask_wrong_size_names_both_sizes(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError) as info:
        read_mask(path, (20, 30))
    msg = str(info.value)
    assert "10x12" in msg and "20x30" in msg and str(path) in msg


def test_mask_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "m.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read mask"):
        read_mask(bad, (4, 4))
    with pytest.raises(DataError, match="not found"):
        read_mask(tmp_path / "missing_mask.png", (4, 4))


# --------------------------------------------------------------------------- helpers


def test_is_grayscale() -> None:
    g = _rand((5, 5), seed=4)
    assert is_grayscale(g)
    assert is_grayscale(g[:, :, None])
    assert is_grayscale(np.dstack([g, g, g]))
    assert is_grayscale(np.dstack([g, g, g, _rand((5, 5), seed=5)]))
    c = np.dstack([g, g, g])
    c[0, 0, 1] ^= 1
    assert not is_grayscale(c)
    assert not is_grayscale(np.zeros((5,), np.uint8))


def test_image_sha256(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"hello")
    assert image_sha256(path) == hashlib.sha256(b"hello").hexdigest()
    with pytest.raises(DataError, match=r"x_missing\.bin"):
        image_sha256(tmp_path / "x_missing.bin")
