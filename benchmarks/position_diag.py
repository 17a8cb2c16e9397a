"""Calibration-only diagnostic: a position cue, where on the part a shade is normal.

For a trained run, mixes a **position cue** ``P`` into the run's own map and image score and measures the
product's selection objective (image AUROC + pixel AUROC + AUPRO on graded synthetic defects drawn into
the run's calibration *fit* images, paired 5-fold standard errors). No test image is read.

``P``: the plain joint embedding of teacher scales 1 and 2 (3x3 average without the padding, the coarse
scale upsampled, concatenated) at each stride-8 cell; each valid cell's position *relative to its image's
valid box* (0..1 along each side) picks one cell of a ``G x G`` grid over the part; per grid cell a
Gaussian of the embedding over the run's training images (covariance shrunk by ``0.01 * mean(diag)``);
``P`` = the Mahalanobis distance to the cell's Gaussian, standardised over the fit images' valid cells,
0 on letterbox cells, upsampled to the frame. Candidates: the run as it is, and ``(1 - w) * run + w * P``
for the map and the score's map alike (before smoothing), for each ``G`` and ``w``; with
``--score-only`` for the image score's map alone (the map, and so the two pixel terms, unchanged).
``--shared-cov``: one covariance for all grid cells (per-cell means). ``--roi R``: the Gaussians fitted and
``P`` computed on each image's valid box resampled to ``R x R`` positions (static shapes: what an exported
graph can compute), ``P`` resampled back onto the box. ``--pca D ...``: also each grid's Gaussians of the
embedding projected onto its top ``D`` principal components (over the training images' valid cells,
centred), one more row per ``D`` (a cheaper cue: ``D x D`` factors instead of ``C x C``).

    .venv/bin/python benchmarks/position_diag.py --run RUN --data DATA_ROOT [--kinds KIND ...]
        [--grids 8 16] [--weights 0.25 0.5] [--score-only] [--shared-cov] [--roi R] [--pca D ...]
        [--out position.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SHRINK = 0.01  # covariance shrinkage, relative to the mean variance


def joint_embedding(feats: list[torch.Tensor]) -> torch.Tensor:
    """Teacher features per scale -> ``[N, h1, w1, C1 + C2]``: scales 1 and 2, 3x3 average without the
    padding, scale 2 upsampled bilinearly to scale 1's grid."""
    a = F.avg_pool2d(feats[1].float(), 3, 1, 1, count_include_pad=False)
    b = F.avg_pool2d(feats[2].float(), 3, 1, 1, count_include_pad=False)
    b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([a, b], 1).permute(0, 2, 3, 1).contiguous()


def relative_cells(valid: np.ndarray, grid: int) -> np.ndarray:
    """Bool ``[N, h, w]`` valid cells -> int ``[N, h, w]``: each valid cell's index in a ``grid x grid``
    partition of its image's valid box (row-major), -1 outside the box's valid cells."""
    out = np.full(valid.shape, -1, dtype=np.int64)
    for n, v in enumerate(valid):
        rows, cols = np.flatnonzero(v.any(1)), np.flatnonzero(v.any(0))
        if rows.size == 0:
            continue
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        r = np.minimum(((np.arange(r0, r1) - r0 + 0.5) / (r1 - r0) * grid).astype(np.int64), grid - 1)
        c = np.minimum(((np.arange(c0, c1) - c0 + 0.5) / (c1 - c0) * grid).astype(np.int64), grid - 1)
        box = r[:, None] * grid + c[None, :]
        out[n, r0:r1, c0:c1] = np.where(v[r0:r1, c0:c1], box, -1)
    return out


