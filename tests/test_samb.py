"""Tests for trainer.models.masf.samb: embedder, samplers, memory bank and kNN scorer."""

from __future__ import annotations

import pytest
import torch

from engines.export.trt_ops import op_counts
from trainer.export.onnx import to_onnx_proto
from trainer.models.masf.samb import GreedyCoresetSampler, KNNScorer, MemoryBank, PatchEmbedder, RandomSampler
from trainer.models.masf.spectral import set_spectral_mode

# ---------------------------------------------------------------- embedder


def test_patch_embedder_shape_and_unit_norm() -> None:
    torch.manual_seed(0)
    emb = PatchEmbedder(channels=12, aggregate=3, spectral=True, normalize=True)
    out = emb(torch.randn(2, 12, 7, 9))
    assert out.shape == (2, 7, 9, 12)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 7, 9), atol=1e-5, rtol=0)


def test_patch_embedder_without_normalize_or_spectral() -> None:
    torch.manual_seed(1)
    feats = torch.randn(1, 6, 5, 5)
    plain = PatchEmbedder(6, aggregate=1, spectral=False, normalize=False)
    assert not hasattr(plain, "w1")
    torch.testing.assert_close(plain(feats), feats.permute(0, 2, 3, 1))
    spec = PatchEmbedder(6, aggregate=1, spectral=True, normalize=False)
    assert (spec(feats) - plain(feats)).abs().max() > 1e-3
    assert (spec(feats).norm(dim=-1) - 1).abs().max() > 1e-2


def test_patch_embedder_aggregates_locally() -> None:
    feats = torch.zeros(1, 4, 5, 5)
    feats[0, :, 2, 2] = 9.0
    out = PatchEmbedder(4, aggregate=3, spectral=False, normalize=False)(feats)
    assert float(out[0, 2, 2, 0]) == pytest.approx(1.0)  # 9 / 9
    assert float(out[0, 1, 1, 0]) == pytest.approx(1.0)
    assert float(out[0, 0, 0, 0]) == 0.0
    assert float(out[0, 1, 2, 0]) == pytest.approx(1.0)
    # corner at (0, 0) sees a 2x2 window (count_include_pad=False)
    feats2 = torch.zeros(1, 4, 5, 5)
    feats2[0, :, 0, 0] = 4.0
    out2 = PatchEmbedder(4, aggregate=3, spectral=False, normalize=False)(feats2)
    assert float(out2[0, 0, 0, 0]) == pytest.approx(1.0)


def test_patch_embedder_spectral_descriptor_is_shift_invariant_over_channels() -> None:
    torch.manual_seed(2)
    emb = PatchEmbedder(8, aggregate=1, spectral=True, normalize=False)
    p = torch.randn(10, 8)
    torch.testing.assert_close(emb._spectral(torch.roll(p, 3, dims=-1)), emb._spectral(p), atol=1e-5, rtol=0)


def test_patch_embedder_deterministic_for_a_seed() -> None:
    feats = torch.randn(1, 10, 4, 4, generator=torch.Generator().manual_seed(3))
    a = PatchEmbedder(10, seed=5)
    b = PatchEmbedder(10, seed=5)
    c = PatchEmbedder(10, seed=6)
    torch.testing.assert_close(a(feats), b(feats), atol=0, rtol=0)
    assert (a(feats) - c(feats)).abs().max() > 1e-4
    assert "w1" in a.state_dict() and "w2" in a.state_dict()
    assert not list(a.parameters())


@pytest.mark.parametrize("aggregate", [0, 2, -1])
def test_patch_embedder_rejects_even_aggregate(aggregate: int) -> None:
    with pytest.raises(ValueError, match=r"bank\.aggregate"):
        PatchEmbedder(4, aggregate=aggregate)


# ---------------------------------------------------------------- samplers


