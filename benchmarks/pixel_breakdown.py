"""Where a test set's pixel metrics come from: pixel AUROC and AUPRO per defect type, per map mix.

The pixel AUROC of a test set pools every pixel of every image, so a defect type that covers much of its
images weighs far more than one of a few pixels: on magnetic tile one type ("uneven", large low-contrast
areas) holds about 70 % of all defect pixels. This script scores a saved run on ``DATA/test`` with the
map taken from each cue mix asked for (the distillation cue's share; the image score is not used) and
reports, overall and per defect type (that type's images with every good image): pooled pixel AUROC and
AUPRO, the type's share of all defect pixels, its mean area, and the mean within-image AUROC (each
defective image's own defect vs normal pixels, which no level shift between images affects); and, with
the run's own image score at its calibrated threshold, how many images of each type pass (escapes) and
how many good ones are rejected.

It reads test images: an analysis of a model already chosen, never an input to a choice.

    .venv/bin/python benchmarks/pixel_breakdown.py --run RUN --data DATA_ROOT [--mixes 0 0.5] [--out F]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np


def type_breakdown(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], types: Sequence[str]
) -> dict[str, Any]:
    """Pixel metrics of a test set, overall (``"all"``) and per defect type (its images and every
    ``"good"`` image): ``pixel_auroc``, ``aupro``, ``share`` (of all defect pixels), ``area`` (mean
    defect fraction of its images), ``within_image_auroc`` (mean over its images whose mask is neither
    empty nor full) and ``n`` (images). ``maps`` and ``masks`` (bool) per image, same shapes."""
    from trainer.evaluate.metrics import pixel_metrics, roc_auc

    kinds = np.asarray(types)
    good = np.flatnonzero(kinds == "good")
    truth = [m if m.any() else None for m in masks]
    total = sum(int(m.sum()) for m in masks)
    whole = pixel_metrics(maps, truth)
    out: dict[str, Any] = {
        "all": {"pixel_auroc": whole["pixel_auroc"], "aupro": whole["aupro"], "n": len(maps)}
    }
    for t in sorted(set(types) - {"good"}):
        idx = np.flatnonzero(kinds == t)
        sel = [*good, *idx]
        px = pixel_metrics([maps[i] for i in sel], [truth[i] for i in sel])
        within = [
            roc_auc(maps[i].ravel(), masks[i].ravel()) for i in idx if 0 < masks[i].sum() < masks[i].size
        ]
        out[t] = {
            "pixel_auroc": px["pixel_auroc"],
            "aupro": px["aupro"],
            "share": sum(int(masks[i].sum()) for i in idx) / total if total else 0.0,
            "area": float(np.mean([masks[i].mean() for i in idx])),
            "within_image_auroc": float(np.mean(within)) if within else float("nan"),
            "n": int(idx.size),
        }
    return out


def escapes_by_type(scores: Sequence[float], types: Sequence[str], threshold: float) -> dict[str, Any]:
    """At ``threshold`` (the product's verdict rule, :func:`trainer.evaluate.metrics.rates_at_threshold`):
    per defect type its escapes (images that PASS) and ``"good"``'s false rejects, as counts and rates."""
    from trainer.evaluate.metrics import rates_at_threshold

    kinds = np.asarray(types)
    good = kinds == "good"
    out: dict[str, Any] = {}
    for t in sorted(set(types)):
        sel = good | (kinds == t)
        r = rates_at_threshold(np.asarray(scores)[sel], ~good[sel], threshold)
        if t == "good":
            out[t] = {"n": r["n_good"], "failed": r["n_false_reject"], "rate": r["false_reject_rate"]}
        else:
            out[t] = {"n": r["n_defective"], "passed": r["n_escape"], "rate": r["escape_rate"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the run's data set root (MVTec layout)")
    ap.add_argument(
        "--mixes", type=float, nargs="+", default=None, help="map mixes (default: 0 and the run's)"
    )
    ap.add_argument("--out", type=Path, default=Path("pixels.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from trainer.data import scan_test
    from trainer.evaluate.runner import predict_test_set
    from trainer.runs import load_run
    from trainer.train import calibration_for

    torch.set_num_threads(args.threads)
    model, info = load_run(args.run)
    model.eval()
    fusion = model.fusion
    if args.mixes is None:
        args.mixes = sorted({0.0, fusion.map_mix})
    if any(m > 0 for m in args.mixes) and not model.use_student:
        raise SystemExit(f"{args.run}: the run has no distillation cue; only --mixes 0 applies")
    if fusion.score_cos_weight is None:  # the image score stays the run's own whatever the map's mix
        fusion.score_cos_weight = fusion.map_mix
    samples = scan_test(args.data)
    threshold = float(calibration_for(info, False).threshold)
    doc: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(args.run),
    }
    for mix in args.mixes:
        fusion.cos_weight, fusion.bank_weight = mix, 1.0 - mix
        tested, scores, maps, masks = zip(
            *predict_test_set(model, info.preprocess, samples, torch.device("cpu")), strict=True
        )
        types = [s.defect_type for s in tested]
        doc[f"{mix:g}"] = type_breakdown(maps, masks, types)
        if "verdicts" not in doc:  # the run's own image score: the same in every pass
            doc["verdicts"] = {"threshold": threshold, **escapes_by_type(scores, types, threshold)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    mixes = [f"{m:g}" for m in args.mixes]
    print(f"{args.run}: map mixes {' / '.join(mixes)} (the distillation cue's share)")
    header = "| defect type | images | share of defect pixels | mean area | pixel AUROC | AUPRO |"
    print(header + " within-image AUROC |")
    print("|---|---|---|---|---|---|---|")
    first = doc[mixes[0]]
    for t in [*(k for k in first if k != "all"), "all"]:
        cols = [" / ".join(f"{doc[m][t][k]:.3f}" for m in mixes) for k in ("pixel_auroc", "aupro")]
        if t == "all":
            print(f"| all | {first[t]['n']} | 100 % | - | {cols[0]} | {cols[1]} | - |")
            continue
        within = " / ".join(f"{doc[m][t]['within_image_auroc']:.3f}" for m in mixes)
        row = first[t]
        print(
            f"| {t} | {row['n']} | {100 * row['share']:.1f} % | {100 * row['area']:.1f} % | "
            f"{cols[0]} | {cols[1]} | {within} |"
        )
    verdicts = doc["verdicts"]
    print(f"\nAt the run's threshold {verdicts['threshold']:.4f}:")
    print("| images | n | at the threshold |\n|---|---|---|")
    for t, v in verdicts.items():
        if t != "threshold":
            what = "rejected" if t == "good" else "passed (escapes)"
            print(f"| {t} | {v['n']} | {v.get('failed', v.get('passed'))} {what} ({100 * v['rate']:.1f} %) |")


if __name__ == "__main__":
    main()
