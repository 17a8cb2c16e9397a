"""``masf-edge demo`` end to end on a small generated part (what ``make demo`` runs, with a tiny training
config so that it fits the test suite): train, export, daemon on a replay, subscriber, summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_demo_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from trainer.data.synthetic import make_dataset

    data = make_dataset(
        tmp_path / "data", n_train=16, n_test_good=4, n_test_defect=2, height=96, width=96, seed=3
    )
    cfg = yaml.safe_load((REPO / "configs" / "train" / "masf_lite0_demo.yaml").read_text())
    cfg["data"].update({"input_size": [64, 64], "min_calib": 5})
    cfg["train"].update({"epochs": 1})
    cfg["fusion"] = {"select": "none"}
    train_cfg = tmp_path / "tiny.yaml"
    train_cfg.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "demo"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "demo",
            "--out",
            str(out),
            "--data",
            str(data),
            "--train-config",
            str(train_cfg),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=560,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parts"] == summary["results"] == 4 + 2 * 3
    assert summary["missing"] == [] and summary["sequence_gaps"] == 0 and summary["daemon_exit_code"] == 0
    assert sum(summary["counts"].values()) == 10 and summary["counts"]["UNKNOWN"] == 0
    assert len(list((out / "overlays").glob("*.jpg"))) == 10
    lines = res.stdout.splitlines()
    assert any(line.startswith("[demo] summary: 10/10 parts inspected") for line in lines)
    assert sum(" truth=" in line for line in lines) == 10
