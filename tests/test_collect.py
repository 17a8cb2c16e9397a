"""Tests for edge.collect: collecting frames, importing folders and evidence items into the model store."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from edge_support import part_image

from edge.collect import Collector, import_evidence, import_folder, review_image
from edge.errors import EdgeError
from edge.store import ModelStore


def _png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img)


def test_collector_saves_exactly_count_frames_losslessly(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    collector = Collector(store)
    try:
        collector.start("cam1", "widget", 3)
        frames = [part_image(i % 2 == 1, seed=i) for i in range(6)]
        for i, frame in enumerate(frames):
            collector.offer("cam1", frame, f"acq/{i}")  # ids with path characters are made safe
            collector.offer("cam2", frame, f"other{i}")  # not collecting: ignored
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while collector.progress()["active"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        collector.close()
    saved = sorted((store.part_dir("widget") / "images" / "good").glob("*.png"))
    assert [p.name for p in saved] == ["cam1_acq_0.png", "cam1_acq_1.png", "cam1_acq_2.png"]
    back = cv2.cvtColor(cv2.imread(str(saved[1])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, frames[1])
    assert collector.progress()["done"]["cam1"]["saved"] == 3
    assert [e["event"] for e in store.history("widget")] == ["collect_started", "collected"]


def test_import_folder_mvtec_or_flat_with_defects(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    usb = tmp_path / "usb"
    for i in range(4):
        _png(usb / "train" / "good" / f"{i:03d}.png", part_image(False, seed=i))
    _png(usb / "defects" / "d0.png", part_image(True, seed=9))
    assert import_folder(store, "widget", usb) == {"good": 4, "defects": 1}
    flat = tmp_path / "flat"
    _png(flat / "000.png", part_image(False, seed=20))  # same name as an earlier import: never overwritten
    assert import_folder(store, "widget", flat) == {"good": 1, "defects": 0}
    good = sorted(p.name for p in (store.part_dir("widget") / "images" / "good").glob("*.png"))
    assert good == [
        "import_000.png",
        "import_000_2.png",
        "import_001.png",
        "import_002.png",
        "import_003.png",
    ]


def test_import_refuses_unreadable_files_whole(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    usb = tmp_path / "usb"
    _png(usb / "a.png", part_image(False))
    (usb / "b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(EdgeError, match=r"b.jpg is not a readable image"):
        import_folder(store, "widget", usb)
    assert not list((store.part_dir("widget") / "images" / "good").glob("*.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeError, match=r"no images"):
        import_folder(store, "widget", tmp_path / "empty")


def test_import_evidence_as_false_reject_or_defect(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    evidence = tmp_path / "evidence"
    item = evidence / "cam1" / "20261201" / "00000007_FAIL_0006.png"
    _png(item, part_image(True, seed=7))
    (item.parent / "00000007_FAIL_0006_header.json").write_text("{}")
    good = import_evidence(store, "widget", evidence, "cam1/20261201/00000007_FAIL_0006.png", "good")
    assert Path(good).parent.name == "good" and Path(good).is_file()
    bad = import_evidence(store, "widget", evidence, "cam1/20261201/00000007_FAIL_0006_header.json", "defect")
    assert Path(bad).parent.name == "defects"
    with pytest.raises(EdgeError, match="not inside the evidence folder"):
        import_evidence(store, "widget", evidence, "../../etc/passwd", "good")
    with pytest.raises(EdgeError, match="not found"):
        import_evidence(store, "widget", evidence, "cam1/none.png", "good")
    with pytest.raises(EdgeError, match="kind must be"):
        import_evidence(store, "widget", evidence, "cam1/20261201/00000007_FAIL_0006.png", "maybe")


def test_review_moves_a_defective_good_image_to_the_defects_and_records_every_verdict(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    good = store.images_dir("widget", "good")
    for i in range(3):
        _png(good / f"g{i}.png", part_image(i == 1, seed=i))
    _png(store.images_dir("widget", "defects") / "g1.png", part_image(True, seed=9))  # a name already taken
    before = (good / "g1.png").read_bytes()
    moved = review_image(store, "widget", "images/good/g1.png", "defect")
    assert moved == {
        "part": "widget",
        "image": "images/good/g1.png",
        "verdict": "defect",
        "moved_to": "images/defects/g1_2.png",
    }
    assert not (good / "g1.png").exists()
    # moved, not re-encoded
    assert (store.images_dir("widget", "defects") / "g1_2.png").read_bytes() == before
    kept = review_image(store, "widget", "g0.png", "good")  # a bare name works too
    assert kept == {"part": "widget", "image": "images/good/g0.png", "verdict": "good"}
    assert (good / "g0.png").is_file()
    reviewed = [e for e in store.history("widget") if e["event"] == "reviewed"]
    assert [(e["image"], e["verdict"], e.get("moved_to")) for e in reviewed] == [
        ("images/good/g1.png", "defect", "images/defects/g1_2.png"),
        ("images/good/g0.png", "good", None),
    ]
    with pytest.raises(EdgeError, match="not found in part widget"):
        review_image(store, "widget", "images/good/g1.png", "defect")  # already moved
    for bad in ("../defects/g1.png", "images/defects/g1.png", "/etc/passwd", "images/good/../../x.png", ".."):
        with pytest.raises(EdgeError, match="is not one of part widget's good images"):
            review_image(store, "widget", bad, "defect")
    with pytest.raises(EdgeError, match="verdict must be"):
        review_image(store, "widget", "g2.png", "maybe")
    with pytest.raises(EdgeError, match=r"part gadget has no good images here: parts are \['widget'\]"):
        review_image(store, "gadget", "g2.png", "defect")
    assert not store.part_dir("gadget").exists()  # a typo creates no part
    assert sorted(p.name for p in good.iterdir()) == ["g0.png", "g2.png"]


def test_a_full_disk_refuses_the_whole_import_and_leaves_no_partial_file(tmp_path: Path) -> None:
    import subprocess

    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        store = ModelStore(disk / "store")
        usb = tmp_path / "usb"
        rng = np.random.default_rng(0)
        for i in range(12):  # noise does not compress: ~110 KB each, more than the disk holds
            _png(usb / f"{i:03d}.png", rng.integers(0, 255, (192, 192, 3), dtype=np.uint8))
        with pytest.raises(
            EdgeError, match=r"import refused \(disk full under .*\): free space and import again"
        ):
            import_folder(store, "widget", usb)
        left = list((store.part_dir("widget") / "images" / "good").iterdir())
        assert left == [], f"partial import left {left}"
        store.record("widget", "after", ok=True)  # the store still works once space is back
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
