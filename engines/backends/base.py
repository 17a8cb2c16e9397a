"""One inference interface for every backend: uint8 frames in, anomaly maps and scores out.

A backend is built from a bundle (:meth:`Backend.from_bundle`) and is usable right away. :meth:`infer`
takes either raw images (a list of uint8 ``HxW`` / ``HxWx3`` / ``HxWx4`` arrays of any size, preprocessed
here with the bundle's pinned :class:`~engines.preprocess.PreprocessSpec`) or a batch that is already in
the model frame (uint8 ``[N, H, W, 3]``), so the same pixels give the same score on every backend.
Subclasses implement only :meth:`Backend._forward` on the preprocessed batch. Torch-free.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from engines.bundle import Bundle
from engines.errors import InputError
from engines.preprocess import Geometry, PreprocessSpec, merge_outputs, model_inputs, preprocess_batch

__all__ = ["Backend", "Scores", "full_frame_geometry"]

_B = TypeVar("_B", bound="Backend")


@dataclass(frozen=True)
class Scores:
    """Result of :meth:`Backend.infer` for ``N`` images.

    Attributes:
        anomaly_map: float32 ``[N, H, W]`` in the frame (``Geometry.to_original`` maps it back); for a
            tiled bundle the tiles' maps stitched into the frame.
        score: float32 ``[N]`` raw image scores (FAIL when ``score >= threshold``); tiled: the largest
            tile score of each image.
        geometries: one :class:`~engines.preprocess.Geometry` per image.
    """

    anomaly_map: np.ndarray
    score: np.ndarray
    geometries: list[Geometry]

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def failed(self, threshold: float) -> np.ndarray:
        """bool ``[N]``: ``score >= threshold``."""
        return np.asarray(self.score >= threshold)


def full_frame_geometry(height: int, width: int) -> Geometry:
    """The geometry of an image that already is the model frame (no resize, no padding)."""
    return Geometry(height, width, height, width, 1.0, 1.0, 0, 0, height, width)


class Backend(abc.ABC):
    """Base class of the inference backends (ONNX Runtime, PyTorch, later TensorRT).

    Args:
        bundle: the opened (verified) bundle.
    """

    name: str = "base"

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.spec: PreprocessSpec = bundle.preprocess
        self._closed = False

    @classmethod
    @abc.abstractmethod
    def from_bundle(cls: type[_B], path: str | Path, **options: Any) -> _B:
        """Open (and verify) the bundle at ``path`` and build the backend (``options``: backend-specific)."""

    @property
    def threshold(self) -> float:
        """The bundle's calibrated threshold for the exported inference path."""
        return self.bundle.threshold

    @abc.abstractmethod
    def _forward(self, batch: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model.

        Args:
            batch: uint8 ``[N, H, W, 3]`` RGB, C-contiguous, model frame.
            valid: uint8 ``[N, 1, H, W]`` letterbox mask (1 = image pixel).

        Returns:
            ``(anomaly_map float32 [N, 1, H, W], score float32 [N])``.
        """

    def prepare(
        self, images: Sequence[np.ndarray] | np.ndarray, geometries: Sequence[Geometry] | None = None
    ) -> tuple[np.ndarray, list[Geometry]]:
        """Check and preprocess the input of :meth:`infer`; returns the batch and the geometries.

        Raises:
            InputError: wrong type, dtype, size or channel count (the message says what was expected).
        """
        h, w = self.spec.frame_size
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise InputError(
                    f"expected a list of images or a preprocessed uint8 batch [N, {h}, {w}, 3], got an array "
                    f"of shape {images.shape} (wrap a single image in a list)"
                )
            if images.dtype != np.uint8:
                raise InputError(f"wrong dtype: expected a uint8 batch [N, {h}, {w}, 3], got {images.dtype}")
            if images.shape[3] != 3:
                raise InputError(
                    f"wrong channels: expected 3 (RGB) in a batch [N, {h}, {w}, 3], got {images.shape[3]}"
                )
            if images.shape[1:3] != (h, w):
                raise InputError(
                    f"wrong size: expected a model-frame batch [N, {h}, {w}, 3], got {list(images.shape)} "
                    "(pass raw images as a list to have them preprocessed)"
                )
            if images.shape[0] == 0:
                raise InputError("empty batch: nothing to score")
            batch = np.ascontiguousarray(images)
            if geometries is None:
                geoms = [full_frame_geometry(h, w) for _ in range(batch.shape[0])]
            else:
                geoms = list(geometries)
                if len(geoms) != batch.shape[0] or any(
                    g.frame_height != h or g.frame_width != w for g in geoms
                ):
                    raise InputError(f"need {batch.shape[0]} geometries for {h}x{w} frames, one per image")
            return batch, geoms
        if not isinstance(images, list | tuple):
            raise InputError(
                f"expected a list of uint8 images or a uint8 batch array, got {type(images).__name__}"
            )
        if len(images) == 0:
            raise InputError("no images: nothing to score")
        if geometries is not None:
            raise InputError("geometries are only accepted with a preprocessed batch")
        try:
            return preprocess_batch(list(images), self.spec)
        except ValueError as err:
            raise InputError(str(err)) from None

    def infer(
        self, images: Sequence[np.ndarray] | np.ndarray, geometries: Sequence[Geometry] | None = None
    ) -> Scores:
        """Score images.

        Args:
            images: raw uint8 images (list) or a preprocessed uint8 batch ``[N, H, W, 3]`` of frames
                (``spec.frame_size``; a tiled bundle cuts each frame into tiles here).
            geometries: for a preprocessed batch, how each frame was made (its letterbox padding is kept
                out of the score); default: full frames.

        Returns:
            :class:`Scores` with maps ``[N, H, W]`` and scores ``[N]`` (float32).

        Raises:
            InputError: see :meth:`prepare`.
            RuntimeError: the backend is closed.
        """
        if self._closed:
            raise RuntimeError(f"{self.name} backend is closed")
        batch, geoms = self.prepare(images, geometries)
        inputs, valid = model_inputs(batch, geoms, self.spec)
        amap, score = merge_outputs(*self._forward(inputs, valid), self.spec)
        return Scores(
            np.ascontiguousarray(amap, dtype=np.float32), np.asarray(score, dtype=np.float32), geoms
        )

    def close(self) -> None:
        """Release the backend's resources (idempotent)."""
        self._closed = True

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
