"""Batched inference on image files with the run's pinned preprocessing (trainer side, torch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.preprocess import Geometry, PreprocessSpec, merge_outputs, model_inputs, preprocess_batch
from trainer.data import read_image
from trainer.models.masf import MASF, MASFOutput, TTSAWrapper

__all__ = [
    "Prediction",
    "feature_dtype",
    "frames_to_tensor",
    "images_per_call",
    "predict_arrays",
    "predict_files",
]


@dataclass
class Prediction:
    """One image's result: ``anomaly_map`` in the frame ``[H, W]`` float32 (a tiled spec's tiles stitched),
    ``score`` (tiled: the largest tile score), geometry."""

    anomaly_map: np.ndarray
    score: float
    geometry: Geometry


# Cached teacher features (the training patches, the selection's shared inputs) are held in FP16 above
# this many bytes of FP32, decided before any is computed, so the FP32 set is never held.
FEATURE_FP16_BYTES = 2 << 30


def feature_dtype(model: MASF, n: int) -> torch.dtype:
    """The dtype to keep the teacher features of ``n`` model inputs in: FP16 when they would take more
    than :data:`FEATURE_FP16_BYTES` in FP32."""
    per_input = sum(c * h * w for c, (h, w) in zip(model.teacher.cfg.channels, model.map_sizes, strict=True))
    return torch.float16 if n * per_input * 4 > FEATURE_FP16_BYTES else torch.float32


def frames_to_tensor(batch: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 frames ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in 0..255 on ``device`` (the model's input)."""
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float()


def images_per_call(model: Callable[..., MASFOutput], spec: PreprocessSpec, batch_size: int) -> int:
    """How many images to give ``model`` per call so that it runs about ``batch_size`` model inputs: a
    TTSA model runs each image's views, a tiled spec each frame's tiles, as inputs of one batch.

    Measured on magnetic tile's joint bank (18,446 prototypes, 2 cores): 8 images of 5 TTSA views per
    call took 2.1x as long as 2 images per call; the kNN's distance blocks grow with the batch and stop
    fitting in memory caches (``benchmarks/RESULTS.md``)."""
    views = model.perturb.views if isinstance(model, TTSAWrapper) else 1
    tiles = spec.grid.count if spec.tiled else 1
    return max(1, batch_size // (views * tiles))


def predict_arrays(
    model: Callable[..., MASFOutput],
    images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
) -> list[Prediction]:
    """Run ``model`` on raw images (uint8 HxW / HxWx3) as one batch (of tiles, when ``spec`` is tiled)."""
    batch, geometries = preprocess_batch(list(images), spec)
    inputs, valid_np = model_inputs(batch, geometries, spec)
    x = frames_to_tensor(inputs, device)
    valid = torch.from_numpy(valid_np).to(device)
    with torch.no_grad():
        out = model(x, valid)
    maps, scores = merge_outputs(
        out.anomaly_map[:, 0].float().cpu().numpy(), out.pred_score.float().cpu().numpy(), spec
    )
    return [Prediction(maps[i], float(scores[i]), geometries[i]) for i in range(len(images))]


def predict_files(
    model: Callable[..., MASFOutput],
    paths: Sequence[Path],
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "inference",
) -> Iterator[tuple[Path, np.ndarray, Prediction]]:
    """Yield ``(path, image, prediction)`` for each file, in order, reading and scoring in batches of
    about ``batch_size`` model inputs (:func:`images_per_call`)."""
    from tqdm import tqdm

    step = images_per_call(model, spec, batch_size)
    bar = tqdm(total=len(paths), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for start in range(0, len(paths), step):
        chunk = list(paths[start : start + step])
        images = [read_image(p) for p in chunk]
        yield from zip(chunk, images, predict_arrays(model, images, spec, device), strict=True)
        bar.update(len(chunk))
    bar.close()
