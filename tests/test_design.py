"""The per-part choice of the memory-bank design (``bank.designs``, ``trainer/design.py``): the
one-standard-error rule, the kNN cost it breaks ties with, the design configs, and a real fit that chooses
between two designs and saves a run that reloads as the chosen one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import deployed_synthetic_scores, tiny_config

from trainer.config import BankDesign
from trainer.data import read_image
from trainer.design import choose_design, design_config, knn_cost
from trainer.errors import ConfigError
from trainer.models.masf import create_masf
from trainer.runs import load_run
from trainer.select import synthetic_objective
from trainer.train import fit

JOINT = {"name": "joint", "layers": [1, 2], "embedding": "joint", "k": 1, "coreset_ratio": 0.05}


def _rows(objectives: list[float], costs: list[int]) -> list[dict[str, float]]:
    return [{"objective": o, "knn_cost": c} for o, c in zip(objectives, costs, strict=True)]


def test_a_cheaper_design_within_one_standard_error_wins() -> None:
    # design 1 is 0.01 behind on average, but the paired fold differences scatter by ~0.1: within 1 SE
    folds = np.array([[2.0, 2.1, 1.9, 2.2, 1.8], [2.1, 1.95, 2.0, 2.05, 1.85]])
    rows = _rows(list(folds.mean(1)), [900, 500])
    assert choose_design(rows, folds) == 1
    assert rows[1]["within_1se"] and rows[1]["se"] > rows[0]["objective"] - rows[1]["objective"]
    assert rows[0]["se"] == 0.0


def test_a_design_clearly_behind_loses_however_cheap() -> None:
    folds = np.array([[2.0, 2.1, 1.9, 2.2, 1.8], [1.9, 2.0, 1.8, 2.1, 1.7]])  # always 0.1 behind: SE 0
    rows = _rows(list(folds.mean(1)), [900, 500])
    assert choose_design(rows, folds) == 0
    assert not rows[1]["within_1se"]


def test_equal_cost_within_one_standard_error_keeps_the_better_objective() -> None:
    folds = np.array([[2.0, 2.1, 1.9, 2.2, 1.8], [2.1, 1.95, 2.0, 2.05, 1.85]])
    rows = _rows(list(folds.mean(1)), [500, 500])
    assert choose_design(rows, folds) == 0


def test_knn_cost_is_queries_times_prototypes_times_channels() -> None:
    per_scale = create_masf(tiny_config(), (64, 64))
    for bank, n in zip(per_scale.bank_list(), (10, 20, 30), strict=True):
        bank.fill(torch.zeros(n, bank.bank.shape[1]))
    c = per_scale.teacher.cfg.channels  # lite0: 24, 40, 112 channels at strides 4, 8, 16
    assert knn_cost(per_scale) == 16 * 16 * 10 * c[0] + 8 * 8 * 20 * c[1] + 4 * 4 * 30 * c[2]
    joint = create_masf(design_config(tiny_config(), BankDesign(**JOINT)), (64, 64))
    joint.bank_list()[0].fill(torch.zeros(50, c[1] + c[2]))
    assert knn_cost(joint) == 8 * 8 * 50 * (c[1] + c[2])  # queried at the finer chosen scale only


def test_design_config_sets_only_the_named_fields() -> None:
    cfg = tiny_config(bank={"designs": [{"name": "per_scale"}, JOINT]})
    same = design_config(cfg, cfg.bank.designs[0])
    assert same.bank.designs == [] and same.bank.k == cfg.bank.k and same.bank.layers == [0, 1, 2]
    joint = design_config(cfg, cfg.bank.designs[1])
    assert (joint.bank.embedding, joint.bank.layers, joint.bank.k) == ("joint", [1, 2], 1)
    assert joint.bank.spectral == cfg.bank.spectral and joint.bank.max_size == cfg.bank.max_size
    assert joint.student == cfg.student and joint.fusion == cfg.fusion


@pytest.mark.parametrize(
    ("designs", "message"),
    [
        ([{"name": "only"}], "bank.designs must be empty or at least two designs"),
        ([{"name": "a"}, {"name": "a"}], "distinct"),
        ([{"name": "a"}, {"name": "b", "k": 0}], "bank.designs[1].k must be null or an int"),
        ([{"name": "a"}, {"name": "b", "layers": [2, 1]}], "bank.designs[1].layers"),
        ([{"name": "a"}, {"name": "b", "knn": 1}], "unknown field bank.designs[1].knn"),
        ([{"name": "a"}, {"k": 1}], "non-empty names"),
    ],
)
def test_bad_designs_name_the_field(designs: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(bank={"designs": designs})


def test_fit_chooses_a_design_on_calibration_data_and_saves_only_it(synth_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(bank={"designs": [{"name": "per_scale"}, JOINT]})
    info = fit(cfg, synth_data, tmp_path, progress=False)
    sel = info.meta["bank_selection"]
    rows = sel["candidates"]
    assert [r["name"] for r in rows] == ["per_scale", "joint"]
    assert all(np.isfinite(r["objective"]) and len(r["folds"]) == 2 for r in rows)  # 2 fit images
    # the stored rows and folds give the stored choice under the rule
    fresh = [{"objective": r["objective"], "knn_cost": r["knn_cost"]} for r in rows]
    chosen = choose_design(fresh, np.asarray([r["folds"] for r in rows]))
    assert sel["chosen"] == rows[chosen]["name"]
    design = cfg.bank.designs[chosen]
    assert info.meta["bank_sizes"] == rows[chosen]["bank_sizes"]
    assert len(rows[0]["bank_sizes"]) == 3 and len(rows[1]["bank_sizes"]) == 1
    # the saved run is the chosen design alone, with the cue mix chosen for it
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["config"]["bank"]["designs"] == []
    expected = design_config(cfg, design).bank
    assert info.config.bank == expected
    assert info.config.fusion.cos_weight == pytest.approx(rows[chosen]["cos_weight"])
    assert info.meta["fusion_selection"]["cos_weight"] == pytest.approx(rows[chosen]["cos_weight"])
    model, loaded = load_run(tmp_path)
    assert model.joint == (design.name == "joint") and loaded.config == info.config
    assert knn_cost(model) == rows[chosen]["knn_cost"]
    # the reloaded model scores the same synthetic defects as the selection did (scored as deployed)
    calib = info.meta["data"]["split"]["calib"]
    fit_images = [read_image(synth_data / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    again = synthetic_objective(model, fit_images, loaded.preprocess, torch.device("cpu"), cfg.seed, 4)
    assert again["objective"] == pytest.approx(rows[chosen]["objective"], abs=1e-6)
    assert again["folds"] == pytest.approx(rows[chosen]["folds"], abs=1e-6)


def test_the_image_score_choice_reuses_the_design_selections_cues(synth_data: Path, tmp_path: Path) -> None:
    # the fit hands the chosen design's cues of the synthetic defects to the image-score choice instead of
    # recomputing them: a fresh choice on the reloaded run, from a fresh probe, gives the same rows
    from trainer.score_choice import select_score_reduce

    cfg = tiny_config(bank={"designs": [{"name": "per_scale"}, JOINT]}, score={"select": "synthetic"})
    info = fit(cfg, synth_data, tmp_path, progress=False)
    stored = info.meta["score_selection"]
    assert stored is not None and info.meta["bank_selection"] is not None
    model, loaded = load_run(tmp_path)
    calib = info.meta["data"]["split"]["calib"]
    fit_images = [read_image(synth_data / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    names, cpu = loaded.config.score.candidates, torch.device("cpu")
    again = select_score_reduce(model, fit_images, loaded.preprocess, cpu, names, cfg.seed, 4)
    assert again is not None and again.reduce == stored["reduce"]
    for fresh, kept in zip(again.candidates, stored["candidates"], strict=True):
        assert fresh["reduce"] == kept["reduce"]
        assert fresh["objective"] == pytest.approx(kept["objective"], abs=1e-6)
        assert fresh["folds"] == pytest.approx(kept["folds"], abs=1e-6)


def test_a_split_score_mix_is_chosen_saved_and_reloaded(synth_data: Path, tmp_path: Path) -> None:
    # fusion.split_score: the selection ranks every (score mix, map mix) pair; the run keeps the pair
    # and reloads as it; a recalibration of the run (the path without designs) makes the same choice
    from trainer.train import recalibrate

    cfg = tiny_config(bank={"designs": [{"name": "per_scale"}, JOINT]}, fusion={"split_score": True})
    info = fit(cfg, synth_data, tmp_path, progress=False)
    sel = info.meta["fusion_selection"]
    grid = sorted({*cfg.fusion.candidates, 0.6})
    assert len(sel["candidates"]) == len(grid) ** 2
    win = next(r for r in sel["candidates"] if r["chosen"])
    split = win["score_cos_weight"] != win["cos_weight"]
    assert sel["score_cos_weight"] == (win["score_cos_weight"] if split else None)
    assert info.config.fusion.score_cos_weight == sel["score_cos_weight"]
    assert info.config.fusion.cos_weight == pytest.approx(win["cos_weight"])
    model, loaded = load_run(tmp_path)
    assert model.fusion.score_cos_weight == sel["score_cos_weight"]
    calib = info.meta["data"]["split"]["calib"]
    fit_images = [read_image(synth_data / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    again = synthetic_objective(model, fit_images, loaded.preprocess, torch.device("cpu"), cfg.seed, 4)
    design = next(
        r
        for r in info.meta["bank_selection"]["candidates"]
        if r["name"] == info.meta["bank_selection"]["chosen"]
    )
    assert again["objective"] == pytest.approx(design["objective"], abs=1e-6)
    redone = recalibrate(model, loaded, synth_data)
    assert redone.meta["fusion_selection"]["score_cos_weight"] == sel["score_cos_weight"]
    assert redone.config.fusion.cos_weight == pytest.approx(info.config.fusion.cos_weight)
    # the escape estimate: the synthetic defects scored as deployed (the split mix), from the design
    # selection's cached cues in the fit and from freshly computed bank cues in the recalibration
    deployed = deployed_synthetic_scores(model, loaded, synth_data)
    for meta, threshold in (
        (info.meta, info.calibration.threshold),
        (redone.meta, redone.calibration.threshold),
    ):
        est = meta["synthetic_escapes"]
        assert est["threshold"] == threshold and est["n"] == len(deployed) == len(est["kinds"])
        np.testing.assert_allclose(est["scores"], deployed, rtol=1e-4, atol=1e-4)
        assert est["escapes"] == pytest.approx(float(np.mean(deployed < threshold)), abs=1 / len(deployed))
