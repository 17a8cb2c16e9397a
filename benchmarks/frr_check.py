"""Real false-reject rate of the calibrated threshold, measured on good images that no step of a fit saw.

The test set of a part holds few good images (magnetic tile 190, bottle 20), so its false-reject rate
at the calibrated threshold says little about the threshold rule (one good tile more or less moves it by
0.5 %). This benchmark measures the rule on ``train/good`` alone, never on a test image:

1. for each seed, a seeded 20 % of ``train/good`` is put aside (the *holdout*); a fit runs on the rest
   (``masf-train fit --set seed=S`` in a subprocess: its own train / calibration split and fit /
   threshold roles, all seeded by ``S``);
2. the fitted run scores its own threshold images and the holdout with the deployed inference path;
3. the run's threshold rejects ``FRR`` of the holdout: the real false-reject rate of this fit (each
   holdout image is a good part the model never saw, exchangeable with the threshold images).

Across seeds the mean holdout FRR estimates the rule's expected false-reject rate, the figure the
calibration promises to keep at or under ``calibration.target_frr``. The threshold images and the
holdout are exchangeable, so the rule is also measured at other numbers of threshold images ``n``
without refitting: threshold sets of size ``n`` are drawn from the pooled scores of one seed and each
rule's threshold is tested on the rest of the pool (``--draws`` draws per seed). Rules: the product's
``trainer.calibrate.fit_threshold``; the largest threshold score (``max``: expected FRR exactly
``1 / (n + 1)`` for exchangeable scores); the normal prediction bound alone (``gaussian``, no floor).

    .venv/bin/python benchmarks/frr_check.py --data DATA_ROOT [--config CONFIG] [--seeds 0 1 2 3 4]
        [--holdout 0.2] [--n 61 76 99] [--out DIR]

Writes ``DIR/frr_check.json`` (every score) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "train" / "masf_lite2_fast.yaml"


def holdout_split(files: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded ``(rest, holdout)`` of the sorted relative paths ``files``."""
    files = sorted(files)
    k = max(1, round(fraction * len(files)))
    held = set(random.Random(seed).sample(files, k))
    return [f for f in files if f not in held], sorted(held)


def link_tree(root: Path, rest: list[str], out: Path) -> Path:
    """A data folder at ``out`` whose ``train/good`` links to the ``rest`` images of ``root``."""
    for rel in rest:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink((root / rel).resolve(), dst)
    return out


def score_files(run: Path, paths: list[Path]) -> np.ndarray:
    """Image scores of ``paths`` under the run's deployed (plain) inference path."""
    import torch

    from trainer.inference import predict_files
    from trainer.runs import load_run

    model, info = load_run(run)
    device = torch.device("cpu")
    preds = predict_files(model, paths, info.preprocess, device, batch_size=8)
    return np.asarray([p.score for _, _, p in preds], dtype=np.float64)


def rules(scores: np.ndarray, target: float) -> dict[str, float]:
    """Each rule's threshold from threshold-image ``scores`` (module docstring)."""
    from scipy import stats

    from trainer.calibrate import fit_threshold

    s = np.sort(scores)
    n = s.size
    spread = float(s[-1] - s[0])
    gauss = float(s.mean() + stats.t.ppf(1 - target, n - 1) * s.std(ddof=1) * math.sqrt(1 + 1 / n))
    return {
        "product": fit_threshold(s, target)[0],
        "max": float(s[-1] + 1e-6 * spread + 1e-12),
        "gaussian": gauss,
    }


def emulate(pool: np.ndarray, n: int, draws: int, target: float, seed: int) -> dict[str, float]:
    """Mean FRR of each rule over ``draws`` threshold sets of size ``n`` drawn from ``pool``, each tested
    on the rest of the pool."""
    rng = np.random.default_rng(seed)
    totals: dict[str, float] = {}
    for _ in range(draws):
        perm = rng.permutation(pool.size)
        thr, rest = pool[perm[:n]], pool[perm[n:]]
        for name, t in rules(thr, target).items():
            totals[name] = totals.get(name, 0.0) + float(np.mean(rest >= t))
    return {k: v / draws for k, v in totals.items()}


