"""MASF model family: ``create_masf(cfg, input_size)`` builds the teacher and all components.

Variants only set numbers; the architecture lives in ``masf.py`` and one file per component.
"""

from __future__ import annotations

from trainer.config import Config
from trainer.models.backbones import create_teacher
from trainer.models.masf.masf import MASF
from trainer.models.masf.spectral import set_spectral_mode
from trainer.models.masf.ttsa import TTSAWrapper, apply_tta
from trainer.models.masf.ughf import MASFOutput

__all__ = ["MASF", "MASFOutput", "TTSAWrapper", "apply_tta", "create_masf", "set_spectral_mode"]


def create_masf(
    cfg: Config, input_size: tuple[int, int], pretrained: bool | None = None, from_checkpoint: bool = False
) -> MASF:
    """Build a MASF model (untrained student, empty bank) for ``input_size`` ``(H, W)``.

    Args:
        cfg: validated config.
        input_size: model input ``(H, W)``.
        pretrained: override ``cfg.backbone.pretrained``.
        from_checkpoint: all weights (teacher included) are loaded from a run right after.
    """
    use_pretrained = cfg.backbone.pretrained if pretrained is None else pretrained
    weights = cfg.backbone.weights if use_pretrained else None
    teacher = create_teacher(
        cfg.backbone.name,
        pretrained=use_pretrained and not from_checkpoint,
        weights=weights,
        from_checkpoint=from_checkpoint,
    )
    return MASF(teacher, cfg, input_size)
