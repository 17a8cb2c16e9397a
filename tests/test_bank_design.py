"""Issue 11: the memory-bank design options (joint embedding, bank-chunked kNN, memory cap, coreset on a
chunked projection, fusion of a bank that is not one map per scale, letterbox-free statistics) and the
PatchCore reproduction config's exported graph."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config

from trainer.config import load_config
from trainer.models.masf.samb import (
    GreedyCoresetSampler,
    JointEmbedder,
    KNNScorer,
    PatchEmbedder,
    RandomSampler,
    bank_capacity,
)
from trainer.models.masf.ughf import UGHF

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- joint embedding


def test_joint_embedding_hand_computed_upsampling_and_concat() -> None:
    fine = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    coarse = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).reshape(1, 1, 2, 2)
    emb = JointEmbedder([1, 1], aggregate=1)
    out = emb([fine, coarse])
    assert out.shape == (1, 4, 4, 2)  # [N, h, w, 1 + 1] at the finest grid
    torch.testing.assert_close(out[0, :, :, 0], fine[0, 0])
    # bilinear, align_corners=False, 2 -> 4: [a, 0.75a + 0.25b, 0.25a + 0.75b, b] along each axis
    row = torch.tensor([0.0, 1.0, 3.0, 4.0])
    col = torch.tensor([0.0, 2.0, 6.0, 8.0])
    torch.testing.assert_close(out[0, :, :, 1], col[:, None] + row[None, :])


def test_joint_embedding_aggregates_each_scale_without_counting_padding() -> None:
    fine = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    coarse = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).reshape(1, 1, 2, 2)
    out = JointEmbedder([1, 1], aggregate=3)([fine, coarse])
    # corner of the fine map: mean of its 2x2 corner block (0, 1, 4, 5); centre (1, 1): 3x3 block mean
    assert out[0, 0, 0, 0] == pytest.approx(2.5)
    assert out[0, 1, 1, 0] == pytest.approx(float(fine[0, 0, :3, :3].mean()))
    # the 2x2 coarse map: every 3x3 window covers it all -> 6 everywhere, and upsampling keeps 6
    torch.testing.assert_close(out[0, :, :, 1], torch.full((4, 4), 6.0))


def test_aggregation_counting_the_zero_padding_as_anomalib_does() -> None:
    """bank.aggregate_pad: zero: the 3x3 window divides by 9 at the border too (AvgPool2d's default):
    on a map of ones a corner becomes 4/9, an edge 6/9, the inside stays 1; both embedders, and the model
    built from the config passes it on."""
    ones = torch.ones(1, 1, 4, 4)
    joint = JointEmbedder([1, 1], aggregate=3, count_pad=True)([ones, torch.ones(1, 1, 2, 2)])
    want = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float32) / 9
    torch.testing.assert_close(joint[0, :, :, 0], want)
    single = PatchEmbedder(1, aggregate=3, spectral=False, normalize=False, count_pad=True)(ones)
    torch.testing.assert_close(single[0, :, :, 0], want)
    excluded = PatchEmbedder(1, aggregate=3, spectral=False, normalize=False)(ones)
    torch.testing.assert_close(excluded[0, :, :, 0], torch.ones(4, 4))
    from trainer.models.masf import create_masf

    cfg = load_config(REPO / "configs" / "train" / "patchcore_repro.yaml")
    assert cfg.bank.aggregate_pad == "zero"
    model = create_masf(cfg, (64, 64))
    assert all(e.count_pad for e in model.embedders)
    default = create_masf(tiny_config(), (64, 64))
    assert not any(e.count_pad for e in default.embedders)


def test_joint_embedding_channels_shapes_and_prototype_options() -> None:
    gen = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 40, 8, 8, generator=gen), torch.randn(2, 112, 4, 4, generator=gen)
    plain = JointEmbedder([40, 112])([f1, f2])
    assert plain.shape == (2, 8, 8, 152)
    assert not torch.allclose(plain.norm(dim=-1), torch.ones(2, 8, 8))  # the norm is kept
    anchored = JointEmbedder([40, 112], spectral=True, normalize=True)([f1, f2])
    torch.testing.assert_close(anchored.norm(dim=-1), torch.ones(2, 8, 8))
    assert not torch.allclose(anchored, torch.nn.functional.normalize(plain, dim=-1))  # + MLP(|rfft|)


# ---------------------------------------------------------------- kNN, bounded memory


@pytest.mark.parametrize("k", [1, 3])
def test_bank_chunked_knn_matches_brute_force_in_bounded_memory(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(1000, 16, generator=gen)
    q = torch.randn(2, 10, 10, 16, generator=gen)
    seen: list[int] = []
    scores = KNNScorer._scores

    def spy(self: KNNScorer, qc: torch.Tensor, b_aug: torch.Tensor) -> torch.Tensor:
        out = scores(self, qc, b_aug)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(KNNScorer, "_scores", spy)
    got = KNNScorer(k=k, chunk=16, bank_chunk=128)(q, bank)
    # 100 queries in 7 chunks x 1000 prototypes in 8 slices; no step holds more than N x 16 x 128 scores
    assert len(seen) == 7 * 8 and max(seen) <= 2 * 16 * 128
    want = torch.cdist(q.reshape(-1, 16), bank).topk(k, largest=False).values.mean(-1).reshape(2, 10, 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    seen.clear()
    torch.testing.assert_close(KNNScorer(k=k, chunk=1024, bank_chunk=8192)(q, bank), got)
    assert seen == [2 * 100 * 1000]  # unchunked: one step


def test_knn_rejects_k_beyond_tensorrt_topk() -> None:
    with pytest.raises(ValueError, match="3840"):
        KNNScorer(k=3840)


# ---------------------------------------------------------------- coreset


def _coverage(x: torch.Tensor, idx: torch.Tensor) -> float:
    """Largest distance from any point to its nearest selected point (the k-center radius)."""
    return float(torch.cdist(x, x[idx]).min(1).values.max())


def test_projected_coreset_covers_better_than_random_at_equal_size() -> None:
    gen = torch.Generator().manual_seed(2)
    # 152-d features: a dense mode and 12 small rare modes (rare normal patterns)
    common = torch.randn(3000, 152, generator=gen)
    rare = torch.cat(
        [torch.randn(10, 152, generator=gen) * 0.3 + 8.0 * torch.randn(1, 152) for _ in range(12)]
    )
    x = torch.cat([common, rare])
    size = 60
    greedy = GreedyCoresetSampler(size, seed=0, project_dim=128).run(x)
    assert len(set(greedy.tolist())) == size
    radii = [_coverage(x, RandomSampler(size, seed=s).run(x)) for s in range(5)]
    assert _coverage(x, greedy) < 0.75 * min(radii)
    # every rare mode gets a prototype; a random 2 % subset misses most of them
    modes = {int(i - 3000) // 10 for i in greedy.tolist() if i >= 3000}
    assert modes == set(range(12))


def test_coreset_projection_chunking_and_fp16_input() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 152, generator=gen)
    a = GreedyCoresetSampler(50, seed=4, project_dim=128, chunk=65536).run(x)
    b = GreedyCoresetSampler(50, seed=4, project_dim=128, chunk=77).run(x)
    assert torch.equal(a, b)  # the chunked projection is the same projection
    c = GreedyCoresetSampler(50, seed=4, project_dim=128, chunk=77).run(x.half())
    assert len(set(a.tolist()) & set(c.tolist())) >= 45  # FP16 storage: the same selection up to rounding


# ---------------------------------------------------------------- memory cap


def test_bank_capacity_and_limits() -> None:
    from trainer.train import bank_limits

    assert bank_capacity(152, 64) == 64 * 2**20 // (4 * 152)
    assert bank_capacity(10**9, 1) == 1
    auto = tiny_config(bank={"max_size": "auto", "max_mb": 3.0})
    assert bank_limits(auto, [24, 40, 112]) == [bank_capacity(d, 1.0) for d in (24, 40, 112)]
    assert bank_limits(tiny_config(bank={"max_size": 77}), [152]) == [77]


# ---------------------------------------------------------------- fusion and statistics


def test_fusion_of_separate_cues_equals_the_per_scale_mix() -> None:
    gen = torch.Generator().manual_seed(5)
    cos = [torch.rand(2, s, s, generator=gen) for s in (16, 8, 4)]
    bank = [torch.rand(2, s, s, generator=gen) for s in (16, 8, 4)]
    per_scale = UGHF(3, 0.6, 0.4, learned=True)
    with torch.no_grad():
        per_scale.log_var.copy_(torch.tensor([0.1, -0.3, 0.5]))
    separate = UGHF(3, 0.6, 0.4, learned=True)
    separate.load_state_dict(per_scale.state_dict())
    separate.per_scale = False  # force the other form: the same sum
    torch.testing.assert_close(separate(cos, bank, (32, 32)), per_scale(cos, bank, (32, 32)))


def test_fusion_of_one_joint_bank_map() -> None:
    fusion = UGHF(3, 0.0, 1.0, learned=False, bank_scales=[1])
    fusion.set_statistics(None, [(2.0, 4.0)])
    assert fusion.bank_mean.shape == (1,)
    joint = torch.full((1, 8, 8), 10.0)
    torch.testing.assert_close(fusion(None, [joint], (32, 32)), torch.full((1, 1, 32, 32), 2.0))


def test_cue_statistics_exclude_letterbox_padding() -> None:
    from trainer.models.masf import create_masf
    from trainer.select import set_cue_statistics

    model = create_masf(tiny_config(student={"enabled": False}), (64, 64), pretrained=False)
    valid = torch.zeros(1, 1, 64, 64)
    valid[..., :, :32] = 1.0  # left half is the part, right half letterbox padding
    maps = []
    for s in (16, 8, 4):
        m = torch.full((1, s, s), 100.0)  # padding cells: far off
        m[..., : s // 2] = torch.arange(s // 2, dtype=torch.float32)  # part cells: 0 .. s/2 - 1
        maps.append(m)
    set_cue_statistics(model, [(None, maps, valid)])
    for l, s in enumerate((16, 8, 4)):
        part = torch.arange(s // 2, dtype=torch.float32).repeat(s)
        assert float(model.fusion.bank_mean[l]) == pytest.approx(float(part.mean()))
        assert float(model.fusion.bank_std[l]) == pytest.approx(float(part.std()), rel=1e-5)


# ---------------------------------------------------------------- PatchCore reproduction config


def test_patchcore_repro_config_is_patchcore() -> None:
    cfg = load_config(REPO / "configs" / "train" / "patchcore_repro.yaml")
    b = cfg.bank
    assert (b.layers, b.embedding, b.aggregate, b.k, b.coreset_ratio) == ([1, 2], "joint", 3, 1, 0.01)
    assert (b.spectral, b.normalize, b.max_size, b.project_dim) == (False, False, "auto", 128)
    assert (cfg.data.input_size, cfg.data.resize, cfg.student.enabled) == ([256, 256], "stretch", False)


@pytest.mark.slow
def test_patchcore_repro_graph_exports_with_parity(synth_data: Path, tmp_path: Path) -> None:
    """The reproduction design, at a tiny size, through fit, export and ORT parity. k = 1 selects one
    best prototype per query (group minima, then a TopK with K = 1 in the best group), and a bank larger
    than one slice is searched in slices (the slices' best compared with ArgMin)."""
    import onnx

    from trainer.export.from_run import export_run
    from trainer.train import fit

    torch.set_num_threads(2)
    repro = load_config(REPO / "configs" / "train" / "patchcore_repro.yaml")
    bank = {
        "layers": repro.bank.layers,
        "embedding": "joint",
        "spectral": False,
        "normalize": False,
        "k": 1,
        "coreset_ratio": 0.1,
        "max_size": "auto",
        "bank_chunk": 64,  # 15 train images x 64 patches x 10 % = 96 prototypes: two slices
    }
    cfg = tiny_config(
        student={"enabled": False}, bank=bank, data={"resize": "stretch"}, fusion={"select": "none"}
    )
    info = fit(cfg, synth_data, tmp_path / "run", progress=False)
    assert info.meta["bank_sizes"][0] > 64
    bundle = export_run(tmp_path / "run", tmp_path / "bundle", threads=1)
    parity = bundle.manifest["export"]["parity"]  # a failed parity check writes no bundle at all
    assert parity["passed"] is True and parity["verdict_mismatches"] == 0
    graph = onnx.load(str(bundle.onnx_path))
    assert _topk_ks(graph) == [1, 1, 1, 1]  # two slices, two steps each
    assert sum(n.op_type == "ReduceMin" for n in graph.graph.node) >= 2
    assert sum(n.op_type == "ArgMin" for n in graph.graph.node) == 1  # the best of the two slices
    assert math.isfinite(bundle.threshold)


def _topk_ks(graph: Any) -> list[int]:
    """The K of every TopK node of an exported graph, in graph order."""
    import onnx

    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    return [int(consts[n.input[1]][0]) for n in graph.graph.node if n.op_type == "TopK"]


def test_per_scale_bank_on_a_subset_of_scales_with_the_student(synth_data: Path, tmp_path: Path) -> None:
    """Banks on scales 1 and 2 only, next to a 3-scale student: fit, cue-mix selection and reload."""
    from trainer.runs import load_run
    from trainer.train import fit

    torch.set_num_threads(2)
    cfg = tiny_config(bank={"layers": [1, 2], "k": 1, "max_size": "auto"})
    info = fit(cfg, synth_data, tmp_path / "run", progress=False)
    assert len(info.meta["bank_sizes"]) == 2 and info.meta["fusion_selection"] is not None
    model, _ = load_run(tmp_path / "run")
    assert model.fusion.bank_scales == [1, 2] and model.fusion.bank_mean.shape == (2,)
    x = torch.randint(0, 256, (1, 3, 64, 64)).float()
    out = model(x)
    assert out.anomaly_map.shape == (1, 1, 64, 64) and torch.isfinite(out.pred_score).all()


@pytest.mark.slow
def test_joint_spectral_bank_with_the_student_exports_with_parity(synth_data: Path, tmp_path: Path) -> None:
    """What ``masf_lite2.yaml``'s ``joint`` design deploys next to the student: a mixed cue (distillation
    per scale + one joint spectral bank map at scale 1), fused separately, through export and ORT parity."""
    from trainer.export.from_run import export_run
    from trainer.train import fit

    torch.set_num_threads(2)
    bank = {"layers": [1, 2], "embedding": "joint", "k": 1, "coreset_ratio": 0.1, "max_size": "auto"}
    cfg = tiny_config(bank=bank, fusion={"select": "none", "cos_weight": 0.25, "bank_weight": 0.75})
    fit(cfg, synth_data, tmp_path / "run", progress=False)
    bundle = export_run(tmp_path / "run", tmp_path / "bundle", threads=1)
    parity = bundle.manifest["export"]["parity"]
    assert parity["passed"] is True and parity["verdict_mismatches"] == 0
    import onnx

    ks = _topk_ks(onnx.load(str(bundle.onnx_path)))
    assert ks == [1, 1]  # one joint bank searched with k = 1, in two steps
