"""Folder replay source: order, loop ids, pacing, step triggers, bad files and vanished folders."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import SourceSection
from edge.errors import SourceError
from edge.sources import EndOfStream, open_source
from edge.sources.folder import FolderSource


def _write_images(folder: Path, n: int, size: tuple[int, int] = (24, 32)) -> list[np.ndarray]:
    """``n`` distinct RGB images as 000.png .. (written BGR, as OpenCV stores them); returns the RGB ones."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        rgb = np.zeros((*size, 3), np.uint8)
        rgb[..., 0] = 10 * i
        rgb[..., 1] = 100
        rgb[..., 2] = 255 - 10 * i
        assert cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        images.append(rgb)
    return images


def _source(path: Path, **fields: object) -> FolderSource:
    src = open_source("cam1", SourceSection(kind="folder", path=str(path), **fields))  # type: ignore[arg-type]
    assert isinstance(src, FolderSource)
    return src


def test_reads_images_in_name_order_then_end_of_stream(tmp_path: Path) -> None:
    images = _write_images(tmp_path / "imgs", 3)
    # Other suffixes, case variants and non-images: only the image suffixes count, in name order.
    cv2.imwrite(str(tmp_path / "imgs" / "010.JPG"), np.full((24, 32, 3), 7, np.uint8))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "sub.png").mkdir()
    with _source(tmp_path / "imgs") as src:
        assert src.describe() == {
            "kind": "folder", "path": str(tmp_path / "imgs"), "count": 4, "position": 0, "pass": 0,
            "loop": False, "step": False, "fps": 0.0,
        }  # fmt: skip
        frames = [src.read(1.0) for _ in range(4)]
        with pytest.raises(EndOfStream):
            src.read(1.0)
        assert src.describe()["position"] == 4
    assert [f.acquisition_id for f in frames if f] == ["000.png", "001.png", "002.png", "010.JPG"]
    for frame, rgb in zip(frames, images, strict=False):
        assert frame is not None and frame.error is None and frame.pixel_format == "BGR8"
        np.testing.assert_array_equal(frame.image, rgb)  # canonical RGB, not OpenCV's BGR
        assert frame.meta["path"].endswith(frame.acquisition_id)
    assert frames[3] is not None and frames[3].image is not None and frames[3].image.shape == (24, 32, 3)


def test_loop_restarts_with_pass_counter_in_the_id(tmp_path: Path) -> None:
    _write_images(tmp_path, 2)
    with _source(tmp_path, loop=True) as src:
        ids = [src.read(1.0).acquisition_id for _ in range(5)]  # type: ignore[union-attr]
    assert ids == ["0000:000.png", "0000:001.png", "0001:000.png", "0001:001.png", "0002:000.png"]


def test_fps_paces_delivery(tmp_path: Path) -> None:
    _write_images(tmp_path, 5)
    with _source(tmp_path, fps=20.0) as src:
        t0 = time.monotonic()
        frames = [src.read(1.0) for _ in range(5)]
        elapsed = time.monotonic() - t0
    assert all(f is not None for f in frames)
    assert elapsed >= 0.18  # 4 periods of 50 ms after the first frame; no upper bound (shared CPUs)


def test_fps_read_returns_none_before_the_next_frame_is_due(tmp_path: Path) -> None:
    _write_images(tmp_path, 2)
    with _source(tmp_path, fps=2.0) as src:
        assert src.read(1.0) is not None
        assert src.read(0.01) is None  # the next one is due in 0.5 s
        assert src.read(2.0) is not None


def test_step_mode_gives_one_image_per_trigger(tmp_path: Path) -> None:
    _write_images(tmp_path, 3)
    with _source(tmp_path, step=True) as src:
        assert src.supports_trigger
        assert src.read(0.05) is None  # no trigger: no frame
        src.trigger()
        first = src.read(0.05)
        assert first is not None and first.acquisition_id == "000.png"
        assert src.read(0.05) is None  # exactly one per trigger
        src.trigger()
        src.trigger()  # triggers given ahead are kept, none lost
        assert src.read(0.05).acquisition_id == "001.png"  # type: ignore[union-attr]
        assert src.read(0.05).acquisition_id == "002.png"  # type: ignore[union-attr]
        # A trigger from another thread wakes a waiting read.
        timer = threading.Timer(0.05, src.trigger)
        timer.start()
        with pytest.raises(EndOfStream):
            src.read(1.0)
        timer.join()


