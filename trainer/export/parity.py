"""Parity of an exported graph with the PyTorch model: ONNX Runtime (CPU) vs eager on the same pixels.

Both sides get the same uint8 model-frame batch from :func:`engines.preprocess.preprocess_batch` and the
same letterbox mask. Criteria (issue 3): every anomaly map within ``1e-4`` of the reference relative to
that map's range, every image score within ``1e-5`` relative, and identical verdicts (``score >=
threshold``) at the calibrated threshold for every image whose score is farther from the threshold than
that score tolerance. An image closer than that (e.g. the highest calibration image when the threshold
is floored just above it) has no numerically defined verdict: two backends within tolerance may split
on it, so it is counted (``verdicts_at_threshold``), not failed. The graph is run at each batch size of
``batch_sizes`` (a dynamic batch must give the same numbers as batch 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.bundle import GRAPH_INPUTS
from engines.errors import BackendError
from engines.preprocess import PreprocessSpec, merge_outputs, model_inputs, preprocess_batch
from engines.verdict import fails

__all__ = ["MAP_RTOL", "SCORE_RTOL", "check_parity", "ort_session"]

MAP_RTOL = 1e-4
"""Max ``|map_onnx - map_torch|`` relative to the reference map's range (max - min)."""
SCORE_RTOL = 1e-5
"""Max ``|score_onnx - score_torch| / |score_torch|``."""


def ort_session(path: str | Path, intra_op_threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` (CPUExecutionProvider only, no fallback)."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BackendError(
            f"onnxruntime is not installed ({err}): pip install 'masf-edge[engines]'"
        ) from None
    opts = ort.SessionOptions()
    if intra_op_threads:
        opts.intra_op_num_threads = int(intra_op_threads)
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def _torch_outputs(
    model: nn.Module, batch: np.ndarray, valid: np.ndarray, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for start in range(0, batch.shape[0], chunk):
        x = torch.from_numpy(batch[start : start + chunk]).permute(0, 3, 1, 2).float()
        out = model(x, torch.from_numpy(valid[start : start + chunk]))
        maps.append(out.anomaly_map[:, 0].float().numpy())
        scores.append(out.pred_score.float().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def _onnx_outputs(
    session: Any, batch: np.ndarray, valid: np.ndarray, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for start in range(0, batch.shape[0], chunk):
        feeds = dict(
            zip(GRAPH_INPUTS, (batch[start : start + chunk], valid[start : start + chunk]), strict=True)
        )
        amap, score = session.run(None, feeds)
        maps.append(amap[:, 0])
        scores.append(score)
    return np.concatenate(maps), np.concatenate(scores)


def check_parity(
    reference: nn.Module,
    onnx_path: str | Path,
    images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    threshold: float,
    batch_sizes: Sequence[int] = (1, 8),
    intra_op_threads: int | None = None,
) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch eager on ``images``.

    Args:
        reference: the deployed torch model (``model(x [N, 3, H, W] float 0..255, valid) -> MASFOutput``),
            in its reference configuration (``torch.fft`` spectral mode).
        onnx_path: the exported graph.
        images: raw uint8 images (HxW or HxWx3, any size), preprocessed with ``spec``.
        spec: the bundle's preprocessing.
        threshold: calibrated threshold of the exported path (verdict: ``score >= threshold``).
        batch_sizes: batch sizes to run the graph at (each compared with the reference).
        intra_op_threads: ONNX Runtime threads (None: its default).

    Returns:
        ``{n_images, batch_sizes, threshold, map_max_rel_err, score_max_rel_err, score_max_abs_err,
        verdict_mismatches, verdicts_at_threshold, min_threshold_margin, tolerances, passed}`` (plain JSON
        types).
    """
    if not images:
        raise ValueError("parity needs at least one image")
    batch, geometries = preprocess_batch(list(images), spec)
    # A tiled bundle: the graph runs on every tile; maps and verdicts are compared after stitching.
    inputs, valid = model_inputs(batch, geometries, spec)
    reference_out = _torch_outputs(reference.eval(), inputs, valid, max(batch_sizes))
    ref_maps, ref_scores = merge_outputs(*reference_out, spec)
    session = ort_session(onnx_path, intra_op_threads)
    map_err, score_err, score_abs, mismatches = 0.0, 0.0, 0.0, 0
    ref_fail = fails(ref_scores, threshold)
    ref64 = ref_scores.astype(np.float64)
    decided = np.abs(ref64 - threshold) > SCORE_RTOL * np.maximum(np.abs(ref64), 1e-12)
    for bs in batch_sizes:
        maps, scores = merge_outputs(*_onnx_outputs(session, inputs, valid, bs), spec)
        ranges = np.ptp(ref_maps.reshape(len(images), -1), axis=1)
        diff = np.abs(maps - ref_maps).reshape(len(images), -1).max(axis=1)
        map_err = max(map_err, float(np.max(diff / np.where(ranges > 0, ranges, 1.0))))
        delta = np.abs(scores.astype(np.float64) - ref_scores)
        score_abs = max(score_abs, float(delta.max()))
        score_err = max(score_err, float(np.max(delta / np.maximum(np.abs(ref_scores), 1e-12))))
        mismatches = max(mismatches, int(np.sum((fails(scores, threshold) != ref_fail) & decided)))
    passed = map_err <= MAP_RTOL and score_err <= SCORE_RTOL and mismatches == 0
    return {
        "n_images": len(images),
        "batch_sizes": [int(b) for b in batch_sizes],
        "threshold": float(threshold),
        "map_max_rel_err": map_err,
        "score_max_rel_err": score_err,
        "score_max_abs_err": score_abs,
        "verdict_mismatches": mismatches,
        "verdicts_at_threshold": int(np.sum(~decided)),
        "min_threshold_margin": float(np.min(np.abs(ref_scores.astype(np.float64) - threshold))),
        "tolerances": {"map_rel": MAP_RTOL, "score_rel": SCORE_RTOL},
        "passed": bool(passed),
    }
