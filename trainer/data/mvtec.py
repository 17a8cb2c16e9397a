"""Scanning data folders in the MVTec AD layout.

::

    DIR/train/good/*.png|jpg                       defect-free training images
    DIR/test/good/*                                defect-free test images
    DIR/test/<defect>/*                            defective test images
    DIR/ground_truth/<defect>/<stem>_mask.png      binary mask, same size as its image
                                                   (<stem>.png is accepted too)

Image files are recognised by extension (:data:`IMAGE_EXTENSIONS`, case-insensitive). Hidden files and
folders (name starting with ``.``, e.g. macOS ``._000.png`` resource forks) are ignored. All lists are
sorted by name (Python string order), so scans are identical on every machine.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trainer.data.io import image_sha256
from trainer.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "Sample", "data_fingerprint", "relative_posix", "scan_test", "scan_train"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Recognised image file extensions (compared case-insensitively)."""

_TRAIN_LAYOUT = "expected DIR/train/good/*.png|jpg (MVTec layout)"
_TEST_LAYOUT = "expected DIR/test/good/*.png|jpg and DIR/test/<defect>/*.png|jpg (MVTec layout)"


@dataclass(frozen=True)
class Sample:
    """One test image.

    Attributes:
        path: Image file.
        defect_type: Name of its ``test/`` sub-folder; ``"good"`` for normal images.
        label: 0 for good, 1 for defective.
        mask_path: Ground-truth mask of a defective image; None for good images.
    """

    path: Path
    defect_type: str
    label: int
    mask_path: Path | None


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    """Sorted image files directly in ``folder`` (non-recursive, hidden files skipped)."""
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            and e.is_file()
        ]
    return [folder / n for n in sorted(names)]


def scan_train(root: str | os.PathLike[str]) -> list[Path]:
    """List the defect-free training images.

    Args:
        root: Category folder in MVTec layout.

    Returns:
        Sorted image files in ``root/train/good``.

    Raises:
        DataError: ``root`` or ``root/train/good`` is missing or not a folder, or holds no images.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist: {_TRAIN_LAYOUT}")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a directory: {_TRAIN_LAYOUT}")
    good = root / "train" / "good"
    if not good.is_dir():
        raise DataError(f"{good} not found: {_TRAIN_LAYOUT}")
    images = _images_in(good)
    if not images:
        exts = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise DataError(f"no images ({exts}) in {good}: {_TRAIN_LAYOUT}")
    return images


def _mask_index(folder: Path) -> dict[str, Path]:
    """Lower-cased file name -> path for the files in a ground-truth folder (empty if missing)."""
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as it:
        return {e.name.lower(): folder / e.name for e in it if e.is_file() and not e.name.startswith(".")}


def scan_test(root: str | os.PathLike[str]) -> list[Sample]:
    """List the test images with labels and mask paths.

    ``test/good`` images get label 0 and no mask; images in any other ``test/<type>`` folder get label 1
    and the mask ``ground_truth/<type>/<stem>_mask.png`` (or ``<stem>.png`` if that is missing; file
    names matched case-insensitively). Files directly in ``test/`` and empty type folders are ignored. A
    data set without good or without defective test images is returned as is (the caller decides).

    Args:
        root: Category folder in MVTec layout.

    Returns:
        Samples sorted by (defect type, file name).

    Raises:
        DataError: ``root/test`` missing or without images, or a defective image without a mask.
    """
    root = Path(root)
    test = root / "test"
    if not test.is_dir():
        raise DataError(f"{test} not found: {_TEST_LAYOUT}")
    with os.scandir(test) as it:
        types = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    samples: list[Sample] = []
    for defect_type in types:
        images = _images_in(test / defect_type)
        if defect_type == "good":
            samples.extend(Sample(p, "good", 0, None) for p in images)
            continue
        gt = root / "ground_truth" / defect_type
        index = _mask_index(gt) if images else {}
        for p in images:
            mask = index.get(f"{p.stem}_mask.png".lower()) or index.get(f"{p.stem}.png".lower())
            if mask is None:
                raise DataError(
                    f"defective test image {p} has no mask: expected {gt / (p.stem + '_mask.png')} "
                    "(binary PNG, same size as the image)"
                )
            samples.append(Sample(p, defect_type, 1, mask))
    if not samples:
        raise DataError(f"no test images in {test}: {_TEST_LAYOUT}")
    return samples


def relative_posix(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``path`` relative to ``root`` as a POSIX string (``/`` separators), independent of the machine.

    Args:
        path: A file, usually under ``root``.
        root: The data folder.

    Returns:
        E.g. ``"train/good/000.png"``; paths outside ``root`` get ``..`` components.
    """
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return Path(rel).as_posix()


def data_fingerprint(paths: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str]) -> str:
    """Content fingerprint of a set of files, stable across machines.

    SHA-256 over the lines ``"<relative posix path>\\t<file sha256>\\n"`` sorted by relative path. It
    changes when a file is added, removed, renamed or modified, and not when the data folder moves.

    Args:
        paths: Files under ``root`` (order does not matter).
        root: The data folder the relative paths are taken from.

    Returns:
        64-character lowercase hex digest.

    Raises:
        DataError: A file cannot be read.
    """
    entries = sorted((relative_posix(p, root), image_sha256(p)) for p in paths)
    digest = hashlib.sha256()
    for rel, sha in entries:
        digest.update(f"{rel}\t{sha}\n".encode())
    return digest.hexdigest()
