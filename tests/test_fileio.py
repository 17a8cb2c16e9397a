"""engines.fileio: atomic writes leave either the old or the new file, never a partial one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.fileio import write_atomic


def test_write_and_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr("engines.fileio.os.replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "a.bin", b"x")
