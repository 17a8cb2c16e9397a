"""``masf-train evaluate``: score a run on ``DATA/test`` at its frozen, calibrated threshold.

Maps are computed in the model frame and mapped back to each image's original frame (letterbox padding
removed, resized), so pixel metrics compare with the original masks at their own resolution.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.preprocess import PreprocessSpec
from trainer.data import Sample, read_image, read_mask, scan_test
from trainer.errors import DataError
from trainer.evaluate.metrics import image_metrics, pixel_metrics
from trainer.evaluate.report import ReportExample, write_report
from trainer.inference import predict_files
from trainer.models.masf import MASF, MASFOutput, apply_tta
from trainer.runs import load_run
from trainer.train import calibration_for, resolve_device

__all__ = ["evaluate_model", "evaluate_run", "predict_test_set"]


def _pick_examples(labels: np.ndarray, scores: np.ndarray, types: list[str], per_kind: int = 2) -> list[int]:
    """Indices for the report grid: highest-scoring good images and lowest/highest defective per type."""
    picks: list[int] = []
    good = np.flatnonzero(labels == 0)
    picks += list(good[np.argsort(-scores[good])][:per_kind])
    for t in sorted(set(types) - {"good"}):
        idx = np.flatnonzero(np.asarray(types) == t)
        order = idx[np.argsort(scores[idx])]
        picks += [int(order[0]), int(order[-1])] if len(order) > 1 else [int(order[0])]
    return list(dict.fromkeys(int(i) for i in picks))


def predict_test_set(
    model: Callable[..., MASFOutput],
    spec: PreprocessSpec,
    samples: list[Sample],
    device: torch.device,
    batch_size: int = 8,
    progress: bool = True,
) -> Iterator[tuple[Sample, float, np.ndarray, np.ndarray]]:
    """``(sample, image score, anomaly map, mask)`` per test sample (:func:`~trainer.data.scan_test`), in
    order: the map in the image's own pixels (letterbox removed, float32) and its mask (bool; all False
    for a good image)."""
    by_path = {s.path: s for s in samples}
    results = predict_files(model, [s.path for s in samples], spec, device, batch_size, progress, "evaluate")
    for path, image, pred in results:
        sample = by_path[path]
        mask = (
            read_mask(sample.mask_path, image.shape[:2])
            if sample.mask_path is not None
            else np.zeros(image.shape[:2], dtype=bool)
        )
        yield sample, pred.score, pred.geometry.to_original(pred.anomaly_map).astype(np.float32), mask


def evaluate_model(
    model: MASF,
    info: Any,
    data_root: str | Path,
    tta: bool | None = None,
    report_dir: str | Path | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a loaded model (``info``: its RunInfo). ``tta`` overrides the run's TTSA setting."""
    root = Path(data_root)
    samples = scan_test(root)
    if not any(s.label == 0 for s in samples) or not any(s.label == 1 for s in samples):
        raise DataError(f"{root}/test needs both good and defective images to compute the metrics")
    cfg = info.config
    device = next(model.parameters()).device
    use_tta = cfg.tta.enabled if tta is None else tta
    deployed, applied = apply_tta(model, use_tta, cfg.tta.views, cfg.tta.sigma, cfg.tta.seed)
    deployed.eval()
    calibration = calibration_for(info, bool(applied))
    threshold = float(calibration.threshold)

    t0 = time.perf_counter()
    scores, labels, types, maps, masks = [], [], [], [], []
    predictions = predict_test_set(deployed, info.preprocess, samples, device, batch_size, progress)
    for sample, score, amap, mask in predictions:
        scores.append(score)
        labels.append(sample.label)
        types.append(sample.defect_type)
        maps.append(amap)
        masks.append(mask)
    elapsed = time.perf_counter() - t0

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    result: dict[str, Any] = dict(image_metrics(s, y, threshold, types))
    if any(m.any() for m in masks):
        result.update(pixel_metrics(maps, masks))
    else:
        result.update({"pixel_auroc": math.nan, "pixel_ap": math.nan, "aupro": math.nan})
    result["tta"] = bool(applied)
    result["seconds_per_image"] = elapsed / len(samples)
    result["calibration_rule"] = calibration.rule
    # beside the measured escape rate, the fit's estimate of it at the same threshold (trainer/escapes.py:
    # synthetic defects in the calibration images; None when the run has none or another path is run)
    est = info.meta.get("synthetic_escapes") or {}
    same = not applied and est.get("threshold") == threshold
    result["synthetic_escape_estimate"] = float(est["escapes"]) if same and "escapes" in est else None

    if report_dir is not None:
        examples = [
            ReportExample(
                name=f"{types[i]}/{Path(samples[i].path).name}",
                image=read_image(samples[i].path),  # re-read: no test image is kept in memory
                mask=masks[i] if labels[i] else None,
                anomaly_map=maps[i],
                score=float(s[i]),
                label=int(y[i]),
            )
            for i in _pick_examples(y, s, types)
        ]
        write_report(Path(report_dir), result, s, y, types, threshold, examples)
    return result


def evaluate_run(
    run_dir: str | Path,
    data_root: str | Path,
    json_out: str | Path | None = None,
    report_dir: str | Path | None = None,
    device: str = "auto",
    tta: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``run_dir``, evaluate on ``data_root/test``, write ``json_out`` (and a report)."""
    model, info = load_run(run_dir, resolve_device(device))
    result = evaluate_model(model, info, data_root, tta=tta, report_dir=report_dir, progress=progress)
    result["run"] = str(Path(run_dir))
    result["data"] = str(Path(data_root))
    if json_out is not None:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result
