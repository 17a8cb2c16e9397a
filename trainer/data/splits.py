"""Deterministic split of the defect-free training images into fit and calibration sets.

The calibration images are never used to fit the model; they are held out to calibrate the anomaly
threshold. The split depends only on the relative paths of the files and the seed, so the same folder
gives the same split on every machine, and the recorded fingerprints say exactly which files (and which
file contents) were used for what.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.mvtec import data_fingerprint, relative_posix
from trainer.errors import DataError

__all__ = ["Split", "split_train_calib"]


@dataclass(frozen=True)
class Split:
    """Result of :func:`split_train_calib`.

    Attributes:
        train: Images used to fit the model, sorted by relative path.
        calib: Held-out images used to calibrate the threshold, sorted by relative path.
        seed: Seed of the permutation.
        calib_fraction: Requested calibration fraction.
        train_sha256: :func:`~trainer.data.mvtec.data_fingerprint` of ``train``.
        calib_sha256: :func:`~trainer.data.mvtec.data_fingerprint` of ``calib``.
    """

    train: list[Path]
    calib: list[Path]
    seed: int
    calib_fraction: float
    train_sha256: str
    calib_sha256: str

    def to_dict(self, root: str | os.PathLike[str]) -> dict[str, Any]:
        """JSON-serialisable record with paths relative to ``root`` (POSIX separators).

        Args:
            root: The data folder (the one passed to :func:`split_train_calib`).

        Returns:
            Dict with ``seed``, ``calib_fraction``, ``n_train``, ``n_calib``, ``train_sha256``,
            ``calib_sha256``, ``train`` and ``calib`` (lists of relative path strings).
        """
        return {
            "seed": self.seed,
            "calib_fraction": self.calib_fraction,
            "n_train": len(self.train),
            "n_calib": len(self.calib),
            "train_sha256": self.train_sha256,
            "calib_sha256": self.calib_sha256,
            "train": [relative_posix(p, root) for p in self.train],
            "calib": [relative_posix(p, root) for p in self.calib],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: str | os.PathLike[str]) -> Split:
        """Rebuild a split recorded by :meth:`to_dict` (the fingerprints are kept, not recomputed).

        Args:
            d: Output of :meth:`to_dict`.
            root: Data folder the relative paths are resolved against.

        Returns:
            The split; compare ``data_fingerprint(split.train, root)`` with ``train_sha256`` to check
            that the files did not change.
        """
        base = Path(root)
        return cls(
            train=[base / p for p in d["train"]],
            calib=[base / p for p in d["calib"]],
            seed=int(d["seed"]),
            calib_fraction=float(d["calib_fraction"]),
            train_sha256=str(d["train_sha256"]),
            calib_sha256=str(d["calib_sha256"]),
        )


def split_train_calib(
    paths: Sequence[str | os.PathLike[str]],
    root: str | os.PathLike[str],
    calib_fraction: float = 0.1,
    min_calib: int = 5,
    min_train: int = 2,
    seed: int = 0,
) -> Split:
    """Split training images into fit and calibration sets, deterministically.

    The paths are sorted by relative path, permuted with ``random.Random(seed).shuffle`` and the first
    ``n_calib = max(min_calib, floor(calib_fraction * n + 0.5))`` (round half up) become the calibration
    set, capped so that at least ``min_train`` images remain for fitting. Both lists are returned sorted.

    Args:
        paths: Training images under ``root`` (e.g. from :func:`~trainer.data.mvtec.scan_train`).
        root: Category data folder (relative paths and messages use it).
        calib_fraction: Fraction held out for calibration, in (0, 0.5].
        min_calib: Minimum number of calibration images (>= 1).
        min_train: Minimum number of fit images (>= 1).
        seed: Seed of the permutation.

    Returns:
        A :class:`Split` whose lists are disjoint and together cover ``paths``.

    Raises:
        ValueError: Bad ``calib_fraction``, ``min_calib`` or ``min_train``, or duplicate paths.
        DataError: Fewer than ``min_calib + min_train`` images.
    """
    if isinstance(calib_fraction, bool) or not 0.0 < calib_fraction <= 0.5:
        raise ValueError(f"calib_fraction must be in (0, 0.5], got {calib_fraction!r}")
    if min_calib < 1:
        raise ValueError(f"min_calib must be >= 1, got {min_calib}")
    if min_train < 1:
        raise ValueError(f"min_train must be >= 1, got {min_train}")
    keyed = sorted((relative_posix(p, root), Path(p)) for p in paths)
    for (a, _), (b, _) in itertools.pairwise(keyed):
        if a == b:
            raise ValueError(f"duplicate path in the training images: {a}")
    ordered = [p for _, p in keyed]
    n = len(ordered)
    need = min_calib + min_train
    if n < need:
        raise DataError(
            f"{n} training images in {root}/train/good, need at least {need} "
            f"({min_calib} are held out to calibrate the threshold): add more defect-free images"
        )
    n_calib = max(min_calib, math.floor(calib_fraction * n + 0.5))
    n_calib = min(n_calib, n - min_train)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    calib_idx = set(order[:n_calib])
    calib = [p for i, p in enumerate(ordered) if i in calib_idx]
    train = [p for i, p in enumerate(ordered) if i not in calib_idx]
    return Split(
        train=train,
        calib=calib,
        seed=seed,
        calib_fraction=float(calib_fraction),
        train_sha256=data_fingerprint(train, root),
        calib_sha256=data_fingerprint(calib, root),
    )
