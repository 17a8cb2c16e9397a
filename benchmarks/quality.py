"""Real-data quality benchmark: full MASF and its ablations on MVTec bottle and magnetic tile.

Every number is measured in this run: each variant is trained (``masf-train fit`` in a subprocess, so
wall time and peak RSS are the training process's own; a run already in ``--out/runs`` is reused), then
calibrated again with this checkout's code (cue statistics, cue mix, thresholds: see ``evaluate``) and
evaluated on the data set's test split at its frozen, calibrated threshold. Variants that differ only in
test-time settings (TTSA) share a run.

    .venv/bin/python benchmarks/quality.py [--datasets bottle magnetic_tile] [--variants full bank_only ...]
        [--out benchmarks/results/quality] [--markdown benchmarks/results/quality.md]

Writes one JSON per variant and data set, and a Markdown table (pasted into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DATASETS = {
    "bottle": DATA / "mvtec_ad" / "bottle",
    "magnetic_tile": DATA / "magnetic_tile" / "magnetic_tile",
}
CONFIG = REPO / "configs" / "train" / "masf_lite2.yaml"
REPRO = REPO / "configs" / "train" / "patchcore_repro.yaml"
FAST = REPO / "configs" / "train" / "masf_lite2_fast.yaml"

# Round 18's overrides (the full profile since): the position cue, weight 0.25, where it beats 0 by
# more than one standard error.
POSITION_GAIN: dict[str, Any] = {
    "position.enabled": True,
    "position.weight": 0.25,
    "position.require_gain": True,
}

# name -> (training overrides, derived variant of that run, evaluate with TTSA?)
# Derived variants switch a branch off in a trained run and recalibrate on the run's own calibration
# images. This is exactly what training with that branch disabled gives: the student's training does not
# depend on the bank, the bank does not depend on the student, and a model without a student keeps
# equal scale weights.
VARIANTS: dict[str, tuple[dict[str, Any], str, bool]] = {
    "full": ({}, "", False),
    "bank_only": ({}, "bank_only", False),
    "distill_only": ({}, "distill_only", False),
    "no_sdm": ({"sdm.enabled": False}, "", False),
    "no_freq_mask": ({"masking.freq_ratio": 0.0}, "", False),
    "no_ughf": ({"fusion.learned": False}, "", False),
    "with_ttsa": ({}, "", True),
    # Issue 11: bank-design candidates (bank only, student off), fixed before any test run; the default is
    # chosen among them on synthetic defects in the calibration fit images only (see RESULTS.md).
    "cand_today": ({"student.enabled": False, "fusion.select": "none", "bank.designs": []}, "", False),
    "cand_repro": ({}, "", False),
    "cand_joint_letterbox": ({"data.input_size": "auto", "data.resize": "letterbox"}, "", False),
    "cand_joint_spectral": ({"bank.spectral": True, "bank.normalize": True}, "", False),
    # Issue 11, round 2 (fixed before any of its test runs): the border padding of the aggregation, found to
    # be the difference to anomalib, on the two round-1 winners (A: bottle, D: magnetic tile).
    "cand_r2_A": ({"student.enabled": False, "fusion.select": "none", "bank.designs": []}, "", False),
    "cand_r2_A_zero": (
        {
            "student.enabled": False,
            "fusion.select": "none",
            "bank.aggregate_pad": "zero",
            "bank.designs": [],
        },
        "",
        False,
    ),
    "cand_r2_D": (
        {"bank.spectral": True, "bank.normalize": True, "bank.aggregate_pad": "exclude"},
        "",
        False,
    ),
    "cand_r2_D_zero": (
        {"bank.spectral": True, "bank.normalize": True, "bank.aggregate_pad": "zero"},
        "",
        False,
    ),
    # Issue 11, round 5 (fixed before its run): turn each image to the frame's orientation (data.orient).
    "orient_auto": ({"data.orient": "auto"}, "", False),
    "orient_auto_bank_only": ({"data.orient": "auto"}, "bank_only", False),
    "orient_auto_distill_only": ({"data.orient": "auto"}, "distill_only", False),
    # The on-device retraining profile as it ships (configs/train/masf_lite2_fast.yaml).
    "fast": ({}, "", False),
    # Round 13 (fixed before its run): the on-device profile's teacher; lite2 won, so "fast" is lite2 since
    # and the former lite0 profile is a variant of it (round 13's "fast_lite2" is "fast" since).
    "fast_lite0": ({"backbone.name": "tf_efficientnet_lite0"}, "", False),
    # Issue 11, round 12: the full profile's teacher became lite2 (CONFIG); the lite0 teacher, the full
    # profile before, as a variant of it (round 12's "lite2" variant is "full" since).
    "lite0": ({"backbone.name": "tf_efficientnet_lite0"}, "", False),
    "lite0_bank_only": ({"backbone.name": "tf_efficientnet_lite0"}, "bank_only", False),
    "lite0_distill_only": ({"backbone.name": "tf_efficientnet_lite0"}, "distill_only", False),
    # Round 14 (fixed before its run): the position cue in the image score, weight 0.25 unless the part's
    # own fit images say 0 is better beyond one standard error.
    "position": ({"position.enabled": True, "position.weight": 0.25}, "", False),
    # Round 15 (fixed before its run): the same in the on-device profile.
    "fast_position": ({"position.enabled": True, "position.weight": 0.25}, "", False),
    # Round 16: the map's smoothing chosen per part (sigma 4 or 2) is in both shipped profiles ("full",
    # "fast"); the profiles with sigma 4 fixed, as they were before, are these controls.
    "sigma4": ({"score.sigma_candidates": []}, "", False),
    "fast_sigma4": ({"score.sigma_candidates": []}, "", False),
    # Round 17: the smoothing and the image score chosen together (score.joint) in both shipped profiles;
    # round 16's one-after-the-other choice as the controls.
    "sequential": ({"score.joint": False}, "", False),
    # Round 18 (fixed before its run): the position cue in the full profile only where its weight beats 0
    # by more than one standard error on the part's synthetic defects.
    "position_gain": (POSITION_GAIN, "", False),
    "fast_sequential": ({"score.joint": False}, "", False),
    # The single cues of round 18's run (the full profile since): each cue alone, recalibrated, its position
    # weight chosen again by the same rule.
    "position_gain_bank_only": (POSITION_GAIN, "bank_only", False),
    "position_gain_distill_only": (POSITION_GAIN, "distill_only", False),
}
# Variants trained from another config than CONFIG (the overrides apply to it).
VARIANT_CONFIG = {
    "cand_repro": REPRO,
    "cand_joint_letterbox": REPRO,
    "cand_joint_spectral": REPRO,
    "cand_r2_D": REPRO,
    "cand_r2_D_zero": REPRO,
    "fast": FAST,
    "fast_lite0": FAST,
    "fast_position": FAST,
    "fast_sigma4": FAST,
    "fast_sequential": FAST,
}
LABELS = {
    "full": "full MASF",
    "bank_only": "bank only (PatchCore-like)",
    "distill_only": "distillation only",
    "no_sdm": "without SDM",
    "no_freq_mask": "without frequency masking",
    "no_ughf": "without UGHF",
    "with_ttsa": "with TTSA (paper: 5 views, sigma 0.1)",
    "cand_today": "A: today's bank (3 per-scale banks, spectral, k=3, cap 3000, letterbox)",
    "cand_repro": "B: PatchCore reproduction (joint 1+2, plain, k=1, 1 %, stretch 256)",
    "cand_joint_letterbox": "C: B with letterbox, per-part size",
    "cand_joint_spectral": "D: B with the spectral-anchored, normalised prototype",
    "cand_r2_A": "A (round 2 re-evaluation): per-scale banks, padding not counted",
    "cand_r2_A_zero": "A0: A with the zero padding counted",
    "cand_r2_D": "D (round 2 re-evaluation): joint spectral bank, padding not counted",
    "cand_r2_D_zero": "D0: D with the zero padding counted",
    "orient_auto": "full MASF, images turned to the frame's orientation",
    "orient_auto_bank_only": "bank only, images turned to the frame's orientation",
    "orient_auto_distill_only": "distillation only, images turned to the frame's orientation",
    "fast": "on-device profile (masf_lite2_fast.yaml: 160 px area, 5 epochs, design and mix chosen per part)",
    "fast_lite0": "on-device profile with the EfficientNet-Lite0 teacher (the profile before round 13)",
    "lite0": "full MASF with the EfficientNet-Lite0 teacher (the full profile before round 12)",
    "lite0_bank_only": "bank only, lite0 teacher",
    "lite0_distill_only": "distillation only, lite0 teacher",
    "position": "full MASF with the position cue in the image score (weight 0.25 or 0, chosen per part)",
    "fast_position": "on-device profile with the position cue in the image score (weight 0.25 or 0)",
    "sigma4": "full MASF with the smoothing fixed at sigma 4 (the full profile before round 16)",
    "fast_sigma4": "on-device profile with the smoothing fixed at sigma 4 (the profile before round 16)",
    "sequential": "full MASF with the smoothing, then the image score chosen (the profile before round 17)",
    "position_gain": "full MASF with the position cue where it beats weight 0 by more than one SE",
    "fast_sequential": "on-device profile with the smoothing, then the image score chosen (before round 17)",
    "position_gain_bank_only": "bank only, from the full profile's run with the position cue (round 18)",
    "position_gain_distill_only": "distillation only, from the full profile's run with the position cue",
}
METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_ap",
    "pixel_ap",
    "image_f1_max",
    "false_reject_rate",
    "escape_rate",
)


def _run_key(overrides: dict[str, Any], config: Path = CONFIG) -> str:
    key = "base" if not overrides else "_".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return key if config == CONFIG else f"{config.stem}__{key}"


def train(
    dataset: str, overrides: dict[str, Any], run_dir: Path, derive: str = "", config: Path = CONFIG
) -> dict[str, Any]:
    """Train in a subprocess; return timing and peak RSS from the run (cached if already trained)."""
    if not (run_dir / "run.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "trainer",
            "-q",
            "fit",
            "--config",
            str(config),
            "--data",
            str(DATASETS[dataset]),
            "--out",
            str(run_dir),
        ]
        for key, value in overrides.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        print(f"  trained {run_dir.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    doc = json.loads((run_dir / "run.json").read_text())
    timing = doc["timing_s"]
    # A derived variant would not have trained the branch it switches off: leave that stage's time out.
    # Calibration is re-run (and timed) by ``evaluate``: its time is added there.
    skipped = {"bank_only": timing["student"], "distill_only": timing["bank"]}.get(derive, 0.0)
    return {
        "train_seconds": timing["total"] - skipped - timing["calibration"],
        "train_peak_rss_mb": doc["peak_rss_mb"],
        "input_size": [doc["preprocess"]["height"], doc["preprocess"]["width"]],
        "color": doc["preprocess"]["color"],
        "threshold_rule": doc["calibration"]["rule"],
        "bank_sizes": doc.get("bank_sizes", []),
        "bank_seconds": timing["bank"],
        "bank_selection": doc.get("bank_selection"),
    }


def evaluate(dataset: str, run_dir: Path, derive: str, tta: bool) -> dict[str, Any]:
    """Calibrate (cue statistics, cue mix, thresholds) on the run's calibration images, then evaluate.

    Calibration is always re-run here, with this checkout's code, so runs trained before a change to the
    post-training steps (e.g. the cue-mix selection) are measured exactly as a fresh ``fit`` would leave
    them: training (student, bank) does not depend on those steps. Its time is returned and replaces the
    run's own calibration time in the training time.
    """
    from trainer.evaluate.runner import evaluate_model
    from trainer.runs import load_run
    from trainer.train import recalibrate

    model, info = load_run(run_dir)
    if derive == "bank_only":
        model.single_cue("bank")
    elif derive == "distill_only":
        model.single_cue("student")
    t0 = time.perf_counter()
    info = recalibrate(model, info, DATASETS[dataset])
    calib_seconds = time.perf_counter() - t0
    res = evaluate_model(model, info, DATASETS[dataset], tta=tta, progress=False)
    # The selection objective of the deployed model on synthetic defects in the calibration *fit* images
    # (no test image): what the bank-design candidates are compared by.
    from trainer.data import read_image
    from trainer.select import synthetic_objective

    root = DATASETS[dataset]
    calib = info.meta["data"]["split"]["calib"]
    fit_images = [read_image(root / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    res["synthetic"] = synthetic_objective(
        model, fit_images, info.preprocess, next(model.parameters()).device, info.config.seed
    )
    res["calibration"] = info.calibration.to_dict()
    selection = info.meta.get("fusion_selection")
    res["calibration_seconds"] = calib_seconds
    both = model.use_student and model.use_bank
    res["cos_weight"] = info.config.fusion.cos_weight if both else None
    res["score_cos_weight"] = info.config.fusion.score_cos_weight if both else None
    res["fusion_selection"] = selection
    res["score_reduce"] = info.config.score.reduce
    res["score_selection"] = info.meta.get("score_selection")
    res["score_sigma"] = info.config.score.sigma
    res["smoothing_selection"] = info.meta.get("smoothing_selection")
    res["position_weight"] = float(model.position_weight) if model.position is not None else None
    res["position_selection"] = info.meta.get("position_selection")
    return res


def _mix(row: dict[str, Any]) -> str:
    a = row.get("cos_weight")
    if a is None:
        if row["variant"].startswith("cand_"):
            return "0 / 1"
        return {"bank_only": "0 / 1", "distill_only": "1 / 0"}.get(VARIANTS[row["variant"]][1], "?")
    # rows written before the column was carried: the run's selection holds it
    s = row.get("score_cos_weight", (row.get("fusion_selection") or {}).get("score_cos_weight"))
    score = "" if s is None else f" (score {s:.2f} / {1 - s:.2f})"
    return f"{a:.2f} / {1 - a:.2f}{score}"


def _design(row: dict[str, Any]) -> str:
    selection = row.get("bank_selection")
    if VARIANTS[row["variant"]][1] == "distill_only":
        return "-"
    return str(selection["chosen"]) if selection else "as configured"


def _score(row: dict[str, Any]) -> str:
    """The image score; with the per-part choice, each candidate's synthetic objective; the position cue's
    weight where the run has the cue."""
    text = _reduce_and_sigma(row)
    weight = row.get("position_weight")
    return text if weight is None else f"{text}; position cue weight {weight:g}"


def _reduce_and_sigma(row: dict[str, Any]) -> str:
    selection = row.get("score_selection")
    reduce = str(row.get("score_reduce", "max"))
    if selection and "sigma" in selection:  # chosen together with the smoothing
        pairs = ", ".join(
            f"{c['sigma']:g}/{c['reduce']} {c['objective']:.4f}" for c in selection["candidates"]
        )
        return f"{reduce}, sigma {selection['sigma']:g} (chosen together: {pairs})"
    if selection:
        objectives = ", ".join(f"{c['reduce']} {c['objective']:.4f}" for c in selection["candidates"])
        reduce = f"{reduce} (chosen: {objectives})"
    smoothing = row.get("smoothing_selection")
    if not smoothing:
        return reduce
    sigmas = ", ".join(f"{c['sigma']:g} {c['objective']:.4f}" for c in smoothing["candidates"])
    return f"{reduce}, sigma {smoothing['sigma']:g} (chosen: {sigmas})"


def designs_markdown(rows: list[dict[str, Any]]) -> str:
    """The per-part bank-design choice of each trained run (calibration fit images only): every design's
    synthetic objective, its standard error against the best, its kNN cost, and the chosen one in bold."""
    head = (
        "| data set | run | design | cue mix (distill / bank) | synthetic image AUROC "
        "| synthetic pixel AUROC | synthetic AUPRO | synthetic objective | SE vs best | bank size "
        "| kNN MAC per input |"
    )
    lines, seen = [head, "|" + "---|" * 11], set()
    for r in rows:
        selection = r.get("bank_selection")
        key = (r["dataset"], r.get("run_dir"))
        if not selection or key in seen:
            continue
        seen.add(key)
        for c in selection["candidates"]:
            mark = "**" if c["name"] == selection["chosen"] else ""
            lines.append(
                f"| {r['dataset']} | {Path(str(r.get('run_dir', '?'))).name} | {mark}{c['name']}{mark} "
                f"| {_mix(c | {'variant': r['variant']})} | {c['image_auroc']:.4f} "
                f"| {c['pixel_auroc']:.4f} | {c['aupro']:.4f} | {c['objective']:.4f} | {c['se']:.4f} "
                f"| {'+'.join(str(b) for b in c['bank_sizes'])} | {c['knn_cost'] / 1e6:.0f} M |"
            )
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| data set | variant | image AUROC | pixel AUROC | AUPRO@0.3 | image AP | pixel AP | F1-max "
        "| FRR @thr | escapes @thr | cue mix (distill / bank) | bank design | image score | train s "
        "| train peak RSS MB | s/image (eval) |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {LABELS[r['variant']]} | "
            + " | ".join(f"{r[m]:.4f}" for m in METRICS[:6])
            + f" | {r['false_reject_rate']:.3f} | {r['escape_rate']:.3f} | {_mix(r)} | {_design(r)} "
            f"| {_score(r)} | {r['train_seconds']:.0f} | {r['train_peak_rss_mb']:.0f} "
            f"| {r['seconds_per_image']:.3f} |"
        )
    return "\n".join(lines)


def decide(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue-11 decision rule on the candidates' synthetic objectives (calibration fit images only).

    Per data set: each candidate's standard error against the best from the paired fold objectives; among
    those within one standard error of the best, the fewest prototypes wins. The same winner on every
    data set is the default; otherwise the highest objective summed over the data sets."""
    from trainer.select import paired_se

    by_set: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["variant"].startswith("cand_") and r.get("synthetic"):
            by_set.setdefault(r["dataset"], []).append(r)
    winners, se = {}, {}
    for dataset, cands in by_set.items():
        best = max(cands, key=lambda r: r["synthetic"]["objective"])
        fine = []
        for r in cands:
            diff = np.asarray(best["synthetic"]["folds"]) - np.asarray(r["synthetic"]["folds"])
            e = paired_se(diff)
            se[(dataset, r["variant"])] = e
            if best["synthetic"]["objective"] - r["synthetic"]["objective"] <= e:
                fine.append(r)
        winners[dataset] = min(fine, key=lambda r: (sum(r["bank_sizes"]), -r["synthetic"]["objective"]))[
            "variant"
        ]
    names = set(winners.values())
    if len(names) == 1:
        default = names.pop()
    else:
        totals: dict[str, float] = {}
        for cands in by_set.values():
            for r in cands:
                totals[r["variant"]] = totals.get(r["variant"], 0.0) + r["synthetic"]["objective"]
        default = max(totals, key=lambda v: totals[v])
    return {"winners": winners, "default": default, "se": se}


