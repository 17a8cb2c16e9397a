"""``masf-train fit``: the training procedure. Loop, schedule, seeds, calibration and saving; no model math.

Steps:

1. scan ``DATA/train/good``; seeded, hashed split into train and calibration images;
2. resolve the preprocessing (input size from the data when ``auto``, gray mode when every training
   image is grayscale) and pin it in the run;
3. teacher features of the training images, computed once (the teacher is frozen and there is no
   augmentation), kept in memory (FP16 when large);
4. student training (if enabled): AdamW, linear warm-up, then cosine annealing with warm restarts,
   per-iteration; mixed precision only on CUDA, spectral path always FP32; a non-finite loss aborts
   with an error (it is never skipped);
5. memory banks (if enabled): prototypes of all training patches, coreset-subsampled per scale;
6. calibration on the held-out images, split in two disjoint roles: cue statistics and the cue mix on
   the fit images, then the threshold on the deployed path (TTSA included when enabled) on the
   threshold images (``trainer/calibrate.py``);
7. save ``model.safetensors`` + ``run.json``.

Nothing here looks at test images: there is no checkpoint selection, the schedule is fixed.
"""

from __future__ import annotations

import logging
import math
import platform
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import trainer
from engines.preprocess import (
    PreprocessSpec,
    preprocess_batch,
    resolve_input_size,
    resolve_tiling,
    turns,
    valid_masks,
)
from trainer.calibrate import Calibration, calibrate, conformal_min, split_roles
from trainer.config import Config
from trainer.data import data_fingerprint, is_grayscale, read_image, scan_train, split_train_calib
from trainer.design import DesignChoice, design_config, select_bank_design, with_design
from trainer.errors import RunError
from trainer.escapes import synthetic_escapes
from trainer.inference import (
    FEATURE_FP16_BYTES,
    feature_dtype,
    frames_to_tensor,
    images_per_call,
    predict_arrays,
)
from trainer.models.masf import MASF, apply_tta, create_masf
from trainer.position_choice import (
    PositionSelection,
    fit_position_gaussians,
    select_position_weight,
    set_position_statistics,
)
from trainer.runs import RunInfo, save_run
from trainer.score_choice import (
    ScoreSelection,
    SmoothingSelection,
    baseline,
    select_pair,
    select_score_reduce,
    select_smoothing,
)
from trainer.select import (
    CueSet,
    MixSelection,
    SharedInputs,
    SyntheticProbe,
    cue_batches,
    select_cue_mix,
    set_cue_statistics,
    synthetic_probe,
)

__all__ = [
    "bank_patches",
    "calibrate_model",
    "calibration_for",
    "fit",
    "highest_scores",
    "lr_at",
    "recalibrate",
    "resolve_device",
    "resolve_preprocess",
    "review_line",
    "teacher_features",
    "wants_tiling",
]

_logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(epoch: float, base_lr: float, warmup: float, t0: float, eta_min: float) -> float:
    """Learning rate at fractional ``epoch``: linear warm-up, then cosine annealing with restarts every t0."""
    if warmup > 0 and epoch < warmup:
        return base_lr * (epoch + 1e-3) / warmup
    t = (epoch - warmup) % t0
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * t / t0))


def student_schedule(epochs: int, steps_per_epoch: int, max_steps: int) -> tuple[int, int, float]:
    """``(epochs to run, steps to run, schedule shrink factor)`` under ``train.max_steps`` (0: no cap): the
    steps are ``min(epochs * steps_per_epoch, max_steps)``, the epochs those that hold them (the last one
    possibly partial), and the factor by which the warm-up and the cosine period shrink so the schedule
    ends where it would without a cap."""
    planned = epochs * steps_per_epoch
    if not max_steps or max_steps >= planned:
        return epochs, planned, 1.0
    return math.ceil(max_steps / steps_per_epoch), max_steps, max_steps / planned


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _load_images(paths: Sequence[Path], progress: bool, desc: str) -> list[np.ndarray]:
    from tqdm import tqdm

    return [read_image(p) for p in tqdm(paths, desc=desc, disable=not progress, leave=False)]


def wants_tiling(cfg: Config, sizes: Sequence[tuple[int, int]]) -> bool:
    """``data.tiling``: on, off, or (auto) when the median aspect ratio (long / short side) of the
    training images exceeds ``data.tile_min_aspect``."""
    if cfg.data.tiling != "auto":
        return cfg.data.tiling == "on"
    ratios = [max(h, w) / min(h, w) for h, w in sizes]
    return bool(ratios) and float(np.median(ratios)) > cfg.data.tile_min_aspect