def main() -> None:
    from trainer.config import load_config
    from trainer.data.mvtec import relative_posix, scan_train
    from trainer.runs import read_run_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="data set root (MVTec layout)")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--holdout", type=float, default=0.2, help="share of train/good put aside")
    ap.add_argument("--n", type=int, nargs="+", default=[61, 76, 99], help="threshold-set sizes to emulate")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("frr_check"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    target = load_config(args.config).calibration.target_frr
    root = args.data.resolve()
    files = [relative_posix(p, root) for p in scan_train(root)]
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rest, held = holdout_split(files, args.holdout, seed)
        data = link_tree(root, rest, args.out / f"data_{seed}")
        run = args.out / f"run_{seed}"
        if not (run / "run.json").exists():
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "trainer", "-q", "fit", "--config", str(args.config)]
            cmd += ["--data", str(data), "--out", str(run), "--set", f"seed={seed}"]
            subprocess.run(cmd, check=True, cwd=REPO)
            logging.info("seed %d: fit in %.0f s", seed, time.perf_counter() - t0)
        info = read_run_info(run)
        meta = info.meta
        calib = meta["data"]["split"]["calib"]
        thr_paths = [data / calib[i] for i in meta["calibration_roles"]["threshold"]]
        cal = meta["calibration_by_path"]["plain"]
        thr_scores = score_files(run, thr_paths)
        held_scores = score_files(run, [root / f for f in held])
        t = float(cal["threshold"])
        rows.append(
            {
                "seed": seed,
                "threshold": t,
                "rule": cal["rule"],
                "n_threshold": len(thr_paths),
                "n_holdout": len(held),
                "holdout_frr": float(np.mean(held_scores >= t)),
                "threshold_frr": float(np.mean(thr_scores >= t)),
                "threshold_scores": thr_scores.tolist(),
                "holdout_scores": held_scores.tolist(),
                "bank_design": (meta.get("bank_selection") or {}).get("chosen"),
                "image_score": info.config.score.reduce,
            }
        )
        logging.info("seed %d: holdout FRR %.4f (%s)", seed, rows[-1]["holdout_frr"], cal["rule"])
    emulated = []
    for r in rows:
        pool = np.asarray(r["threshold_scores"] + r["holdout_scores"])
        for n in args.n:
            if n < pool.size - 1:
                emulated.append(
                    {"seed": r["seed"], "n": n, **emulate(pool, n, args.draws, target, r["seed"])}
                )
    out = {
        "config": str(args.config),
        "data": str(args.data),
        "target_frr": target,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "seeds": rows,
        "emulated": emulated,
    }
    (args.out / "frr_check.json").write_text(json.dumps(out, indent=1))
    print("| seed | rule (n threshold images) | bank design | image score | holdout FRR | holdout rejects |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        k = round(r["holdout_frr"] * r["n_holdout"])
        print(
            f"| {r['seed']} | {r['rule']} ({r['n_threshold']}) | {r['bank_design']} | {r['image_score']} | "
            f"{r['holdout_frr']:.4f} | {k} / {r['n_holdout']} |"
        )
    pooled_k = sum(round(r["holdout_frr"] * r["n_holdout"]) for r in rows)
    pooled_n = sum(r["n_holdout"] for r in rows)
    p = pooled_k / pooled_n
    se = math.sqrt(p * (1 - p) / pooled_n)
    print(f"\npooled holdout FRR {p:.4f} ({pooled_k} / {pooled_n}, binomial SE {se:.4f})")
    print("\n| n threshold images | rule | mean FRR over seeds (emulated) | per seed |")
    print("|---|---|---|---|")
    for n in args.n:
        sel = [e for e in emulated if e["n"] == n]
        for name in ("product", "max", "gaussian"):
            vals = [e[name] for e in sel]
            if vals:
                per = " / ".join(f"{v:.4f}" for v in vals)
                print(f"| {n} | {name} | {float(np.mean(vals)):.4f} | {per} |")


if __name__ == "__main__":
    main()
