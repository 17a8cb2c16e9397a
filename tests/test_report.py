"""Tests for trainer.evaluate.report: files written, images readable, values in the Markdown."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from trainer.evaluate.metrics import image_metrics, roc_auc
from trainer.evaluate.report import ReportExample, example_layout, write_report


def _synthetic() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    types = ["good"] * 20 + ["scratch"] * 8 + ["crack | deep"] * 7
    labels = np.array([0 if t == "good" else 1 for t in types])
    scores = rng.normal(size=len(types)) + 1.5 * labels
    return scores.astype(np.float32), labels, types


def _examples() -> list[ReportExample]:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:20, 30:45] = True
    amap = rng.random((48, 64)).astype(np.float32) + 2 * mask
    return [
        ReportExample("scratch/001.png", rgb, mask, amap, score=2.5, label=1),
        ReportExample(
            "good/004.png", gray, None, rng.random((40, 40)).astype(np.float32), score=-0.3, label=0
        ),
    ]


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None
    assert img.shape[0] > 50 and img.shape[1] > 50 and img.shape[2] == 3
    assert img.std() > 0  # not a blank canvas


def test_write_report(tmp_path: Path) -> None:
    scores, labels, types = _synthetic()
    threshold = 0.8
    metrics = {**image_metrics(scores, labels, threshold, types), "pixel_auroc": 0.97123, "aupro": 0.9}
    backend = matplotlib.get_backend()
    out = tmp_path / "nested" / "report"
    report = write_report(out, metrics, scores, labels, types, threshold, _examples(), title="Bottle eval")
    assert matplotlib.get_backend() == backend
    assert report == out / "report.md"
    for name in ("roc.png", "histogram.png", "examples.png"):
        _check_png(out / name)
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Bottle eval")
    auroc = roc_auc(scores, labels)
    assert f"{auroc:.4f}" in text
    assert f"| Image AUROC | {auroc:.4f} |" in text
    assert "| Pixel AUROC | 0.9712 |" in text
    for name in ("roc.png", "histogram.png", "examples.png"):
        assert f"]({name})" in text
    # Per-defect table: escaped names, AUROC per type, "good" first.
    assert "crack \\| deep" in text
    assert f"{metrics['per_defect_image_auroc']['scratch']:.4f}" in text
    assert text.index("| good |") < text.index("| scratch |")
    # Rates at the threshold, with counts.
    n_fr = int(np.sum((scores >= threshold) & (labels == 0)))
    n_esc = int(np.sum((scores < threshold) & (labels == 1)))
    assert f"{n_fr}/20" in text and f"{n_esc}/15" in text
    assert "scratch/001.png" in text and "FAIL" in text and "PASS" in text


def test_write_report_without_examples_or_defects(tmp_path: Path) -> None:
    scores = np.array([0.1, 0.2, 0.3])
    report = write_report(tmp_path, {}, scores, np.zeros(3, int), ["good"] * 3, 0.25, [])
    assert report.is_file()
    for name in ("roc.png", "histogram.png", "examples.png"):
        assert cv2.imread(str(tmp_path / name)) is not None
    assert "undefined" in report.read_text(encoding="utf-8")


def test_write_report_rejects_mismatched_example(tmp_path: Path) -> None:
    scores, labels, types = _synthetic()
    ex = _examples()[0]
    ex.anomaly_map = ex.anomaly_map[:10]
    with pytest.raises(ValueError, match="anomaly map shape"):
        write_report(tmp_path, {}, scores, labels, types, 0.5, [ex])
    with pytest.raises(ValueError, match="defect_types differ in length"):
        write_report(tmp_path, {}, scores, labels, types[:-1], 0.5, [])


@pytest.mark.parametrize(
    ("sizes", "stacked", "rotate"),
    [
        ([(48, 64), (40, 40)], False, False),
        ([(64, 1024)] * 3, True, False),  # a 16:1 line-scan strip lies across the page
        ([(1024, 64)] * 3, True, True),  # a tall one is turned to lie down
        ([(100, 240)], False, False),  # 2.4:1 still fits side by side
        ([], False, False),
    ],
)
def test_example_layout_for_long_parts(sizes: list[tuple[int, int]], stacked: bool, rotate: bool) -> None:
    layout = example_layout(sizes)
    assert (layout.stacked, layout.rotate) == (stacked, rotate)
    if stacked:
        assert 0.4 <= layout.panel_height <= 1.0  # a 16:1 panel is the page wide and short


def test_long_part_examples_are_drawn_full_width(tmp_path: Path) -> None:
    """A 16:1 strip's example: the input, truth and overlay panels each span the figure's width, so the
    strip is drawn ~880 px long instead of as a ~200 px sliver, and the defect shows in the overlay."""
    rng = np.random.default_rng(3)
    examples = []
    for i in range(2):
        img = rng.integers(90, 160, size=(64, 1024), dtype=np.uint8)
        mask = np.zeros((64, 1024), dtype=bool)
        mask[28:36, 500 + 100 * i : 520 + 100 * i] = True
        amap = rng.random((64, 1024)).astype(np.float32) * 0.1 + mask
        examples.append(ReportExample(f"strip{i}.png", img, mask, amap, float(amap.max()), 1))
    scores, labels, types = _synthetic()
    write_report(tmp_path, image_metrics(scores, labels, 0.5, types), scores, labels, types, 0.5, examples)
    grid = cv2.imread(str(tmp_path / "examples.png"))
    h, w = grid.shape[:2]
    assert w == 900 and h < 3 * 2 * 150  # six short panels, not six 300 px rows
    # the truth panels: their white marks must be drawn wide (at ~0.86 px per image pixel)
    white = (grid[..., 0] > 230) & (grid[..., 1] > 230) & (grid[..., 2] > 230)
    widths = [np.flatnonzero(white[r]).size for r in range(h)]
    assert max(widths) >= 14  # the 20 px defect drawn at least 14 px wide (a 3-column grid: ~5 px)
