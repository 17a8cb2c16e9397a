"""Calibration-only diagnostic: the bank-design selection's objective for more candidate designs.

Loads a trained run (its teacher and trained student), rebuilds its training patches and runs the
product's bank-design selection (``trainer.design.select_bank_design``: synthetic defects in the run's
calibration *fit* images, one standard error over paired folds, the cheapest kNN) over the candidate
designs below. No test image is read. Prints every design's row and writes them as JSON.

    .venv/bin/python benchmarks/design_diag.py --run RUN --data DATA_ROOT [--out designs.json]
        [--designs NAME ...] [--kinds KIND ...] [--base-size N] [--bank-only] [--coarse] [--brightness]

``--base-size`` places the images into the frame ``data.base_size: N`` would give (the training
patches and the synthetic defects alike; the defects are drawn in the images' own pixels, so the folds
of two runs at different sizes are paired); ``--bank-only`` scores the bank cue alone (the run's
student was trained at the run's own size, so its cue means nothing at another size): a model of the
run's teacher and learned scale weights without the student.

``--coarse`` gives the (lite0) teacher a fourth scale, stride 32 (``blocks.6``, 320 channels, the same
weights), for the ``joint_coarse`` (scales 1 + 2 + 3) and ``joint_16_32`` (2 + 3) designs; bank only, and
the designs are applied without the config's check that bank scales lie in 0..2.

``--brightness`` scales every placed image to the training images' median mean grey level
(``PreprocessSpec.brightness``: one gain per image, after the synthetic defect is drawn, as a deployed
spec would); bank only is implied (the run's student was trained on unscaled images).

``--kinds`` replaces the selection's synthetic defect kinds (``trainer.data.synthetic.SELECTION_DEFECTS``)
for this run only, e.g. to add the low-contrast ``SURFACE_DEFECTS``; the product is not changed.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
JOINT: dict[str, Any] = {
    "layers": [1, 2],
    "embedding": "joint",
    "k": 1,
    "coreset_ratio": 0.01,
    "max_size": "auto",
    "max_mb": 64,
}
# The two designs of masf_lite2.yaml, then the joint bank with PatchCore's own prototype (plain, the
# aggregation counting the zero padding), and with each half of the paper's prototype alone.
CANDIDATES: list[dict[str, Any]] = [
    {"name": "per_scale"},
    {"name": "joint", **JOINT},
    {"name": "joint_plain_zero", "spectral": False, "normalize": False, "aggregate_pad": "zero", **JOINT},
    {"name": "joint_spectral_unnorm", "normalize": False, **JOINT},
    {"name": "joint_plain_norm", "spectral": False, **JOINT},
    # Session 11: the joint bank with a coreset three times as large (3 % of the patches).
    {"name": "joint_3pct", **{**JOINT, "coreset_ratio": 0.03}},
    # ... selected on a 64-d random projection (the selection's dense pass reads half the data)
    {"name": "joint_3pct_d64", **{**JOINT, "coreset_ratio": 0.03, "project_dim": 64}},
    # the product's joint design averaging 5x5 neighbourhoods (session 13: large low-contrast areas)
    {"name": "joint_3pct_d64_agg5", **{**JOINT, "coreset_ratio": 0.03, "project_dim": 64, "aggregate": 5}},
    # With --coarse: the joint bank with the teacher's stride-32 scale (320 channels) added, and without
    # the stride-8 one.
    {"name": "joint_coarse", **{**JOINT, "layers": [1, 2, 3]}},
    {"name": "joint_16_32", **{**JOINT, "layers": [2, 3]}},
]


def coarse_teacher(teacher: Any) -> Any:
    """The lite0 teacher with a 4th scale: stride 32, 320 channels (``blocks.6``), the same weights."""
    import timm

    from trainer.models.backbones import Teacher

    if teacher.cfg.name != "tf_efficientnet_lite0":
        raise SystemExit("--coarse is for the tf_efficientnet_lite0 teacher")
    cfg = replace(teacher.cfg, out_indices=(1, 2, 3, 4), channels=(24, 40, 112, 320), strides=(4, 8, 16, 32))
    backbone = timm.create_model(cfg.name, features_only=True, out_indices=cfg.out_indices, pretrained=False)
    backbone.load_state_dict(teacher.backbone.state_dict(), strict=True)
    return Teacher(backbone, cfg).eval()


def main() -> None:
    import trainer.design
    import trainer.select
    from engines.preprocess import median_brightness, preprocess_batch
    from trainer.config import BankDesign, load_config
    from trainer.data import read_image
    from trainer.data.synthetic import SELECTION_DEFECTS, SURFACE_DEFECTS
    from trainer.design import select_bank_design
    from trainer.models.masf import MASF
    from trainer.runs import load_run
    from trainer.train import _build_banks, common_scale, resolve_preprocess, teacher_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the run's data set root (MVTec layout)")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "train" / "masf_lite2.yaml")
    ap.add_argument("--out", type=Path, default=Path("designs.json"))
    ap.add_argument("--designs", nargs="+", default=[d["name"] for d in CANDIDATES])
    kinds = (*SELECTION_DEFECTS, *SURFACE_DEFECTS)
    ap.add_argument("--kinds", nargs="+", default=list(SELECTION_DEFECTS), choices=kinds)
    ap.add_argument("--base-size", type=int, default=None, help="data.base_size for the frame")
    ap.add_argument(
        "--scale-share",
        type=float,
        default=None,
        help="one scale for the part: the largest at which this share of the training images fit the frame",
    )
    ap.add_argument("--bank-only", action="store_true", help="score the bank cue alone")
    ap.add_argument(
        "--brightness",
        action="store_true",
        help="scale each image to the training images' median brightness; implies --bank-only",
    )
    ap.add_argument(
        "--coarse", action="store_true", help="a teacher with a 4th scale (stride 32); implies --bank-only"
    )
    args = ap.parse_args()
    if tuple(args.kinds) != SELECTION_DEFECTS:
        trainer.select.synthetic_defects = functools.partial(  # type: ignore[assignment]
            trainer.select.synthetic_defects, kinds=tuple(args.kinds)
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    model, info = load_run(args.run)
    base = load_config(args.config)
    designs = [BankDesign(**d) for d in CANDIDATES if d["name"] in args.designs]
    cfg = replace(base, bank=replace(base.bank, designs=designs))
    split, spec, device = info.meta["data"]["split"], info.preprocess, torch.device("cpu")
    train_images = [read_image(args.data / p) for p in split["train"]]
    if args.base_size is not None:
        cfg = replace(cfg, data=replace(cfg.data, base_size=args.base_size))
        spec = resolve_preprocess(cfg, train_images)
    if args.scale_share is not None:
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in train_images]
        spec = replace(spec, max_scale=common_scale(sizes, spec, args.scale_share))
    if args.brightness:
        spec = replace(spec, brightness=median_brightness(train_images, spec.color))
        args.bank_only = True
    if args.bank_only or args.coarse:  # the run's teacher and scale weights, no student, at the frame
        cfg = replace(cfg, student=replace(cfg.student, enabled=False))
        teacher = coarse_teacher(model.teacher) if args.coarse else model.teacher
        if args.coarse:  # the config's validation knows 3 teacher scales: apply the designs unchecked
            trainer.design.design_config = lambda c, d, source="": replace(  # type: ignore[assignment]
                c, bank=replace(c.bank, **d.changes(), designs=[])
            )
        bank_only = MASF(teacher, cfg, (spec.height, spec.width))
        with torch.no_grad():
            n = model.fusion.log_var.shape[0]
            bank_only.fusion.log_var[:n].copy_(model.fusion.log_var)
        model = bank_only.eval()
    logging.info(
        "frame %dx%d, max scale %s, brightness %s, %s",
        spec.height,
        spec.width,
        spec.max_scale,
        spec.brightness,
        "bank only" if args.bank_only or args.coarse else "mixed",
    )
    batch, _ = preprocess_batch(train_images, spec)
    del train_images
    feats = teacher_features(model, batch, device, 16, False)
    del batch
    calib = split["calib"]
    fit = [read_image(args.data / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    t0 = time.perf_counter()
    choice = select_bank_design(
        model, cfg, fit, spec, device, lambda m, c: _build_banks(m, feats, c, device, False)
    )
    if choice is None:
        raise SystemExit("no synthetic defect survives the resize: nothing to compare")
    out = {
        **choice.to_dict(),
        "kinds": args.kinds,
        "seconds": round(time.perf_counter() - t0, 1),
        "run": str(args.run),
        "frame": [spec.height, spec.width],
        "bank_only": args.bank_only,
        "max_scale": spec.max_scale,
        "brightness": spec.brightness,
    }
    args.out.write_text(json.dumps(out, indent=1))
    for r in choice.candidates:
        cells = [r["name"], f"{r['cos_weight']:.2f}"]
        cells += [f"{r[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "aupro", "objective", "se")]
        print(
            "| " + " | ".join(cells) + f" | {int(r['within_1se'])} | {r['bank_sizes']} | {r['knn_cost']:,} |"
        )
    print("chosen:", choice.name)


if __name__ == "__main__":
    main()
