"""A loaded model: a verified bundle, its backend, and what results need from its manifest.

:func:`load_model` opens the bundle (manifest seal, every file's checksum, the signature when the line
requires signed bundles), builds the backend by name (``onnxruntime`` or ``tensorrt``; a backend that is
not installed is an error, never a silent CPU fallback) and runs one warm-up inference, so a model is
either completely usable or not returned at all. The daemon swaps a whole :class:`LoadedModel` between
two frames; nothing is ever half-loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends import Backend, get_backend
from engines.bundle import Bundle

__all__ = ["LoadedModel", "load_model"]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A usable model (build it with :func:`load_model`).

    Attributes:
        bundle: the opened, verified bundle.
        backend: the inference backend (only the owning inference worker calls ``infer``).
        backend_name: the backend's canonical name.
        pixel_threshold: map value for regions: the 99.9th percentile of good calibration pixels.
        heat_lo: map value shown as 0 in the heatmap (median good pixel).
        heat_hi: map value shown as 255 (1.5 x the image threshold, at least above ``heat_lo``).
        load_seconds: bundle verification + backend creation + warm-up.
    """

    bundle: Bundle
    backend: Backend
    backend_name: str
    pixel_threshold: float
    heat_lo: float
    heat_hi: float
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @property
    def part(self) -> str:
        return self.bundle.part

    @property
    def threshold(self) -> float:
        """The bundle's calibrated image threshold (FAIL when ``score >= threshold``)."""
        return self.bundle.threshold

    def describe(self) -> dict[str, Any]:
        """JSON facts for ``status``."""
        return {
            "part": self.part,
            "model_version": self.model_version,
            "bundle_id": self.bundle_id,
            "bundle": str(self.bundle.path),
            "backend": self.backend_name,
            "threshold": self.threshold,
            "input": list(self.bundle.input_size),
            "frame": list(self.bundle.frame_size),
            "tiles": self.bundle.preprocess.grid.count,
            "load_seconds": round(self.load_seconds, 3),
        }

    def close(self) -> None:
        self.backend.close()


def _pixel_stats(bundle: Bundle) -> tuple[float, float, float]:
    calib = bundle.calibration
    thr = float(calib["threshold"])
    pix = calib.get("pixel_scores") or {}
    p999 = float(pix.get("p999", thr))
    p50 = float(pix.get("p50", 0.0))
    hi = max(1.5 * thr, p50 + 1e-6)
    return p999, p50, hi


def load_model(
    bundle_path: str | Path,
    backend: str = "onnxruntime",
    threads: int = 0,
    trusted_keys: Sequence[str] | None = None,
    warmup: bool = True,
) -> LoadedModel:
    """Open, verify and warm up the bundle at ``bundle_path`` on ``backend``.

    Args:
        bundle_path: the bundle directory.
        backend: ``onnxruntime`` / ``ort`` or ``tensorrt`` / ``trt``.
        threads: ONNX Runtime intra-op threads (0: its default).
        trusted_keys: when given, the bundle must be signed by one of these ed25519 public keys.
        warmup: run one inference on a blank model frame before returning.

    Raises:
        BundleError: missing, corrupt, changed, unsigned or badly signed bundle.
        BackendError: the backend is unknown or not installed here.
    """
    t0 = time.monotonic()
    bundle = Bundle.open(bundle_path, trusted_keys=trusted_keys)
    cls = get_backend(backend)
    options: dict[str, Any] = {}
    if cls.name == "onnxruntime" and threads > 0:
        options["intra_op_threads"] = threads
    if cls.name == "onnxruntime":
        engine: Backend = cls(bundle, **options)  # the bundle verified above
    else:
        engine = cls.from_bundle(bundle.path, **options)
    if warmup:
        h, w = bundle.frame_size
        engine.infer(np.zeros((1, h, w, 3), dtype=np.uint8))
    p999, p50, hi = _pixel_stats(bundle)
    model = LoadedModel(bundle, engine, cls.name, p999, p50, hi, time.monotonic() - t0)
    log.info(
        "model %s (part %s, %s) loaded on %s in %.2f s",
        model.model_version,
        model.part,
        bundle.path,
        cls.name,
        model.load_seconds,
    )
    return model
