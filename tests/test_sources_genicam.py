"""GenICam source against the GenTL simulator producer shipped in the ``genicam`` wheel (viky.cti).

The simulator lists three cameras (serials 0, 1, 2; vendor "Machine Vision Games Ltd.", model "Viky"),
400x400 RGBa8 or Mono8, about 20 fps, and has no trigger nodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.config import SourceSection
from edge.errors import SourceError
from edge.sources import open_source
from edge.sources.genicam import GenICamSource, buffer_to_array
from engines.pixels import PixelFormatError

genicam = pytest.importorskip(
    "genicam", reason="GenICam extra not installed: pip install 'masf-edge[genicam]'"
)
pytest.importorskip("harvesters", reason="GenICam extra not installed: pip install 'masf-edge[genicam]'")
VIKY = Path(genicam.__file__).parent / "viky.cti"
if not VIKY.is_file():
    pytest.skip("this genicam wheel ships no viky.cti simulator", allow_module_level=True)


def _source(triggered: bool = False, **fields: object) -> GenICamSource:
    section = SourceSection(kind="genicam", cti=[str(VIKY)], **fields)  # type: ignore[arg-type]
    src = open_source("cam1", section, triggered=triggered)
    assert isinstance(src, GenICamSource)
    return src


def test_open_first_camera_rgba8_gives_rgb_frames() -> None:
    with _source() as src:
        d = src.describe()
        assert (d["vendor"], d["model"], d["serial_number"]) == ("Machine Vision Games Ltd.", "Viky", "0")
        assert (d["pixel_format"], d["width"], d["height"], d["triggered"]) == ("RGBa8", 400, 400, False)
        assert not src.supports_trigger
        frames = [src.read(3.0) for _ in range(3)]
    for f in frames:
        assert f is not None and f.error is None and f.pixel_format == "RGBa8"
        assert f.image is not None and f.image.shape == (400, 400, 3) and f.image.dtype == np.uint8
        assert f.meta["serial"] == "0"
    ids = [int(f.acquisition_id) for f in frames if f]
    assert ids == sorted(ids) and len(set(ids)) == 3  # the buffers' frame ids


def test_open_by_serial_with_mono8_size_and_frame_rate() -> None:
    with _source(serial="2", pixel_format="Mono8", width=200, height=120, fps=50.0) as src:
        assert src.serial == "2" and src.describe()["id_"] == "VikyTL_DEV_blue"
        frame = src.read(3.0)
    assert frame is not None and frame.error is None and frame.pixel_format == "Mono8"
    assert frame.image is not None and frame.image.shape == (120, 200) and frame.image.dtype == np.uint8


def test_pixel_format_mono8_and_rgba8_on_the_same_camera() -> None:
    with _source(serial="1", pixel_format="Mono8") as src:
        gray = src.read(3.0)
    with _source(serial="1", pixel_format="RGBa8") as src:
        rgb = src.read(3.0)
    assert gray is not None and gray.image is not None and gray.image.shape == (400, 400)
    assert rgb is not None and rgb.image is not None and rgb.image.shape == (400, 400, 3)


def test_wrong_serial_lists_the_serials_found() -> None:
    with pytest.raises(SourceError, match=r"no GenICam camera with serial '9'; found serials: 0, 1, 2"):
        _source(serial="9")
    with pytest.raises(SourceError, match=r"user_id 'line1-top'; found user_ids: .none."):
        _source(user_id="line1-top")


def test_refused_settings_are_one_line_errors() -> None:
    with pytest.raises(SourceError, match=r"refuses Width = 5000 .*range is 100..800 \(fix source.width\)"):
        _source(width=5000)
    with pytest.raises(SourceError, match=r"refuses PixelFormat = Mono12 .*offers RGBa8, Mono8"):
        _source(pixel_format="Mono12")
    with pytest.raises(SourceError, match=r"has no ExposureTime node \(remove source.exposure_us"):
        _source(exposure_us=5000.0)


def test_triggered_mode_without_trigger_nodes_is_an_error() -> None:
    with pytest.raises(SourceError, match=r"has no trigger nodes .*free_run, or a folder source with step"):
        _source(triggered=True)
    # The failed open released the camera: it opens again.
    with _source() as src:
        assert src.read(3.0) is not None


def test_missing_producer_file(tmp_path: Path) -> None:
    section = SourceSection(kind="genicam", cti=[str(tmp_path / "vendor.cti")])
    with pytest.raises(SourceError, match=r"GenTL producer .*vendor.cti not found"):
        open_source("cam1", section)


def test_close_releases_the_camera_and_it_opens_again() -> None:
    src = _source(serial="0")
    assert src.read(3.0) is not None
    src.close()
    src.close()  # idempotent
    with pytest.raises(SourceError, match="closed"):
        src.read(0.1)
    with _source(serial="0") as again:
        assert again.read(3.0) is not None


def test_buffer_to_array_shapes_dtypes_and_padding() -> None:
    flat = np.arange(2 * 3 * 4, dtype=np.uint8)
    np.testing.assert_array_equal(buffer_to_array(flat, 3, 2, "RGBa8"), flat.reshape(2, 3, 4))
    mono12 = np.array([0, 4095, 16, 256, 1000, 2000], np.uint16)
    np.testing.assert_array_equal(buffer_to_array(mono12, 3, 2, "Mono12"), mono12.reshape(2, 3))
    # uint16 samples delivered as raw little-endian bytes
    raw = mono12.astype("<u2").view(np.uint8)
    out = buffer_to_array(raw, 3, 2, "Mono16")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, mono12.reshape(2, 3))
    # 2 padding bytes after each 3-pixel line (the last line may come without them)
    padded = np.array([1, 2, 3, 0, 0, 4, 5, 6], np.uint8)
    np.testing.assert_array_equal(buffer_to_array(padded, 3, 2, "Mono8", x_padding=2), [[1, 2, 3], [4, 5, 6]])
    # a copy: later changes of the producer's buffer do not reach the frame
    out8 = buffer_to_array(flat, 3, 2, "RGBa8")
    flat[:] = 0
    assert out8.max() > 0
    with pytest.raises(PixelFormatError, match=r"too few for 3x2 .*truncated"):
        buffer_to_array(np.zeros(5, np.uint8), 3, 2, "Mono8")
    with pytest.raises(PixelFormatError, match="'Mono12p' is not supported"):
        buffer_to_array(np.zeros(9, np.uint8), 3, 2, "Mono12p")
