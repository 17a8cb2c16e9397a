"""MASF: Masked Asymmetric Spectral Flow. This module only wires the components.

Data flow for an input ``x [N, 3, H, W]`` (RGB, 0..255 float):

1. teacher (frozen, normalisation inside): features ``T_l [N, C_l, H/s_l, W/s_l]``, ``l = 1..L``;
2. student branch per scale: ``S_l = AMFD(SDM(T_l))``; cue ``cos_l = 1 - cos(T_l, S_l)`` ``[N, h_l, w_l]``;
3. bank branch: per chosen scale, prototypes of ``T_l`` vs that scale's memory bank, cue ``bank_l``
   ``[N, h_l, w_l]`` (``bank.embedding: per_scale``); or one joint prototype of the chosen scales vs one
   bank, one cue at the finest chosen scale (``joint``, PatchCore's design);
4. UGHF: normalise, mix, fuse across scales -> ``[N, 1, H, W]``;
5. post: Gaussian blur and image score -> :class:`MASFOutput`.

``collect`` (teacher features), ``training_losses`` (student training) and the single-typed, exportable
``forward`` are separate methods; TTSA wraps the model from outside (``ttsa.apply_tta``).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import Config
from trainer.models.backbones import Teacher
from trainer.models.masf.amfd import AMFDStudent, cosine_distance, distill_loss
from trainer.models.masf.position import PositionCue
from trainer.models.masf.samb import JointEmbedder, KNNScorer, MemoryBank, PatchEmbedder
from trainer.models.masf.sdm import SDM
from trainer.models.masf.ughf import UGHF, MapPostprocess, MASFOutput

__all__ = ["MASF"]


def student_width(width: int | str, channels: int, heads: int) -> int:
    """Student width ``D`` for a scale with ``channels`` teacher channels (see ``student.width``)."""
    if width == "auto":
        step = max(16, heads)
        return int(min(256, max(32, -(-channels // step) * step)))
    return int(width)


class MASF(nn.Module):
    """The MASF model for one part.

    Args:
        teacher: frozen teacher (see ``trainer.models.backbones``).
        cfg: validated configuration (architecture sections are read; training sections ignored).
        input_size: ``(H, W)``, multiples of the largest teacher stride.
    """

    sdms: nn.ModuleList
    students: nn.ModuleList
    embedders: nn.ModuleList
    banks: nn.ModuleList

    def __init__(self, teacher: Teacher, cfg: Config, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.teacher = teacher
        self.input_size = (int(input_size[0]), int(input_size[1]))
        h, w = self.input_size
        strides, channels = teacher.cfg.strides, teacher.cfg.channels
        if h % max(strides) or w % max(strides):
            raise ValueError(f"input size {h}x{w} must be a multiple of the teacher stride {max(strides)}")
        self.map_sizes = [(h // s, w // s) for s in strides]
        self.masking = cfg.masking
        self.spectral_weight = cfg.loss.spectral_weight
        self.spectral_relative = cfg.loss.spectral_norm == "relative"
        st = cfg.student
        self.use_student = st.enabled
        self.use_bank = cfg.bank.enabled
        if st.enabled:
            widths = [student_width(st.width, c, st.heads) for c in channels]
            self.sdms = nn.ModuleList(
                SDM(c, d, mh, mw, cfg.sdm.ratio, enabled=cfg.sdm.enabled)
                for c, d, (mh, mw) in zip(channels, widths, self.map_sizes, strict=True)
            )
            self.students = nn.ModuleList(
                AMFDStudent(d, c, st.heads, max(1, st.kv_stride // s), st.blocks, st.attention)
                for c, d, s in zip(channels, widths, strides, strict=True)
            )
        bc = cfg.bank
        self.bank_layers = list(bc.layers)
        self.joint = bc.embedding == "joint"
        if max(self.bank_layers) >= len(channels):
            raise ValueError(f"bank.layers {self.bank_layers}: the teacher has {len(channels)} scales")
        # the scale of each bank map (joint: one map, at the finest chosen scale)
        bank_scales = [min(self.bank_layers)] if self.joint else self.bank_layers
        if cfg.bank.enabled:
            if self.joint:
                self.embedders = nn.ModuleList(
                    [
                        JointEmbedder(
                            [channels[i] for i in self.bank_layers],
                            bc.aggregate,
                            bc.spectral,
                            bc.normalize,
                            seed=cfg.seed,
                            count_pad=bc.aggregate_pad == "zero",
                        )
                    ]
                )
                self.banks = nn.ModuleList([MemoryBank(sum(channels[i] for i in self.bank_layers))])
            else:
                self.embedders = nn.ModuleList(
                    PatchEmbedder(
                        channels[i],
                        bc.aggregate,
                        bc.spectral,
                        bc.normalize,
                        seed=cfg.seed + i,
                        count_pad=bc.aggregate_pad == "zero",
                    )
                    for i in self.bank_layers
                )
                self.banks = nn.ModuleList(MemoryBank(channels[i]) for i in self.bank_layers)
            self.scorer = KNNScorer(bc.k, bc.chunk, bc.bank_chunk)
        self.fusion = UGHF(
            len(channels),
            cfg.fusion.cos_weight,
            cfg.fusion.bank_weight,
            cfg.fusion.learned,
            bank_scales,
            cfg.fusion.score_cos_weight,
        )
        self.post = MapPostprocess(cfg.score.sigma, cfg.score.reduce, cfg.score.topk_fraction)
        pc = cfg.position
        if pc.enabled and len(channels) < 3:
            raise ValueError(
                f"position.enabled needs teacher scales 1 and 2; the teacher has {len(channels)}"
            )
        self.position = PositionCue(list(channels[1:3]), pc.grid) if pc.enabled else None
        self.position_weight = float(pc.weight) if pc.enabled else 0.0

    # -- teacher -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features of ``x [N, 3, H, W]`` (0..255): list of ``[N, C_l, h_l, w_l]``."""
        return self.teacher(self.teacher.normalize(x))

    # -- student -----------------------------------------------------------------------------------------
    def student_features(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Unmasked student predictions ``S_l`` for teacher features ``T_l``."""
        return [stu(sdm(t)) for t, sdm, stu in zip(feats, self.sdms, self.students, strict=True)]

    def training_losses(
        self, feats: list[torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-scale distillation losses ``[L]`` on masked views (training mode)."""
        losses = []
        for t, sdm, stu in zip(feats, self.sdms, self.students, strict=True):
            assert isinstance(stu, AMFDStudent)
            f_spec = sdm(t)
            spatial, freq = stu.masked_views(
                f_spec, self.masking.spatial_ratio, self.masking.freq_ratio, generator=generator
            )
            losses.append(distill_loss(t, stu(spatial, freq), self.spectral_weight, self.spectral_relative))
        return torch.stack(losses)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- cues --------------------------------------------------------------------------------------------
    def cos_maps(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``1 - cos(T_l, S_l)`` per scale, ``[N, h_l, w_l]``."""
        return [cosine_distance(t, s) for t, s in zip(feats, self.student_features(feats), strict=True)]

    def embed(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Bank prototypes of the query patches, one ``[N, h, w, C]`` per bank (per chosen scale, or one
        joint embedding)."""
        chosen = [feats[i] for i in self.bank_layers]
        if self.joint:
            return [self.embedders[0](chosen)]
        return [emb(t) for emb, t in zip(self.embedders, chosen, strict=True)]

    def bank_maps(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """kNN distance to the memory bank, one ``[N, h, w]`` map per bank."""
        return [self.scorer(q, b.bank) for q, b in zip(self.embed(feats), self.bank_list(), strict=True)]

    def bank_list(self) -> list[MemoryBank]:
        """The per-scale memory banks, typed."""
        return [b for b in self.banks if isinstance(b, MemoryBank)]

    def single_cue(self, cue: str) -> None:
        """Keep one cue (``"student"`` or ``"bank"``) at full weight and drop the other, for ablations.

        The cue mix chosen at calibration may have set the kept cue's weight to 0 (e.g. a bank-only mix);
        the kept cue is given weight 1 so the model still has a map. Cue statistics and thresholds must be
        recalibrated afterwards (``trainer.train.recalibrate``).
        """
        if cue == "student":
            if not self.use_student:
                raise ValueError("this model has no student to keep (student.enabled was false)")
            self.use_bank = False
            self.fusion.cos_weight, self.fusion.bank_weight = 1.0, 0.0
            self.fusion.score_cos_weight = None
        elif cue == "bank":
            if not self.use_bank:
                raise ValueError("this model has no memory bank to keep (bank.enabled was false)")
            self.use_student = False
            self.fusion.learned = False
            self.fusion.cos_weight, self.fusion.bank_weight = 0.0, 1.0
            self.fusion.score_cos_weight = None
        else:
            raise ValueError(f"cue must be 'student' or 'bank', got {cue!r}")

    def raw_cues(
        self, feats: list[torch.Tensor], all_cues: bool = False
    ) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """Per-scale cues of the enabled branches. A cue whose fusion weight is 0 in the map's mix and in
        the score's (e.g. chosen so by ``trainer/select.py``) is skipped unless ``all_cues``: it would
        change neither."""
        fusion = self.fusion
        score = fusion.score_weights() or (0.0, 0.0)
        want_cos = all_cues or fusion.cos_weight > 0 or score[0] > 0
        want_bank = all_cues or fusion.bank_weight > 0 or score[1] > 0
        cos = self.cos_maps(feats) if self.use_student and want_cos else None
        bank = self.bank_maps(feats) if self.use_bank and want_bank else None
        return cos, bank

    # -- inference ---------------------------------------------------------------------------------------
    def fused_maps(
        self, x_norm: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised input ``[N, 3, H, W]`` -> the fused, unsmoothed map ``[N, 1, H, W]`` and, when the
        image score has its own cue mix (``UGHF.score_weights``) or the position cue enters it, the map it
        is taken from (else None). ``valid``: the letterbox mask (the position cue's part box)."""
        feats = self.teacher(x_norm)
        cos, bank = self.raw_cues(feats)
        fused = self.fusion(cos, bank, self.input_size)
        weights = self.fusion.score_weights()
        scored = None if weights is None else self.fusion(cos, bank, self.input_size, weights)
        return fused, self.with_position(scored if scored is not None else fused, feats, valid)

    def with_position(
        self, scored: torch.Tensor, feats: list[torch.Tensor], valid: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The image score's map with the position cue mixed in (``(1 - w) * map + w * P``); ``scored``
        itself without the cue, or None when that is the plain fused map and the cue is off."""
        w = self.position_weight
        if self.position is None or w <= 0:
            return scored if self.fusion.score_weights() is not None else None
        return (1.0 - w) * scored + w * self.position(feats[1:3], valid, self.input_size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> MASFOutput:
        """``x [N, 3, H, W]`` RGB 0..255 (float) -> :class:`MASFOutput` (map ``[N, 1, H, W]``, score ``[N]``).

        ``valid`` (optional, ``[N, 1, H, W]``, 1 = real image pixel) keeps letterbox padding out of the score.
        """
        fused, scored = self.fused_maps(self.teacher.normalize(x), valid)
        return self.post(fused, valid, scored)
