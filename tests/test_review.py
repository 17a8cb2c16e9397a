"""Tests for trainer.review: leaving threshold images a review found defective out of a run's threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import plant_threshold_defect, tiny_config

from trainer.calibrate import fit_threshold
from trainer.cli import main
from trainer.data import read_image
from trainer.errors import RunError
from trainer.inference import predict_arrays
from trainer.review import drop_threshold_images, find_calibration_images
from trainer.runs import load_run, save_run
from trainer.train import fit, recalibrate


@pytest.fixture(scope="module")
def planted(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A run whose good threshold images include a defective part: (data, run, its relative path)."""
    tmp = tmp_path_factory.mktemp("planted")
    cfg = tiny_config(fusion={"select": "none"})
    path = plant_threshold_defect(synth_data, tmp / "data", cfg)
    fit(cfg, tmp / "data", tmp / "run", progress=False)
    return tmp / "data", tmp / "run", path.relative_to(tmp / "data").as_posix()


def test_dropping_a_defective_threshold_image_sets_the_threshold_from_the_others(
    planted: tuple[Path, Path, str], tmp_path: Path
) -> None:
    data, run, bad = planted
    model, info = load_run(run)
    calib = info.meta["data"]["split"]["calib"]
    assert info.meta["calibration_review"][0]["image"] == bad  # the fit pointed at it

    new = drop_threshold_images(model, info, data, [Path(bad).name])  # the file name is enough
    save_run(tmp_path / "dropped", model, new)
    _, again = load_run(tmp_path / "dropped")

    # the remaining threshold images' own scores give the new threshold, by the run's rule
    keep = info.meta["calibration_roles"]["threshold"]
    keep = [i for i in keep if calib[i] != bad]
    images = [read_image(data / calib[i]) for i in keep]
    scores = [p.score for p in predict_arrays(model, images, info.preprocess, torch.device("cpu"))]
    want, rule = fit_threshold(np.asarray(scores), info.calibration.target_frr)
    assert again.calibration.threshold == pytest.approx(want, rel=1e-5) and again.calibration.rule == rule
    assert again.calibration.n_images == len(keep)
    assert again.calibration.threshold < 0.8 * info.calibration.threshold  # the defect had lifted it
    assert again.meta["calibration_roles"] == {
        "fit": info.meta["calibration_roles"]["fit"],
        "threshold": keep,
    }
    assert bad not in [e["image"] for e in again.meta["calibration_review"]]
    (entry,) = again.meta["calibration_dropped"]
    assert entry["image"] == bad and entry["threshold_before"] == pytest.approx(info.calibration.threshold)
    assert entry["threshold_after"] == pytest.approx(again.calibration.threshold)
    # both inference paths were set again, from the same images
    tta = again.meta["calibration_by_path"]["tta"]
    assert tta["n_images"] == len(keep) and tta != info.meta["calibration_by_path"]["tta"]
    # the model is the run's: same weights, same cue mix and statistics
    before, after = model.state_dict(), load_run(tmp_path / "dropped")[0].state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert again.config == info.config

    # a later recalibration (e.g. a variant of the run) leaves the dropped image out too
    redone = recalibrate(load_run(tmp_path / "dropped")[0], again, data)
    roles = redone.meta["calibration_roles"]
    assert calib.index(bad) not in roles["fit"] + roles["threshold"]
    assert sorted(roles["fit"] + roles["threshold"]) == [i for i in range(len(calib)) if calib[i] != bad]


def test_a_name_that_is_not_a_threshold_image_is_refused_with_what_to_do(
    trained_run: Path, synth_data: Path
) -> None:
    model, info = load_run(trained_run)
    calib = info.meta["data"]["split"]["calib"]
    roles = info.meta["calibration_roles"]
    with pytest.raises(RunError, match=r"fitted this run's cue statistics.*fit again"):
        drop_threshold_images(model, info, synth_data, [calib[roles["fit"][0]]])
    with pytest.raises(RunError, match="matches none of this run's calibration images"):
        drop_threshold_images(model, info, synth_data, ["no_such_image.png"])
    with pytest.raises(RunError, match="matches none"):  # a training image is not a calibration image
        drop_threshold_images(model, info, synth_data, [info.meta["data"]["split"]["train"][0]])
    thr = [calib[i] for i in roles["threshold"]]
    with pytest.raises(RunError, match="leaves 1: at least 2 must remain"):
        drop_threshold_images(model, info, synth_data, thr[:-1])
    once = drop_threshold_images(model, info, synth_data, thr[:1])
    with pytest.raises(RunError, match="already dropped"):
        drop_threshold_images(model, once, synth_data, thr[:1])


def test_names_resolve_by_path_or_by_a_unique_file_name() -> None:
    calib = ["train/good/a.png", "train/good/b.png", "other/b.png"]
    assert find_calibration_images(["train/good/b.png", "a.png", "other/b.png"], calib) == [1, 0, 2]
    with pytest.raises(RunError, match="matches several"):
        find_calibration_images(["b.png"], calib)
    with pytest.raises(RunError, match="matches none"):
        find_calibration_images(["good/a.png"], calib)  # a partial path is not guessed


def test_a_drop_redoes_the_escape_estimate_at_the_new_threshold(planted: tuple[Path, Path, str]) -> None:
    # the model does not change when a threshold image is dropped, so the stored synthetic scores are
    # counted again against the new threshold (this run records none of its own: one is planted)
    from trainer.escapes import at_threshold

    data, run, bad = planted
    model, info = load_run(run)
    t = info.calibration.threshold
    scores = [0.1 * t, 0.5 * t, 0.99 * t, 2.0 * t]
    stored = {"scores": scores, "kinds": ["a", "b", "a", "b"], "contrasts": [1.0, 2.0, 3.0, 4.0]}
    info.meta["synthetic_escapes"] = at_threshold(stored, t)
    assert info.meta["synthetic_escapes"]["escapes"] == 0.75
    new = drop_threshold_images(model, info, data, [bad])
    est = new.meta["synthetic_escapes"]
    lower = new.calibration.threshold
    assert est["threshold"] == lower < 0.8 * t and est["scores"] == scores
    assert est["escapes"] == pytest.approx(float(np.mean(np.asarray(scores) < lower)))
    assert est["escapes"] < 0.75  # the defect had lifted the threshold: fewer synthetic defects pass now


def test_cli_drop_writes_the_run_and_reports_the_new_threshold(
    planted: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run, bad = planted
    out = tmp_path / "run2"
    assert main(["-q", "drop", "--run", str(run), "--data", str(data), "--out", str(out), bad]) == 0
    said = capsys.readouterr().out
    before = json.loads((run / "run.json").read_text())["calibration"]["threshold"]
    after = json.loads((out / "run.json").read_text())["calibration"]["threshold"]
    assert f"threshold {before:.4f} -> {after:.4f}" in said and bad in said and after < before
    assert "highest-scoring good threshold images now" in said
    # a bundle exported from it carries the new thresholds and names what was dropped
    from trainer.export.from_run import build_manifest

    _, info = load_run(out)
    doc = build_manifest(info, out, {"calibration_path": "plain"}, "part")
    assert doc["calibration"]["by_path"]["plain"]["threshold"] == pytest.approx(after)
    assert doc["calibration"]["dropped"] == [bad]

    assert main(["-q", "drop", "--run", str(out), "--data", str(data), "--out", str(out), "nope.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 'nope.png' matches none")