def test_step_read_waits_for_a_trigger_from_another_thread(tmp_path: Path) -> None:
    _write_images(tmp_path, 1)
    with _source(tmp_path, step=True) as src:
        timer = threading.Timer(0.1, src.trigger)
        t0 = time.monotonic()
        timer.start()
        frame = src.read(5.0)
        timer.join()
    assert frame is not None and frame.acquisition_id == "000.png"
    assert time.monotonic() - t0 < 4.0


def test_free_run_folder_has_no_trigger(tmp_path: Path) -> None:
    _write_images(tmp_path, 1)
    with _source(tmp_path) as src:
        assert not src.supports_trigger
        with pytest.raises(SourceError, match="no software trigger"):
            src.trigger()


def test_corrupt_file_gives_a_frame_with_an_error(tmp_path: Path) -> None:
    _write_images(tmp_path, 2)
    (tmp_path / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    (tmp_path / "005.jpg").write_bytes(b"")
    with _source(tmp_path) as src:
        bad, good, empty = src.read(1.0), src.read(1.0), src.read(1.0)
    assert bad is not None and bad.image is None and bad.acquisition_id == "000.png"
    assert bad.error is not None and "000.png" in bad.error and "re-export or remove" in bad.error
    assert "\n" not in bad.error
    assert good is not None and good.error is None and good.image is not None
    assert empty is not None and empty.image is None and empty.error is not None and "empty" in empty.error


def test_missing_or_empty_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"does not exist \(check source.path\)"):
        _source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="holds no PNG/JPEG/BMP/TIFF image"):
        _source(tmp_path / "empty")


def test_folder_renamed_away_while_reading_is_a_source_error(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", 3)
    with _source(tmp_path / "imgs", loop=True) as src:
        assert src.read(1.0) is not None
        (tmp_path / "imgs").rename(tmp_path / "moved")
        with pytest.raises(SourceError, match="disappeared"):
            src.read(1.0)


def test_folder_gone_at_loop_restart_is_a_source_error(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", 1)
    with _source(tmp_path / "imgs", loop=True) as src:
        assert src.read(1.0) is not None
        (tmp_path / "imgs").rename(tmp_path / "moved")
        with pytest.raises(SourceError, match="does not exist"):
            src.read(1.0)


def test_16_bit_and_gray_and_alpha_images(tmp_path: Path) -> None:
    mono16 = np.array([[0, 255, 256, 65535]], np.uint16).repeat(3, axis=0)
    cv2.imwrite(str(tmp_path / "a_mono16.png"), mono16)
    bgr16 = np.zeros((3, 4, 3), np.uint16)
    bgr16[..., 0] = 0x1200  # blue
    bgr16[..., 2] = 0xFF00  # red
    cv2.imwrite(str(tmp_path / "b_bgr16.png"), bgr16)
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "c_gray.bmp"), gray)
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 1] = 77
    bgra[..., 3] = 10
    cv2.imwrite(str(tmp_path / "d_bgra.png"), bgra)
    with _source(tmp_path) as src:
        frames = [src.read(1.0) for _ in range(4)]
    assert all(f is not None and f.error is None for f in frames)
    m16, c16, g8, a8 = (f.image for f in frames if f is not None)
    assert [f.pixel_format for f in frames if f] == ["Mono16", "BGR16", "Mono8", "BGRa8"]
    np.testing.assert_array_equal(m16, (mono16 >> 8).astype(np.uint8))  # the trainer's 16-bit rule
    assert c16 is not None and c16.shape == (3, 4, 3) and tuple(c16[0, 0]) == (0xFF, 0, 0x12)
    np.testing.assert_array_equal(g8, gray)
    assert a8 is not None and a8.shape == (3, 4, 3) and tuple(a8[1, 1]) == (0, 77, 0)


def test_close_wakes_a_read_waiting_for_a_trigger(tmp_path: Path) -> None:
    _write_images(tmp_path, 1)
    src = _source(tmp_path, step=True)
    threading.Timer(0.05, src.close).start()
    t0 = time.monotonic()
    assert src.read(5.0) is None
    assert time.monotonic() - t0 < 4.0
    with pytest.raises(SourceError, match="closed"):
        src.read(0.1)