class PositionGaussians:
    """One Gaussian per grid cell: ``fit(x [M, C], cells [M])``, then ``distance(x, cells)``.

    ``shared``: every cell has its own mean but all share one covariance, pooled from each sample's
    difference to its cell's mean (the within-cell scatter): an exported graph then needs one ``C x C``
    whitening and a per-position lookup of the cell's whitened mean instead of a ``C x C`` precision per
    cell (0.3 MB instead of 29 MB at ``G = 16``, ``C = 168``)."""

    def __init__(self, grid: int, shrink: float = SHRINK, shared: bool = False) -> None:
        self.grid, self.shrink, self.shared = grid, shrink, shared
        self.mean: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None  # [G*G, C, C], or [1, C, C] when shared

    def _shrunk_inverse(self, cov: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(cov.shape[0], dtype=torch.float64)
        return torch.linalg.inv(cov + self.shrink * cov.diagonal().mean() * eye)

    def fit(self, x: torch.Tensor, cells: torch.Tensor) -> PositionGaussians:
        g2, c = self.grid * self.grid, x.shape[1]
        mean = torch.zeros(g2, c, dtype=torch.float64)
        precision = torch.zeros(1 if self.shared else g2, c, c, dtype=torch.float64)
        scatter, count = torch.zeros(c, c, dtype=torch.float64), 0
        for k in range(g2):
            xs = x[cells == k].double()
            if xs.shape[0] < 2:
                raise ValueError(f"grid cell {k} has {xs.shape[0]} training samples: use a coarser grid")
            mean[k] = xs.mean(0)
            if self.shared:
                d = xs - mean[k]
                scatter += d.T @ d
                count += xs.shape[0] - 1
            else:
                precision[k] = self._shrunk_inverse(torch.cov(xs.T))
        if self.shared:
            precision[0] = self._shrunk_inverse(scatter / count)
        self.mean, self.precision = mean, precision
        return self

    def distance(self, x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each row of ``x`` to its cell's Gaussian (``[M]``, float32)."""
        assert self.mean is not None and self.precision is not None
        out = torch.zeros(x.shape[0], dtype=torch.float64)
        for k in torch.unique(cells).tolist():
            sel = cells == k
            d = x[sel].double() - self.mean[k]
            out[sel] = ((d @ self.precision[0 if self.shared else k]) * d).sum(1).clamp_min(0).sqrt()
        return out.float()


def principal_axes(x: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``x`` ``[M, C]`` -> their mean ``[C]`` and top ``dims`` principal axes ``[C, dims]`` (float64
    covariance, eigenvectors by decreasing variance)."""
    xd = x.double()
    mean = xd.mean(0)
    d = xd - mean
    _, vecs = torch.linalg.eigh(d.T @ d / (xd.shape[0] - 1))
    return mean.float(), vecs[:, -dims:].flip(1).float()


def _box(v: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(v.any(1)), np.flatnonzero(v.any(0))
    return None if rows.size == 0 else (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def roi_resample(emb: torch.Tensor, valid: np.ndarray, size: int) -> torch.Tensor:
    """``[N, h, w, C]`` embeddings -> ``[N, size, size, C]``: each image's valid box resampled bilinearly
    (``align_corners=False``) to a fixed ``size x size`` grid, so each grid cell of the part has the same
    positions in every image (what a graph with static shapes can compute)."""
    out = torch.zeros(emb.shape[0], size, size, emb.shape[-1])
    for n, v in enumerate(valid):
        if (box := _box(v)) is None:
            continue
        r0, r1, c0, c1 = box
        crop = emb[n, r0:r1, c0:c1].permute(2, 0, 1)[None]
        out[n] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0].permute(
            1, 2, 0
        )
    return out


def roi_cells(size: int, grid: int) -> torch.Tensor:
    """The grid cell (row-major) of each position of a ``size x size`` resampled box, ``[size * size]``."""
    idx = torch.arange(size) * grid // size
    return (idx[:, None] * grid + idx[None, :]).reshape(-1)


def distance_maps(
    gauss: PositionGaussians, emb: torch.Tensor, valid: np.ndarray, roi: int | None
) -> torch.Tensor:
    """Each valid cell's Mahalanobis distance to its grid cell's Gaussian, ``[N, h, w]`` (0 elsewhere).
    ``roi``: computed on each image's box resampled to ``roi x roi`` (:func:`roi_resample`) and resampled
    back onto the box; ``None``: at the cells themselves (:func:`relative_cells`)."""
    n, h, w, c = emb.shape
    out = torch.zeros(n, h, w)
    if roi is None:
        cells = torch.from_numpy(relative_cells(valid, gauss.grid).reshape(-1))
        keep = cells >= 0
        out.view(-1)[keep] = gauss.distance(emb.reshape(-1, c)[keep], cells[keep])
        return out
    d = gauss.distance(roi_resample(emb, valid, roi).reshape(-1, c), roi_cells(roi, gauss.grid).repeat(n))
    d = d.view(n, 1, roi, roi)
    for i, v in enumerate(valid):
        if (box := _box(v)) is None:
            continue
        r0, r1, c0, c1 = box
        back = F.interpolate(d[i : i + 1], size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False)
        out[i, r0:r1, c0:c1] = back[0, 0] * torch.from_numpy(v[r0:r1, c0:c1])
    return out


def position_maps(
    model: Any, dist: torch.Tensor, valid: np.ndarray, stats: tuple[float, float]
) -> torch.Tensor:
    """Standardised ``P`` ``[N, 1, H, W]`` at the model's frame from :func:`distance_maps` (0 on letterbox
    cells)."""
    v = torch.from_numpy(valid)
    grid = torch.where(v, (dist - stats[0]) / stats[1], torch.zeros(())).unsqueeze(1)
    return F.interpolate(grid, size=model.input_size, mode="bilinear", align_corners=False)


def main() -> None:
    from trainer.data import read_image
    from trainer.data.synthetic import SELECTION_DEFECTS, SURFACE_DEFECTS
    from trainer.inference import frames_to_tensor
    from trainer.runs import load_run
    from trainer.select import (
        _PIXEL_STRIDE,
        _objective,
        model_frames,
        objective_by_fold,
        paired_se,
        synthetic_probe,
        valid_at,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the run's data set root (MVTec layout)")
    kinds = (*SELECTION_DEFECTS, *SURFACE_DEFECTS)
    ap.add_argument("--kinds", nargs="+", default=list(SELECTION_DEFECTS), choices=kinds)
    ap.add_argument("--grids", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--weights", nargs="+", type=float, default=[0.25, 0.5])
    ap.add_argument("--score-only", action="store_true", help="mix P into the image score's map only")
    ap.add_argument(
        "--roi", type=int, default=None, help="compute P on each image's box resampled to ROI x ROI positions"
    )
    ap.add_argument(
        "--shared-cov", action="store_true", help="one covariance for all grid cells (per-cell means)"
    )
    ap.add_argument(
        "--pca", nargs="+", type=int, default=[], help="also rows with the embedding on its top D axes"
    )
    ap.add_argument("--out", type=Path, default=Path("position.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model, info = load_run(args.run)
    spec, device = info.preprocess, torch.device("cpu")
    split, seed = info.meta["data"]["split"], int(info.config.seed)
    h1, w1 = model.map_sizes[1]

    # the Gaussians, from the run's own training images as its frames place them
    train = [read_image(args.data / p) for p in split["train"]]
    inputs, valid, _, _ = model_frames(train, spec)
    del train
    embs, vgrid = [], []
    with torch.no_grad():
        for s in range(0, inputs.shape[0], 16):
            feats = model.collect(frames_to_tensor(inputs[s : s + 16], device))
            embs.append(joint_embedding(feats))
            vgrid.append(valid_at(torch.from_numpy(valid[s : s + 16]), (h1, w1)).numpy())
    train_emb, train_valid = torch.cat(embs), np.concatenate(vgrid)
    del inputs, embs
    logging.info("training embedding %s, %d valid cells", tuple(train_emb.shape), int(train_valid.sum()))
    # the projections: None (all channels) and each --pca D
    c = train_emb.shape[-1]
    axes: dict[int | None, tuple[torch.Tensor, torch.Tensor] | None] = {None: None}
    if args.pca:
        tv = torch.from_numpy(train_valid).reshape(-1)
        mu, vecs = principal_axes(train_emb.reshape(-1, c)[tv], max(args.pca))
        axes.update({d: (mu, vecs[:, :d]) for d in args.pca})

    def project(emb: torch.Tensor, d: int | None) -> torch.Tensor:
        ax = axes[d]
        return emb if ax is None else (emb - ax[0]) @ ax[1]

    gaussians = {}
    for g in args.grids:
        for d in axes:
            e = project(train_emb, d)
            ce = e.shape[-1]
            if args.roi is None:
                cells = torch.from_numpy(relative_cells(train_valid, g).reshape(-1))
                keep = cells >= 0
                x, cells = e.reshape(-1, ce)[keep], cells[keep]
            else:
                x = roi_resample(e, train_valid, args.roi).reshape(-1, ce)
                cells = roi_cells(args.roi, g).repeat(train_emb.shape[0])
            gaussians[(g, d)] = PositionGaussians(g, shared=args.shared_cov).fit(x, cells)
            logging.info("grid %d, %d channels: %d Gaussians fitted", g, ce, g * g)
    del train_emb, x, e

    # the fit images and their synthetic defects, as the selection draws them
    calib = split["calib"]
    fit = [read_image(args.data / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    probe = synthetic_probe(model, fit, spec, device, seed, 8, tuple(args.kinds))
    if probe is None:
        raise SystemExit("no synthetic defect survives the resize: nothing to compare")
    sets = []
    for shared in (probe.good, probe.defective):
        cues = shared.cues(model)
        emb = torch.cat([joint_embedding(f) for f, _, _ in shared.batches])
        vg = np.concatenate([valid_at(v, (h1, w1)).numpy() for *_, v in shared.batches])
        sets.append((cues, emb, vg))
    fusion, size, post = model.fusion, model.input_size, model.post
    score_w = fusion.score_weights()

    def fused(cues: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps, scored, valids = [], [], []
        with torch.no_grad():
            for cos, bank, v in cues.chunks:
                m = fusion(cos, bank, size)
                maps.append(m)
                scored.append(m if score_w is None else fusion(cos, bank, size, score_w))
                valids.append(v)
        return torch.cat(maps), torch.cat(scored), torch.cat(valids)

    base = [fused(c) for c, _, _ in sets]
    # P's statistics: the fit (good) images' valid cells
    dists = {
        key: [distance_maps(gauss, project(e, key[1]), vg, args.roi) for _, e, vg in sets]
        for key, gauss in gaussians.items()
    }
    good_valid = torch.from_numpy(sets[0][2])
    stats = {}
    for key in gaussians:
        dg = dists[key][0][good_valid]
        stats[key] = (float(dg.mean()), float(dg.std()))
        msg = "grid %d, pca %s: P on the fit images' valid cells: mean %.3f, std %.3f"
        logging.info(msg, *key, *stats[key])

    s = slice(None, None, _PIXEL_STRIDE)
    pt = probe.truth()
    boxes, truth, labels, fold = pt.boxes, pt.truth, pt.labels, pt.fold
    n_good, n_bad = pt.n_good, pt.n_bad

    def evaluate(extra: list[torch.Tensor] | None, w: float) -> dict[str, Any]:
        scores, maps = [], []
        for (m, sc, v), b, e in zip(base, boxes, extra or [None, None], strict=True):
            if e is not None:
                m, sc = m if args.score_only else (1 - w) * m + w * e, (1 - w) * sc + w * e
            with torch.no_grad():
                o = post(m, v, sc)
            scores.append(o.pred_score.numpy())
            am = o.anomaly_map[:, 0, s, s].numpy()
            maps.extend(a[box] for a, box in zip(am, b, strict=True))
        all_scores = np.concatenate(scores)
        row = _objective(all_scores, labels, maps, truth)
        row["folds"] = [f["objective"] for f in objective_by_fold(all_scores, labels, maps, truth, fold)]
        return row

    rows = [{"name": "baseline", "grid": None, "w": 0.0, **evaluate(None, 0.0)}]
    for key in gaussians:
        g, pca = key
        extra = [
            position_maps(model, dm, vg, stats[key]) for dm, (_, _, vg) in zip(dists[key], sets, strict=True)
        ]
        for w in args.weights:
            name = f"G{g} w{w}" + ("" if pca is None else f" pca{pca}")
            rows.append({"name": name, "grid": g, "w": w, "pca": pca, **evaluate(extra, w)})
    ref = np.asarray(rows[0]["folds"])
    for r in rows:
        diff = np.asarray(r["folds"]) - ref
        r["gap"] = r["objective"] - rows[0]["objective"]
        r["fold_mean"], r["fold_se"] = float(diff.mean()), paired_se(diff)
    out = {
        "run": str(args.run),
        "kinds": args.kinds,
        "score_only": args.score_only,
        "shared_cov": args.shared_cov,
        "roi": args.roi,
        "pca": args.pca,
        "n_good": n_good,
        "n_synthetic": n_bad,
        "stats": {f"{g}" + ("" if d is None else f" pca{d}"): v for (g, d), v in stats.items()},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{args.run.name}: {n_good} fit images, {n_bad} synthetic defects ({' '.join(args.kinds)})")
    for r in rows:
        cells = [r["name"]] + [f"{r[x]:.4f}" for x in ("image_auroc", "pixel_auroc", "aupro", "objective")]
        cells += [f"{r['gap']:+.4f}", f"{r['fold_mean']:+.4f} ({r['fold_se']:.4f})"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
