"""Training smoke tests on generated parts: fit, reload, determinism, schedule, small-data errors."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import plant_threshold_defect, tiny_config

from trainer.data import read_image
from trainer.data.synthetic import make_dataset
from trainer.errors import DataError
from trainer.inference import predict_arrays
from trainer.runs import load_run
from trainer.train import fit, lr_at, student_schedule


def test_fit_writes_a_complete_run(trained_run: Path) -> None:
    doc = json.loads((trained_run / "run.json").read_text())
    assert doc["schema_version"] == 1
    assert (trained_run / "model.safetensors").stat().st_size > 1_000_000  # teacher included
    assert doc["preprocess"]["height"] == 64 and doc["preprocess"]["color"] == "rgb"
    assert len(doc["train_log"]) == 2
    assert all(math.isfinite(v) for e in doc["train_log"] for v in e["loss_per_scale"])
    # 5 calibration images: 2 set the cue statistics and the mix, the other 3 only the threshold
    assert doc["calibration"]["n_images"] == 3 and doc["calibration"]["rule"] == "gaussian_bound"
    assert doc["calibration"]["roles"] == "split" and doc["calibration"]["n_fit_images"] == 2
    roles = doc["calibration_roles"]
    assert sorted(roles["fit"] + roles["threshold"]) == list(range(5)) and len(roles["threshold"]) == 3
    assert doc["calibration"]["threshold"] > doc["calibration"]["image_scores"]["max"]
    split = doc["data"]["split"]
    assert not set(split["train"]) & set(split["calib"])
    assert len(split["train"]) + len(split["calib"]) == 20
    assert all(0 < s <= 256 for s in doc["bank_sizes"])
    assert abs(sum(doc["scale_weights"]) - 1.0) < 1e-6


def test_training_reduces_the_distillation_loss(synth_data: Path, tmp_path: Path) -> None:
    info = fit(
        tiny_config(train={"epochs": 4, "lr": 2e-3}, bank={"enabled": False}),
        synth_data,
        tmp_path,
        progress=False,
    )
    log = info.meta["train_log"]
    assert sum(log[-1]["loss_per_scale"]) < 0.8 * sum(log[0]["loss_per_scale"])


def test_reloaded_run_scores_like_the_calibration(trained_run: Path, synth_data: Path) -> None:
    from trainer.models.masf import apply_tta
    from trainer.train import calibration_for

    model, info = load_run(trained_run)
    paths = info.meta["data"]["split"]["calib"]
    # the threshold images: the calibration record's statistics are theirs
    calib = [read_image(synth_data / paths[i]) for i in info.meta["calibration_roles"]["threshold"]]
    for tta in (False, True):
        cfg = info.config.tta
        deployed, applied = apply_tta(model, tta, cfg.views, cfg.sigma, cfg.seed)
        assert applied == tta
        cal = calibration_for(info, tta)
        scores = [p.score for p in predict_arrays(deployed, calib, info.preprocess, torch.device("cpu"))]
        assert max(scores) < cal.threshold
        assert np.isclose(max(scores), cal.image_scores["max"], rtol=1e-4)
        if not tta:  # the review lists the deployed (plain) path's threshold images, highest first
            review = info.meta["calibration_review"]
            order = np.argsort(scores)[::-1]
            thr = info.meta["calibration_roles"]["threshold"]
            assert [e["index"] for e in review] == [thr[i] for i in order]
            assert [e["image"] for e in review] == [paths[thr[i]] for i in order]
            assert np.allclose([e["score"] for e in review], np.asarray(scores)[order], rtol=1e-4)
    assert calibration_for(info, False) == info.calibration  # TTSA is off by default


def test_highest_scores_lists_the_top_images_highest_first() -> None:
    from trainer.train import highest_scores, review_entries

    top = highest_scores([0.5, 2.0, 1.0, 2.0, -1.0], [10, 11, 12, 13, 14], count=3)
    assert top == [(11, 2.0), (13, 2.0), (12, 1.0)]  # a tie: the lower index first
    assert highest_scores([1.0], [7]) == [(7, 1.0)]
    names = [f"img{i}.png" for i in range(15)]
    assert review_entries(top[:1], names) == [{"index": 11, "image": "img11.png", "score": 2.0}]
    assert review_entries(top[:1], None)[0]["image"] is None


def test_a_defective_part_among_the_good_threshold_images_is_listed_first(
    synth_data: Path, tmp_path: Path
) -> None:
    """A defect filed among the good images raises the threshold; the review must point at it."""
    data = tmp_path / "data"
    cfg = tiny_config(fusion={"select": "none"})
    planted = plant_threshold_defect(synth_data, data, cfg)

    info = fit(cfg, data, tmp_path / "run", progress=False)
    review = info.meta["calibration_review"]
    assert review[0]["image"] == planted.relative_to(data).as_posix()
    assert review[0]["score"] > 1.5 * review[1]["score"]


def test_fit_is_deterministic(synth_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = tiny_config(train={"epochs": 1})
    fit(cfg, synth_data, tmp_path / "a", progress=False)
    fit(cfg, synth_data, tmp_path / "b", progress=False)
    a, b = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ja, jb = (json.loads((tmp_path / d / "run.json").read_text())["calibration"] for d in "ab")
    assert ja == jb


def test_grayscale_and_long_thin_parts_keep_their_aspect(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "thin", n_train=9, n_test_good=1, n_test_defect=1, height=48, width=384, gray=True, seed=3
    )
    cfg = tiny_config(data={"input_size": "auto", "base_size": 64, "tiling": "off"}, train={"epochs": 1})
    info = fit(cfg, root, tmp_path / "run", progress=False)
    h, w = info.input_size
    assert info.preprocess.color == "gray" and not info.preprocess.tiled
    assert h % 32 == 0 and w % 32 == 0 and w / h >= 4  # 1:8 part, not squashed into a square


def test_long_parts_are_tiled_at_native_resolution(tiled_run: Path, strip_data: Path) -> None:
    info = load_run(tiled_run)[1]
    spec = info.preprocess
    # 64x512 strips (8:1, above data.tile_min_aspect): the frame is the native image, five 64x128 tiles
    assert spec.tiled and spec.frame_size == (64, 512) and info.input_size == (64, 128)
    assert spec.grid.count == 5 and spec.tile_overlap == 32
    model = load_run(tiled_run)[0]
    paths = sorted((strip_data / "test").rglob("*.png"))
    images = [read_image(p) for p in paths]
    preds = predict_arrays(model, images, spec, torch.device("cpu"))
    assert all(p.anomaly_map.shape == (64, 512) and p.geometry.orig_size == (64, 512) for p in preds)
    # the image score is the largest tile score; a defect's map peak lies on the defect
    good = [p.score for p, path in zip(preds, paths, strict=True) if path.parent.name == "good"]
    bad = [p.score for p, path in zip(preds, paths, strict=True) if path.parent.name != "good"]
    assert np.median(bad) > max(good)


@pytest.mark.parametrize(
    ("tiling", "size", "tiled"),
    [
        ("auto", (64, 512), True),
        ("auto", (200, 300), False),
        ("on", (200, 300), True),
        ("off", (64, 512), False),
    ],
)
def test_tiling_auto_tiles_long_parts_only(tiling: str, size: tuple[int, int], tiled: bool) -> None:
    from trainer.train import resolve_preprocess

    images = [np.zeros((*size, 3), np.uint8)] * 3
    spec = resolve_preprocess(tiny_config(data={"input_size": "auto", "tiling": tiling}), images)
    assert spec.tiled is tiled
    if tiled:
        assert spec.frame_size[0] >= size[0] - 16 and spec.frame_size[1] >= size[1] - 16


def test_orient_auto_sizes_the_frame_for_the_turned_images() -> None:
    from engines.preprocess import turns
    from trainer.train import resolve_preprocess, upright

    sizes = [(300, 200), (300, 200), (200, 300), (200, 300), (250, 250)]  # median h / w exactly 1
    images = [np.zeros(hw, np.uint8) for hw in sizes]
    keep = resolve_preprocess(tiny_config(data={"input_size": "auto"}), images)
    assert keep.size == (256, 256) and keep.orient == "keep"  # mixed orientations: a square frame
    auto = resolve_preprocess(tiny_config(data={"input_size": "auto", "orient": "auto"}), images)
    assert auto.orient == "auto" and auto.height > auto.width  # every image upright: a 3:2 frame
    assert upright(sizes) == [(300, 200)] * 4 + [(250, 250)]
    assert [turns(h, w, auto) for h, w in sizes] == [False, False, True, True, False]


def test_common_scale_keeps_one_pixel_pitch_for_crops_of_different_sizes() -> None:
    """``data.scale: common``: crops of one surface at sizes 200..400 px are placed at one scale, the
    largest at which ``scale_share`` of them fit the frame; only the larger rest shrink further."""
    from engines.preprocess import preprocess
    from trainer.config import ConfigError
    from trainer.train import common_scale, resolve_preprocess

    sides = [200, 220, 240, 260, 280, 300, 320, 340, 360, 400]
    images = [np.zeros((s, s), np.uint8) for s in sides]
    fill = resolve_preprocess(tiny_config(data={"input_size": "auto"}), images)
    assert fill.size == (256, 256) and fill.max_scale is None
    common = resolve_preprocess(tiny_config(data={"input_size": "auto", "scale": "common"}), images)
    # 9 of 10 images fit whole at 256 / 360; at any larger scale the 360-px crop would not
    assert common.size == (256, 256) and common.max_scale == pytest.approx(256 / 360)
    half = resolve_preprocess(
        tiny_config(data={"input_size": "auto", "scale": "common", "scale_share": 0.5}), images
    )
    assert half.max_scale == pytest.approx(256 / 280)
    scales = [preprocess(im, common)[1].scale_y for im in images]
    assert all(s == pytest.approx(256 / 360, abs=0.01) for s in scales[:9]) and scales[9] == 256 / 400
    assert [preprocess(im, fill)[1].scale_y for im in images[:2]] == [256 / 200, 256 / 220]
    # a landscape crop in a portrait frame counts as turned (orient: auto)
    auto = resolve_preprocess(tiny_config(data={"input_size": "auto", "orient": "auto"}), [images[0]] * 3)
    tall = replace(auto, height=256, width=128)
    assert common_scale([(100, 200)], tall, 1.0) == pytest.approx(min(256 / 200, 128 / 100))
    with pytest.raises(ConfigError, match=r"data\.scale 'common' needs data\.resize 'letterbox'"):
        tiny_config(data={"scale": "common", "resize": "stretch"})
    with pytest.raises(ConfigError, match=r"data\.scale_share"):
        tiny_config(data={"scale": "common", "scale_share": 0})


def test_parts_photographed_either_way_fit_and_evaluate_with_orient_auto(tmp_path: Path) -> None:
    """Half of the images (and their masks) turned to portrait: with ``orient: auto`` every image is
    placed upright in one landscape frame, and maps come back at each test image's own size."""
    import cv2

    from trainer.evaluate.runner import evaluate_model

    root = make_dataset(tmp_path / "data", n_train=14, n_test_good=4, n_test_defect=2, height=64, width=96)
    for i, path in enumerate(
        sorted((root / "train").rglob("*.png")) + sorted((root / "test").rglob("*.png"))
    ):
        if i % 2:
            continue
        cv2.imwrite(str(path), cv2.rotate(cv2.imread(str(path)), cv2.ROTATE_90_CLOCKWISE))
        mask = root / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        if mask.is_file():
            m = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(mask), cv2.rotate(m, cv2.ROTATE_90_CLOCKWISE))
    data = {"input_size": "auto", "base_size": 96, "orient": "auto"}
    cfg = tiny_config(data=data, student={"enabled": False})
    info = fit(cfg, root, tmp_path / "run", progress=False)
    spec = info.preprocess
    assert spec.orient == "auto" and spec.height != spec.width  # one frame, of the majority orientation
    model, loaded = load_run(tmp_path / "run")
    assert loaded.preprocess == spec
    tests = [read_image(p) for p in sorted((root / "test" / "good").glob("*.png"))]
    assert {im.shape[:2] for im in tests} == {(64, 96), (96, 64)}
    preds = predict_arrays(model, tests, spec, torch.device("cpu"))
    for im, pred in zip(tests, preds, strict=True):
        assert pred.geometry.turned == ((im.shape[0] > im.shape[1]) != (spec.height > spec.width))
        assert pred.geometry.to_original(pred.anomaly_map).shape == im.shape[:2]
        g = pred.geometry  # upright or turned, each image's long side lies along the frame's
        assert g.height * g.width >= 0.7 * spec.height * spec.width
    res = evaluate_model(model, loaded, root, progress=False)
    assert res["n_test_images"] == len(list((root / "test").rglob("*.png"))) and 0 <= res["pixel_auroc"] <= 1


