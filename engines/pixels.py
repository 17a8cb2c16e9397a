"""Camera pixel formats -> the model's canonical image: one torch-free function for trainer and edge.

Every image that reaches a model goes through :func:`to_canonical` first: an image file read by the
trainer (OpenCV gives BGR), an OpenCV ``VideoCapture`` frame (BGR), a GenICam buffer (RGBa8, Mono8,
Mono12, BayerRG8, ...). The canonical image is uint8 ``(h, w)`` gray or ``(h, w, 3)`` RGB; the bundle's
:class:`~engines.preprocess.PreprocessSpec` (pinned in the manifest, with the graph input's channel
order ``RGB``) takes it from there, so the same physical part gives the same score from every source.

An image file is decoded as stored (:func:`decode_image`: ``IMREAD_UNCHANGED``, channels and bit depth
kept, no EXIF rotation) and named by :func:`image_pixel_format` (``Mono8``, ``BGR8``, ``BGRa8``,
``Mono16``, ``BGR16``, ``BGRa16``), so files take the same path as camera frames.

Pixel formats use the GenICam SFNC names:

* ``Mono8``; ``Mono10`` / ``Mono12`` / ``Mono14`` / ``Mono16`` (uint16 container, value in the low bits):
  scaled to 8 bits by the shift ``>> (bits - 8)`` (the integer rule: 4095 -> 255, no rounding up; a
  value above the format's range saturates at 255);
* ``RGB8`` / ``BGR8`` (3 channels), ``RGBa8`` / ``BGRa8`` (alpha dropped); the same with 10, 12, 14 or
  16 bits (``RGB12``, ``BGRa16``, ...: uint16 container, shifted like the mono formats; a 16-bit colour
  PNG read by OpenCV is ``BGR16``);
* ``BayerRG8`` / ``BayerGR8`` / ``BayerGB8`` / ``BayerBG8``: demosaiced with OpenCV's bilinear
  ``COLOR_Bayer*2RGB`` (the SFNC name gives the colour of the top-left 2x2 cell's first row);
  ``Bayer**10`` / ``Bayer**12`` / ``Bayer**16`` likewise after the shift.

:data:`CANONICAL` is what the manifest's ``input.channel_order`` names. Anything else is a
:class:`PixelFormatError` (a ``ValueError``) that says which formats exist.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "CANONICAL",
    "IMAGE_SUFFIXES",
    "PIXEL_FORMATS",
    "PixelFormatError",
    "check_pixel_format",
    "decode_image",
    "image_pixel_format",
    "list_images",
    "read_image_file",
    "to_canonical",
]

CANONICAL = "RGB8"
"""The canonical pixel format of colour images (gray images stay ``Mono8``)."""

_MONO_BITS = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono14": 14, "Mono16": 16}
_COLOR_CODES = {"RGB": None, "BGR": cv2.COLOR_BGR2RGB, "RGBa": cv2.COLOR_RGBA2RGB, "BGRa": cv2.COLOR_BGRA2RGB}
_COLOR_BITS = (8, 10, 12, 14, 16)
# name -> (channel layout, bits per sample)
_COLOR = {f"{order}{bits}": (order, bits) for bits in _COLOR_BITS for order in _COLOR_CODES}
# OpenCV names Bayer patterns by the second row's pair (its historical convention): SFNC BayerRG is
# OpenCV's BayerBG, and so on. Checked against a synthetic mosaic in tests/test_pixels.py.
_BAYER = {
    "RG": cv2.COLOR_BayerBG2RGB,
    "GR": cv2.COLOR_BayerGB2RGB,
    "GB": cv2.COLOR_BayerGR2RGB,
    "BG": cv2.COLOR_BayerRG2RGB,
}
_BAYER_BITS = (8, 10, 12, 16)
PIXEL_FORMATS: tuple[str, ...] = (
    *_MONO_BITS,
    *_COLOR,
    *(f"Bayer{p}{b}" for p in _BAYER for b in _BAYER_BITS),
)


class PixelFormatError(ValueError):
    """Unknown pixel format, or a frame whose dtype or shape does not fit its format."""


def check_pixel_format(name: str) -> str:
    """Return ``name`` if it is a known pixel format.

    Raises:
        PixelFormatError: naming the known formats.
    """
    if name not in PIXEL_FORMATS:
        raise PixelFormatError(
            f"unknown pixel format {name!r}: use one of {', '.join(PIXEL_FORMATS)} (GenICam SFNC names)"
        )
    return name


def _shift_to_8(frame: np.ndarray, bits: int, name: str) -> np.ndarray:
    if bits == 8:
        if frame.dtype != np.uint8:
            raise PixelFormatError(f"{name} frame must be uint8, got {frame.dtype}")
        return frame
    if frame.dtype != np.uint16:
        raise PixelFormatError(
            f"{name} frame must be uint16 (value in the low {bits} bits), got {frame.dtype}"
        )
    # A value above the format's range (stray high bits) saturates at 255 instead of wrapping around.
    return np.minimum(frame >> (bits - 8), 255).astype(np.uint8)


def to_canonical(frame: np.ndarray, pixel_format: str) -> np.ndarray:
    """Convert one camera frame to the canonical uint8 gray ``(h, w)`` or RGB ``(h, w, 3)`` image.

    Args:
        frame: the camera's array: ``(h, w)`` (or ``(h, w, 1)``) for mono and Bayer formats, ``(h, w, 3)``
            or ``(h, w, 4)`` for colour ones.
        pixel_format: its GenICam SFNC name (see the module docstring).

    Returns:
        A C-contiguous uint8 array (a new one, except for ``Mono8`` / ``RGB8`` input that already is).

    Raises:
        PixelFormatError: unknown format, or a dtype / shape that does not fit it.
    """
    check_pixel_format(pixel_format)
    if not isinstance(frame, np.ndarray):
        raise PixelFormatError(
            f"expected a numpy array for a {pixel_format} frame, got {type(frame).__name__}"
        )
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim < 2 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise PixelFormatError(f"{pixel_format} frame is empty or not an image: shape {frame.shape}")
    if pixel_format in _MONO_BITS:
        if frame.ndim != 2:
            raise PixelFormatError(f"{pixel_format} frame must be (h, w), got shape {frame.shape}")
        return np.ascontiguousarray(_shift_to_8(frame, _MONO_BITS[pixel_format], pixel_format))
    if pixel_format in _COLOR:
        order, bits = _COLOR[pixel_format]
        channels = 4 if order.endswith("a") else 3
        if frame.ndim != 3 or frame.shape[2] != channels:
            raise PixelFormatError(
                f"{pixel_format} frame must be (h, w, {channels}), got shape {frame.shape}"
            )
        frame = np.ascontiguousarray(_shift_to_8(frame, bits, pixel_format))
        code = _COLOR_CODES[order]
        if code is None:
            return frame
        return cv2.cvtColor(frame, code)
    pattern, bits = pixel_format[5:7], int(pixel_format[7:])
    if frame.ndim != 2:
        raise PixelFormatError(f"{pixel_format} frame must be a (h, w) mosaic, got shape {frame.shape}")
    mosaic = np.ascontiguousarray(_shift_to_8(frame, bits, pixel_format))
    return cv2.cvtColor(mosaic, _BAYER[pattern])


# (sample dtype, channels) -> the pixel format of an image decoded by OpenCV (BGR channel order).
_DECODED_FORMATS = {
    ("uint8", 1): "Mono8",
    ("uint8", 3): "BGR8",
    ("uint8", 4): "BGRa8",
    ("uint16", 1): "Mono16",
    ("uint16", 3): "BGR16",
    ("uint16", 4): "BGRa16",
}


def image_pixel_format(img: np.ndarray) -> str:
    """The pixel format of an array decoded by OpenCV (BGR channel order) from an image file.

    Raises:
        PixelFormatError: a sample type or channel count that no pixel format describes (float, 2 channels).
    """
    channels = 1 if img.ndim == 2 else img.shape[2]
    fmt = _DECODED_FORMATS.get((img.dtype.name, channels))
    if fmt is None:
        raise PixelFormatError(f"unsupported {channels}-channel {img.dtype.name} image")
    return fmt


def decode_image(data: np.ndarray) -> tuple[np.ndarray, str]:
    """Decode an image file's bytes as stored (channels and bit depth kept).

    Args:
        data: the file's bytes as a uint8 array (``np.fromfile``).

    Returns:
        The decoded array (OpenCV channel order) and its pixel format name (``Mono8``, ``BGR8``,
        ``BGRa8``, ``Mono16``, ``BGR16`` or ``BGRa16``).

    Raises:
        ValueError: not a decodable PNG/JPEG/BMP/TIFF, or a sample type without a pixel format (float).
    """
    if data.size == 0:
        raise ValueError("the file is empty")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise ValueError("not a valid PNG/JPEG/BMP/TIFF file")
    try:
        return img, image_pixel_format(img)
    except PixelFormatError as err:
        raise ValueError(f"{err} (save it as 8- or 16-bit)") from None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File name endings of image files (matched case-insensitively)."""


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, in name order (a missing folder has none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image_file(path: str | Path) -> np.ndarray:
    """An image file as the canonical uint8 gray or RGB image (:func:`decode_image`, :func:`to_canonical`).

    Raises:
        OSError: the file cannot be read. ValueError: it is not a decodable image of a known pixel format.
    """
    return to_canonical(*decode_image(np.fromfile(path, dtype=np.uint8)))