def candidates_markdown(rows: list[dict[str, Any]]) -> str:
    """Every candidate: its synthetic objective (the decision's input) and its test numbers."""
    decision = decide(rows)
    head = (
        "| data set | candidate | synthetic image AUROC | synthetic pixel AUROC | synthetic AUPRO "
        "| synthetic objective | SE vs best | test image AUROC | test pixel AUROC | test AUPRO@0.3 "
        "| FRR @thr | escapes @thr | threshold rule (n) | bank size | fit s | s/image |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        if not r["variant"].startswith("cand_"):
            continue
        syn = r["synthetic"]
        mark = "**" if decision["winners"].get(r["dataset"]) == r["variant"] else ""
        cal = r.get("calibration", {})
        lines.append(
            f"| {r['dataset']} | {mark}{LABELS[r['variant']]}{mark} | {syn['image_auroc']:.4f} "
            f"| {syn['pixel_auroc']:.4f} | {syn['aupro']:.4f} | {syn['objective']:.4f} "
            f"| {decision['se'][(r['dataset'], r['variant'])]:.4f} | {r['image_auroc']:.4f} "
            f"| {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | {r['false_reject_rate']:.3f} "
            f"| {r['escape_rate']:.3f} | {cal.get('rule', '?')} ({cal.get('n_images', '?')}) "
            f"| {'+'.join(str(b) for b in r['bank_sizes'])} | {r['train_seconds']:.0f} "
            f"| {r['seconds_per_image']:.3f} |"
        )
    winners = ", ".join(f"{d}: {LABELS[v]}" for d, v in decision["winners"].items())
    lines.append("")
    lines.append(f"Winners by the rule: {winners}. Default: {LABELS[decision['default']]}.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: render the table from the JSON files already in --out (resumed or split runs)",
    )
    args = parser.parse_args()
    if args.table_only:
        rows = [
            json.loads(p.read_text())
            for d in args.datasets
            for v in args.variants
            if (p := args.out / f"{d}__{v}.json").is_file()
        ]
        print(markdown(rows))
        if any(r["variant"].startswith("cand_") for r in rows):
            print()
            print(candidates_markdown(rows))
        if any(r.get("bank_selection") for r in rows):
            print()
            print(designs_markdown(rows))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for dataset in args.datasets:
        if not DATASETS[dataset].is_dir():
            raise SystemExit(f"data set not found: {DATASETS[dataset]} (see ../shared/data/README.md)")
        for variant in args.variants:
            overrides, derive, tta = VARIANTS[variant]
            print(f"{dataset} / {variant}", flush=True)
            config = VARIANT_CONFIG.get(variant, CONFIG)
            run_dir = args.out / "runs" / f"{dataset}__{_run_key(overrides, config)}"
            row: dict[str, Any] = {
                "dataset": dataset,
                "variant": variant,
                "config": str(config.relative_to(REPO)),
                "overrides": overrides,
                "run_dir": str(run_dir),
                **train(dataset, overrides, run_dir, derive, config),
            }
            res = evaluate(dataset, run_dir, derive, tta)
            row["train_seconds"] += res["calibration_seconds"]
            row.update(
                {
                    k: res[k]
                    for k in (
                        *METRICS,
                        "threshold",
                        "n_test_images",
                        "seconds_per_image",
                        "per_defect_image_auroc",
                        "tta",
                        "calibration_seconds",
                        "cos_weight",
                        "score_cos_weight",
                        "fusion_selection",
                        "score_reduce",
                        "score_selection",
                        "score_sigma",
                        "smoothing_selection",
                        "position_weight",
                        "position_selection",
                        "synthetic",
                        "calibration",
                    )
                }
            )
            (args.out / f"{dataset}__{variant}.json").write_text(json.dumps(row, indent=2) + "\n")
            print("  " + ", ".join(f"{m} {row[m]:.4f}" for m in METRICS), flush=True)
            rows.append(row)
    table = markdown(rows)
    if any(r.get("bank_selection") for r in rows):
        table += "\n\n" + designs_markdown(rows)
    stamp = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}), "
        f"command: `.venv/bin/python benchmarks/quality.py {' '.join(sys.argv[1:])}`"
    )
    print(table)
    if args.markdown:
        args.markdown.write_text(stamp + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
