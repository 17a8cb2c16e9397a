"""Tests for trainer.position_choice and the position cue in the model: fitted, calibrated, chosen, saved,
exported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import deployed_synthetic_scores, tiny_config

from trainer.config import config_from_dict
from trainer.data import read_image
from trainer.errors import ConfigError
from trainer.export.onnx import export_onnx
from trainer.export.parity import MAP_RTOL, SCORE_RTOL
from trainer.inference import predict_arrays
from trainer.models.masf import apply_tta
from trainer.runs import load_run
from trainer.train import fit

POSITION = {"enabled": True, "grid": 4}


@pytest.fixture(scope="module")
def position_run(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with the position cue, its weight chosen among 0 and 0.5 on synthetic defects."""
    out = tmp_path_factory.mktemp("position_run")
    cfg = tiny_config(fusion={"select": "none"}, position={**POSITION, "candidates": [0.5]})
    fit(cfg, synth_data, out, progress=False)
    return out


def _images(synth_data: Path) -> list[np.ndarray]:
    return [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))[1::5][:3]]


def test_the_fit_records_the_cue_and_the_run_reloads_it(position_run: Path) -> None:
    doc = json.loads((position_run / "run.json").read_text())
    sel = doc["position_selection"]
    assert [r["weight"] for r in sel["rows"]] == [0.0, 0.5]
    assert sum(r["chosen"] for r in sel["rows"]) == 1.0
    chosen = next(r for r in sel["rows"] if r["chosen"])
    assert doc["config"]["position"]["weight"] == chosen["weight"] == sel["weight"]
    # only the image score moves with the weight: the two pixel terms are the same on every row
    assert len({(r["pixel_auroc"], r["aupro"]) for r in sel["rows"]}) == 1
    assert all(len(r["folds"]) == 2 for r in sel["rows"])  # 2 fit images: 2 folds
    model, _ = load_run(position_run)
    cue = model.position
    assert cue is not None and model.position_weight == chosen["weight"]
    assert cue.mean.shape == (16, 40 + 112) and cue.factor.abs().sum() > 0
    assert cue.stats[1] > 0 and cue.stats[0] > 0  # the fit images' distance statistics


def test_the_escape_estimate_scores_the_synthetic_defects_with_the_cue(
    position_run: Path, synth_data: Path
) -> None:
    # the run's synthetic defects scored from the probe's cues, the position cue mixed into the image score,
    # as deployed: the same scores as predict_arrays on the same images (at the chosen weight, stored in
    # run.json, and at 0.5 whatever was chosen)
    from trainer.escapes import deployed_scores
    from trainer.select import synthetic_probe

    model, info = load_run(position_run)
    est = info.meta["synthetic_escapes"]
    assert est["threshold"] == info.calibration.threshold
    assert set(est["by_kind"]) == {"scratch", "spot", "crack", "patch"}
    np.testing.assert_allclose(est["scores"], deployed_synthetic_scores(model, info, synth_data), atol=1e-4)
    model.position_weight = 0.5
    calib = info.meta["data"]["split"]["calib"]
    fit_images = [read_image(synth_data / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    probe = synthetic_probe(model, fit_images, info.preprocess, torch.device("cpu"), info.config.seed, 4)
    assert probe is not None
    on = deployed_scores(model, probe.defective)
    np.testing.assert_allclose(on, deployed_synthetic_scores(model, info, synth_data), rtol=1e-4, atol=1e-4)
    model.position_weight = 0.0
    assert np.abs(deployed_scores(model, probe.defective) - on).max() > 1e-3  # the cue moved the scores


def test_the_weight_mixes_the_cue_into_the_score_only(position_run: Path, synth_data: Path) -> None:
    model, info = load_run(position_run)
    spec, cpu = info.preprocess, torch.device("cpu")
    images = _images(synth_data)
    model.position_weight = 0.0
    off = predict_arrays(model, images, spec, cpu)
    model.position_weight = 0.5
    on = predict_arrays(model, images, spec, cpu)
    for a, b in zip(off, on, strict=True):
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=1e-6, atol=1e-6)
    assert any(abs(a.score - b.score) > 1e-3 for a, b in zip(off, on, strict=True))
    # by hand: the image score of (1 - w) * map + w * P, P from the teacher's scales 1 and 2
    from engines.preprocess import model_inputs, preprocess_batch
    from trainer.inference import frames_to_tensor

    batch, geometries = preprocess_batch(images, spec)
    inputs, valid = model_inputs(batch, geometries, spec)
    x, v = frames_to_tensor(inputs, cpu), torch.from_numpy(valid).float()
    with torch.no_grad():
        feats = model.collect(x)
        fused, _ = model.fused_maps(model.teacher.normalize(x), v)
        dist, cells = model.position.raw(feats[1:3], v)  # type: ignore[union-attr]
        st = model.position.stats  # type: ignore[union-attr]
        p = F.interpolate((dist - st[0]) / st[1] * cells, size=model.input_size, mode="bilinear")
        want = model.post(fused, v, 0.5 * fused + 0.5 * p).pred_score.numpy()
    np.testing.assert_allclose([b.score for b in on], want, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True])
