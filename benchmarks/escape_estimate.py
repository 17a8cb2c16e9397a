"""Calibration-only diagnostic: how many synthetic defects pass at a run's own calibrated threshold.

A line's first question is how many bad parts get through. A run's test escapes are decided where its
threshold sits in the tail of the good scores, which the selection's objective (a ranking: image AUROC,
pixel AUROC, AUPRO) does not see. This script measures, for each fitted run, the share of the graded
synthetic defects that score **below the run's calibrated threshold**, without any test image:

- the defects are the selection's own (``trainer.select.synthetic_defects`` with the run's seed and
  kinds, drawn into the run's calibration *fit* images), so every run of a part is judged on the same
  defects when the runs share the calibration split;
- each is scored by the run's deployed path (``predict_arrays``: preprocessing, tiling, the chosen cue
  mix, image score and position cue), against the threshold of that path (``run.json``);
- reported overall, per kind, and per contrast third (``trainer.escapes.escape_table``: the mean absolute
  grey-level change inside the defect's mask, a measured strength, the faint third first), with the fit
  images' own false-reject rate at the threshold beside it (in-sample: the fit images set the cue
  statistics).

``--reduce CANDIDATE ...`` (values of ``score.reduce``) or ``--position-weights W ...`` (the position cue's
weight, for a run with the cue fitted) judges those candidates instead: for each candidate,
the run's fit images, synthetic defects and threshold images are scored from one pass of cached cues
(``trainer.select.SharedInputs``; only the image score changes between candidates), and the estimate is
given at two thresholds set by the product's rule (``trainer.calibrate.fit_threshold`` at the run's
target false-reject rate): on the run's threshold images scored with that candidate (``calibrated``; for
the run's own candidate it reproduces ``run.json``'s threshold, checked) and on the fit images' own scores
(``fit``: what a selection could use without spending the threshold images). Plain inference path, no
TTSA.

A run fitted since session 20 stores the same estimate in ``run.json`` (``synthetic_escapes``, computed
from the selection's cached cues, :mod:`trainer.escapes`); this script computes it afresh through
``predict_arrays`` for any stored run, older ones included.

The fit images also chose the run's cue mix and image score, so the estimate is optimistic for the run's
own choices; it compares runs and settings, it does not predict a line's escape rate.

    .venv/bin/python benchmarks/escape_estimate.py --runs RUN ... --data DATA ... [--json OUT]
        [--markdown OUT] [--reduce CANDIDATE ... | --position-weights W ...]

``--data``: one data set root per run (MVTec layout), or one for all.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def estimate(run: Path, data: Path, batch: int = 8) -> dict[str, Any]:
    """The escape estimate of one run (module docstring)."""
    import torch

    from trainer.data import read_image
    from trainer.data.synthetic import SELECTION_DEFECTS, defect_contrast
    from trainer.escapes import escape_table
    from trainer.inference import predict_arrays
    from trainer.models.masf.ttsa import apply_tta
    from trainer.runs import load_run
    from trainer.select import synthetic_defects
    from trainer.train import calibration_for

    model, info = load_run(run)
    cfg, spec, device = info.config, info.preprocess, torch.device("cpu")
    calib = info.meta["data"]["split"]["calib"]
    fit = [read_image(data / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    defects = synthetic_defects(fit, int(cfg.seed))
    kinds = [SELECTION_DEFECTS[j % len(SELECTION_DEFECTS)] for j in range(len(defects))]
    deployed, _ = apply_tta(model, cfg.tta.enabled, cfg.tta.views, cfg.tta.sigma, cfg.tta.seed)
    threshold = float(calibration_for(info, cfg.tta.enabled).threshold)

    def scores(images: Sequence[np.ndarray]) -> np.ndarray:
        out: list[float] = []
        for s in range(0, len(images), batch):
            out += [p.score for p in predict_arrays(deployed, images[s : s + batch], spec, device)]
        return np.asarray(out)

    bad = scores([d[0] for d in defects])
    good = scores(fit)
    c = np.array([defect_contrast(img, fit[src], mask) for img, mask, src in defects])
    table = escape_table(bad, kinds, c, threshold)
    return {
        "run": str(run),
        "threshold": threshold,
        "fit_images": len(fit),
        "fit_frr": float((good >= threshold).mean()),
        "synthetic_scores": [float(x) for x in bad],
        **table,
    }


def by_candidate(
    run: Path, data: Path, setting: str, values: Sequence[Any], batch: int = 8
) -> dict[str, Any]:
    """Each candidate's escape estimate at its own calibrated threshold and at a threshold from the fit
    images' own scores (module docstring); ``setting``: ``reduce`` (``values``: ``score.reduce`` names) or
    ``position`` (``values``: position-cue weights; the run must have the cue fitted)."""
    import torch

    from trainer.calibrate import fit_threshold
    from trainer.data import read_image
    from trainer.escapes import deployed_scores, escape_table
    from trainer.runs import load_run
    from trainer.select import SharedInputs, synthetic_probe
    from trainer.train import calibration_for

    model, info = load_run(run)
    cfg, spec, device = info.config, info.preprocess, torch.device("cpu")
    if cfg.tta.enabled:
        raise SystemExit(f"error: {run} deploys TTSA; only the plain path is judged here")
    if setting == "position" and model.position is None:
        raise SystemExit(f"error: {run} has no position cue fitted (position.enabled)")
    calib = info.meta["data"]["split"]["calib"]
    roles = info.meta["calibration_roles"]
    fit = [read_image(data / calib[i]) for i in roles["fit"]]
    held = [read_image(data / calib[i]) for i in roles["threshold"]]
    probe = synthetic_probe(model, fit, spec, device, int(cfg.seed), batch)
    assert probe is not None and probe.kinds is not None and probe.contrasts is not None
    threshold_inputs = SharedInputs.compute(model, held, spec, device, batch)
    # each set's bank cues once: only the image score changes between candidates
    sets = {
        name: (inputs, inputs.cues(model))
        for name, inputs in (
            ("defects", probe.defective),
            ("fit", probe.good),
            ("threshold", threshold_inputs),
        )
    }
    stored, target = float(calibration_for(info, False).threshold), float(cfg.calibration.target_frr)
    post, weight = model.post, model.position_weight
    if setting == "reduce":
        chosen: Any = cfg.score.reduce
        listed = (info.meta.get("score_selection") or {}).get("candidates", [])
        # a joint choice lists every (sigma, reduce) pair: the rows of the run's sigma
        objective = {
            r["reduce"]: r["objective"] for r in listed if r.get("sigma", cfg.score.sigma) == cfg.score.sigma
        }
    else:
        chosen = weight
        listed = (info.meta.get("position_selection") or {}).get("rows", [])
        objective = {r["weight"]: r["objective"] for r in listed}
    rows = []
    try:
        for value in values:
            if setting == "reduce":
                model.post = post.with_reduce(value)
            else:
                model.position_weight = float(value)
            scores = {name: deployed_scores(model, inputs, cues) for name, (inputs, cues) in sets.items()}
            row: dict[str, Any] = {
                setting: value,
                "chosen": value == chosen,
                "objective": objective.get(value),
            }
            for where, good in (("calibrated", scores["threshold"]), ("fit", scores["fit"])):
                thr, rule = fit_threshold(good, target)
                table = escape_table(scores["defects"], probe.kinds, probe.contrasts, thr)
                row[where] = {"threshold": thr, "rule": rule, **table}
            if value == chosen and abs(row["calibrated"]["threshold"] - stored) > 1e-4 * max(1.0, stored):
                raise SystemExit(
                    f"error: {run}: the threshold images give {row['calibrated']['threshold']:.6f} for "
                    f"{setting} {value}, the run stores {stored:.6f}"
                )
            rows.append(row)
    finally:
        model.post, model.position_weight = post, weight
    return {
        "run": str(run),
        "setting": setting,
        "fit_images": len(fit),
        "threshold_images": len(held),
        "candidates": rows,
    }


def candidate_markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = ["run", "candidate", "objective", "calibrated threshold", "escapes at it", "fit threshold",
            "escapes at it"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for c in r["candidates"]:
            name = f"{r['setting']} {c[r['setting']]}" + (" (chosen)" if c["chosen"] else "")
            obj = "-" if c["objective"] is None else f"{c['objective']:.4f}"
            cal, fit = c["calibrated"], c["fit"]
            cells = [Path(r["run"]).name, name, obj, f"{cal['threshold']:.3f}", f"{cal['escapes']:.3f}",
                     f"{fit['threshold']:.3f}", f"{fit['escapes']:.3f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    from trainer.escapes import THIRDS

    kinds = list(dict.fromkeys(k for r in rows for k in r["by_kind"]))
    head = ["run", "threshold", "fit FRR", "synthetic escapes", *kinds, *THIRDS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [Path(r["run"]).name, f"{r['threshold']:.3f}", f"{r['fit_frr']:.3f}", f"{r['escapes']:.3f}"]
        cells += [f"{r['by_kind'].get(k, float('nan')):.3f}" for k in kinds]
        bands = r.get("by_contrast") or {}
        cells += ["-" if bands.get(t) is None else f"{bands[t]:.3f}" for t in THIRDS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    ap.add_argument("--data", nargs="+", type=Path, required=True, help="one root per run, or one for all")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    judged = ap.add_mutually_exclusive_group()
    judged.add_argument(
        "--reduce", nargs="+", default=None, help="judge these image scores (values of score.reduce) instead"
    )
    judged.add_argument(
        "--position-weights",
        nargs="+",
        type=float,
        default=None,
        help="judge these position-cue weights instead",
    )
    args = ap.parse_args(argv)
    if len(args.data) not in (1, len(args.runs)):
        print(f"error: give one --data for all runs or one per run ({len(args.runs)})", flush=True)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(2)
    roots = args.data * len(args.runs) if len(args.data) == 1 else args.data
    pairs = list(zip(args.runs, roots, strict=True))
    if args.reduce or args.position_weights:
        setting, values = ("reduce", args.reduce) if args.reduce else ("position", args.position_weights)
        rows = [by_candidate(run, root, setting, values) for run, root in pairs]
        table = candidate_markdown(rows)
    else:
        rows = [estimate(run, root) for run, root in pairs]
        table = markdown(rows)
    print(table, end="")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
