"""Preprocessing contract shared by the trainer, the exported bundle and the edge daemon.

This module depends on numpy and OpenCV only; it must never import torch. A
:class:`PreprocessSpec` travels inside every model bundle (``to_dict`` / ``from_dict``) so that the same
input pixels give the same model-frame pixels, and therefore the same score, on every machine.

Pipeline of :func:`preprocess` (input uint8 ``(h, w)``, ``(h, w, 3)`` RGB or ``(h, w, 4)`` RGBA):

1. Colour: RGBA drops alpha. With ``color == "gray"`` any input is converted to one luminance channel
   (``cv2.COLOR_RGB2GRAY``, fixed-point BT.601 weights; a 3-channel image whose channels are equal maps
   to exactly that channel). With ``color == "rgb"`` a gray input is replicated to 3 channels.
2. Resize to the frame ``spec.frame_size`` (the model input ``(spec.height, spec.width)``, or the tile
   frame of a tiled spec, which :func:`model_inputs` then cuts into tiles):

   * ``"stretch"``: both axes are scaled independently to fill the frame (aspect ratio not kept).
   * ``"letterbox"``: one scale ``s = min(H / h, W / w)`` for both axes; the placed size is
     ``(max(1, floor(h * s + 0.5)), max(1, floor(w * s + 0.5)))`` (round half up, float64) clipped to
     the frame; the image is centred (``top = (H - ph) // 2``, ``left = (W - pw) // 2``) and the rest
     is filled with ``pad_value``. With ``max_scale`` set, ``s = min(H / h, W / w, max_scale)``: every
     image that fits the frame at ``max_scale`` is placed at that one scale, so a part whose images are
     crops of different sizes from one camera keeps one pixel pitch (a texture's grain keeps its size in
     the frame); only larger images shrink further, to fit.

   Interpolation rule (``interpolation == "area"``, the default): if no axis is enlarged
   (placed height <= h and placed width <= w) ``cv2.INTER_AREA`` is used, otherwise ``cv2.INTER_LINEAR``.
   ``interpolation == "linear"`` always uses ``cv2.INTER_LINEAR``. No resize at all happens when the
   placed size equals the input size.
3. Brightness (only with ``brightness`` set, e.g. a part photographed under lighting that drifts): the
   placed image (after the resize, before the padding) is multiplied by one gain, ``brightness / m``
   with ``m`` its mean grey level over every pixel and channel (float64), so that its mean becomes
   ``brightness``; the products are rounded half up in float32 and clipped to 0..255. An image whose
   mean is below 1 (black) is left as it is. The padding is not scaled.
4. Output: uint8 ``(H, W, 3)`` RGB, C-contiguous (gray models get the luminance in all 3 channels).

The returned :class:`Geometry` records what was done, so maps computed in the model frame can be brought
back to the original image (:meth:`Geometry.to_original`) and ground-truth masks can be brought into the
model frame (:meth:`Geometry.to_model`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from engines.tiling import TileGrid

__all__ = [
    "COLORS",
    "INTERPOLATIONS",
    "MULTIPLE",
    "ORIENTS",
    "RESIZE_MODES",
    "Geometry",
    "PreprocessSpec",
    "median_brightness",
    "merge_outputs",
    "model_inputs",
    "preprocess",
    "preprocess_batch",
    "resolve_input_size",
    "resolve_tiling",
    "turns",
    "valid_masks",
]

MULTIPLE = 32
"""Model-frame height and width must be positive multiples of this."""
RESIZE_MODES = ("letterbox", "stretch")
COLORS = ("rgb", "gray")
INTERPOLATIONS = ("area", "linear")
ORIENTS = ("keep", "auto")

_FIELDS = (
    "height",
    "width",
    "resize",
    "color",
    "pad_value",
    "interpolation",
    "orient",
    "max_scale",
    "brightness",
    "tiles",
)
_TILE_FIELDS = ("frame_height", "frame_width", "overlap")
_REQUIRED = ("height", "width", "resize", "color")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_size(name: str, value: Any) -> int:
    if not _is_int(value) or int(value) <= 0 or int(value) % MULTIPLE != 0:
        raise ValueError(f"preprocess.{name} must be a positive multiple of {MULTIPLE}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = " or ".join(repr(c) for c in choices)
        raise ValueError(f"preprocess.{name} must be {options}, got {value!r}")
    return value


def _check_scale(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < math.inf:
        raise ValueError(f"preprocess.max_scale must be a positive finite number, got {value!r}")
    return float(value)


def _check_brightness(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 255:
        raise ValueError(f"preprocess.brightness must be a number in (0, 255), got {value!r}")
    return float(value)


def _check_pad(value: Any) -> int:
    if not _is_int(value) or not 0 <= int(value) <= 255:
        raise ValueError(f"preprocess.pad_value must be an integer in 0..255, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image is turned into the model input; part of every bundle.

    Untiled (the default), the image is placed into a ``height`` x ``width`` frame that is the model input.
    Tiled (``tile_frame`` set), the image is placed into a larger ``tile_frame`` (e.g. a line-scan strip
    at its native resolution) and the model sees that frame as overlapping ``height`` x ``width`` tiles
    (:class:`~engines.tiling.TileGrid`); maps are stitched back into the frame and the image's score is its
    largest tile score. Everything that maps between the image and the frame (:class:`Geometry`) refers
    to the frame in both cases.

    Attributes:
        height: Model-input (tile) height H in pixels, a positive multiple of 32.
        width: Model-input (tile) width W in pixels, a positive multiple of 32.
        resize: ``"letterbox"`` (keep aspect ratio, scale to fit, centre, pad with ``pad_value``) or
            ``"stretch"`` (scale each axis independently to fill the frame).
        color: ``"rgb"`` or ``"gray"`` (model trained on grayscale parts: every input is converted to
            luminance and replicated to 3 channels, so a colour frame and its gray version score the same).
        pad_value: Fill value (0..255) of the letterbox padding, in every channel.
        interpolation: ``"area"`` (INTER_AREA when no axis is enlarged, else INTER_LINEAR) or ``"linear"``
            (always INTER_LINEAR).
        tile_frame: ``(frame_height, frame_width)`` of a tiled spec (multiples of 32, each at least the
            tile's), or None: not tiled.
        tile_overlap: Minimum overlap of neighbouring tiles in pixels (``0 <= overlap < tile side``).
        max_scale: ``None`` (letterbox: every image scaled to fill the frame) or the largest scale
            (> 0) a letterboxed image is placed at (module docstring): the part's common scale.
        orient: ``"keep"`` (every image placed as it is) or ``"auto"``: an image whose orientation
            (portrait / landscape) differs from the frame's is turned a quarter turn counter-clockwise
            first, so that a part photographed either way fills the frame instead of being letterboxed to
            a fraction of it (square images and square frames are never turned). Maps and boxes are
            turned back (:class:`Geometry`).
        brightness: ``None`` (pixels kept) or the mean grey level (``0 < brightness < 255``) every
            placed image is scaled to (module docstring, step 3): the part's training images' median.
            No training configuration sets it yet (measured on calibration data: benchmarks/RESULTS.md).
    """

    height: int
    width: int
    resize: str
    color: str
    pad_value: int = 114
    interpolation: str = "area"
    tile_frame: tuple[int, int] | None = None
    tile_overlap: int = 0
    orient: str = "keep"
    max_scale: float | None = None
    brightness: float | None = None

    def __post_init__(self) -> None:
        # Validate (and normalise numpy integers to int) so that an invalid spec can never exist.
        object.__setattr__(self, "height", _check_size("height", self.height))
        object.__setattr__(self, "width", _check_size("width", self.width))
        _check_choice("resize", self.resize, RESIZE_MODES)
        _check_choice("color", self.color, COLORS)
        object.__setattr__(self, "pad_value", _check_pad(self.pad_value))
        _check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        _check_choice("orient", self.orient, ORIENTS)
        if self.max_scale is not None:
            object.__setattr__(self, "max_scale", _check_scale(self.max_scale))
            if self.resize != "letterbox":
                raise ValueError("preprocess.max_scale is only for resize 'letterbox'")
        if self.brightness is not None:
            object.__setattr__(self, "brightness", _check_brightness(self.brightness))
        if self.tile_frame is not None:
            if len(self.tile_frame) != 2:
                raise ValueError(f"preprocess.tiles frame must be (height, width), got {self.tile_frame!r}")
            frame = (
                _check_size("tiles.frame_height", self.tile_frame[0]),
                _check_size("tiles.frame_width", self.tile_frame[1]),
            )
            object.__setattr__(self, "tile_frame", frame)
            if not _is_int(self.tile_overlap):
                raise ValueError(f"preprocess.tiles.overlap must be an integer, got {self.tile_overlap!r}")
            object.__setattr__(self, "tile_overlap", int(self.tile_overlap))
            try:
                self.grid  # noqa: B018  (validates that the tiles fit the frame)
            except ValueError as err:
                raise ValueError(f"preprocess.tiles: {err}") from None
        elif self.tile_overlap != 0:
            raise ValueError("preprocess.tiles.overlap is set but the spec is not tiled")

    @property
    def size(self) -> tuple[int, int]:
        """Model input ``(H, W)``: the frame when untiled, one tile when tiled."""
        return (self.height, self.width)

    @property
    def tiled(self) -> bool:
        """Whether the frame is cut into tiles."""
        return self.tile_frame is not None

    @property
    def frame_size(self) -> tuple[int, int]:
        """The frame ``(H, W)`` an image is placed into (the model input unless tiled)."""
        return self.tile_frame if self.tile_frame is not None else (self.height, self.width)

    @property
    def grid(self) -> TileGrid:
        """The tile layout of the frame (one tile covering the frame when untiled)."""
        fh, fw = self.frame_size
        return TileGrid(fh, fw, self.height, self.width, self.tile_overlap)

    def tile_spec(self) -> PreprocessSpec:
        """The untiled spec of one tile (what the model graph itself takes)."""
        return replace(self, tile_frame=None, tile_overlap=0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict with every field (``tiles`` only when tiled, ``orient`` only
        when not ``keep``, ``max_scale`` only when set, so specs and bundles without them read as
        before)."""
        out: dict[str, Any] = {
            "height": self.height,
            "width": self.width,
            "resize": self.resize,
            "color": self.color,
            "pad_value": self.pad_value,
            "interpolation": self.interpolation,
        }
        if self.orient != "keep":
            out["orient"] = self.orient
        if self.max_scale is not None:
            out["max_scale"] = self.max_scale
        if self.brightness is not None:
            out["brightness"] = self.brightness
        if self.tile_frame is not None:
            out["tiles"] = {
                "frame_height": self.tile_frame[0],
                "frame_width": self.tile_frame[1],
                "overlap": self.tile_overlap,
            }
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessSpec:
        """Build a spec from :meth:`to_dict` output, validating every field.

        Args:
            d: Mapping with ``height``, ``width``, ``resize``, ``color`` and optionally ``pad_value`` and
                ``interpolation``.

        Returns:
            The validated spec.

        Raises:
            ValueError: A field is missing, unknown or invalid; the message names it
                (``preprocess.<field> ...``). Unknown fields are rejected rather than ignored, because a
                bundle written by a newer version could otherwise be preprocessed differently.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"preprocess must be a mapping of fields, got {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _FIELDS)
        if unknown:
            raise ValueError(f"preprocess.{unknown[0]} is not a known field (known: {', '.join(_FIELDS)})")
        for name in _REQUIRED:
            if name not in d:
                raise ValueError(f"preprocess.{name} is missing")
        frame, overlap = None, 0
        if d.get("tiles") is not None:
            tiles = d["tiles"]
            if not isinstance(tiles, Mapping):
                raise ValueError(f"preprocess.tiles must be a mapping, got {type(tiles).__name__}")
            for name in _TILE_FIELDS:
                if name not in tiles:
                    raise ValueError(f"preprocess.tiles.{name} is missing")
            extra = sorted(str(k) for k in tiles if k not in _TILE_FIELDS)
            if extra:
                raise ValueError(f"preprocess.tiles.{extra[0]} is not a known field")
            frame = (tiles["frame_height"], tiles["frame_width"])
            overlap = tiles["overlap"]
        return cls(
            height=_check_size("height", d["height"]),
            width=_check_size("width", d["width"]),
            resize=_check_choice("resize", d["resize"], RESIZE_MODES),
            color=_check_choice("color", d["color"], COLORS),
            pad_value=_check_pad(d.get("pad_value", 114)),
            interpolation=_check_choice("interpolation", d.get("interpolation", "area"), INTERPOLATIONS),
            orient=_check_choice("orient", d.get("orient", "keep"), ORIENTS),
            max_scale=None if d.get("max_scale") is None else _check_scale(d["max_scale"]),
            brightness=None if d.get("brightness") is None else _check_brightness(d["brightness"]),
            tile_frame=frame,
            tile_overlap=overlap,
        )


def _round_to_multiple_candidates(x: float) -> list[int]:
    k = max(1, math.floor(x / MULTIPLE))
    return [MULTIPLE * j for j in range(max(1, k - 1), k + 3)]


def resolve_input_size(
    size: str | Sequence[int],
    image_sizes: Sequence[tuple[int, int]],
    base: int = 256,
    max_aspect: float = 8.0,
) -> tuple[int, int]:
    """Resolve the model-frame size from a config value.

    With ``size == "auto"`` the frame keeps the parts' aspect ratio *and* resolution: the target aspect
    ``a`` is the median of ``h / w`` over ``image_sizes``, clamped to ``[1 / max_aspect, max_aspect]``;
    the ideal frame is ``(base * sqrt(a), base / sqrt(a))`` (area ``base**2``). Among multiples of 32
    around the ideal, the ``(H, W)`` minimising ``log(H/W / a)**2 + log(H*W / base**2)**2`` is returned
    (ties: smaller H, then smaller W). A square data set gives exactly ``(base, base)`` when ``base`` is a
    multiple of 32; e.g. parts with ``h / w = 8`` at base 256 give ``(736, 96)``.

    Args:
        size: ``(H, W)`` (each a positive multiple of 32, returned as is) or the string ``"auto"``.
        image_sizes: ``(h, w)`` of the training images (used only for ``"auto"``).
        base: Side of the square whose area the auto frame approximates (pixels, > 0).
        max_aspect: Largest allowed ``H / W`` or ``W / H`` for the auto frame (>= 1).

    Returns:
        ``(H, W)`` as Python ints, both positive multiples of 32.

    Raises:
        ValueError: Invalid ``size``, ``base`` or ``max_aspect``, or ``"auto"`` with no / invalid sizes.
    """
    if isinstance(size, str):
        if size != "auto":
            raise ValueError(f"input size must be 'auto' or [height, width], got {size!r}")
    else:
        if len(size) != 2:
            raise ValueError(f"input size must be 'auto' or [height, width], got {list(size)!r}")
        return (_check_size("height", size[0]), _check_size("width", size[1]))
    if not (_is_int(base) or isinstance(base, float)) or not base > 0:
        raise ValueError(f"base must be > 0, got {base!r}")
    if not max_aspect >= 1.0:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect!r}")
    if len(image_sizes) == 0:
        raise ValueError("input size 'auto' needs the sizes of the training images, got none")
    ratios = []
    for hw in image_sizes:
        h, w = int(hw[0]), int(hw[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"image sizes must be positive (h, w), got {tuple(hw)!r}")
        ratios.append(h / w)
    aspect = float(np.median(np.asarray(ratios, dtype=np.float64)))
    aspect = min(max(aspect, 1.0 / max_aspect), max_aspect)
    ideal_h = base * math.sqrt(aspect)
    ideal_w = base / math.sqrt(aspect)
    log_aspect = math.log(aspect)
    log_area = 2.0 * math.log(base)
    best: tuple[float, int, int] | None = None
    for h in _round_to_multiple_candidates(ideal_h):
        for w in _round_to_multiple_candidates(ideal_w):
            cost = (math.log(h / w) - log_aspect) ** 2 + (math.log(h * w) - log_area) ** 2
            cand = (cost, h, w)
            if best is None or cand < best:
                best = cand
    assert best is not None
    return (best[1], best[2])


def _round32(x: float) -> int:
    return max(MULTIPLE, MULTIPLE * math.floor(x / MULTIPLE + 0.5))


def resolve_tiling(
    image_sizes: Sequence[tuple[int, int]],
    tile: int = 256,
    scale: float | str = "auto",
    overlap: int = 32,
    max_tiles: int = 16,
) -> tuple[tuple[int, int], tuple[int, int], int, float]:
    """The tiling of a part: its frame, tile size, overlap and scale, from the training images' sizes.

    The frame is the median training image (median height, median width) scaled by ``s``, each side
    rounded to the nearest multiple of 32 (at least 32). With ``scale == "auto"``, ``s`` starts at 1 (the
    native resolution: a defect a few pixels wide keeps its pixels) and shrinks in steps of x0.9 until the
    frame needs at most ``max_tiles`` tiles. Tiles are ``tile`` x ``tile``, each side clipped to the frame
    (a 64-pixel strip gets 64-pixel-high tiles); the overlap is clipped to half the shorter tile side.

    Args:
        image_sizes: ``(h, w)`` of the training images.
        tile: Tile side in pixels (a positive multiple of 32).
        scale: ``"auto"`` or a fixed factor ``> 0``.
        overlap: Minimum overlap of neighbouring tiles in pixels.
        max_tiles: Most tiles per frame for ``"auto"`` (a fixed scale may need more).

    Returns:
        ``((frame_h, frame_w), (tile_h, tile_w), overlap, s)``.

    Raises:
        ValueError: no or invalid sizes, or an invalid argument.
    """
    tile = _check_size("tile_size", tile)
    if len(image_sizes) == 0:
        raise ValueError("tiling needs the sizes of the training images, got none")
    if not _is_int(overlap) or overlap < 0:
        raise ValueError(f"tile overlap must be a non-negative int, got {overlap!r}")
    if not _is_int(max_tiles) or max_tiles < 1:
        raise ValueError(f"max_tiles must be a positive int, got {max_tiles!r}")
    sizes = np.asarray([(int(h), int(w)) for h, w in image_sizes], dtype=np.float64)
    if (sizes <= 0).any():
        raise ValueError("image sizes must be positive (h, w)")
    h, w = (float(v) for v in np.median(sizes, axis=0))
    fixed = not isinstance(scale, str)
    if isinstance(scale, str) and scale != "auto":
        raise ValueError(f"tile scale must be 'auto' or a number, got {scale!r}")
    s = float(scale) if not isinstance(scale, str) else 1.0
    if not s > 0:
        raise ValueError(f"tile scale must be > 0, got {scale!r}")
    while True:
        frame = (_round32(h * s), _round32(w * s))
        tile_hw = (min(tile, frame[0]), min(tile, frame[1]))
        ov = min(int(overlap), min(tile_hw) // 2)
        count = TileGrid(frame[0], frame[1], tile_hw[0], tile_hw[1], ov).count
        if fixed or count <= max_tiles or frame == (MULTIPLE, MULTIPLE):
            return frame, tile_hw, ov, s
        s *= 0.9


@dataclass(frozen=True)
class Geometry:
    """What :func:`preprocess` did to one image.

    Attributes:
        orig_height: Height h of the original image.
        orig_width: Width w of the original image.
        frame_height: Model-frame height H.
        frame_width: Model-frame width W.
        scale_y: Placed height / h (the actual factor, after rounding to whole pixels).
        scale_x: Placed width / w.
        top: First model-frame row of the placed image.
        left: First model-frame column of the placed image.
        height: Placed height in model-frame pixels.
        width: Placed width in model-frame pixels.
        turned: The image was turned a quarter turn counter-clockwise before it was placed
            (``orient: auto``); ``scale_y`` / ``scale_x`` then refer to the turned image's axes, and
            :meth:`to_original` / :meth:`to_model` turn back / forth.
    """

    orig_height: int
    orig_width: int
    frame_height: int
    frame_width: int
    scale_y: float
    scale_x: float
    top: int
    left: int
    height: int
    width: int
    turned: bool = False

    @property
    def orig_size(self) -> tuple[int, int]:
        """Original ``(h, w)``."""
        return (self.orig_height, self.orig_width)

    @property
    def region(self) -> tuple[int, int, int, int]:
        """Placed region ``(top, left, height, width)`` in the model frame."""
        return (self.top, self.left, self.height, self.width)

    def to_dict(self) -> dict[str, int | float | bool]:
        """Plain dict of all fields (for logs and results)."""
        return {
            "orig_height": self.orig_height,
            "orig_width": self.orig_width,
            "frame_height": self.frame_height,
            "frame_width": self.frame_width,
            "scale_y": self.scale_y,
            "scale_x": self.scale_x,
            "top": self.top,
            "left": self.left,
            "height": self.height,
            "width": self.width,
            "turned": self.turned,
        }

    def valid_mask(self) -> np.ndarray:
        """Where real image pixels are in the model frame.

        Returns:
            bool ``(H, W)``: True inside the placed region, False on letterbox padding (all True for
            stretch).
        """
        mask = np.zeros((self.frame_height, self.frame_width), dtype=bool)
        mask[self.top : self.top + self.height, self.left : self.left + self.width] = True
        return mask

    def to_original(self, map2d: np.ndarray) -> np.ndarray:
        """Bring a model-frame map (e.g. an anomaly map) back to the original image.

        Args:
            map2d: ``(H, W)`` map in the model frame (float32; other real dtypes are converted).

        Returns:
            float32 ``(h, w)``: the placed region cropped and resized with ``cv2.INTER_LINEAR``.

        Raises:
            ValueError: ``map2d`` is not ``(H, W)``.
        """
        arr = np.asarray(map2d)
        if arr.shape != (self.frame_height, self.frame_width):
            raise ValueError(
                f"expected a ({self.frame_height}, {self.frame_width}) model-frame map, got {arr.shape}"
            )
        crop = arr[self.top : self.top + self.height, self.left : self.left + self.width]
        crop = np.ascontiguousarray(crop, dtype=np.float32)
        h, w = (self.orig_width, self.orig_height) if self.turned else (self.orig_height, self.orig_width)
        if crop.shape == (h, w):
            out = crop.copy() if np.shares_memory(crop, arr) else crop
        else:
            out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(np.rot90(out, k=-1)) if self.turned else out

    def to_model(self, mask: np.ndarray) -> np.ndarray:
        """Bring an original-frame binary mask (e.g. ground truth) into the model frame.

        Args:
            mask: ``(h, w)`` mask, bool or numeric (non-zero = True).

        Returns:
            bool ``(H, W)``: nearest-neighbour resized (``cv2.INTER_NEAREST_EXACT``, pixel-centre aligned)
            into the placed region; padding is False.

        Raises:
            ValueError: ``mask`` is not ``(h, w)``.
        """
        arr = np.asarray(mask)
        if arr.shape != (self.orig_height, self.orig_width):
            raise ValueError(f"expected a ({self.orig_height}, {self.orig_width}) mask, got {arr.shape}")
        nonzero = arr != 0
        src: np.ndarray = np.ascontiguousarray(np.rot90(nonzero) if self.turned else nonzero, dtype=np.uint8)
        if src.shape != (self.height, self.width):
            src = cv2.resize(src, (self.width, self.height), interpolation=cv2.INTER_NEAREST_EXACT)
        out = np.zeros((self.frame_height, self.frame_width), dtype=bool)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = src != 0
        return out


def _check_image(image: Any) -> np.ndarray:
    """Validate the input and return it as a 2-D gray, HxWx3 RGB or HxWx4 RGBA uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy uint8 HxW, HxWx3 or HxWx4 image, got {type(image).__name__}")
    ok = image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)))
    if not ok:
        raise ValueError(f"expected uint8 HxW, HxWx3 or HxWx4 image, got {image.dtype} {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image


def _to_color(image: np.ndarray, color: str) -> np.ndarray:
    """Apply the colour rule; returns 2-D gray (to be replicated later) or HxWx3 RGB."""
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if color == "gray":
        code = cv2.COLOR_RGBA2GRAY if channels == 4 else cv2.COLOR_RGB2GRAY
        return cv2.cvtColor(image, code)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    return image


def _with_brightness(img: np.ndarray, target: float) -> np.ndarray:
    """``img`` (uint8) scaled by one gain to the mean grey level ``target`` (module docstring, step 3)."""
    mean = float(img.mean(dtype=np.float64))
    if mean < 1.0:
        return img
    gain = np.float32(target / mean)
    scaled = img.astype(np.float32) * gain + np.float32(0.5)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def median_brightness(images: Sequence[np.ndarray], color: str) -> float:
    """The median of the images' mean grey levels after the colour rule (``spec.color``): the
    ``brightness`` a part's training images give (at least 1, at most 254)."""
    if len(images) == 0:
        raise ValueError("median_brightness needs at least one image")
    means = [float(_to_color(_check_image(im), color).mean(dtype=np.float64)) for im in images]
    return float(min(254.0, max(1.0, float(np.median(means)))))


def _interp(spec: PreprocessSpec, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    if spec.interpolation == "area" and dst_hw[0] <= src_hw[0] and dst_hw[1] <= src_hw[1]:
        return cv2.INTER_AREA
    return cv2.INTER_LINEAR


def _placement(h: int, w: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """``(top, left, placed_h, placed_w)`` of an ``(h, w)`` image in the frame."""
    H, W = spec.frame_size
    if spec.resize == "stretch":
        return (0, 0, H, W)
    s = min(H / h, W / w) if spec.max_scale is None else min(H / h, W / w, spec.max_scale)
    ph = min(H, max(1, math.floor(h * s + 0.5)))
    pw = min(W, max(1, math.floor(w * s + 0.5)))
    return ((H - ph) // 2, (W - pw) // 2, ph, pw)


def turns(h: int, w: int, spec: PreprocessSpec) -> bool:
    """Whether an ``(h, w)`` image is turned before it is placed (``spec.orient == "auto"`` and its
    orientation differs from the frame's; square images and square frames never turn)."""
    fh, fw = spec.frame_size
    return spec.orient == "auto" and fh != fw and h != w and (h > w) != (fh > fw)


def _preprocess_into(image: np.ndarray, spec: PreprocessSpec, out: np.ndarray) -> Geometry:
    """Preprocess ``image`` into the preallocated uint8 ``(H, W, 3)`` array ``out``."""
    img = _to_color(_check_image(image), spec.color)
    oh, ow = img.shape[:2]
    turned = turns(oh, ow, spec)
    if turned:
        img = np.rot90(img)
    h, w = img.shape[:2]
    top, left, ph, pw = _placement(h, w, spec)
    if (ph, pw) != (h, w):
        if not img.flags.c_contiguous:
            img = np.ascontiguousarray(img)
        img = cv2.resize(img, (pw, ph), interpolation=_interp(spec, (h, w), (ph, pw)))
    if spec.brightness is not None:
        img = _with_brightness(img, spec.brightness)
    if (ph, pw) != spec.frame_size:
        out[...] = spec.pad_value
    region = out[top : top + ph, left : left + pw]
    # A 2-D (gray) image broadcasts into all 3 channels: this is the replication step.
    region[...] = img[:, :, None] if img.ndim == 2 else img
    return Geometry(
        orig_height=oh,
        orig_width=ow,
        frame_height=spec.frame_size[0],
        frame_width=spec.frame_size[1],
        scale_y=ph / h,
        scale_x=pw / w,
        top=top,
        left=left,
        height=ph,
        width=pw,
        turned=turned,
    )


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Geometry]:
    """Turn one image into the model input described by ``spec``.

    Args:
        image: uint8 ``(h, w)`` gray, ``(h, w, 3)`` RGB or ``(h, w, 4)`` RGBA (alpha dropped);
            ``(h, w, 1)`` is treated as gray.
        spec: The preprocessing contract.

    Returns:
        ``(frame, geometry)``: ``frame`` is uint8 ``(H, W, 3)`` RGB, C-contiguous, a new array (the
        input is never modified); ``geometry`` records the placement.

    Raises:
        ValueError: Wrong dtype, number of dimensions or channels, or an empty image.
    """
    out = np.empty((*spec.frame_size, 3), dtype=np.uint8)
    geometry = _preprocess_into(image, spec, out)
    return out, geometry


def preprocess_batch(
    images: Sequence[np.ndarray], spec: PreprocessSpec, out: np.ndarray | None = None
) -> tuple[np.ndarray, list[Geometry]]:
    """Preprocess several images (of possibly different sizes) into one batch.

    Args:
        images: Images as accepted by :func:`preprocess`.
        spec: The preprocessing contract.
        out: a uint8 ``(N, H, W, 3)`` C-contiguous array to write into (reused between calls on a hot
            path); None: a new one.

    Returns:
        ``(batch, geometries)``: uint8 ``(N, H, W, 3)`` RGB, C-contiguous, and one :class:`Geometry` per
        image (``N == 0`` gives an empty batch).

    Raises:
        ValueError: As :func:`preprocess`; the message names the index of the offending image.
    """
    shape = (len(images), *spec.frame_size, 3)
    if out is not None and (out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous):
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape}"
        )
    batch = np.empty(shape, dtype=np.uint8) if out is None else out
    geometries: list[Geometry] = []
    for i, image in enumerate(images):
        try:
            geometries.append(_preprocess_into(image, spec, batch[i]))
        except ValueError as exc:
            raise ValueError(f"image {i}: {exc}") from None
    return batch, geometries


def valid_masks(geometries: Sequence[Geometry]) -> np.ndarray:
    """uint8 ``[N, 1, H, W]``: 1 on image pixels, 0 on letterbox padding, one per frame."""
    return np.stack([g.valid_mask() for g in geometries])[:, None].astype(np.uint8)


def model_inputs(
    batch: np.ndarray, geometries: Sequence[Geometry], spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Frames -> what the model graph takes: ``(uint8 [M, H, W, 3], valid uint8 [M, 1, H, W])``.

    Untiled, ``M == N`` and the frames are passed as they are; tiled, every frame is cut into
    ``spec.grid.count`` tiles (image-major, row-major within an image) and so is its valid mask.
    """
    valid = valid_masks(geometries)
    if not spec.tiled:
        return batch, valid
    grid = spec.grid
    return grid.cut(batch, axis=1), grid.cut(valid, axis=2)


def merge_outputs(
    maps: np.ndarray, scores: np.ndarray, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray]:
    """The graph's outputs for :func:`model_inputs` -> one map per frame and one score per image.

    Args:
        maps: ``[M, H, W]`` (or ``[M, 1, H, W]``) model-input maps.
        scores: ``[M]`` model-input scores.

    Returns:
        ``(maps [N, FH, FW], scores [N])``: untiled unchanged (maps squeezed); tiled, the maps stitched
        into the frame (:meth:`~engines.tiling.TileGrid.stitch`) and each image's largest tile score.
    """
    if maps.ndim == 4:
        maps = maps[:, 0]
    if not spec.tiled:
        return maps, scores
    grid = spec.grid
    return grid.stitch(maps), grid.reduce_scores(scores)
