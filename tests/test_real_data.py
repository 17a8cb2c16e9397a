"""A small real-data check: a few MVTec bottle images at low resolution must be detected far above chance.

Reads ../shared/data (never copied into the repo): a subset is linked into a temp dir in MVTec layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BOTTLE, tiny_config

from trainer.evaluate.runner import evaluate_run
from trainer.train import fit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not BOTTLE.is_dir(),
        reason=f"real data not found at {BOTTLE} (the shared data sets sit beside the checkout)",
    ),
]


def _subset(dst: Path) -> Path:
    """30 train images, 6 good + 12 defective test images (with masks), as symlinks."""
    picks = {
        "train/good": sorted((BOTTLE / "train/good").glob("*.png"))[:30],
        "test/good": sorted((BOTTLE / "test/good").glob("*.png"))[:6],
    }
    for kind in ("broken_large", "contamination"):
        picks[f"test/{kind}"] = sorted((BOTTLE / "test" / kind).glob("*.png"))[:6]
        picks[f"ground_truth/{kind}"] = [
            BOTTLE / "ground_truth" / kind / f"{p.stem}_mask.png" for p in picks[f"test/{kind}"]
        ]
    for folder, files in picks.items():
        (dst / folder).mkdir(parents=True)
        for f in files:
            (dst / folder / f.name).symlink_to(f)
    return dst


def test_bottle_subset_detects_defects_far_above_chance(tmp_path: Path) -> None:
    data = _subset(tmp_path / "bottle")
    cfg = tiny_config(data={"input_size": [128, 128]}, bank={"max_size": 1000}, train={"epochs": 2})
    fit(cfg, data, tmp_path / "run", progress=False)
    res = evaluate_run(tmp_path / "run", data, tmp_path / "eval.json", progress=False)
    assert res["n_test_images"] == 18
    assert res["image_auroc"] >= 0.9, res
    assert res["pixel_auroc"] >= 0.85, res
    assert res["false_reject_rate"] <= 0.5, res
