"""Calibration-only diagnostic: one cue mix for the map and another for the image score.

The product fuses its two cues (distillation, memory bank) with one weight ``cos_weight`` and takes both
the anomaly map and the image score from the fused map. A part may localise best with one mix and
separate good from defective parts best with another (magnetic tile's selection rows: the image term is
best with the bank alone, the map terms with half of each). This script measures, on a saved run's own
selection evidence only (graded synthetic defects drawn into its calibration *fit* images, the product's
paired folds; no test image is read), what taking the score from mix ``a_s`` and the map from mix
``a_m`` would give: the selection's objective of every pair ``(a_s, a_m)`` of the run's candidate grid,
and each pair's paired difference to the run's own single mix ``(a, a)`` with its standard error.

The objective separates exactly: its image AUROC depends on the score's mix only, its pixel AUROC and
AUPRO on the map's mix only (per fold as well), so :func:`trainer.select.rank_mixes` scores every pair
from one pass per mix.

    .venv/bin/python benchmarks/split_mix_diag.py --run RUN --data DATA_ROOT [--out split_mix.json]

Image scores use the image score and smoothing the product's cue-mix selection uses (the first of
``score.candidates`` and of ``score.sigma_candidates`` with ``score.select: synthetic``: ``max``, sigma 4
in the shipped profiles), as a fit would rank the pairs; ``--deployed-score`` uses the run's own
``score.reduce`` and ``score.sigma`` instead.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch


def pair_table(rows: list[dict[str, float]], folds: list[list[float]], own: int) -> list[dict[str, Any]]:
    """Each ``(score mix, map mix)`` row of :func:`trainer.select.rank_mixes` (its ``folds``: the rows'
    per-fold objectives) with its paired difference to row ``own`` (the run's single mix) and that
    difference's standard error."""
    from trainer.select import paired_se

    per_fold = np.asarray(folds)
    out = []
    for r, f in zip(rows, per_fold, strict=True):
        diff = f - per_fold[own]
        out.append(
            {
                "score_mix": r["score_cos_weight"],
                "map_mix": r["cos_weight"],
                **{m: r[m] for m in ("image_auroc", "pixel_auroc", "aupro", "objective")},
                "diff": float(diff.mean()),
                "se": paired_se(diff),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the run's data set root (MVTec layout)")
    ap.add_argument("--out", type=Path, default=Path("split_mix.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--deployed-score", action="store_true", help="the run's own score.reduce and score.sigma"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    from trainer.data import read_image
    from trainer.runs import load_run
    from trainer.score_choice import baseline
    from trainer.select import mix_candidates, mix_grid, rank_mixes, synthetic_probe
    from trainer.train import calibration_roles

    model, info = load_run(args.run)
    if not (model.use_student and model.use_bank):
        raise SystemExit(f"{args.run}: the run has one cue; there is no mix to split")
    cfg = info.config if args.deployed_score else baseline(info.config)
    model.post = model.post.with_reduce(cfg.score.reduce).with_sigma(cfg.score.sigma)
    calib = [read_image(args.data / p) for p in info.meta["data"]["split"]["calib"]]
    fit_idx, _ = calibration_roles(cfg, len(calib))
    fit_images = [calib[i] for i in fit_idx]
    device = torch.device("cpu")
    probe = synthetic_probe(model, fit_images, info.preprocess, device, cfg.seed, cfg.train.batch_size)
    if probe is None:
        raise SystemExit("no synthetic defect survives the resize: nothing to measure")
    good, bad = probe.good.cues(model), probe.defective.cues(model)
    grid = mix_grid(model, cfg.fusion.candidates)
    groups = (np.arange(len(fit_images)), probe.sources)
    # every pair, ranked as the product's selection with fusion.split_score ranks them (its 1-SE rule)
    folds: list[list[float]] = []
    _, rows = rank_mixes(model, good, bad, probe.masks, mix_candidates(grid, True), groups, folds)
    choice = next(r for r in rows if r["chosen"])
    a = model.fusion.map_mix
    own = min(range(len(grid)), key=lambda i: abs(rows[i]["cos_weight"] - a))  # the single mixes come first
    pairs = pair_table(rows, folds, own)
    doc = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(args.run),
        "score_reduce": cfg.score.reduce,
        "n_good": len(fit_images),
        "n_synthetic": len(probe.sources),
        "own_mix": rows[own]["cos_weight"],
        "pairs": pairs,
        "split_selection": {k: choice[k] for k in ("score_cos_weight", "cos_weight", "objective", "se")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(
        f"{args.run}: {len(fit_images)} fit images, {len(probe.sources)} synthetic defects, "
        f"score {cfg.score.reduce}, the run's mix {rows[own]['cos_weight']:.2f}"
    )
    print(
        f"the selection with split_score: score mix {choice['score_cos_weight']:.2f}, map mix "
        f"{choice['cos_weight']:.2f} (objective {choice['objective']:.4f})"
    )
    print("| score mix | map mix | image AUROC | pixel AUROC | AUPRO | objective | diff to own (SE) |")
    print("|---|---|---|---|---|---|---|")
    for p in sorted(pairs, key=lambda p: -p["objective"]):
        print(
            f"| {p['score_mix']:.2f} | {p['map_mix']:.2f} | {p['image_auroc']:.4f} | "
            f"{p['pixel_auroc']:.4f} | {p['aupro']:.4f} | {p['objective']:.4f} | "
            f"{p['diff']:+.4f} ({p['se']:.4f}) |"
        )


if __name__ == "__main__":
    main()