def resolve_preprocess(cfg: Config, images: Sequence[np.ndarray]) -> PreprocessSpec:
    """Pin input size (or tiling), and colour mode from the config and the training images."""
    sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    color = cfg.data.color
    if color == "auto":
        color = "gray" if all(is_grayscale(im) for im in images) else "rgb"
    d = cfg.data
    if d.orient == "auto":  # the frame is sized for the images as they will be placed: turned alike
        sizes = upright(sizes)
    if wants_tiling(cfg, sizes):
        frame, (h, w), overlap, _ = resolve_tiling(
            sizes, d.tile_size, d.tile_scale, d.tile_overlap, d.max_tiles
        )
        spec = PreprocessSpec(
            height=h,
            width=w,
            resize=d.resize,
            color=color,
            tile_frame=frame,
            tile_overlap=overlap,
            orient=d.orient,
        )
    else:
        size = d.input_size if d.input_size == "auto" else tuple(d.input_size)
        h, w = resolve_input_size(size, sizes, base=d.base_size)  # type: ignore[arg-type]
        spec = PreprocessSpec(height=h, width=w, resize=d.resize, color=color, orient=d.orient)
    if d.scale == "common":
        raw = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        spec = replace(spec, max_scale=common_scale(raw, spec, d.scale_share))
    return spec


def common_scale(sizes: Sequence[tuple[int, int]], spec: PreprocessSpec, share: float) -> float:
    """The largest scale at which ``share`` of the images of ``sizes`` ``(h, w)`` fit ``spec``'s frame
    whole (each turned as ``spec`` places it): the part's one scale for ``max_scale``."""
    fh, fw = spec.frame_size
    fits = [min(fh / w, fw / h) if turns(h, w, spec) else min(fh / h, fw / w) for h, w in sizes]
    k = max(1, math.ceil(share * len(fits) - 1e-9))  # at least this many images fit whole
    return float(sorted(fits, reverse=True)[k - 1])


