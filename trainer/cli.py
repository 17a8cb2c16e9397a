"""``masf-train`` command line (same as ``python -m trainer``).

    masf-train fit --config CONFIG.yaml --data DIR --out RUN_DIR [--set key=value ...]
    masf-train evaluate --run RUN_DIR --data DIR --json OUT.json [--report DIR] [--tta | --no-tta]
    masf-train drop --run RUN_DIR --data DIR --out RUN_DIR IMAGE [IMAGE ...]
    masf-train synth --out DIR [--train 60] [--good 12] [--defect 6] [--size 192] [--gray] [--seed 0]

User errors (bad config, data, run directory) print one line ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import yaml

from trainer.errors import ConfigError, UserError

__all__ = ["main"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (e.g. train.epochs=5), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masf-train", description="Train and evaluate MASF anomaly models.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train + calibrate a model from DATA/train/good")
    fit.add_argument("--config", required=True, help="training config (configs/train/*.yaml)")
    fit.add_argument("--data", required=True, help="data folder in MVTec layout (train/good/...)")
    fit.add_argument("--out", required=True, help="run directory to write")
    fit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=5 (repeatable)",
    )

    ev = sub.add_parser("evaluate", help="metrics on DATA/test at the calibrated threshold")
    ev.add_argument("--run", required=True, help="run directory from 'fit'")
    ev.add_argument("--data", required=True, help="data folder in MVTec layout (test/, ground_truth/)")
    ev.add_argument("--json", required=True, help="where to write the metrics JSON")
    ev.add_argument("--report", help="also write a Markdown report with plots into this folder")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    tta = ev.add_mutually_exclusive_group()
    tta.add_argument(
        "--tta",
        dest="tta",
        action="store_const",
        const=True,
        default=None,
        help="force test-time spectral augmentation on (default: as the run was configured)",
    )
    tta.add_argument("--no-tta", dest="tta", action="store_const", const=False, help="force it off")

    drop = sub.add_parser(
        "drop",
        help="leave threshold images that are not good parts out of a run's threshold (no new fit)",
        description="Set a run's thresholds again without the named good threshold images (e.g. those "
        "that 'fit' listed as the highest-scoring and a review found defective). The model, its cue "
        "statistics and selections stay as they are. Drop only images that are not good parts: dropping "
        "good ones lowers the threshold below the rule's promise.",
    )
    drop.add_argument("--run", required=True, help="run directory from 'fit'")
    drop.add_argument("--data", required=True, help="the data folder the run was fitted on")
    drop.add_argument("--out", required=True, help="run directory to write (may be --run itself)")
    drop.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="threshold image: its path as run.json lists it, or its file name",
    )

    syn = sub.add_parser("synth", help="generate a data set of machined parts with and without defects")
    syn.add_argument("--out", required=True, help="folder to write (MVTec layout)")
    syn.add_argument("--train", type=int, default=60, help="defect-free training images (default 60)")
    syn.add_argument("--good", type=int, default=12, help="defect-free test images (default 12)")
    syn.add_argument("--defect", type=int, default=6, help="test images per defect type (default 6)")
    syn.add_argument("--size", type=int, default=192, help="image side in pixels (default 192)")
    syn.add_argument("--gray", action="store_true", help="grayscale parts")
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def _run(args: argparse.Namespace) -> int:
    progress = not args.quiet and sys.stderr.isatty()
    if args.command == "synth":
        from trainer.data.synthetic import DEFECT_TYPES, make_dataset

        if min(args.train, args.good, args.defect) < 0 or args.size < 32:
            raise ConfigError("synth: counts must be >= 0 and --size at least 32")
        root = make_dataset(
            args.out, args.train, args.good, args.defect, args.size, args.size, args.gray, args.seed
        )
        print(
            f"data set written to {root}: {args.train} train/good, {args.good} test/good, "
            f"{args.defect} each of {', '.join(DEFECT_TYPES)} with masks ({args.size}x{args.size})"
        )
        return 0
    if args.command == "fit":
        from trainer.config import load_config
        from trainer.escapes import summary
        from trainer.train import fit, review_line

        cfg = load_config(args.config, _parse_set(args.set))
        info = fit(cfg, args.data, args.out, progress=progress)
        c = info.calibration
        spec = info.preprocess
        tiles = f" tiles of a {spec.frame_size[0]}x{spec.frame_size[1]} frame x{spec.grid.count}" * spec.tiled
        print(
            f"run saved to {args.out}: input {info.input_size[0]}x{info.input_size[1]}{tiles} "
            f"({info.preprocess.color}), threshold {c.threshold:.4f} ({c.rule}, target FRR "
            f"{c.target_frr:g}, {c.n_images} calibration images)"
        )
        if review := review_line(info):
            print(
                f"highest-scoring good threshold images: {review} (check that they are good parts: a "
                "defective part among the good images raises the threshold and lets its kind of defect "
                "through: leave it out with 'masf-train drop'; all listed in run.json calibration_review)"
            )
        if escapes := summary(info.meta.get("synthetic_escapes")):
            print(
                f"synthetic defects below the threshold: {escapes} (drawn into the calibration fit images: "
                "an estimate for comparing parts and settings, optimistic for real defects; run.json "
                "synthetic_escapes)"
            )
        return 0
    if args.command == "drop":
        from pathlib import Path

        from trainer.escapes import summary
        from trainer.review import drop_threshold_images
        from trainer.runs import load_run, save_run
        from trainer.train import review_line

        model, info = load_run(args.run)
        new = drop_threshold_images(model, info, args.data, args.images)
        save_run(Path(args.out), model, new)
        c, names = new.calibration, ", ".join(e["image"] for e in new.meta["calibration_dropped"])
        print(
            f"threshold {info.calibration.threshold:.4f} -> {c.threshold:.4f} ({c.rule}, target FRR "
            f"{c.target_frr:g}, {c.n_images} threshold images; dropped so far: {names}); run saved to "
            f"{args.out}: export it again to deploy the new threshold"
        )
        if review := review_line(new):
            print(f"highest-scoring good threshold images now: {review}")
        if escapes := summary(new.meta.get("synthetic_escapes")):
            print(f"synthetic defects below the threshold now: {escapes}")
        return 0
    if args.command == "evaluate":
        from trainer.evaluate.runner import evaluate_run

        res = evaluate_run(
            args.run,
            args.data,
            args.json,
            args.report,
            args.device,
            tta=args.tta,
            progress=progress,
        )
        est = res.get("synthetic_escape_estimate")
        estimate = "" if est is None else f" (synthetic estimate {est:.3f})"
        print(
            f"image AUROC {res['image_auroc']:.4f}  pixel AUROC {res['pixel_auroc']:.4f}  "
            f"AUPRO {res['aupro']:.4f}  FRR {res['false_reject_rate']:.3f}  "
            f"escapes {res['escape_rate']:.3f}{estimate}  "
            f"-> {args.json}"
        )
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
