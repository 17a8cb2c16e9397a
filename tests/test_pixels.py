"""engines.pixels: every camera pixel format to the canonical image, and the same image from every source."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import SourceSection
from edge.sources import open_source
from edge.sources.genicam import buffer_to_array
from engines.pixels import CANONICAL, PIXEL_FORMATS, PixelFormatError, check_pixel_format, to_canonical

RGB = (200, 100, 50)
# SFNC Bayer name -> (row, col) of the red and of the blue sample in each 2x2 cell.
BAYER_SITES = {"RG": ((0, 0), (1, 1)), "GR": ((0, 1), (1, 0)), "GB": ((1, 0), (0, 1)), "BG": ((1, 1), (0, 0))}


def _image(h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_canonical_and_format_list() -> None:
    assert CANONICAL == "RGB8"
    assert check_pixel_format("BayerGB12") == "BayerGB12"
    for name in ("Mono8", "Mono12", "RGB8", "BGR8", "RGBa8", "BGRa8", "BGR16", "RGBa12", "BayerRG8"):
        assert name in PIXEL_FORMATS


@pytest.mark.parametrize(("fmt", "bits"), [("Mono10", 10), ("Mono12", 12), ("Mono14", 14), ("Mono16", 16)])
def test_mono_high_bit_depths_shift_to_8_bits(fmt: str, bits: int) -> None:
    top = (1 << bits) - 1
    frame = np.array([[0, 1 << (bits - 8), top, top - 1, (1 << (bits - 8)) - 1, 1 << (bits - 1)]], np.uint16)
    out = to_canonical(frame, fmt)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    np.testing.assert_array_equal(out, [[0, 1, 255, 255, 0, 128]])


def test_mono12_rule_is_the_plain_shift_and_saturates_above_range() -> None:
    frame = np.array([[4095, 4080, 4079, 15, 16, 2048, 5000, 65535]], np.uint16)
    out = to_canonical(frame, "Mono12")
    # >> 4: 4095 -> 255, 4079 -> 254 (no rounding up), 15 -> 0; values above 12 bits saturate at 255.
    np.testing.assert_array_equal(out, [[255, 255, 254, 0, 1, 128, 255, 255]])


def test_mono8_passthrough_and_single_channel_axis() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_canonical(gray, "Mono8") is gray  # already canonical: no copy
    np.testing.assert_array_equal(to_canonical(gray[:, :, None], "Mono8"), gray)


def test_colour_orders_and_alpha() -> None:
    rgb = _image()
    bgr = rgb[:, :, ::-1].copy()
    alpha = np.full((*rgb.shape[:2], 1), 99, np.uint8)
    np.testing.assert_array_equal(to_canonical(rgb, "RGB8"), rgb)
    np.testing.assert_array_equal(to_canonical(bgr, "BGR8"), rgb)
    np.testing.assert_array_equal(to_canonical(np.concatenate([rgb, alpha], 2), "RGBa8"), rgb)
    np.testing.assert_array_equal(to_canonical(np.concatenate([bgr, alpha], 2), "BGRa8"), rgb)
    wide = rgb.astype(np.uint16) << 8 | 0xFF
    np.testing.assert_array_equal(to_canonical(wide[:, :, ::-1].copy(), "BGR16"), rgb)
    np.testing.assert_array_equal(to_canonical((rgb.astype(np.uint16) << 4), "RGB12"), rgb)
    wide_a = np.concatenate([wide, np.zeros_like(wide[:, :, :1])], 2)
    np.testing.assert_array_equal(to_canonical(wide_a, "RGBa16"), rgb)
    for out in (to_canonical(bgr, "BGR8"), to_canonical(rgb[:, ::2], "RGB8")):
        assert out.flags["C_CONTIGUOUS"] and out.dtype == np.uint8


def _mosaic(pattern: str, h: int = 16, w: int = 16, rgb: tuple[int, int, int] = RGB) -> np.ndarray:
    """The sensor samples of a flat ``rgb`` scene under the SFNC ``Bayer<pattern>`` colour filter."""
    (ry, rx), (by, bx) = BAYER_SITES[pattern]
    m = np.full((h, w), rgb[1], np.uint16)
    m[ry::2, rx::2] = rgb[0]
    m[by::2, bx::2] = rgb[2]
    return m


@pytest.mark.parametrize("pattern", sorted(BAYER_SITES))
@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_every_bayer_pattern_demosaics_a_flat_colour(pattern: str, bits: int) -> None:
    mosaic = _mosaic(pattern) << (bits - 8)
    frame = mosaic.astype(np.uint8) if bits == 8 else mosaic.astype(np.uint16)
    out = to_canonical(frame, f"Bayer{pattern}{bits}")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    interior = out[2:-2, 2:-2].reshape(-1, 3)
    assert (interior == np.array(RGB, np.uint8)).all(), f"Bayer{pattern}{bits} gave {interior[0]}"


def test_errors_name_the_problem() -> None:
    with pytest.raises(PixelFormatError, match=r"unknown pixel format 'YUV422'.*Mono8.*GenICam SFNC"):
        to_canonical(np.zeros((2, 2), np.uint8), "YUV422")
    with pytest.raises(PixelFormatError, match=r"Mono12 frame must be uint16 .*low 12 bits.*got uint8"):
        to_canonical(np.zeros((2, 2), np.uint8), "Mono12")
    with pytest.raises(PixelFormatError, match="Mono8 frame must be uint8, got uint16"):
        to_canonical(np.zeros((2, 2), np.uint16), "Mono8")
    with pytest.raises(PixelFormatError, match=r"Mono8 frame must be \(h, w\), got shape \(2, 2, 3\)"):
        to_canonical(np.zeros((2, 2, 3), np.uint8), "Mono8")
    with pytest.raises(PixelFormatError, match=r"RGBa8 frame must be \(h, w, 4\), got shape \(2, 2, 3\)"):
        to_canonical(np.zeros((2, 2, 3), np.uint8), "RGBa8")
    with pytest.raises(PixelFormatError, match="BGR8 frame must be uint8, got uint16"):
        to_canonical(np.zeros((2, 2, 3), np.uint16), "BGR8")
    with pytest.raises(PixelFormatError, match=r"BayerRG8 frame must be a \(h, w\) mosaic"):
        to_canonical(np.zeros((2, 2, 3), np.uint8), "BayerRG8")
    with pytest.raises(PixelFormatError, match="empty or not an image"):
        to_canonical(np.zeros((0, 4), np.uint8), "Mono8")
    with pytest.raises(PixelFormatError, match=r"expected a numpy array .*got list"):
        to_canonical([[1, 2]], "Mono8")  # type: ignore[arg-type]
    assert issubclass(PixelFormatError, ValueError)


def test_same_image_from_every_source_gives_identical_canonical_arrays(tmp_path: Path) -> None:
    rgb = _image(40, 56, seed=7)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    # 1. a PNG replayed by the folder source
    (tmp_path / "imgs").mkdir()
    assert cv2.imwrite(str(tmp_path / "imgs" / "part.png"), bgr)
    with open_source("folder", SourceSection(kind="folder", path=str(tmp_path / "imgs"))) as src:
        frame = src.read(1.0)
    assert frame is not None and frame.image is not None
    from_folder = frame.image
    # 2. an OpenCV frame (BGR), as VideoCapture delivers it, and through the OpenCV source (lossless FFV1)
    from_opencv_frame = to_canonical(bgr, "BGR8")
    writer = cv2.VideoWriter(str(tmp_path / "part.avi"), cv2.VideoWriter.fourcc(*"FFV1"), 10, (56, 40))
    writer.write(bgr)
    writer.release()
    with open_source("video", SourceSection(kind="opencv", uri=str(tmp_path / "part.avi"))) as src:
        frame = src.read(5.0)
    assert frame is not None and frame.image is not None
    from_opencv_source = frame.image
    # 3. a GenICam RGBa8 buffer: flat bytes, width, height
    rgba = np.concatenate([rgb, np.full((40, 56, 1), 255, np.uint8)], axis=2)
    from_genicam = to_canonical(buffer_to_array(rgba.reshape(-1).copy(), 56, 40, "RGBa8"), "RGBa8")
    for arr in (from_folder, from_opencv_frame, from_opencv_source, from_genicam):
        assert arr.dtype == np.uint8 and arr.shape == (40, 56, 3)
        np.testing.assert_array_equal(arr, rgb)


def test_one_part_scores_the_same_from_a_file_an_opencv_frame_and_a_genicam_buffer(tmp_path: Path) -> None:
    """One physical part, three ways in: an image file (as the trainer and the folder camera read it), an
    OpenCV BGR frame, and a GenICam RGBa8 buffer; one score."""
    from edge_support import make_tiny_bundle, part_image

    from engines.backends import get_backend
    from engines.pixels import decode_image
    from trainer.data.io import read_image

    rgb = part_image(True, seed=3)
    path = tmp_path / "part.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    from_trainer = read_image(path)
    from_file = to_canonical(*decode_image(np.fromfile(path, dtype=np.uint8)))
    from_opencv = to_canonical(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "BGR8")
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    from_genicam = to_canonical(rgba.reshape(-1).reshape(rgb.shape[0], rgb.shape[1], 4), "RGBa8")
    backend = get_backend("onnxruntime").from_bundle(make_tiny_bundle(tmp_path / "b").path)
    scores = backend.infer([from_trainer, from_file, from_opencv, from_genicam]).score
    assert scores[0] > 1.0  # the part has a defect: the comparison is not between empty maps
    np.testing.assert_array_equal(scores, np.full(4, scores[0]))
