"""edge.evidence.EvidenceStore on a real folder: files, atomic writes, pruning, drops, low disk, errors."""

from __future__ import annotations

import fnmatch
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.errors import EdgeError
from edge.evidence import EvidenceStore, safe_name

T0 = 1_700_000_000.0  # 2023-11-14
DAY = time.strftime("%Y%m%d", time.localtime(T0))


def _frame(h: int = 48, w: int = 64, seed: int = 0, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)


def _header(seq: int, camera: str = "cam1", verdict: str = "FAIL", **extra: Any) -> dict[str, Any]:
    return {
        "camera": camera,
        "verdict": verdict,
        "seq": seq,
        "acquisition_id": f"a{seq}",
        "t_capture": T0,
        **extra,
    }


@dataclass(frozen=True)
class _Box:
    """Like edge.regions.Region: a ``bbox`` attribute in frame pixels."""

    bbox: tuple[int, int, int, int]


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _present(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching ``pattern``, while the store may be removing folders meanwhile.

    ``Path.rglob`` raises when a folder it is about to list has just been removed; ``os.walk`` skips it.
    """
    return [Path(d) / n for d, _, names in os.walk(root) for n in fnmatch.filter(names, pattern)]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_an_item_is_three_files_with_the_frame_lossless(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev", max_bytes=10**8, max_age_s=86400)
    img = np.full((48, 64, 3), 100, np.uint8)  # flat, so that JPEG keeps the drawn colours
    img[:, :, 2] = np.arange(64, dtype=np.uint8)  # and not symmetric in RGB/BGR
    heat = np.zeros((12, 16), np.uint8)
    heat[3:6, 4:8] = 255
    header = _header(7, acquisition_id="line 1/../cam:7", score=4.2, regions=[{"bbox": [5, 5, 20, 12]}])
    regions = [{"bbox": [5, 5, 20, 12]}, (40, 30, 10, 10), _Box((2, 40, 40, 6)), "not a region"]
    assert store.submit(header, img, heat, regions)
    assert store.submit(_header(8, verdict="UNKNOWN"), _frame(gray=True), None, None)
    assert store.submit(_header(9, verdict="UNKNOWN", reason="unreadable"), None)
    assert store.close(timeout=30)

    acq = safe_name("line 1/../cam:7")
    assert "/" not in acq and not acq.startswith(".")
    stem = f"00000007_FAIL_{acq}"
    day = tmp_path / "ev" / "cam1" / DAY
    assert _files(tmp_path / "ev") == sorted(
        f"cam1/{DAY}/{n}"
        for n in (
            f"{stem}.png",
            f"{stem}_overlay.jpg",
            f"{stem}_header.json",
            "00000008_UNKNOWN_a8.png",
            "00000008_UNKNOWN_a8_header.json",
            "00000009_UNKNOWN_a9_header.json",
        )
    )
    png = cv2.imread(str(day / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), img)
    gray = cv2.imread(str(day / "00000008_UNKNOWN_a8.png"), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (48, 64)
    overlay = cv2.imread(str(day / f"{stem}_overlay.jpg"))
    assert overlay.shape == img.shape
    # The box edge is red (BGR) in the overlay; the hot heatmap cell is tinted (JET's red end).
    b, g, r = overlay[5:7, 10:20].reshape(-1, 3).mean(0)  # the top edge of the first box
    assert r > 150 and g < 100 and b < 100
    base = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)[42:48, 54:64].reshape(-1, 3).mean(0)
    b, g, r = overlay[42:48, 54:64].reshape(-1, 3).mean(0)  # cold heatmap: JET blue blended in
    assert b > base[0] + 15 and r < base[2] - 15
    b, g, r = overlay[14:22, 18:30].reshape(-1, 3).mean(0)  # the hot cell: JET red blended in
    assert r > b + 40
    b, g, r = overlay[44:46, 10:30].reshape(-1, 3).mean(0)  # the bottom edge of the Region-like box
    assert r > 150 and g < 100 and b < 100
    assert json.loads((day / f"{stem}_header.json").read_text()) == header

    usage = store.usage()
    assert usage["items"] == 3 and usage["written"] == 3 and usage["dropped"] == 0
    assert usage["bytes"] == sum(p.stat().st_size for p in day.iterdir())


def test_writes_are_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    """A reader polling the folder never sees a partial file: every visible file decodes in full."""
    root = tmp_path / "ev"
    store = EvidenceStore(root, max_bytes=10**9, max_age_s=86400, queue_size=64)
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for p in root.rglob("*"):
                if not p.is_file():
                    continue
                if p.name.startswith("."):
                    continue  # a temporary name: not part of the store yet
                data = p.read_bytes()
                ok = (
                    json.loads(data) is not None
                    if p.suffix == ".json"
                    else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None
                )
                if not ok or (p.suffix == ".png" and not data.endswith(b"IEND\xaeB`\x82")):
                    problems.append(p.name)
                seen.append(p.name)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(20):
            assert store.submit(_header(i), _frame(400, 600, seed=i), _frame(50, 75, gray=True, seed=i))
        assert store.close(timeout=60)
    finally:
        stop.set()
        t.join()
    assert not problems
    assert seen
    assert not [p for p in root.rglob(".*")]  # no temporary files left


def test_crash_leftovers_are_cleaned_and_incomplete_items_not_listed(tmp_path: Path) -> None:
    day = tmp_path / "cam1" / DAY
    day.mkdir(parents=True)
    (day / ".00000001_FAIL_a1.png.tmp-123").write_bytes(b"partial")
    cv2.imwrite(str(day / "00000002_FAIL_a2.png"), _frame())  # the header never made it
    store = EvidenceStore(tmp_path, max_bytes=10**8, max_age_s=10**9)
    try:
        assert not (day / ".00000001_FAIL_a1.png.tmp-123").exists()
        assert store.usage()["items"] == 1  # counted for the size limit ...
        assert store.list() == []  # ... but not offered for review
    finally:
        store.close()


def test_pruning_by_size_keeps_the_newest(tmp_path: Path) -> None:
    probe = EvidenceStore(tmp_path / "probe", max_bytes=10**9, max_age_s=86400)
    probe.submit(_header(0), _frame(seed=0), _frame(12, 16, gray=True))
    probe.close()
    one = probe.usage()["bytes"]

    store = EvidenceStore(tmp_path / "ev", max_bytes=int(2.5 * one), max_age_s=86400)
    for i in range(1, 6):
        assert store.submit(_header(i), _frame(seed=0), _frame(12, 16, gray=True))
    assert store.close(timeout=30)
    usage = store.usage()
    assert usage["written"] == 5 and usage["items"] == 2 and usage["pruned"] == 3
    assert usage["bytes"] <= 2.5 * one
    assert [item["header"]["seq"] for item in store.list()] == [5, 4]
    assert len(list((tmp_path / "ev").rglob("*.*"))) == 6


def test_pruning_by_age_and_size_on_start(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path, max_bytes=10**9, max_age_s=86400)
    for i, cam in enumerate(["cam1", "cam1", "cam2", "cam2"]):
        store.submit(_header(i, camera=cam, t_capture=T0 + i * 86400), _frame(seed=i))
    store.close()
    items = {item["header"]["seq"]: item for item in store.list()}
    now = time.time()
    ages = {0: 5 * 86400, 1: 3 * 86400, 2: 3600, 3: 60}  # seconds before now
    for seq, age in ages.items():
        for key in ("image", "header_path"):
            os.utime(items[seq][key], (now - age, now - age))

    store = EvidenceStore(tmp_path, max_bytes=10**9, max_age_s=2 * 86400)
    try:
        assert [item["header"]["seq"] for item in store.list()] == [3, 2]
        assert store.usage()["pruned"] == 2
        oldest = store.usage()["oldest_age_s"]
        assert 3500 < oldest < 3700
        assert not (tmp_path / "cam1").exists() or not any((tmp_path / "cam1").iterdir())  # empty days go
    finally:
        store.close()

    one = max(item["bytes"] for item in items.values())
    store = EvidenceStore(tmp_path, max_bytes=one + 1, max_age_s=2 * 86400)
    try:
        assert [item["header"]["seq"] for item in store.list()] == [3]
    finally:
        store.close()


def test_idle_store_prunes_by_age_and_rereads_the_folder(tmp_path: Path) -> None:
    with EvidenceStore(tmp_path, 10**9, max_age_s=0.5, maintenance_s=0.05, rescan_s=0.2) as store:
        assert store.submit(_header(1), _frame(), None)
        _wait(lambda: store.usage()["written"] == 1)
        _wait(lambda: store.usage()["items"] == 0)  # no further writes needed
        _wait(lambda: not _present(tmp_path, "*.*"))  # files go right after the index entry

    with EvidenceStore(tmp_path, 10**9, max_age_s=86400, maintenance_s=0.05, rescan_s=0.2) as store:
        for i in range(3):
            store.submit(_header(i), _frame(seed=i), None)
        _wait(lambda: store.usage()["written"] == 3)
        victim = store.list()[-1]
        for key in ("image", "header_path"):
            os.unlink(victim[key])  # an operator deletes an item by hand
        _wait(lambda: store.usage()["items"] == 2)
        assert store.usage()["bytes"] == sum(p.stat().st_size for p in tmp_path.rglob("*.*"))


def test_submit_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path, max_bytes=10**9, max_age_s=86400, queue_size=2)
    big = _frame(1500, 2000, seed=1)  # slow to encode: the writer falls behind
    results, slowest = [], 0.0
    for i in range(40):
        t = time.perf_counter()
        results.append(store.submit(_header(i), big, None))
        slowest = max(slowest, time.perf_counter() - t)
    assert slowest < 0.5  # a blocking submit could never return False below; this bounds the rest
    assert results.count(False) > 0
    assert store.usage()["dropped"] == results.count(False)
    assert store.close(timeout=60)
    assert store.usage()["written"] == results.count(True)
    assert not store.submit(_header(99), big, None)  # closed
    assert store.usage()["dropped"] == results.count(False) + 1


def test_queue_is_bounded_by_bytes_too(tmp_path: Path) -> None:
    big = _frame(1500, 2000, seed=1)
    store = EvidenceStore(tmp_path, max_bytes=10**9, max_age_s=86400, max_queue_bytes=big.nbytes)
    results = [store.submit(_header(i), big, None) for i in range(10)]
    store.close(timeout=60)
    assert results.count(False) >= 5  # about one waits while one is being written
    assert store.usage()["written"] == results.count(True)


def test_low_disk_pauses_writing_and_resumes(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path, max_bytes=10**9, max_age_s=86400, min_free_bytes=2**62)
    try:
        assert store.degraded is None
        assert store.submit(_header(1), _frame(), None)
        _wait(lambda: store.usage()["skipped"] == 1)
        assert store.degraded_state == "evidence_low_disk"
        assert "below the floor" in (store.degraded or "") and "\n" not in (store.degraded or "")
        assert store.usage()["written"] == 0 and not list(tmp_path.rglob("*.png"))

        store.min_free_bytes = 0  # space is back
        assert store.submit(_header(2), _frame(), None)
        _wait(lambda: store.usage()["written"] == 1)
        assert store.degraded is None and store.degraded_state is None
    finally:
        store.close()


def test_write_errors_are_counted_and_named(tmp_path: Path) -> None:
    (tmp_path / "cam1").write_text("a file where the camera's folder should be")
    store = EvidenceStore(tmp_path, max_bytes=10**9, max_age_s=86400)
    try:
        assert store.submit(_header(1), _frame(), None)
        _wait(lambda: store.usage()["skipped"] == 1)
        assert store.degraded_state == "evidence_write_failed"
        assert str(tmp_path) in (store.degraded or "")
        assert store.submit(_header(2, camera="cam2"), _frame(), None)
        _wait(lambda: store.usage()["written"] == 1)
        assert store.degraded is None
        assert store.usage()["errors"] == 1
    finally:
        store.close()


def test_unwritable_root_is_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(EdgeError) as err:
        EvidenceStore(blocker / "evidence", max_bytes=10**6, max_age_s=60)
    msg = str(err.value)
    assert str(blocker / "evidence") in msg and "evidence.dir" in msg and "\n" not in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_root_is_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    with pytest.raises(EdgeError, match="not writable"):
        EvidenceStore(root, max_bytes=10**6, max_age_s=60)


def test_list_newest_first_by_camera_with_limit(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path, max_bytes=10**9, max_age_s=86400)
    for i, cam in enumerate(["cam1", "cam2", "cam1", "cam2", "cam1"]):
        store.submit(_header(i, camera=cam), _frame(seed=i), _frame(8, 8, gray=True))
    store.submit(_header(0, camera="cam1"), _frame(), None)  # the sequence restarted: both kept
    store.close()

    items = store.list()
    assert [(it["camera"], it["header"]["seq"]) for it in items] == [
        ("cam1", 0),
        ("cam1", 4),
        ("cam2", 3),
        ("cam1", 2),
        ("cam2", 1),
        ("cam1", 0),
    ]
    assert items[0]["name"] == "00000000_FAIL_a0~2" and items[0]["overlay"] is None
    first = items[-1]
    assert Path(first["image"]).is_file() and Path(first["overlay"]).is_file()
    assert Path(first["header_path"]).is_file() and first["day"] == DAY
    assert [it["header"]["seq"] for it in store.list(camera="cam2")] == [3, 1]
    assert len(store.list(limit=2)) == 2


def test_header_needs_camera_and_verdict(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path, max_bytes=10**6, max_age_s=60)
    try:
        with pytest.raises(ValueError, match="camera"):
            store.submit({"verdict": "FAIL"}, _frame())
    finally:
        store.close()