def _clustered(n: int = 2000, d: int = 8, seed: int = 0) -> torch.Tensor:
    """Two big clusters plus a rare one (0.5 % of the points) far away."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.zeros(3, d)
    centers[1, 0] = 6.0
    centers[2, 1] = 25.0
    sizes = [n // 2, n // 2 - 10, 10]
    parts = [centers[i] + torch.randn(s, d, generator=gen) for i, s in enumerate(sizes)]
    return torch.cat(parts)


def _coverage_radius(x: torch.Tensor, idx: torch.Tensor) -> float:
    """max over points of the distance to the nearest selected point."""
    return float(torch.cdist(x, x[idx]).min(dim=1).values.max())


def test_greedy_coreset_covers_better_than_random() -> None:
    x = _clustered()
    greedy = GreedyCoresetSampler(50, seed=0, project_dim=None).run(x)
    assert greedy.shape == (50,)
    assert len(set(greedy.tolist())) == 50
    g_radius = _coverage_radius(x, greedy)
    for seed in range(5):
        rand = RandomSampler(50, seed=seed).run(x)
        assert rand.shape == (50,)
        r_radius = _coverage_radius(x, rand)
        assert g_radius < r_radius, (seed, g_radius, r_radius)
    # the rare cluster (last 10 points) is represented in the greedy coreset
    assert (greedy >= x.shape[0] - 10).any()


def test_greedy_coreset_is_two_approximation_step() -> None:
    """Farthest-point property: each new point is the farthest from the previous selection."""
    x = _clustered(300, 4, seed=1)
    idx = GreedyCoresetSampler(10, seed=0, project_dim=None).run(x)
    for i in range(1, 10):
        d = torch.cdist(x, x[idx[:i]]).min(dim=1).values
        assert float(d[idx[i]]) == pytest.approx(float(d.max()), rel=1e-4)


def _plain_greedy(x: torch.Tensor, k: int, first: int) -> list[int]:
    """The textbook farthest-point loop, every distance measured at every step (the reference)."""
    selected, min_dist = [first], torch.cdist(x, x[first : first + 1])[:, 0]
    for _ in range(k - 1):
        selected.append(int(torch.argmax(min_dist)))
        min_dist = torch.minimum(min_dist, torch.cdist(x, x[selected[-1] : selected[-1] + 1])[:, 0])
    return selected


@pytest.mark.parametrize("kind", ["manifold", "clustered", "duplicates", "narrow"])
def test_pruned_greedy_coreset_selects_what_the_plain_loop_selects(kind: str) -> None:
    """The triangle-inequality pruning must not change the selection: the same points in the same order
    as the loop that measures every distance at every step. Wide data (64 channels, where the pruning
    is used) lying on a 3-d manifold (most steps measure few points), in clusters, with exact duplicates
    (zero distances and radii); narrow data (8 channels: every step is a dense pass)."""
    gen = torch.Generator().manual_seed(5)
    lift = torch.randn(3, 64, generator=gen)
    if kind == "manifold":
        x = torch.rand(3000, 3, generator=gen) @ lift
    elif kind == "clustered":
        x = _clustered(2000, 64, seed=5)
    elif kind == "duplicates":
        x = torch.cat([(torch.rand(40, 3, generator=gen) @ lift).repeat(20, 1), torch.zeros(100, 64)])
    else:
        x = _clustered(2000, 8, seed=5)
    sampler = GreedyCoresetSampler(150, seed=1, project_dim=None)
    got = sampler.run(x).tolist()
    want = _plain_greedy(x.double(), 150, got[0])
    if kind == "duplicates":  # once every distinct point is taken the rest are ties at 0: compare those
        assert len(torch.unique(x, dim=0)) == 41 and got[:41] == want[:41]
    else:
        assert got == want
    if kind == "manifold":
        # Further on, the clusters shrink and the pruning skips many distances (dense: 1.0); the longer
        # selection still covers the data as the plain loop's does (float32 vs float64 ties may reorder
        # the last, nearly equidistant points).
        longer = GreedyCoresetSampler(400, seed=1, project_dim=None)
        sel = longer.run(x)
        assert longer.measured < 0.5, longer.measured
        ref = _plain_greedy(x.double(), 400, int(sel[0]))

        def radius(idx: list[int]) -> float:
            return float(torch.cdist(x.double(), x.double()[idx]).min(1).values.max())

        assert radius(sel.tolist()) == pytest.approx(radius(ref), rel=1e-3)
    if kind == "narrow":
        assert sampler.measured == 1.0


def test_greedy_coreset_deterministic_and_clamped() -> None:
    x = _clustered(200, 4, seed=2)
    a = GreedyCoresetSampler(20, seed=3).run(x)
    b = GreedyCoresetSampler(20, seed=3).run(x)
    assert torch.equal(a, b)
    assert GreedyCoresetSampler(500, seed=0).run(x).shape == (200,)
    assert RandomSampler(500).run(x).shape == (200,)
    with pytest.raises(ValueError):
        GreedyCoresetSampler(0)


def test_greedy_coreset_with_projection() -> None:
    gen = torch.Generator().manual_seed(4)
    centers = torch.randn(5, 256, generator=gen) * 10
    x = torch.cat([c + torch.randn(100, 256, generator=gen) for c in centers])
    x = torch.cat([x, centers[:1] * -3 + torch.randn(2, 256, generator=gen)])  # 2 rare far points
    idx = GreedyCoresetSampler(20, seed=0, project_dim=32).run(x)
    assert idx.shape == (20,)
    assert int(idx.max()) < x.shape[0] and int(idx.min()) >= 0
    assert len(set(idx.tolist())) == 20
    # indices refer to the input: every cluster and the rare points are hit
    cluster_of = torch.div(idx, 100, rounding_mode="floor")
    assert set(cluster_of.tolist()) == {0, 1, 2, 3, 4, 5}
    assert _coverage_radius(x, idx) < _coverage_radius(x, RandomSampler(20).run(x))


@pytest.mark.parametrize("channels", [12, 24, 40])
def test_patch_embedder_gemm_mode_equals_fft(channels: int) -> None:
    feats = torch.randn(2, channels, 5, 7, generator=torch.Generator().manual_seed(8)) * 6.0
    emb = PatchEmbedder(channels, aggregate=3, spectral=True, normalize=False, seed=1)
    ref = emb(feats)
    assert set_spectral_mode(emb, "gemm") == 1
    assert emb.spectral_magnitude.mode == "gemm"
    got = emb(feats)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-6 * float(ref.abs().max()))
    assert (got - feats.permute(0, 2, 3, 1)).abs().max() > 1e-2  # the spectral term is really there


def test_patch_embedder_spectral_mode_leaves_state_dict_unchanged() -> None:
    fft = PatchEmbedder(8, seed=2)
    gemm = PatchEmbedder(8, seed=2, spectral_mode="gemm")
    assert sorted(fft.state_dict()) == sorted(gemm.state_dict()) == ["w1", "w2"]
    gemm.load_state_dict(fft.state_dict(), strict=True)
    assert not hasattr(PatchEmbedder(8, spectral=False), "spectral_magnitude")


# ---------------------------------------------------------------- bank and scorer


def _brute_knn(q: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(q.reshape(-1, q.shape[-1]).double(), bank.double())
    return d.topk(k, dim=1, largest=False).values.mean(1).reshape(q.shape[:-1]).float()


@pytest.mark.parametrize("k", [1, 3])
def test_knn_scorer_matches_brute_force(k: int) -> None:
    torch.manual_seed(5)
    q = torch.randn(2, 6, 5, 16)
    bank = torch.randn(40, 16)
    got = KNNScorer(k=k)(q, bank)
    assert got.shape == (2, 6, 5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _brute_knn(q, bank, k), atol=1e-4, rtol=1e-4)


class _BankGraph(torch.nn.Module):
    """A scorer with its bank as a buffer: what an exported graph holds."""

    def __init__(self, scorer: KNNScorer, bank: torch.Tensor) -> None:
        super().__init__()
        self.scorer = scorer
        self.register_buffer("bank", bank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scorer(x, self.bank)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_selection_in_one_product_picks_the_same_neighbours(k: int) -> None:
    """The selection score as one product with ``[-2 y, |y|^2]`` equals ``|y|^2 - 2 x.y`` (the former
    two-pass form, the latency benchmark's reference), and the graph exports it as one MatMul."""
    torch.manual_seed(8)
    q = torch.randn(2, 6, 5, 16) * 3
    bank = torch.randn(300, 16) * 3
    fused, plain = KNNScorer(k=k, bank_chunk=128), KNNScorer(k=k, bank_chunk=128)
    plain.fused = False
    b = bank.float()
    b_aug = torch.cat([-2.0 * b, (b * b).sum(1, keepdim=True)], dim=1)
    qc = q.reshape(2, 30, 16)
    want = (b * b).sum(1) - 2.0 * qc @ b.T
    torch.testing.assert_close(fused._scores(qc, b_aug), want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(plain._scores(qc, b_aug), want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fused._nearest(qc, b_aug, k), plain._nearest(qc, b_aug, k), atol=0, rtol=0)
    torch.testing.assert_close(fused(q, bank), plain(q, bank), atol=0, rtol=0)
    torch.testing.assert_close(fused(q, bank), _brute_knn(q, bank, k), atol=1e-4, rtol=1e-4)

    ops = {}
    for name, scorer in (("fused", fused), ("plain", plain)):
        proto = to_onnx_proto(_BankGraph(scorer, bank).eval(), (q,), ["q"], ["score"], 18, "gemm")
        ops[name] = op_counts(proto)
    # 3 bank slices of <= 128: one MatMul each for the selection (+ none elsewhere on the bank side)
    assert ops["fused"]["MatMul"] == ops["plain"]["MatMul"] == 3
    assert ops["plain"].get("Add", 0) - ops["fused"].get("Add", 0) == 3  # the second pass, gone


@pytest.mark.parametrize("k", [1, 3, 5])
def test_grouped_selection_picks_the_same_scores_as_one_topk(k: int) -> None:
    """The two-step selection (group minima, then the best k of the k best groups) is exact: the same k
    scores as one TopK over the whole slice, for banks that pad to whole groups, are searched in slices,
    hold duplicate rows (ties) or are too small to group; so the scores of the scorer are equal too."""
    gen = torch.Generator().manual_seed(12)
    for m, bank_chunk in ((203, 8192), (1000, 8192), (300, 128), (40, 8192)):
        bank = torch.randn(m, 16, generator=gen) * 2
        bank[m // 2 :: 7] = bank[m // 3]  # duplicate rows: tied selection scores
        q = torch.randn(2, 7, 5, 16, generator=gen) * 2
        q[0, 0, 0] = bank[m // 3]  # a query on the duplicated row: k tied neighbours
        grouped, plain = KNNScorer(k=k, bank_chunk=bank_chunk), KNNScorer(k=k, bank_chunk=bank_chunk)
        grouped.grouped, plain.grouped = True, False
        b_aug = torch.cat([-2.0 * bank, (bank * bank).sum(1, keepdim=True)], dim=1)
        qc = q.reshape(2, 35, 16)
        sl = b_aug[:bank_chunk]
        size, groups = {203: (14, 15), 1000: (32, 32), 128: (11, 12), 40: (8, 5)}[sl.shape[0]]  # by hand
        assert grouped._group_size(sl.shape[0], k) == (size if groups >= 4 * k else 0)  # 203: padded to 210
        v_g, i_g = grouped._best(qc, sl, k)
        v_p, _ = plain._best(qc, sl, k)
        torch.testing.assert_close(v_g.sort(-1).values, v_p.sort(-1).values, atol=0, rtol=0)
        assert int(i_g.max()) < sl.shape[0] and int(i_g.min()) >= 0  # never a padding row
        # the indices select the scores reported (ties may pick other rows of the same score)
        torch.testing.assert_close(plain._scores(qc, sl).gather(-1, i_g), v_g, atol=0, rtol=0)
        torch.testing.assert_close(grouped(q, bank), plain(q, bank), atol=1e-6, rtol=0)
        torch.testing.assert_close(grouped(q, bank), _brute_knn(q, bank, k), atol=1e-4, rtol=1e-4)
    assert KNNScorer(k=k)._group_size(1000, k) == 0  # eager: the one-step form unless asked
    assert grouped._group_size(1000, k) == 32 and grouped._group_size(40, 3) == 0


def test_grouped_selection_exports_and_runs_as_eager_does() -> None:
    """Exported, the scorer selects in two steps (ReduceMin over groups, TopK; a Gather of the chosen
    groups' rows, TopK) and ONNX Runtime gives eager PyTorch's scores; the two-step graph has no TopK
    over a whole slice; a NaN query gives a NaN score, not an out-of-range Gather."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(13)
    bank = torch.randn(3000, 24, generator=gen)
    q = torch.randn(2, 32, 32, 24, generator=gen)

    for k in (1, 3):
        scorer = KNNScorer(k=k)
        assert scorer.grouped is None
        proto = to_onnx_proto(_BankGraph(scorer, bank).eval(), (q,), ["q"], ["score"], 18, "gemm")
        ops = op_counts(proto)
        assert ops["ReduceMin"] == 1 and ops["GatherElements"] == 1 and ops.get("ArgMin", 0) == 0
        assert ops["TopK"] == 2  # over the 55 group minima, then over the k x 55 candidates
        consts = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        assert [int(consts[n.input[1]][0]) for n in proto.graph.node if n.op_type == "TopK"] == [k, k]
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        x = q.clone()
        x[1, 3, 4] = float("nan")
        got = sess.run(None, {"q": x.numpy()})[0]
        want = scorer(x, bank).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        assert np.isnan(got[1, 3, 4]) and np.isfinite(np.delete(got.reshape(-1), 32 * 32 + 3 * 32 + 4)).all()
    plain = KNNScorer(k=3)
    plain.grouped = False
    ops = op_counts(to_onnx_proto(_BankGraph(plain, bank).eval(), (q,), ["q"], ["score"], 18, "gemm"))
    assert ops.get("ReduceMin", 0) == 0 and ops["TopK"] == 1


def test_knn_scorer_chunking_gives_same_result() -> None:
    torch.manual_seed(6)
    q = torch.randn(3, 7, 7, 8)
    bank = torch.randn(50, 8)
    one = KNNScorer(k=3, chunk=10_000)(q, bank)
    for chunk in (1, 5, 16, 147):
        torch.testing.assert_close(KNNScorer(k=3, chunk=chunk)(q, bank), one, atol=1e-6, rtol=0)


def test_knn_scorer_chunks_positions_not_the_batch() -> None:
    """Chunking is per image, so a batch gives the same numbers as its images scored one by one."""
    torch.manual_seed(9)
    q = torch.randn(4, 5, 6, 8)
    bank = torch.randn(30, 8)
    scorer = KNNScorer(k=2, chunk=7)
    batch = scorer(q, bank)
    single = torch.cat([scorer(q[i : i + 1], bank) for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch, _brute_knn(q, bank, 2), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="chunk"):
        KNNScorer(k=1, chunk=0)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_scorer_is_accurate_for_near_duplicate_queries(k: int) -> None:
    """Queries (almost) on a prototype: the expanded |x|^2 - 2xy + |y|^2 form alone would be off by ~3e-4."""
    gen = torch.Generator().manual_seed(11)
    bank = torch.nn.functional.normalize(torch.randn(200, 64, generator=gen) + 3.0, dim=1)
    q = bank[:50] + 1e-6 * torch.randn(50, 64, generator=gen)
    got = KNNScorer(k=k)(q[None, None], bank)[0, 0]
    want = _brute_knn(q[None, None], bank, k)[0, 0]
    torch.testing.assert_close(got.double(), want.double(), atol=2e-6, rtol=1e-5)
    if k == 1:
        assert float(got.max()) < 1e-5


def test_knn_scorer_zero_at_bank_points_and_k_clamped() -> None:
    torch.manual_seed(7)
    bank = torch.randn(4, 8)
    got = KNNScorer(k=1)(bank[None, None], bank)
    assert got.abs().max() < 1e-3
    # k larger than the bank: mean over the whole bank
    q = torch.randn(1, 1, 3, 8)
    torch.testing.assert_close(KNNScorer(k=10)(q, bank), _brute_knn(q, bank, 4), atol=1e-4, rtol=1e-4)


def test_knn_scorer_empty_bank_raises() -> None:
    scorer = KNNScorer(k=1)
    with pytest.raises(ValueError, match="memory bank is empty"):
        scorer(torch.randn(1, 2, 2, 4), MemoryBank(4).bank)
    with pytest.raises(ValueError, match=r"bank\.k"):
        KNNScorer(k=0)


def test_memory_bank_fill_and_state_dict() -> None:
    bank = MemoryBank(8)
    assert len(bank) == 0
    assert bank.bank.shape == (0, 8)
    protos = torch.randn(30, 8, dtype=torch.float64)
    bank.fill(protos)
    assert len(bank) == 30
    assert bank.bank.dtype == torch.float32
    torch.testing.assert_close(bank.bank, protos.float())
    sd = bank.state_dict()
    assert sd["bank"].shape == (30, 8)
    # a fresh bank of another size loads it (shape comes from the checkpoint after fill)
    other = MemoryBank(8)
    other.fill(torch.zeros(30, 8))
    other.load_state_dict(sd)
    torch.testing.assert_close(other.bank, protos.float())


@pytest.mark.parametrize("shape", [(30, 7), (30,), (2, 15, 8)])
def test_memory_bank_fill_shape_check(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[M, 8\]"):
        MemoryBank(8).fill(torch.randn(*shape))
