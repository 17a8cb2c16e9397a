"""Image and mask reading.

Images are decoded with ``cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)`` so that
paths with non-ASCII characters work on every platform. ``IMREAD_UNCHANGED`` keeps the stored channels
and bit depth and ignores any EXIF orientation tag (pixels are used as stored). Every problem a user can
fix raises :class:`~trainer.errors.DataError` with a one-line message that names the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import cv2
import numpy as np

from engines.pixels import image_pixel_format, to_canonical
from trainer.errors import DataError

__all__ = ["image_sha256", "is_grayscale", "read_image", "read_mask"]

_PathLike = str | os.PathLike[str]
_BAD_FILE = "not a valid PNG/JPEG/BMP/TIFF file (re-export or remove it)"


def _decode(path: _PathLike, what: str) -> np.ndarray:
    """Read and decode a file with all its channels and its bit depth; DataError on any failure."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"cannot read {what} {path}: file not found (check the data folder)") from None
    except IsADirectoryError:
        raise DataError(f"cannot read {what} {path}: it is a directory, not an image file") from None
    except PermissionError:
        raise DataError(f"cannot read {what} {path}: permission denied (check its permissions)") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if buf.size == 0:
        raise DataError(f"cannot read {what} {path}: the file is empty (re-export or remove it)")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise DataError(f"cannot read {what} {path}: {_BAD_FILE}")
    return img


def _to_uint8(img: np.ndarray, path: _PathLike, what: str) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    raise DataError(
        f"cannot read {what} {path}: unsupported pixel type {img.dtype} (save it as 8- or 16-bit PNG/JPEG)"
    )


def read_image(path: _PathLike) -> np.ndarray:
    """Read an image file as 8-bit gray or RGB.

    Args:
        path: PNG, JPEG, BMP or TIFF file (any path, unicode included).

    Returns:
        uint8 ``(h, w)`` for single-channel files, uint8 ``(h, w, 3)`` **RGB** (converted from OpenCV's
        BGR) for colour files. 16-bit files are scaled to 8 bits (``>> 8``); alpha is dropped
        (:func:`engines.pixels.to_canonical`, the rule the edge applies to camera frames). A colour
        file whose three channels are equal stays 3-channel (see :func:`is_grayscale`).

    Raises:
        DataError: Missing, unreadable, empty, corrupt or unsupported (e.g. float) file.
    """
    img = _decode(path, "image")
    try:
        # the same pixel-format rule as every camera source of the edge (engines.pixels), so a part
        # scores the same from a file here and from a camera there
        return to_canonical(img, image_pixel_format(img))
    except ValueError as err:
        raise DataError(f"cannot read image {path}: {err} (save it as 8- or 16-bit gray or RGB)") from None


def read_mask(path: _PathLike, shape: Sequence[int]) -> np.ndarray:
    """Read a binary defect mask.

    A pixel is defect if its value is > 127 (8-bit) or > 32767 (16-bit with values above 255); masks
    whose largest value is 1 (0/1 masks) treat 1 as defect. Colour masks are defect where any channel
    is; an alpha channel is ignored.

    Args:
        path: Mask image file (usually PNG).
        shape: Shape of the matching image, ``(h, w)`` or ``(h, w, c)``; only ``(h, w)`` is compared.

    Returns:
        bool ``(h, w)``, True on defect pixels.

    Raises:
        DataError: Unreadable file, unsupported pixel type, or a size different from ``shape``.
    """
    raw = _decode(path, "mask")
    if raw.dtype not in (np.uint8, np.uint16):
        raise DataError(f"cannot read mask {path}: unsupported pixel type {raw.dtype} (save it as 8-bit PNG)")
    if raw.ndim == 3:
        raw = raw[:, :, : min(3, raw.shape[2])].max(axis=2)
    h, w = int(shape[0]), int(shape[1])
    if raw.shape != (h, w):
        mh, mw = raw.shape
        raise DataError(
            f"mask {path} is {mh}x{mw} (HxW) but its image is {h}x{w}: "
            "a mask must have the same size as its image"
        )
    peak = int(raw.max())
    if peak <= 1:
        return raw > 0
    threshold = 127 if peak <= 255 else 32767
    return raw > threshold


def is_grayscale(image: np.ndarray) -> bool:
    """Whether an image carries no colour.

    Args:
        image: ``(h, w)``, ``(h, w, 1)`` or ``(h, w, c)`` array.

    Returns:
        True for 2-D and 1-channel arrays, and for 3- or 4-channel arrays whose first three channels are
        all equal (alpha is ignored); False otherwise.
    """
    if image.ndim == 2:
        return True
    if image.ndim != 3:
        return False
    channels = image.shape[2]
    if channels == 1:
        return True
    if channels not in (3, 4):
        return False
    c0 = image[:, :, 0]
    return bool(np.array_equal(c0, image[:, :, 1]) and np.array_equal(c0, image[:, :, 2]))


def image_sha256(path: _PathLike) -> str:
    """SHA-256 (hex) of a file's bytes.

    Args:
        path: Any file.

    Returns:
        64-character lowercase hex digest.

    Raises:
        DataError: The file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc} (check the data folder)") from None
    return digest.hexdigest()
