"""``masf-train`` end to end through the real entry point: outputs, and one-line errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from trainer.cli import main

TINY = {
    "data": {"input_size": [64, 64]},
    "student": {"width": 32},
    "bank": {"max_size": 128},
    "tta": {"views": 2},
    "train": {"epochs": 1, "batch_size": 4, "warmup_epochs": 1},
}
REQUIRED_KEYS = {
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_ap",
    "pixel_ap",
    "image_f1_max",
    "false_reject_rate",
    "escape_rate",
    "threshold",
    "n_test_images",
    "per_defect_image_auroc",
}


def _config(tmp_path: Path, **changes: object) -> Path:
    doc = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        doc.setdefault(section, {})[key] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_fit_then_evaluate_writes_every_metric(
    synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out = tmp_path / "run", tmp_path / "eval.json"
    assert (
        main(["-q", "fit", "--config", str(_config(tmp_path)), "--data", str(synth_data), "--out", str(run)])
        == 0
    )
    # the fit names the good threshold images with the highest scores, for the operator to check
    printed = capsys.readouterr().out
    top = json.loads((run / "run.json").read_text())["calibration_review"][0]
    assert f"highest-scoring good threshold images: {Path(top['image']).name} " in printed
    # and how many of the selection's synthetic defects its threshold lets through
    escapes = json.loads((run / "run.json").read_text())["synthetic_escapes"]
    assert f"synthetic defects below the threshold: {100 * escapes['escapes']:.0f} % (" in printed
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--run",
                str(run),
                "--data",
                str(synth_data),
                "--json",
                str(out),
                "--report",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res.keys() >= REQUIRED_KEYS
    for key in REQUIRED_KEYS - {"threshold", "n_test_images", "per_defect_image_auroc"}:
        assert isinstance(res[key], float) and 0.0 <= res[key] <= 1.0, key
    assert res["n_test_images"] == 18
    assert set(res["per_defect_image_auroc"]) == {"scratch", "spot", "crack"}
    # the fit's escape estimate at the same threshold, beside the measured rate
    assert res["synthetic_escape_estimate"] == escapes["escapes"] and res["threshold"] == escapes["threshold"]
    assert f"escapes {res['escape_rate']:.3f} (synthetic estimate {escapes['escapes']:.3f})" in (
        capsys.readouterr().out
    )
    report = (tmp_path / "report" / "report.md").read_text()
    assert (
        f"| Escape estimate of the fit (its synthetic defects, same threshold) | {escapes['escapes']:.4f} |"
        in report
    )
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "examples.png").is_file()


def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "fit" in proc.stdout and "evaluate" in proc.stdout


def test_config_error_names_the_field(
    synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, student__heads="four")
    err = _one_line_error(
        capsys, ["fit", "--config", str(cfg), "--data", str(synth_data), "--out", str(tmp_path / "r")]
    )
    assert "student.heads must be a positive int, got 'four'" in err and str(cfg) in err


def test_non_finite_config_value(
    synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    err = _one_line_error(
        capsys,
        [
            "fit",
            "--config",
            str(cfg),
            "--data",
            str(synth_data),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "train.lr=.nan",
        ],
    )
    assert "train.lr must be a finite number" in err


def test_wrong_folder_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    err = _one_line_error(
        capsys,
        [
            "fit",
            "--config",
            str(_config(tmp_path)),
            "--data",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert "train/good" in err


def test_unreadable_training_image(
    synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    bad = data / "train" / "good" / "005.png"
    bad.write_bytes(b"\x89PNG truncated")
    err = _one_line_error(
        capsys, ["fit", "--config", str(_config(tmp_path)), "--data", str(data), "--out", str(tmp_path / "r")]
    )
    assert "005.png" in err


def test_missing_mask(
    trained_run: Path, synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    (data / "ground_truth" / "spot" / "001_mask.png").unlink()
    err = _one_line_error(
        capsys,
        ["evaluate", "--run", str(trained_run), "--data", str(data), "--json", str(tmp_path / "e.json")],
    )
    assert "001" in err and "mask" in err


def test_empty_defect_masks_do_not_crash(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    import shutil

    import cv2

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    for mask in (data / "ground_truth" / "crack").glob("*.png"):
        cv2.imwrite(str(mask), np.zeros((96, 96), np.uint8))
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--run",
                str(trained_run),
                "--data",
                str(data),
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "e.json").read_text())
    assert 0.0 <= res["aupro"] <= 1.0 and res["per_defect_image_auroc"]["crack"] >= 0.0


def test_missing_run_directory(synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(
        capsys,
        [
            "evaluate",
            "--run",
            str(tmp_path / "none"),
            "--data",
            str(synth_data),
            "--json",
            str(tmp_path / "e.json"),
        ],
    )
    assert "run directory not found" in err


def test_tta_flag_uses_the_threshold_of_its_own_path(
    trained_run: Path, synth_data: Path, tmp_path: Path
) -> None:
    run_doc = json.loads((trained_run / "run.json").read_text())
    for flag, key in (("--tta", "tta"), ("--no-tta", "plain")):
        out = tmp_path / f"{key}.json"
        assert (
            main(
                [
                    "-q",
                    "evaluate",
                    "--run",
                    str(trained_run),
                    "--data",
                    str(synth_data),
                    "--json",
                    str(out),
                    flag,
                ]
            )
            == 0
        )
        res = json.loads(out.read_text())
        assert res["tta"] is (key == "tta")
        assert res["threshold"] == run_doc["calibration_by_path"][key]["threshold"]
    assert (
        run_doc["calibration_by_path"]["tta"]["threshold"]
        != run_doc["calibration_by_path"]["plain"]["threshold"]
    )