def test_lr_schedule_warmup_then_cosine() -> None:
    lrs = [lr_at(e, 2e-4, 5, 15, 1e-6) for e in np.linspace(0, 15, 151)]
    assert lrs[0] < 1e-6 + 2e-4 * 0.01
    assert max(lrs) == pytest.approx(2e-4, rel=1e-3)
    peak = int(np.argmax(lrs))
    assert 45 <= peak <= 52  # end of the 5-epoch warm-up
    assert all(x >= y - 1e-12 for x, y in zip(lrs[peak:], lrs[peak + 1 :], strict=False))  # then decays
    assert lr_at(20.0, 2e-4, 5, 15, 1e-6) == pytest.approx(2e-4)  # warm restart after T0


def test_max_steps_caps_the_student_and_shrinks_the_schedule() -> None:
    assert student_schedule(15, 24, 0) == (15, 360, 1.0)  # no cap
    assert student_schedule(15, 24, 400) == (15, 360, 1.0)  # 360 planned steps: under the cap, unchanged
    epochs, total, shrink = student_schedule(15, 77, 400)  # 1,155 planned: 400 in 6 epochs (the 6th partial)
    assert epochs == 6 and total == 400 and shrink == pytest.approx(400 / 1155)
    # the shrunk schedule ends where the full one does: warm-up 5 and period 15 epochs, scaled
    end_full = lr_at(15 - 1 / 77, 2e-4, 5, 15, 1e-6)
    end_capped = lr_at((400 - 1) / 77, 2e-4, 5 * shrink, 15 * shrink, 1e-6)
    assert end_capped == pytest.approx(end_full, rel=0.05)


