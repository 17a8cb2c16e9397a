"""Tests for trainer.data.splits (deterministic train / calibration split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data.mvtec import data_fingerprint, scan_train
from trainer.data.splits import Split, split_train_calib
from trainer.errors import DataError


def _tree(root: Path, n: int) -> list[Path]:
    """``n`` tiny distinct files in ``root/train/good`` (splits only hash bytes, never decode)."""
    good = root / "train" / "good"
    good.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = good / f"{i:03d}.png"
        p.write_bytes(f"image {i}".encode())
        paths.append(p)
    return paths


def test_deterministic_disjoint_covering(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 50)
    s1 = split_train_calib(paths, tmp_path)
    s2 = split_train_calib(list(reversed(paths)), tmp_path)  # input order does not matter
    assert s1 == s2
    assert len(s1.calib) == 5 and len(s1.train) == 45
    assert set(s1.train).isdisjoint(s1.calib)
    assert sorted(s1.train + s1.calib) == sorted(paths)
    assert s1.train == sorted(s1.train) and s1.calib == sorted(s1.calib)
    assert s1.seed == 0 and s1.calib_fraction == 0.1
    assert s1.train_sha256 == data_fingerprint(s1.train, tmp_path)
    assert s1.calib_sha256 == data_fingerprint(s1.calib, tmp_path)


def test_seed_changes_selection_and_str_paths_work(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 60)
    calibs = {tuple(split_train_calib(paths, tmp_path, seed=s).calib) for s in range(5)}
    assert len(calibs) > 1
    as_str = split_train_calib([str(p) for p in paths], str(tmp_path), seed=3)
    assert as_str == split_train_calib(paths, tmp_path, seed=3)


def test_same_split_when_folder_moves(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a", 30)
    b = _tree(tmp_path / "b" / "c", 30)
    sa = split_train_calib(a, tmp_path / "a", seed=7)
    sb = split_train_calib(b, tmp_path / "b" / "c", seed=7)
    assert sa.to_dict(tmp_path / "a") == sb.to_dict(tmp_path / "b" / "c")


@pytest.mark.parametrize(
    ("n", "fraction", "expected_calib"),
    [(7, 0.1, 5), (50, 0.1, 5), (60, 0.1, 6), (209, 0.1, 21), (762, 0.1, 76), (25, 0.1, 5), (100, 0.5, 50)],
)
def test_calib_size(tmp_path: Path, n: int, fraction: float, expected_calib: int) -> None:
    s = split_train_calib(_tree(tmp_path, n), tmp_path, calib_fraction=fraction)
    assert len(s.calib) == expected_calib and len(s.train) == n - expected_calib


def test_min_train_caps_calibration(tmp_path: Path) -> None:
    s = split_train_calib(_tree(tmp_path, 12), tmp_path, calib_fraction=0.5, min_calib=2, min_train=10)
    assert len(s.calib) == 2 and len(s.train) == 10


def test_hashes_change_when_a_file_changes(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 20)
    before = split_train_calib(paths, tmp_path)
    before.train[0].write_bytes(b"modified")
    after = split_train_calib(paths, tmp_path)
    assert after.train == before.train and after.calib == before.calib
    assert after.train_sha256 != before.train_sha256
    assert after.calib_sha256 == before.calib_sha256


def test_too_few_images_message(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 6)
    with pytest.raises(DataError) as info:
        split_train_calib(paths, tmp_path)
    assert str(info.value) == (
        f"6 training images in {tmp_path}/train/good, need at least 7 "
        "(5 are held out to calibrate the threshold): add more defect-free images"
    )


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.51, 1.0])
def test_bad_fraction(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match="calib_fraction"):
        split_train_calib(_tree(tmp_path, 20), tmp_path, calib_fraction=fraction)


def test_bad_minimums_and_duplicates(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 20)
    with pytest.raises(ValueError, match="min_calib"):
        split_train_calib(paths, tmp_path, min_calib=0)
    with pytest.raises(ValueError, match="min_train"):
        split_train_calib(paths, tmp_path, min_train=0)
    with pytest.raises(ValueError, match="duplicate"):
        split_train_calib([*paths, paths[3]], tmp_path)


def test_to_dict_from_dict(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 20)
    s = split_train_calib(paths, tmp_path, seed=1)
    d = s.to_dict(tmp_path)
    assert json.loads(json.dumps(d)) == d
    assert d["n_train"] == 15 and d["n_calib"] == 5
    assert all(p.startswith("train/good/") for p in d["train"] + d["calib"])
    assert Split.from_dict(d, tmp_path) == s


def test_split_after_scan(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 10)
    s = split_train_calib(scan_train(tmp_path), tmp_path)
    assert sorted(s.train + s.calib) == paths