def upright(sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(h, w)`` sizes turned to the majority orientation (portrait when the median ``h / w`` is at
    least 1, else landscape): the sizes ``orient: auto`` places into a frame of that orientation."""
    if not sizes:
        return []
    portrait = float(np.median([h / w for h, w in sizes])) >= 1.0
    return [(h, w) if (h >= w) == portrait or h == w else (w, h) for h, w in sizes]


@torch.no_grad()
def teacher_features(
    model: MASF, batch: np.ndarray, device: torch.device, batch_size: int, progress: bool
) -> list[torch.Tensor]:
    """Teacher features of uint8 frames ``[N, H, W, 3]``, ``batch_size`` at a time, kept on the CPU: one
    ``[N, C, h, w]`` tensor per scale (FP16 above 2 GiB)."""
    from tqdm import tqdm

    n = batch.shape[0]
    channels, sizes = model.teacher.cfg.channels, model.map_sizes
    dtype = feature_dtype(model, n)
    store = [torch.empty(n, c, h, w, dtype=dtype) for c, (h, w) in zip(channels, sizes, strict=True)]
    for start in tqdm(range(0, n, batch_size), desc="teacher features", disable=not progress, leave=False):
        x = frames_to_tensor(batch[start : start + batch_size], device)
        for s, f in zip(store, model.collect(x), strict=True):
            s[start : start + f.shape[0]] = f.to("cpu", dtype)
    return store


def _train_student(
    model: MASF, feats: list[torch.Tensor], cfg: Config, device: torch.device, progress: bool
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    tc = cfg.train
    n = feats[0].shape[0]
    steps = max(1, math.ceil(n / tc.batch_size))
    epochs, total, shrink = student_schedule(tc.epochs, steps, tc.max_steps)
    warmup, t0 = tc.warmup_epochs * shrink, tc.t0 * shrink
    _logger.info("student: %d epochs, %d steps", epochs, total)
    fusion_params = [p for p in model.fusion.parameters() if p.requires_grad]
    fusion_ids = {id(p) for p in fusion_params}
    params = [p for p in model.trainable_parameters() if id(p) not in fusion_ids]
    groups: list[dict[str, Any]] = [{"params": params, "lr_scale": 1.0}]
    if fusion_params:  # UGHF log-variances: 3 scalars, no weight decay, their own learning-rate scale
        groups.append({"params": fusion_params, "lr_scale": cfg.fusion.lr_scale, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    amp = _amp_dtype(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    model.train()
    bar = tqdm(total=total, desc="train", disable=not progress, mininterval=1.0)
    done = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        sums = torch.zeros(len(feats))
        run = min(steps, total - done)
        for i in range(run):
            idx = order[i * tc.batch_size : (i + 1) * tc.batch_size]
            lr = lr_at(epoch + i / steps, tc.lr, warmup, t0, tc.eta_min)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            batch = [f[idx].to(device).float() for f in feats]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                losses = model.training_losses(batch, generator=gen)
            loss = model.fusion.uncertainty_loss(losses.float())
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"non-finite training loss at epoch {epoch} step {i} (per-scale {losses.tolist()}): "
                    "this is a bug (the spectral path runs in FP32); please report it with the run config"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sums += losses.detach().float().cpu()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            bar.update(1)
        done += run
        record = {
            "epoch": epoch + 1,
            "steps": run,
            "loss_per_scale": [round(float(v), 6) for v in sums / run],
            "scale_weights": [round(float(v), 6) for v in model.fusion.scale_weights().detach().cpu()],
        }
        history.append(record)
        _logger.info("epoch %d: %s", epoch + 1, record)
    bar.close()
    model.eval()
    return history


def bank_limits(cfg: Config, dims: Sequence[int]) -> list[int]:
    """Most prototypes of each bank: ``bank.max_size``, or with ``auto`` the share of ``bank.max_mb``
    (split evenly between the banks) that float32 prototypes of that width fill."""
    from trainer.models.masf.samb import bank_capacity

    if cfg.bank.max_size == "auto":
        return [bank_capacity(d, cfg.bank.max_mb / len(dims)) for d in dims]
    return [int(cfg.bank.max_size)] * len(dims)


@torch.no_grad()
def bank_patches(model: MASF, feats: list[torch.Tensor], j: int, device: torch.device) -> torch.Tensor:
    """Every training patch's prototype for bank ``j`` of ``model`` (``[N * patches, C]``, embedded 16
    images at a time), stored once: FP16 above 2 GiB, like the teacher features."""
    emb = model.embedders[j]
    dim = model.bank_list()[j].bank.shape[1]
    n = feats[0].shape[0]

    def embed(i: int) -> torch.Tensor:
        if model.joint:
            out = emb([feats[layer][i : i + 16].to(device).float() for layer in model.bank_layers])
        else:
            out = emb(feats[model.bank_layers[j]][i : i + 16].to(device).float())
        return out.reshape(-1, dim).cpu()

    first = embed(0)
    per_image = first.shape[0] // min(16, n)
    total = per_image * n
    dtype = torch.float16 if total * dim * 4 > FEATURE_FP16_BYTES else torch.float32
    protos = torch.empty(total, dim, dtype=dtype)
    protos[: first.shape[0]] = first.to(dtype)
    for i in range(16, n, 16):
        e = embed(i)
        protos[i * per_image : i * per_image + e.shape[0]] = e.to(dtype)
    return protos


@torch.no_grad()
def _build_banks(
    model: MASF, feats: list[torch.Tensor], cfg: Config, device: torch.device, progress: bool
) -> list[int]:
    """Embed every training patch (:func:`bank_patches`), coreset-subsample, fill each bank (the coreset
    works on their chunked random projection, :class:`GreedyCoresetSampler`)."""
    from trainer.models.masf.samb import GreedyCoresetSampler, RandomSampler

    banks = model.bank_list()
    limits = bank_limits(cfg, [b.bank.shape[1] for b in banks])
    sizes = []
    for j, bank in enumerate(banks):
        protos = bank_patches(model, feats, j, device)
        size = min(limits[j], max(1, round(cfg.bank.coreset_ratio * protos.shape[0])))
        sampler: RandomSampler
        if cfg.bank.sampler == "greedy":
            sampler = GreedyCoresetSampler(size, seed=cfg.seed + j, project_dim=cfg.bank.project_dim or None)
            idx = sampler.run(protos, progress=progress)
        else:
            sampler = RandomSampler(size, seed=cfg.seed + j)
            idx = sampler.run(protos)
        bank.fill(protos[idx].float())
        sizes.append(len(bank))
        del protos
    return sizes


@dataclass(frozen=True)
class Calibrated:
    """What :func:`calibrate_model` decided: the config with the chosen cue mix and image score, a
    calibration per inference path (``{"plain": ..., "tta": ...}``), the cue-mix selection (``None``: not
    run), the roles of the calibration images (indices into the run's calibration list) and the
    image-score and smoothing selections (``None``: not run; a joint choice of both is a
    :class:`~trainer.score_choice.PairSelection` in ``score``)."""

    config: Config
    by_path: dict[str, Calibration]
    selection: MixSelection | None
    roles: dict[str, list[int]] | None = None
    score: ScoreSelection | None = None
    review: list[tuple[int, float]] | None = None
    position: PositionSelection | None = None
    escapes: dict[str, Any] | None = None
    smoothing: SmoothingSelection | None = None

    def reindexed(self, keep: Sequence[int]) -> Calibrated:
        """The same, its roles and review as indices into a longer list of which the calibrated images
        were ``keep`` (in order)."""
        roles = None if self.roles is None else {k: [keep[i] for i in v] for k, v in self.roles.items()}
        review = None if self.review is None else [(keep[i], s) for i, s in self.review]
        return replace(self, roles=roles, review=review)

    def meta(self, names: list[str] | None = None) -> dict[str, Any]:
        """The run-metadata entries of this calibration. ``names``: the calibration images' names (the
        run's ``data.split.calib``), for the review list."""
        return {
            "calibration_by_path": {k: v.to_dict() for k, v in self.by_path.items()},
            "fusion_selection": self.selection.to_dict() if self.selection else None,
            "smoothing_selection": self.smoothing.to_dict() if self.smoothing else None,
            "score_selection": self.score.to_dict() if self.score else None,
            "position_selection": self.position.to_dict() if self.position else None,
            "calibration_roles": self.roles,
            "calibration_review": None if self.review is None else review_entries(self.review, names),
            "synthetic_escapes": self.escapes,
        }


REVIEW_COUNT = 5  # threshold images listed for review after a fit


def highest_scores(
    scores: Sequence[float], indices: Sequence[int], count: int = REVIEW_COUNT
) -> list[tuple[int, float]]:
    """The ``count`` highest ``scores`` as ``(index, score)``, highest first (ties: the lower index).

    A calibration's threshold is set by the highest scores of its good threshold images (with 99 of
    them, the conformal 1 % rule takes the largest). A defective part filed among the good images
    therefore raises the threshold and lets defects of its kind through; these are the images to look
    at first."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], indices[i]))[:count]
    return [(int(indices[i]), float(scores[i])) for i in order]


def review_entries(review: list[tuple[int, float]], names: list[str] | None) -> list[dict[str, Any]]:
    """``review`` (:func:`highest_scores`) as run-metadata entries: ``{"index", "image", "score"}``."""
    return [
        {"index": i, "image": names[i] if names is not None else None, "score": round(s, 6)}
        for i, s in review
    ]


def calibration_roles(cfg: Config, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the calibration images that fit (cue statistics, selections) and that set only the
    threshold (disjoint, :func:`~trainer.calibrate.split_roles`)."""
    c = cfg.calibration
    least = conformal_min(c.target_frr) if c.min_threshold_images == "auto" else int(c.min_threshold_images)
    return split_roles(n, c.threshold_fraction, cfg.seed, least, c.min_fit_images)


def calibrate_model(
    model: MASF,
    cfg: Config,
    calib_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    fitted: bool = False,
    selection: MixSelection | None = None,
    probe: SyntheticProbe | None = None,
    probe_cues: tuple[CueSet, CueSet] | None = None,
) -> Calibrated:
    """Cue statistics, the cue mix (``fusion.select``), the map's smoothing and the image score
    (``score.select``) on the fit images, then a threshold for each inference path on the threshold
    images (disjoint, :func:`calibration_roles`).

    Both paths are calibrated so that an evaluation or a deployment with or without TTSA always uses the
    threshold of the path it runs (a TTSA score is on another scale than a plain one). The chosen mix is
    applied to ``model`` and written into the returned config, so a saved run reloads with it.
    ``fitted``: the fit-image steps were already done on ``model`` (the bank-design selection does them;
    ``cfg`` holds the chosen mix, ``selection`` their cue-mix selection if one ran): only the image score
    and the thresholds are set here. ``probe``: the fit images' synthetic defects under ``model``'s
    teacher and student (:func:`~trainer.select.synthetic_probe`), when the caller has them;
    ``probe_cues``: its good and defective cues under ``model`` as it is, likewise (only with ``fitted``:
    the bank-design selection scored them with the chosen bank).
    """
    fit_idx, thr_idx = calibration_roles(cfg, len(calib_images))
    fit_images = [calib_images[i] for i in fit_idx]
    thr_images = [calib_images[i] for i in thr_idx]
    if not fitted:  # the cue mix is chosen with the baseline image score, as in a fit
        cfg = baseline(cfg)
        if model.post.reduce != cfg.score.reduce:
            model.post = model.post.with_reduce(cfg.score.reduce)
        if model.post.sigma != cfg.score.sigma:
            model.post = model.post.with_sigma(cfg.score.sigma)
        good_cues, _ = cue_batches(model, fit_images, spec, device, cfg.train.batch_size)
        set_cue_statistics(model, good_cues.chunks)
        if cfg.fusion.select == "synthetic":
            mixing = model.use_student and model.use_bank
            if mixing and probe is None:  # one probe for the choices and the escape estimate
                probe = synthetic_probe(model, fit_images, spec, device, cfg.seed, cfg.train.batch_size)
            selection = select_cue_mix(
                model,
                fit_images,
                spec,
                device,
                cfg.fusion.candidates,
                cfg.seed,
                cfg.train.batch_size,
                good_cues,
                probe,
                cfg.fusion.split_score,
            )
        del good_cues
    if selection is not None:
        a, sa = selection.cos_weight, selection.score_cos_weight
        model.fusion.cos_weight, model.fusion.bank_weight = a, 1.0 - a
        model.fusion.score_cos_weight = sa
        cfg = replace(cfg, fusion=replace(cfg.fusion, cos_weight=a, bank_weight=1.0 - a, score_cos_weight=sa))
        _logger.info(
            "cue mix %.2f distillation / %.2f bank%s (chosen on synthetic defects)",
            a,
            1 - a,
            "" if sa is None else f", image score {sa:.2f} / {1 - sa:.2f}",
        )
    score: ScoreSelection | None = None
    smoothing: SmoothingSelection | None = None
    if cfg.score.select == "synthetic":
        bs = cfg.train.batch_size
        cues = probe_cues if fitted else None
        sc = cfg.score
        if len(sc.sigma_candidates) > 1 and probe is None:  # one probe for every choice (and the escapes)
            probe = synthetic_probe(model, fit_images, spec, device, cfg.seed, bs)
        if sc.joint and len(sc.sigma_candidates) > 1:
            score = select_pair(
                model, fit_images, spec, device, sc.sigma_candidates, sc.candidates, cfg.seed, bs, probe, cues
            )
            if score is not None:
                model.post = model.post.with_sigma(score.sigma).with_reduce(score.reduce)
                cfg = replace(cfg, score=replace(sc, sigma=score.sigma, reduce=score.reduce))
        else:
            if len(sc.sigma_candidates) > 1:
                smoothing = select_smoothing(
                    model, fit_images, spec, device, sc.sigma_candidates, cfg.seed, bs, probe, cues
                )
            if smoothing is not None:
                model.post = model.post.with_sigma(smoothing.sigma)
                cfg = replace(cfg, score=replace(cfg.score, sigma=smoothing.sigma))
            sc = cfg.score
            score = select_score_reduce(
                model, fit_images, spec, device, sc.candidates, cfg.seed, bs, probe, cues
            )
            if score is not None:
                model.post = model.post.with_reduce(score.reduce)
                cfg = replace(cfg, score=replace(sc, reduce=score.reduce))
    position = None
    if model.position is not None:
        pc, bs = cfg.position, cfg.train.batch_size
        if probe is None and pc.select == "synthetic":
            probe = synthetic_probe(model, fit_images, spec, device, cfg.seed, bs)
        good = probe.good if probe is not None else SharedInputs.compute(model, fit_images, spec, device, bs)
        good_maps = set_position_statistics(model, good)
        if pc.select == "synthetic" and probe is not None:
            cues = probe_cues if fitted else None
            position = select_position_weight(
                model, probe, pc.candidates, pc.weight, cues, good_maps, pc.require_gain
            )
        model.position_weight = position.weight if position is not None else pc.weight
        cfg = replace(cfg, position=replace(pc, weight=model.position_weight))
    result, review = set_thresholds(
        model, cfg, thr_images, [int(i) for i in thr_idx], len(fit_images), spec, device
    )
    roles = {"fit": [int(i) for i in fit_idx], "threshold": [int(i) for i in thr_idx]}
    escapes = None
    if probe is not None and not cfg.tta.enabled:  # the probe's cues are the plain path's
        bad = probe_cues[1] if fitted and probe_cues is not None else None
        escapes = synthetic_escapes(model, probe, result["plain"].threshold, bad)
    return Calibrated(cfg, result, selection, roles, score, review, position, escapes, smoothing)


def set_thresholds(
    model: MASF,
    cfg: Config,
    thr_images: Sequence[np.ndarray],
    thr_idx: Sequence[int],
    n_fit: int,
    spec: PreprocessSpec,
    device: torch.device,
) -> tuple[dict[str, Calibration], list[tuple[int, float]]]:
    """A threshold for each inference path (``"plain"``, ``"tta"``) from the good threshold images
    ``thr_images`` (their calibration indices ``thr_idx``; ``n_fit`` other images fitted the model), and
    the deployed path's highest-scoring threshold images (:func:`highest_scores`)."""
    result, review = {}, []
    for path, enabled in (("plain", False), ("tta", True)):
        deployed, _ = apply_tta(model, enabled, cfg.tta.views, cfg.tta.sigma, cfg.tta.seed)
        scores, pixels = [], []
        step = images_per_call(deployed, spec, cfg.train.batch_size)
        for start in range(0, len(thr_images), step):
            chunk = thr_images[start : start + step]
            for p in predict_arrays(deployed, chunk, spec, device):
                scores.append(p.score)
                pixels.append(p.anomaly_map[p.geometry.valid_mask()])
        result[path] = calibrate(
            np.asarray(scores), np.concatenate(pixels), cfg.calibration.target_frr, n_fit
        )
        if enabled == cfg.tta.enabled:  # the deployed path's scores
            review = highest_scores(scores, thr_idx)
    return result, review


def calibration_for(info: RunInfo, tta: bool) -> Calibration:
    """The run's calibration for the inference path with (``tta``) or without TTSA."""
    by_path = info.meta.get("calibration_by_path", {})
    key = "tta" if tta else "plain"
    if key in by_path:
        return Calibration.from_dict(by_path[key])
    if tta == info.config.tta.enabled:
        return info.calibration
    raise RunError(f"this run has no calibration for the {key} path: re-run masf-train fit")


def recalibrate(model: MASF, info: RunInfo, data_root: str | Path) -> RunInfo:
    """Re-run calibration (cue statistics, cue mix, thresholds) of ``model`` (e.g. with a component
    switched off) on the run's own calibration images under ``data_root``, without those a review
    dropped (``calibration_dropped``, :mod:`trainer.review`); returns a new :class:`RunInfo` (the run dir
    is untouched)."""
    root = Path(data_root)
    names = info.meta["data"]["split"]["calib"]
    left_out = {e["image"] for e in info.meta.get("calibration_dropped") or []}
    keep = [i for i, p in enumerate(names) if p not in left_out]
    images = [read_image(root / names[i]) for i in keep]
    device = next(model.parameters()).device
    done = calibrate_model(model, info.config, images, info.preprocess, device).reindexed(keep)
    chosen = done.by_path["tta" if info.config.tta.enabled else "plain"]
    return RunInfo(done.config, info.preprocess, chosen, {**info.meta, **done.meta(names)})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fit(cfg: Config, data_root: str | Path, out_dir: str | Path, progress: bool = True) -> RunInfo:
    """Train, calibrate and save a MASF run. Returns the saved :class:`RunInfo`."""
    t_start = time.perf_counter()
    cfg = baseline(cfg)  # the design and the mix are chosen with it; the image score after them
    root, out = Path(data_root), Path(out_dir)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)

    split = split_train_calib(
        scan_train(root), root, cfg.data.calib_fraction, cfg.data.min_calib, seed=cfg.seed
    )
    train_images = _load_images(split.train, progress, "read train")
    calib_images = _load_images(split.calib, progress, "read calib")
    spec = resolve_preprocess(cfg, train_images + calib_images)
    if spec.tiled and cfg.position.enabled:
        _logger.info("position cue not used: the part is tiled (a tile is not the part)")
        cfg = replace(cfg, position=replace(cfg.position, enabled=False))
    train_batch, train_geometries = preprocess_batch(train_images, spec)
    if spec.tiled:  # the model learns from every tile of every training frame
        train_batch = spec.grid.cut(train_batch, axis=1)
    del train_images
    _logger.info(
        "input %dx%d (%s, %s)%s, %d train / %d calib images",
        spec.height,
        spec.width,
        spec.resize,
        spec.color,
        f", {spec.grid.count} tiles of a {spec.frame_size[0]}x{spec.frame_size[1]} frame" * spec.tiled,
        len(split.train),
        len(split.calib),
    )

    model = create_masf(cfg, spec.size).to(device).eval()
    t0 = time.perf_counter()
    feats = teacher_features(model, train_batch, device, 16, progress)
    if model.position is not None:
        fit_position_gaussians(model, feats, valid_masks(train_geometries))
    t_features = time.perf_counter() - t0

    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if model.use_student:
        history = _train_student(model, feats, cfg, device, progress)
    t_student = time.perf_counter() - t0

    t0 = time.perf_counter()
    design: DesignChoice | None = None
    if model.use_bank and cfg.bank.designs:
        fit_idx, _ = calibration_roles(cfg, len(calib_images))

        def build(m: MASF, c: Config, feats: list[torch.Tensor] = feats) -> list[int]:
            return _build_banks(m, feats, c, device, progress)

        design = select_bank_design(model, cfg, [calib_images[i] for i in fit_idx], spec, device, build)
        if design is None:  # synthetic defects too small to tell the designs apart: keep the first one
            cfg = design_config(cfg, cfg.bank.designs[0])
            model = with_design(model, cfg)
        else:
            model, cfg = design.model, design.config
    if design is not None:  # its banks are built
        bank_sizes = [len(b) for b in model.bank_list()]
    else:
        bank_sizes = _build_banks(model, feats, cfg, device, progress) if model.use_bank else []
    t_bank = time.perf_counter() - t0
    del feats

    t0 = time.perf_counter()
    fitted, mix = (True, design.mix) if design is not None else (False, None)
    probe, probe_cues = None, None
    if design is not None:  # its probe and cues serve the image-score choice, then they are released
        probe, probe_cues = design.probe, design.cues
        design = replace(design, probe=None, cues=None)
    done = calibrate_model(model, cfg, calib_images, spec, device, fitted, mix, probe, probe_cues)
    del probe, probe_cues
    cfg = done.config
    calibration = done.by_path["tta" if cfg.tta.enabled else "plain"]
    t_calib = time.perf_counter() - t0

    split_doc = split.to_dict(root)
    meta: dict[str, Any] = {
        "producer": f"masf-train {trainer.__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_family": "masf",
        "backbone": {
            "name": model.teacher.cfg.name,
            "mean": list(model.teacher.cfg.mean),
            "std": list(model.teacher.cfg.std),
            "channels": list(model.teacher.cfg.channels),
            "strides": list(model.teacher.cfg.strides),
            "input": "RGB, 0..255, normalised inside the model",
        },
        "data": {
            "root": str(root.resolve()),
            "train_fingerprint": data_fingerprint(split.train + split.calib, root),
            "split": split_doc,
        },
        "tta_applied": cfg.tta.enabled,
        **done.meta(split_doc["calib"]),
        "bank_selection": design.to_dict() if design else None,
        "bank_sizes": bank_sizes,
        "scale_weights": [float(v) for v in model.fusion.scale_weights().detach().cpu()],
        "train_log": history,
        "timing_s": {
            "teacher_features": round(t_features, 2),
            "student": round(t_student, 2),
            "bank": round(t_bank, 2),
            "calibration": round(t_calib, 2),
            "total": round(time.perf_counter() - t_start, 2),
        },
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
        },
    }
    info = RunInfo(cfg, spec, calibration, meta)
    save_run(out, model, info)
    _logger.info("saved run to %s (threshold %.4f, rule %s)", out, calibration.threshold, calibration.rule)
    _logger.info("good threshold images with the highest scores: %s", review_line(info))
    return info


def review_line(info: RunInfo, count: int = 3) -> str:
    """The run's highest-scoring good threshold images (``calibration_review``), e.g. ``"a.png 4.58,
    b.png 4.40"``; empty for a run without the review (written before it existed)."""
    entries = info.meta.get("calibration_review") or []
    return ", ".join(f"{Path(e['image'] or str(e['index'])).name} {e['score']:.4g}" for e in entries[:count])