def test_fit_stops_the_student_at_max_steps(synth_data: Path, tmp_path: Path) -> None:
    # 15 training images, batch 4: 4 steps an epoch; 3 epochs planned (12 steps), capped at 6
    info = fit(
        tiny_config(train={"epochs": 3, "max_steps": 6}, bank={"enabled": False}),
        synth_data,
        tmp_path,
        progress=False,
    )
    log = info.meta["train_log"]
    assert [e["steps"] for e in log] == [4, 2]


def test_too_few_training_images_is_a_clear_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "few", n_train=4, n_test_good=0, n_test_defect=0)
    with pytest.raises(DataError, match=r"training images .* need at least 7"):
        fit(tiny_config(), root, tmp_path / "run", progress=False)


def test_empty_train_set_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "d" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="train/good"):
        fit(tiny_config(), tmp_path / "d", tmp_path / "run", progress=False)


def test_corrupt_run_is_a_clear_error(trained_run: Path, tmp_path: Path) -> None:
    from trainer.errors import RunError

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="corrupt or truncated"):
        load_run(broken)
    (broken / "run.json").write_text("{not json")
    with pytest.raises(RunError, match="corrupt"):
        load_run(broken)
    with pytest.raises(RunError, match="not found"):
        load_run(tmp_path / "nope")