def test_the_cue_exports_with_parity(position_run: Path, synth_data: Path, tmp_path: Path, tta: bool) -> None:
    model, info = load_run(position_run)
    model.position_weight = 0.5  # whatever the tiny selection chose, the graph carries the cue
    images = _images(synth_data)
    rec: dict[str, Any] = export_onnx(
        model, info, tmp_path / "p.onnx", tta=tta, parity_images=images, parity_batch_sizes=(1, 2), threads=1
    )
    assert rec["ops"]["Floor"] == 2 and rec["tensorrt10"]["issues"] == []  # each position's cell
    parity = rec["parity"]
    assert (
        parity["passed"] and parity["map_max_rel_err"] < MAP_RTOL and parity["score_max_rel_err"] < SCORE_RTOL
    )
    # TTSA averages the views' maps: the cue sees each view with the frame's own part box
    cpu = torch.device("cpu")
    deployed, _ = apply_tta(model, tta, info.config.tta.views, info.config.tta.sigma, info.config.tta.seed)
    assert all(np.isfinite(p.score) for p in predict_arrays(deployed, images, info.preprocess, cpu))


@pytest.mark.slow
def test_weight_zero_skips_the_cue_in_the_graph(position_run: Path, synth_data: Path, tmp_path: Path) -> None:
    model, info = load_run(position_run)
    model.position_weight = 0.0
    rec = export_onnx(model, info, tmp_path / "off.onnx", parity_images=_images(synth_data), threads=1)
    assert "Floor" not in rec["ops"] and rec["parity"]["passed"]


def test_a_tiled_part_fits_without_the_cue(tmp_path: Path) -> None:
    from trainer.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "strips", n_train=14, n_test_good=1, n_test_defect=1, height=64, width=192)
    cfg = tiny_config(
        data={"input_size": "auto", "base_size": 64, "tiling": "on"},
        position=POSITION,
        fusion={"select": "none"},
    )
    info = fit(cfg, data, tmp_path / "run", progress=False)
    assert info.preprocess.tiled
    assert info.config.position.enabled is False and info.meta["position_selection"] is None
    model, _ = load_run(tmp_path / "run")
    assert model.position is None


def test_the_part_keeps_the_configured_weight_unless_its_data_says_otherwise() -> None:
    from trainer.position_choice import choose_weight

    rows = [
        {"weight": 0.0, "objective": 2.70},
        {"weight": 0.25, "objective": 2.71},
        {"weight": 0.5, "objective": 2.60},
    ]
    # 0.25 best, 0 within one standard error (noisy folds), 0.5 far behind
    folds = np.array([[2.70, 2.66, 2.74, 2.70], [2.74, 2.66, 2.76, 2.68], [2.60, 2.61, 2.59, 2.60]])
    assert choose_weight([dict(r) for r in rows], folds, default=0.0) == 0
    assert choose_weight([dict(r) for r in rows], folds, default=0.25) == 1
    assert choose_weight([dict(r) for r in rows], folds, default=0.5) == 1  # 0.5 is out: the nearest within
    # consistent folds: 0.25 beats 0 beyond noise, so a default of 0 gives way
    tight = np.array([[2.70, 2.70, 2.70, 2.70], [2.71, 2.71, 2.71, 2.71], [2.60, 2.60, 2.60, 2.60]])
    assert choose_weight([dict(r) for r in rows], tight, default=0.0) == 1


def test_require_gain_leans_the_weight_to_zero(
    position_run: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``position.require_gain``: the recalibrated run ranks the same weights on the same defects, and the
    one-standard-error rule takes the weight nearest 0 (the cue only where it measurably helps), not the
    nearest the configured 0.5; the record says so."""
    from dataclasses import replace

    import trainer.position_choice
    import trainer.train

    leans: list[float] = []
    real = trainer.position_choice.choose_weight

    def spy(rows: Any, folds: Any, default: float) -> int:
        leans.append(default)
        return real(rows, folds, default)

    monkeypatch.setattr(trainer.position_choice, "choose_weight", spy)
    doc = json.loads((position_run / "run.json").read_text())
    model, info = load_run(position_run)
    pc = replace(info.config.position, weight=0.5, require_gain=True)
    info.config = replace(info.config, position=pc)
    again = trainer.train.recalibrate(model, info, synth_data)
    assert leans == [0.0]
    sel = again.meta["position_selection"]
    assert [r["objective"] for r in sel["rows"]] == [
        r["objective"] for r in doc["position_selection"]["rows"]
    ]
    folds = np.array([r["folds"] for r in sel["rows"]])
    want = sel["rows"][real([dict(r) for r in sel["rows"]], folds, 0.0)]["weight"]
    assert sel["weight"] == want == model.position_weight == again.config.position.weight
    assert "nearest 0" in sel["rule"]
    assert "nearest the configured" in doc["position_selection"]["rule"]


def test_config_checks_the_position_fields() -> None:
    with pytest.raises(ConfigError, match=r"position\.grid must be a positive int"):
        config_from_dict({"position": {"grid": 0}})
    with pytest.raises(ConfigError, match=r"position\.weight"):
        config_from_dict({"position": {"weight": 1.0}})
    assert config_from_dict({}).position.enabled is False  # off unless asked for
