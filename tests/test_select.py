"""Tests for trainer.select: synthetic defects on calibration images choose the cue mix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from trainer.data import read_image
from trainer.runs import load_run
from trainer.select import (
    MIN_SYNTHETIC,
    _choose,
    fold_assignment,
    mix_candidates,
    objective_by_fold,
    probe_truth,
    rank_mixes,
    select_cue_mix,
    synthetic_defects,
)

H = W = 32


class _FakeModel:
    """Just what ``rank_mixes`` uses of a MASF: ``fusion``, ``post`` and ``input_size``."""

    def __init__(self) -> None:
        from trainer.models.masf.ughf import UGHF, MapPostprocess

        self.fusion = UGHF(1, cos_weight=0.6, bank_weight=0.4, learned=False)
        self.post = MapPostprocess(sigma=1.0)
        self.input_size = (H, W)


def _cues(
    n: int, informative: str, defect: bool, rng: np.random.Generator
) -> tuple[list[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]], np.ndarray]:
    """One batch of half-resolution cues; the ``informative`` one marks a square defect."""
    masks = np.zeros((n, H, W), dtype=bool)
    signal = torch.zeros(n, H // 2, W // 2)
    for i in range(n):
        if defect:
            y, x = rng.integers(2, H // 2 - 6, 2)
            signal[i, y : y + 4, x : x + 4] = 4.0
            masks[i, 2 * y : 2 * y + 8, 2 * x : 2 * x + 8] = True
    noise = lambda: torch.from_numpy(rng.normal(0, 1, (n, H // 2, W // 2)).astype(np.float32))  # noqa: E731
    good_cue, noise_cue = signal + 0.3 * noise(), 2.0 * noise()
    cos, bank = (good_cue, noise_cue) if informative == "cos" else (noise_cue, good_cue)
    return [([cos], [bank], torch.ones(n, 1, H, W))], masks


@pytest.mark.parametrize(("informative", "want"), [("cos", 1.0), ("bank", 0.0)])
def test_the_informative_cue_wins(informative: str, want: float) -> None:
    rng = np.random.default_rng(0)
    model = _FakeModel()
    good, _ = _cues(12, informative, False, rng)
    bad, masks = _cues(24, informative, True, rng)
    chosen, rows = rank_mixes(model, good, bad, masks, [0.0, 0.25, 0.5, 0.75, 1.0])  # type: ignore[arg-type]
    assert chosen == want
    by_a = {r["cos_weight"]: r for r in rows}
    assert by_a[want]["objective"] > by_a[1.0 - want]["objective"] + 0.2
    assert all(
        r["objective"] == pytest.approx(r["image_auroc"] + r["pixel_auroc"] + r["aupro"]) for r in rows
    )
    assert by_a[want]["aupro"] > by_a[1.0 - want]["aupro"] + 0.1
    # the model's own weights are left as they were
    assert (model.fusion.cos_weight, model.fusion.bank_weight) == (0.6, 0.4)


@pytest.mark.parametrize("split", [False, True])
def test_an_exact_tie_goes_to_the_bank_alone(split: bool) -> None:
    # the same cue twice: every mix (and every pair of mixes) scores alike; one cue, one mix wins
    rng = np.random.default_rng(1)
    model = _FakeModel()
    good, _ = _cues(8, "cos", False, rng)
    bad, masks = _cues(8, "cos", True, rng)
    same = [([c[0]], [c[0]], v) for c, _, v in good], [([c[0]], [c[0]], v) for c, _, v in bad]
    grid = mix_candidates([0.0, 0.5, 0.6, 1.0], split)
    chosen, rows = rank_mixes(model, *same, masks, grid)  # type: ignore[arg-type]
    assert len({round(r["objective"], 12) for r in rows}) == 1 and len(rows) == (16 if split else 4)
    win = next(r for r in rows if r["chosen"])
    assert chosen == 0.0 and win["score_cos_weight"] == 0.0


def _rows(objectives: dict[float, list[float]]) -> tuple[list[dict[str, float]], np.ndarray]:
    rows = [
        {"cos_weight": a, "score_cos_weight": a, "objective": float(np.mean(f))}
        for a, f in objectives.items()
    ]
    return rows, np.array(list(objectives.values()))


def test_a_mix_must_beat_the_bank_by_more_than_its_noise() -> None:
    # the mix is better on average, but by less than the spread over the folds: the bank alone wins
    noisy = {0.0: [2.80, 2.90, 2.70, 2.85, 2.75], 0.5: [2.86, 2.85, 2.80, 2.80, 2.79], 1.0: [2.5] * 5}
    rows, folds = _rows(noisy)
    assert max(rows, key=lambda r: r["objective"])["cos_weight"] == 0.5
    assert rows[_choose(rows, folds)]["cos_weight"] == 0.0
    assert [r["within_1se"] for r in rows] == [1.0, 1.0, 0.0]
    # the same mean gain, consistent over the folds: the mix wins
    steady = {0.0: [2.80, 2.90, 2.70, 2.85, 2.75], 0.5: [2.82, 2.92, 2.72, 2.87, 2.77], 1.0: [2.5] * 5}
    rows, folds = _rows(steady)
    assert rows[_choose(rows, folds)]["cos_weight"] == 0.5
    assert rows[0]["within_1se"] == 0.0 and rows[0]["se"] == pytest.approx(0.0, abs=1e-12)


def _split_cues(
    n: int, defect: bool, rng: np.random.Generator
) -> tuple[list[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]], np.ndarray]:
    """Half-resolution cues where the bank tells defective images apart (one sharp spike at each defect's
    centre, nothing hot in good images) and the distillation cue localises (the defect's whole square)
    but has a hot grain in every good image (its image score is poor)."""
    masks = np.zeros((n, H, W), dtype=bool)
    noise = lambda: torch.from_numpy(rng.normal(0, 0.3, (n, H // 2, W // 2)).astype(np.float32))  # noqa: E731
    cos, bank = noise(), noise()
    for i in range(n):
        y, x = rng.integers(2, H // 2 - 6, 2)
        if defect:
            cos[i, y : y + 4, x : x + 4] += 2.0
            bank[i, y + 2, x + 2] += 4.0
            masks[i, 2 * y : 2 * y + 8, 2 * x : 2 * x + 8] = True
        else:
            cos[i, y : y + 2, x : x + 2] += 5.0
    return [([cos], [bank], torch.ones(n, 1, H, W))], masks


def test_a_split_mix_takes_the_score_from_one_mix_and_the_map_from_another() -> None:
    rng = np.random.default_rng(3)
    model = _FakeModel()
    good, _ = _split_cues(16, False, rng)
    bad, masks = _split_cues(32, True, rng)
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    _, single = rank_mixes(model, good, bad, masks, grid)  # type: ignore[arg-type]
    pairs = mix_candidates(grid, split=True)
    assert len(pairs) == 25 and pairs[:5] == grid and (0.0, 1.0) in pairs
    chosen, rows = rank_mixes(model, good, bad, masks, pairs)  # type: ignore[arg-type]
    by_mix = {r["cos_weight"]: r for r in single}
    for r in rows:  # a pair's metrics: its score mix's image term, its map mix's pixel terms
        assert r["image_auroc"] == by_mix[r["score_cos_weight"]]["image_auroc"]
        assert (r["pixel_auroc"], r["aupro"]) == (
            by_mix[r["cos_weight"]]["pixel_auroc"],
            by_mix[r["cos_weight"]]["aupro"],
        )
    win = next(r for r in rows if r["chosen"])
    assert sum(r["chosen"] for r in rows) == 1 and win["cos_weight"] == chosen
    assert win["score_cos_weight"] < win["cos_weight"]  # the score leans on the bank, the map on distillation
    assert win["objective"] > max(r["objective"] for r in single) + 0.02
    assert win["within_1se"] == 1.0 and all(r["within_1se"] == 0.0 for r in rows[:5])
    assert (model.fusion.cos_weight, model.fusion.bank_weight, model.fusion.score_cos_weight) == (
        0.6,
        0.4,
        None,
    )


def test_folds_follow_the_calibration_image_a_defect_was_drawn_into() -> None:
    # 7 good images -> 5 folds; each defect lands in its source image's fold
    fold = fold_assignment(np.arange(7), np.array([6, 0, 3, 3]))
    assert fold.tolist() == [0, 1, 2, 3, 4, 0, 1, 1, 0, 3, 3]
    # fewer good images than folds: one fold per good image
    assert fold_assignment(np.arange(3), np.array([2, 1])).tolist() == [0, 1, 2, 2, 1]


def test_probe_truth_boxes_labels_truth_and_folds() -> None:
    # frames 8 x 8, the pixel stride 2: good image 0 fills the frame, good image 1 is letterboxed to
    # rows 2..5; the defective image (drawn into good image 1) keeps columns 0..3 and its defect is the
    # 2 x 2 block at rows 2..3, columns 2..3
    valid_good = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    valid_good[0] = 1
    valid_good[1, 0, 2:6] = 1
    valid_bad = np.zeros((1, 1, 8, 8), dtype=np.uint8)
    valid_bad[0, 0, :, :4] = 1
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True
    pt = probe_truth(valid_good, valid_bad, masks, np.arange(2), np.array([1]))
    assert (pt.n_good, pt.n_bad) == (2, 1)
    assert pt.boxes[0] == [(slice(0, 4), slice(0, 4)), (slice(1, 3), slice(0, 4))]
    assert pt.boxes[1] == [(slice(0, 4), slice(0, 2))]
    assert pt.labels.tolist() == [0.0, 0.0, 1.0]
    assert pt.truth[0] is None and pt.truth[1] is None
    # strided mask rows 0..3, columns 0..1: the defect is at strided (1, 1) only
    expected = np.zeros((4, 2), dtype=bool)
    expected[1, 1] = True
    np.testing.assert_array_equal(pt.truth[2], expected)
    assert pt.fold.tolist() == [0, 1, 1]


def test_objective_by_fold_scores_each_fold_on_its_own_images() -> None:
    # fold 0: the defect outscores the good image, its mask exactly where its map is high;
    # fold 1: the defect scores below the good image and its map is high off its mask; fold 2 is empty
    on = np.zeros((4, 4), dtype=bool)
    on[:2] = True
    hot = on.astype(float)
    scores = np.array([0.1, 0.9, 0.8, 0.3])
    labels = np.array([0.0, 0.0, 1.0, 1.0])
    maps = [np.zeros((4, 4)), np.zeros((4, 4)), hot, 1.0 - hot]
    truth: list[np.ndarray | None] = [None, None, on, on]
    fold = np.array([0, 1, 0, 1])
    rows = objective_by_fold(scores, labels, maps, truth, fold)
    assert len(rows) == 2
    assert rows[0]["image_auroc"] == 1.0 and rows[1]["image_auroc"] == 0.0
    assert rows[0]["pixel_auroc"] > rows[1]["pixel_auroc"]
    for r in rows:
        assert r["objective"] == pytest.approx(r["image_auroc"] + r["pixel_auroc"] + r["aupro"])
    # a fold with no image is skipped, not scored as empty
    assert len(objective_by_fold(scores, labels, maps, truth, np.array([0, 2, 0, 2]))) == 2


@pytest.mark.parametrize("gray", [False, True])
def test_synthetic_defects_are_visible_and_masked(gray: bool) -> None:
    rng = np.random.default_rng(0)
    shape = (60, 200) if gray else (80, 80, 3)
    images = [rng.integers(60, 200, shape, dtype=np.uint8) for _ in range(3)]
    pairs = synthetic_defects(images, seed=0, min_total=1)
    assert len(pairs) == 3 * 4
    for k, (img, mask, index) in enumerate(pairs):
        assert index == k // 4  # one of each kind per image, image-major
        src = images[index]
        assert img.shape == src.shape and img.dtype == np.uint8 and mask.shape == src.shape[:2]
        inside = mask > 0
        assert inside.any()
        changed = np.abs(img.astype(int) - src.astype(int)).reshape(*src.shape[:2], -1).max(-1) > 2
        # the mask of a 1 px line is 2 px wide, and a faint line barely changes some pixels
        assert changed[inside].mean() > 0.25, f"defect {k % 4} barely changes its own mask"
        assert changed[~inside].mean() < 0.05, f"defect {k % 4} leaks far outside its mask"
    again = synthetic_defects(images, seed=0, min_total=1)
    for (img_a, mask_a, _), (img_b, mask_b, _) in zip(pairs, again, strict=True):
        assert np.array_equal(img_a, img_b) and np.array_equal(mask_a, mask_b)


def test_synthetic_defects_are_graded_and_fill_small_sets() -> None:
    rng = np.random.default_rng(1)
    images = [
        np.full((96, 96, 3), 128, np.uint8) + rng.integers(0, 3, (96, 96, 3), dtype=np.uint8)
        for _ in range(2)
    ]
    pairs = synthetic_defects(images, seed=3, min_total=40)
    assert len(pairs) == 40  # 5 rounds of 2 images x 4 kinds
    assert [index for *_, index in pairs] == [k // 4 % 2 for k in range(40)]
    spots = [(img, mask > 0) for k, (img, mask, _) in enumerate(pairs) if k % 4 == 1]
    areas = [int(m.sum()) for _, m in spots]
    contrast = [float(np.abs(img.astype(int) - 128)[m].mean()) for img, m in spots]
    assert max(areas) > 4 * min(areas), f"spot sizes barely vary: {areas}"
    assert max(contrast) > 2.5 * min(contrast), f"spot contrasts barely vary: {contrast}"


@pytest.fixture(scope="module")
def selected_run(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with the cue mix chosen on synthetic defects (the default)."""
    from trainer.train import fit

    out = tmp_path_factory.mktemp("selected")
    fit(tiny_config(), synth_data, out, progress=False)
    return out


def test_fit_stores_the_choice_and_the_run_reloads_with_it(selected_run: Path, synth_data: Path) -> None:
    doc = json.loads((selected_run / "run.json").read_text())
    sel = doc["fusion_selection"]
    grid = [r["cos_weight"] for r in sel["candidates"]]
    assert grid == sorted(set(grid)) and 0.6 in grid and {0.0, 1.0} <= set(grid)
    best = max(r["objective"] for r in sel["candidates"])
    (chosen,) = [r for r in sel["candidates"] if r["cos_weight"] == sel["cos_weight"]]
    assert chosen["within_1se"] == 1.0 and best - chosen["objective"] <= chosen["se"]
    assert all(r["se"] >= 0 for r in sel["candidates"])
    # each row keeps its per-fold objectives: the standard errors the rule used follow from them
    best_row = max(sel["candidates"], key=lambda r: r["objective"])
    for r in sel["candidates"]:
        assert len(r["folds"]) == len(best_row["folds"]) >= 2
        diff = np.asarray(best_row["folds"]) - np.asarray(r["folds"])
        assert r["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(diff.size))
    assert sel["n_good"] == doc["calibration"]["n_fit_images"]  # the selection sees the fit images only
    assert sel["n_synthetic"] == 4 * sel["n_good"] * math.ceil(MIN_SYNTHETIC / (4 * sel["n_good"]))
    model, info = load_run(selected_run)
    assert info.config.fusion.cos_weight == pytest.approx(sel["cos_weight"])
    assert model.fusion.cos_weight + model.fusion.bank_weight == pytest.approx(1.0)
    # selecting again on the same images gives the same choice (seeded)
    paths = info.meta["data"]["split"]["calib"]
    calib = [read_image(synth_data / paths[i]) for i in info.meta["calibration_roles"]["fit"]]
    again = select_cue_mix(model, calib, info.preprocess, torch.device("cpu"), [0.0, 0.25, 0.5, 0.75, 1.0], 0)
    assert again is not None and again.cos_weight == sel["cos_weight"]


def test_single_cue_models_and_select_none_keep_the_mix(
    synth_data: Path, trained_run: Path, tmp_path: Path
) -> None:
    from trainer.train import fit

    info = fit(tiny_config(student={"enabled": False}), synth_data, tmp_path / "bank", progress=False)
    assert info.meta["fusion_selection"] is None
    _, info = load_run(trained_run)  # trained with fusion.select: none
    assert info.meta["fusion_selection"] is None
    assert (info.config.fusion.cos_weight, info.config.fusion.bank_weight) == (0.6, 0.4)


def test_a_cue_with_weight_zero_is_not_computed(trained_run: Path) -> None:
    model, info = load_run(trained_run)
    h, w = info.preprocess.size
    x = torch.rand(2, 3, h, w) * 255
    feats = model.collect(x)
    model.fusion.cos_weight, model.fusion.bank_weight = 0.0, 1.0
    cos, bank = model.raw_cues(feats)
    assert cos is None and bank is not None
    cos_all, _ = model.raw_cues(feats, all_cues=True)  # cue statistics and the selection need both
    assert cos_all is not None
    # the map is the bank's alone, with or without the (zero-weighted) distillation cue
    size = model.input_size
    torch.testing.assert_close(model.fusion(cos, bank, size), model.fusion(cos_all, bank, size))
    model.fusion.cos_weight, model.fusion.bank_weight = 1.0, 0.0
    assert model.raw_cues(feats)[1] is None


def test_tiled_selection_scores_stitched_frames_like_the_deployed_model(
    tiled_run: Path, strip_data: Path
) -> None:
    """On a tiled part the selection computes the cues on the tiles but scores every candidate as it is
    deployed: tile maps stitched into the frame, the image score the largest tile score. Its objective
    for a mix must equal the one computed from ``predict_arrays`` (the deployed path) on the same images."""
    from engines.preprocess import PreprocessSpec
    from trainer.evaluate.metrics import pixel_metrics, roc_auc
    from trainer.inference import predict_arrays
    from trainer.select import cue_batches, model_frames

    spec = PreprocessSpec(64, 128, "letterbox", "gray", tile_frame=(64, 512), tile_overlap=32)
    images = [read_image(p) for p in sorted((strip_data / "train" / "good").glob("*.png"))[:4]]
    masks = [np.zeros((64, 512), np.uint8) for _ in images]
    masks[1][30:34, 10:20] = 255
    inputs, valid, frame_valid, framed = model_frames(images, spec, masks)
    assert inputs.shape == (20, 64, 128, 3) and valid.shape == (20, 1, 64, 128)
    assert frame_valid.shape == (4, 1, 64, 512) and framed is not None and framed.shape == (4, 64, 512)
    assert framed[1].sum() == 40 and not framed[0].any()

    model, info = load_run(tiled_run)
    assert info.preprocess == spec
    device = torch.device("cpu")
    good, _ = cue_batches(model, images, spec, device, 8)
    assert good.grid == spec.grid and len(good) == 4 and sum(c[2].shape[0] for c in good.chunks) == 20
    defects = synthetic_defects(images, seed=0, min_total=8)
    bad, bad_masks = cue_batches(model, [d[0] for d in defects], spec, device, 8, [d[1] for d in defects])
    assert bad_masks is not None
    table: list[list[float]] = []
    a = float(model.fusion.cos_weight / (model.fusion.cos_weight + model.fusion.bank_weight))
    _, rows = rank_mixes(model, good, bad, bad_masks, [a], fold_values=table)
    preds = predict_arrays(model, images + [d[0] for d in defects], spec, device)
    scores = np.array([p.score for p in preds])
    labels = np.r_[np.zeros(len(images)), np.ones(len(defects))]
    assert rows[0]["image_auroc"] == pytest.approx(roc_auc(scores, labels), abs=1e-9)
    maps = [p.anomaly_map[::2, ::2] for p in preds]
    truth = [None] * len(images) + [m[::2, ::2] for m in bad_masks]
    px = pixel_metrics(maps, truth)
    assert rows[0]["pixel_auroc"] == pytest.approx(px["pixel_auroc"], abs=1e-6)
    assert rows[0]["aupro"] == pytest.approx(px["aupro"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["plain", "tiled"])
def test_shared_inputs_rank_exactly_like_cues_computed_directly(
    which: str, request: pytest.FixtureRequest
) -> None:
    """The selection ranks on a :class:`SyntheticProbe` (teacher features and distillation cues computed
    once, shared by the bank designs): every candidate's objective and folds must be exactly those of
    every cue computed for the model directly (:func:`cue_batches` of the good images and of the same
    synthetic defects), on an untiled and on a tiled part."""
    from trainer.select import (
        FOLDS,
        SharedInputs,
        cue_batches,
        mix_grid,
        rank_on_synthetic,
        synthetic_defects,
        synthetic_probe,
    )

    run = request.getfixturevalue("trained_run" if which == "plain" else "tiled_run")
    # the tiled part: fewer defects (five tiles each), the same paths
    n_min = MIN_SYNTHETIC if which == "plain" else 40
    data = request.getfixturevalue("synth_data" if which == "plain" else "strip_data")
    model, info = load_run(run)
    assert model.use_student and model.use_bank
    images = [read_image(p) for p in sorted((data / "train" / "good").glob("*.png"))[:4]]
    device, spec = torch.device("cpu"), info.preprocess
    grid = mix_grid(model, [0.0, 0.5, 1.0])
    defects = synthetic_defects(images, seed=3, min_total=n_min)
    good, _ = cue_batches(model, images, spec, device, 8)
    bad, masks = cue_batches(model, [d[0] for d in defects], spec, device, 8, [d[1] for d in defects])
    assert masks is not None
    groups = (np.arange(len(images)), np.array([src for *_, src in defects]))
    folds: list[list[float]] = []
    chosen, rows = rank_mixes(model, good, bad, masks, grid, groups, fold_values=folds)
    assert len(folds) == len(grid) and all(len(f) == min(FOLDS, len(images)) for f in folds)

    probe = synthetic_probe(model, images, spec, device, seed=3, min_total=n_min)
    assert probe is not None
    shared = rank_on_synthetic(model, images, spec, device, grid, seed=3, probe=probe)
    alone = rank_on_synthetic(model, images, spec, device, grid, seed=3, min_total=n_min)  # its own probe
    assert shared is not None and alone is not None
    assert shared.n_synthetic == alone.n_synthetic == len(defects) == len(probe.sources) >= n_min
    assert shared.rows == alone.rows == rows and shared.folds == alone.folds == folds
    assert shared.cos_weight == alone.cos_weight == chosen
    assert isinstance(probe.good, SharedInputs) and probe.good.masks is None
    assert all(cos is not None for _, cos, _ in probe.good.batches)  # the distillation cue is kept
    surface = synthetic_probe(model, images, spec, device, seed=3, kinds=("stain", "smear"), min_total=n_min)
    assert surface is not None  # other kinds (diagnostics): drawn as synthetic_defects draws them
    want = synthetic_defects(images, seed=3, kinds=("stain", "smear"), min_total=n_min)
    assert list(surface.sources) == [src for *_, src in want]
    assert not np.array_equal(surface.masks, probe.masks)
    assert surface.kinds is not None and set(surface.kinds) == {"stain", "smear"}
    # the escape estimate's scores of the probe's defects: those of the deployed path (tiled: stitched,
    # the largest tile score per image), with each defect's kind and measured contrast recorded
    from trainer.data.synthetic import SELECTION_DEFECTS
    from trainer.escapes import deployed_scores
    from trainer.inference import predict_arrays

    preds = predict_arrays(model, [d[0] for d in defects], spec, device)
    np.testing.assert_allclose(
        deployed_scores(model, probe.defective), [p.score for p in preds], rtol=1e-4, atol=1e-4
    )
    assert probe.kinds == tuple(SELECTION_DEFECTS[j % 4] for j in range(len(defects)))
    assert probe.contrasts is not None and probe.contrasts.shape == (len(defects),)
    assert (probe.contrasts > 0).mean() > 0.9  # nearly every drawn defect changes its pixels


def test_shared_inputs_keep_fp16_features_above_the_memory_limit(
    trained_run: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above ``FEATURE_FP16_BYTES`` the shared teacher features are stored in FP16 from the start (the
    FP32 set is never held); the ranking then agrees with the FP32 one up to FP16 rounding."""
    import trainer.inference
    import trainer.select as select

    model, info = load_run(trained_run)
    images = [read_image(p) for p in sorted((synth_data / "train" / "good").glob("*.png"))[:4]]
    device = torch.device("cpu")
    grid = select.mix_grid(model, [0.0, 0.5, 1.0])
    full = select.synthetic_probe(model, images, info.preprocess, device, seed=3)
    monkeypatch.setattr(trainer.inference, "FEATURE_FP16_BYTES", 0)
    half = select.synthetic_probe(model, images, info.preprocess, device, seed=3)
    assert full is not None and half is not None
    assert all(f.dtype == torch.float32 for feats, _, _ in full.good.batches for f in feats)
    assert all(f.dtype == torch.float16 for feats, _, _ in half.good.batches for f in feats)
    a = select.rank_on_synthetic(model, images, info.preprocess, device, grid, seed=3, probe=full)
    b = select.rank_on_synthetic(model, images, info.preprocess, device, grid, seed=3, probe=half)
    assert a is not None and b is not None
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert rb["objective"] == pytest.approx(ra["objective"], abs=0.02)