@pytest.mark.parametrize("cue", ["student", "bank"])
def test_one_cue_kept_after_a_one_sided_mix_still_scores(
    trained_run: Path, synth_data: Path, cue: str
) -> None:
    """An ablation keeps one cue even when the chosen mix gave that cue weight 0 (e.g. a bank-only mix
    and a distillation-only ablation): the model recalibrates and scores instead of having no map."""
    from trainer.train import recalibrate

    model, info = load_run(trained_run)
    # The mix the selection would pick against the kept cue.
    zero_for_kept = (0.0, 1.0) if cue == "student" else (1.0, 0.0)
    model.fusion.cos_weight, model.fusion.bank_weight = zero_for_kept
    model.single_cue(cue)
    assert (model.use_student, model.use_bank) == ((True, False) if cue == "student" else (False, True))
    info = recalibrate(model, info, synth_data)
    images = [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))[:4]]
    scores = [p.score for p in predict_arrays(model, images, info.preprocess, torch.device("cpu"))]
    assert all(math.isfinite(s) for s in scores)
    assert math.isfinite(info.calibration.threshold)


def test_single_cue_rejects_an_unknown_or_missing_cue(trained_run: Path) -> None:
    model, _ = load_run(trained_run)
    with pytest.raises(ValueError, match="cue must be"):
        model.single_cue("both")
    model.use_bank = False
    with pytest.raises(ValueError, match="no memory bank"):
        model.single_cue("bank")


def test_images_per_call_keeps_about_batch_size_model_inputs(trained_run: Path, tiled_run: Path) -> None:
    from trainer.inference import images_per_call
    from trainer.models.masf import apply_tta

    model, info = load_run(trained_run)
    assert images_per_call(model, info.preprocess, 8) == 8
    wrapped, applied = apply_tta(model, True, 5, 0.1, 0)
    assert applied and images_per_call(wrapped, info.preprocess, 8) == 1  # 5 views of 1 image
    assert images_per_call(apply_tta(model, True, 2, 0.1, 0)[0], info.preprocess, 8) == 4
    tiled, tinfo = load_run(tiled_run)
    tiles = tinfo.preprocess.grid.count
    assert tiles > 1 and images_per_call(tiled, tinfo.preprocess, 8) == max(1, 8 // tiles)
