"""Tests for trainer.data.mvtec (MVTec-layout scanning and fingerprints)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.data.io import read_image, read_mask
from trainer.data.mvtec import IMAGE_EXTENSIONS, Sample, data_fingerprint, scan_test, scan_train
from trainer.errors import DataError

SHARED = Path("/work/shared/data")
BOTTLE = SHARED / "mvtec_ad" / "bottle"
MAGNETIC = SHARED / "magnetic_tile" / "magnetic_tile"


def _img(path: Path, value: int = 100, size: tuple[int, int] = (16, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))
    return path


def _mask(path: Path, size: tuple[int, int] = (16, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size, np.uint8)
    m[2:6, 3:9] = 255
    assert cv2.imwrite(str(path), m)
    return path


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """A small MVTec tree mixing .png and .jpg, with some junk that must be ignored."""
    root = tmp_path / "part"
    for name in ("002.png", "000.png", "001.JPG", "003.jpeg"):
        _img(root / "train" / "good" / name)
    (root / "train" / "good" / "notes.txt").write_text("ignore me")
    (root / "train" / "good" / "._000.png").write_bytes(b"macOS resource fork")
    (root / "train" / "good" / "sub").mkdir()
    _img(root / "train" / "good" / "sub" / "999.png")  # not recursive
    _img(root / "test" / "good" / "000.png")
    _img(root / "test" / "good" / "001.jpg")
    _img(root / "test" / "crack" / "000.png")
    _img(root / "test" / "crack" / "001.jpg")
    _mask(root / "ground_truth" / "crack" / "000_mask.png")
    _mask(root / "ground_truth" / "crack" / "001.png")  # the `<stem>.png` form is accepted too
    _img(root / "test" / "blowhole" / "a.bmp")
    _mask(root / "ground_truth" / "blowhole" / "a_MASK.PNG")  # case-insensitive
    (root / "test" / "empty_type").mkdir()
    (root / "test" / "readme.txt").write_text("stray file directly in test/")
    return root


def test_image_extensions() -> None:
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def test_scan_train_sorted_and_filtered(fake: Path) -> None:
    paths = scan_train(fake)
    assert [p.name for p in paths] == ["000.png", "001.JPG", "002.png", "003.jpeg"]
    assert all(p.parent == fake / "train" / "good" for p in paths)
    assert scan_train(str(fake)) == paths


def test_scan_test_samples_labels_masks(fake: Path) -> None:
    samples = scan_test(fake)
    gt = fake / "ground_truth"
    assert samples == [
        Sample(fake / "test" / "blowhole" / "a.bmp", "blowhole", 1, gt / "blowhole" / "a_MASK.PNG"),
        Sample(fake / "test" / "crack" / "000.png", "crack", 1, gt / "crack" / "000_mask.png"),
        Sample(fake / "test" / "crack" / "001.jpg", "crack", 1, gt / "crack" / "001.png"),
        Sample(fake / "test" / "good" / "000.png", "good", 0, None),
        Sample(fake / "test" / "good" / "001.jpg", "good", 0, None),
    ]
    for s in samples:
        image = read_image(s.path)
        if s.mask_path is not None:
            assert read_mask(s.mask_path, image.shape).sum() == 24


def test_mask_suffix_preferred_over_plain_stem(fake: Path) -> None:
    _mask(fake / "ground_truth" / "crack" / "000.png")
    crack0 = next(s for s in scan_test(fake) if s.path.name == "000.png" and s.label == 1)
    assert crack0.mask_path is not None and crack0.mask_path.name == "000_mask.png"


def test_missing_mask_names_image_and_expected_path(fake: Path) -> None:
    (fake / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(DataError) as info:
        scan_test(fake)
    msg = str(info.value)
    assert str(fake / "test" / "crack" / "000.png") in msg
    assert str(fake / "ground_truth" / "crack" / "000_mask.png") in msg


def test_missing_ground_truth_folder(fake: Path) -> None:
    shutil.rmtree(fake / "ground_truth" / "blowhole")
    with pytest.raises(DataError, match=r"a_mask\.png"):
        scan_test(fake)


def test_only_good_or_only_defective_still_returned(fake: Path) -> None:
    shutil.rmtree(fake / "test" / "good")
    assert {s.label for s in scan_test(fake)} == {1}
    for t in ("crack", "blowhole"):
        shutil.rmtree(fake / "test" / t)
    _img(fake / "test" / "good" / "x.png")
    assert [s.label for s in scan_test(fake)] == [0]


def test_test_folder_missing_or_empty(tmp_path: Path) -> None:
    root = tmp_path / "part"
    _img(root / "train" / "good" / "0.png")
    with pytest.raises(DataError, match="test not found: expected DIR/test/good"):
        scan_test(root)
    (root / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no test images"):
        scan_test(root)


def test_scan_train_errors_say_expected_layout(tmp_path: Path) -> None:
    layout = "expected DIR/train/good/*.png|jpg (MVTec layout)"
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as info:
        scan_train(missing)
    assert layout in str(info.value) and str(missing) in str(info.value)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        scan_train(tmp_path / "afile")
    root = tmp_path / "part"
    (root / "train").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        scan_train(root)
    assert str(root / "train" / "good") in str(info.value) and layout in str(info.value)
    (root / "train" / "good").mkdir()
    (root / "train" / "good" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no images") as info:
        scan_train(root)
    assert layout in str(info.value)


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    a = tmp_path / "a" / "part"
    paths_a = [_img(a / "train" / "good" / f"{i}.png", value=i) for i in range(3)]
    b = tmp_path / "elsewhere" / "copy"
    shutil.copytree(a, b)
    paths_b = sorted((b / "train" / "good").glob("*.png"))
    fp = data_fingerprint(paths_a, a)
    assert len(fp) == 64
    assert data_fingerprint(list(reversed(paths_a)), a) == fp  # order does not matter
    assert data_fingerprint(paths_b, b) == fp  # moving the folder does not matter
    assert data_fingerprint(paths_a[:2], a) != fp
    _img(paths_b[0], value=200)  # content change
    assert data_fingerprint(paths_b, b) != fp
    renamed = b / "train" / "good" / "9.png"
    shutil.copy(paths_a[0], renamed)
    assert data_fingerprint([renamed, *paths_a[1:]], b) != fp


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared benchmark data not found at {SHARED}")
def test_real_data_counts() -> None:
    if BOTTLE.is_dir():
        assert len(scan_train(BOTTLE)) == 209
        bottle = scan_test(BOTTLE)
        assert len(bottle) == 83 and sum(s.label for s in bottle) == 63
        assert {s.defect_type for s in bottle} == {"good", "broken_large", "broken_small", "contamination"}
        img = read_image(bottle[0].path)
        assert img.shape == (384, 384, 3)
        assert bottle[0].mask_path is not None
        assert read_mask(bottle[0].mask_path, img.shape).any()
    if MAGNETIC.is_dir():
        train = scan_train(MAGNETIC)
        assert len(train) == 762 and all(p.suffix == ".jpg" for p in train)
        tiles = scan_test(MAGNETIC)
        assert len(tiles) == 582 and sum(s.label for s in tiles) == 392
        tile = next(s for s in tiles if s.label == 1)
        img = read_image(tile.path)
        assert img.ndim == 2
        assert tile.mask_path is not None
        assert read_mask(tile.mask_path, img.shape).shape == img.shape
    if not BOTTLE.is_dir() and not MAGNETIC.is_dir():
        pytest.skip(f"neither {BOTTLE} nor {MAGNETIC} found")
