"""Greedy k-center coreset: the pruned sampler (``GreedyCoresetSampler``) vs the plain loop, side by side.

For each data set and each bank design of the product configuration (``bank.designs`` of
``configs/train/masf_lite2.yaml``), the training patches are embedded exactly as a fit embeds them (the
same train / calibration split, input policy and embedder; the teacher's real weights; no student is
needed, the bank does not depend on it) and each bank's coreset is selected twice with the same seed and
projection: by the plain loop that measures every point at every step (the sampler before the pruning)
and by the pruned sampler. Reported: seconds of each, their ratio, and whether both selected the same
points in the same order.

    .venv/bin/python benchmarks/coreset_bench.py [--datasets magnetic_tile bottle]
        [--data-root ../shared/data] [--out benchmarks/results/coreset.json]
        [--designs NAME ...] [--coreset-ratio R] [--project-dim D] [--skip-plain]

``--designs`` keeps only the named designs; ``--coreset-ratio`` / ``--project-dim`` override those two
fields of every kept design (e.g. a larger coreset); ``--skip-plain`` times the sampler alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"bottle": "mvtec_ad/bottle", "magnetic_tile": "magnetic_tile/magnetic_tile"}


def plain_greedy(x: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """The sampler's loop before the pruning: one fused pass over every projected point per step."""
    n = x.shape[0]
    sq = (x * x).sum(1)
    selected = torch.empty(k, dtype=torch.long)
    min_dist = torch.full((n,), float("inf"))
    dist = torch.empty(n)
    current = first
    for i in range(k):
        selected[i] = current
        c = x[current]
        torch.addmv(sq, x, c, alpha=-2.0, out=dist)
        dist += c @ c
        torch.minimum(min_dist, dist, out=min_dist)
        current = int(torch.argmax(min_dist))
    return selected


def bench_dataset(
    name: str,
    root: Path,
    config: Path,
    designs: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    plain: bool = True,
) -> list[dict[str, Any]]:
    from engines.preprocess import preprocess_batch
    from trainer.config import load_config
    from trainer.data import read_image, scan_train, split_train_calib
    from trainer.design import design_config
    from trainer.models.masf import create_masf
    from trainer.models.masf.samb import GreedyCoresetSampler
    from trainer.train import bank_limits, bank_patches, resolve_preprocess, teacher_features

    base = load_config(config)
    split = split_train_calib(
        scan_train(root), root, base.data.calib_fraction, base.data.min_calib, seed=base.seed
    )
    train = [read_image(p) for p in split.train]
    calib = [read_image(p) for p in split.calib]
    rows = []
    for design in base.bank.designs:
        if designs is not None and design.name not in designs:
            continue
        design = replace(design, **(overrides or {}))
        cfg = design_config(base, design)
        spec = resolve_preprocess(cfg, train + calib)
        batch, _ = preprocess_batch(train, spec)
        model = create_masf(cfg, spec.size).eval()
        feats = teacher_features(model, batch, torch.device("cpu"), 16, False)
        limits = bank_limits(cfg, [b.bank.shape[1] for b in model.bank_list()])
        for j in range(len(model.bank_list())):
            protos = bank_patches(model, feats, j, torch.device("cpu"))
            size = min(limits[j], max(1, round(cfg.bank.coreset_ratio * protos.shape[0])))
            sampler = GreedyCoresetSampler(size, seed=cfg.seed + j, project_dim=cfg.bank.project_dim or None)
            t0 = time.perf_counter()
            pruned = sampler.run(protos)
            t_pruned = time.perf_counter() - t0
            x = sampler.project(protos, torch.Generator().manual_seed(sampler.seed))
            t_plain: float | None = None
            if plain:
                t0 = time.perf_counter()
                ref = plain_greedy(x, size, int(pruned[0]))
                t_plain = time.perf_counter() - t0
            else:
                ref = None
            # the first difference to the plain loop's order, and the prototypes both selected
            same = None if ref is None else int(np.argmax(np.r_[(pruned != ref).numpy(), True]))
            both = None if ref is None else len(set(pruned.tolist()) & set(ref.tolist()))
            row = {
                "dataset": name,
                "design": design.name,
                "bank": j,
                "patches": int(protos.shape[0]),
                "dims": int(x.shape[1]),
                "coreset": size,
                "plain_s": None if t_plain is None else round(t_plain, 2),
                "pruned_s": round(t_pruned, 2),
                "speedup": None if t_plain is None else round(t_plain / t_pruned, 2),
                "measured": sampler.measured,
                "same_prefix": same,
                "same_set": both,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            del protos, x
        del feats, batch
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "train" / "masf_lite2.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "coreset.json")
    ap.add_argument("--designs", nargs="+", default=None, help="only these designs of the config")
    ap.add_argument("--coreset-ratio", type=float, default=None, help="override each design's ratio")
    ap.add_argument("--project-dim", type=int, default=None, help="override each design's projection")
    ap.add_argument("--skip-plain", action="store_true", help="time the sampler alone")
    args = ap.parse_args()
    overrides: dict[str, Any] = {}
    if args.coreset_ratio is not None:
        overrides["coreset_ratio"] = args.coreset_ratio
    if args.project_dim is not None:
        overrides["project_dim"] = args.project_dim
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for name in args.datasets:
        root = args.data_root / DATASETS[name]
        if not root.is_dir():
            raise SystemExit(
                f"{root}: data set not found; pass --data-root (the folder holding {DATASETS[name]})"
            )
        rows += bench_dataset(name, root, args.config, args.designs, overrides, not args.skip_plain)
    out = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    head = ["data set", "design", "bank", "patches", "dims", "coreset", "plain loop s", "pruned s"]
    print("| " + " | ".join([*head, "speed-up", "measured", "same order"]) + " |")
    print("|---" * (len(head) + 3) + "|")
    for r in rows:
        cells = [r["dataset"], r["design"], r["bank"], f"{r['patches']:,}", r["dims"], f"{r['coreset']:,}"]
        speedup = "-" if r["speedup"] is None else f"{r['speedup']}x"
        cells += [
            "-" if r["plain_s"] is None else r["plain_s"],
            r["pruned_s"],
            speedup,
            f"{r['measured']:.1%}",
        ]
        same = "-" if r["same_prefix"] is None else f"{r['same_prefix']:,} of {r['coreset']:,}"
        print("| " + " | ".join(map(str, cells)) + f" | {same} |")


if __name__ == "__main__":
    main()
