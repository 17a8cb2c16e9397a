"""Tests for trainer.evaluate.report: files written, images readable, values in the Markdown."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from trainer.evaluate.metrics import image_metrics, roc_auc
from trainer.evaluate.report import ReportExample, write_report


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
