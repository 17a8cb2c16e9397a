"""Tests for trainer.models.masf.position: the position cue's box, resampling, Gaussians and export."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from torch import nn

from engines.export.trt_ops import op_counts, trt10_issues, unsupported_ops
from trainer.export.onnx import to_onnx_proto
from trainer.models.masf.position import (
    CellMoments,
    PositionCue,
    cell_blocks,
    position_cells,
    valid_box,
    valid_cells,
)


def _mask(n: int, h: int, w: int, boxes: list[tuple[int, int, int, int] | None]) -> torch.Tensor:
    m = torch.zeros(n, 1, h, w)
    for i, b in enumerate(boxes):
        if b is not None:
            m[i, 0, b[0] : b[1], b[2] : b[3]] = 1
    return m


def test_valid_box_finds_each_images_part_and_falls_back_to_the_whole_grid() -> None:
    cells = _mask(3, 6, 8, [(1, 5, 2, 6), (0, 6, 0, 8), None])
    cells[0, 0, 3, 4] = 0  # a hole inside the part does not shrink its box
    assert valid_box(cells).tolist() == [[1, 5, 2, 6], [0, 6, 0, 8], [0, 6, 0, 8]]


def test_valid_cells_are_the_letterbox_mask_at_the_feature_grid() -> None:
    valid = _mask(1, 16, 16, [(0, 16, 0, 9)])  # 9 real columns: cells 0-1 full, cell 2 a quarter real
    cells = valid_cells(valid, 1, (4, 4))
    assert cells[0, 0, 0].tolist() == [1, 1, 0, 0]
    assert valid_cells(None, 2, (3, 5)).shape == (2, 1, 3, 5)
    with pytest.raises(ValueError, match="not a multiple"):
        valid_cells(_mask(1, 15, 16, [None]), 1, (4, 4))


def test_position_cells_cut_each_box_into_the_grid_as_the_diagnostic_does() -> None:
    diag = load_benchmark("position_diag.py", "bench_position_diag_cells")
    rng = np.random.default_rng(5)
    valid = np.zeros((6, 36, 28), dtype=bool)
    for v in valid:  # boxes of many sizes and places
        r0, c0 = rng.integers(0, 12), rng.integers(0, 10)
        v[r0 : r0 + rng.integers(5, 36 - r0 + 1), c0 : c0 + rng.integers(4, 28 - c0 + 1)] = True
    cells = torch.from_numpy(valid[:, None]).float()
    for grid in (4, 16):
        got = position_cells(valid_box(cells), (36, 28), grid).view(6, 36, 28).numpy()
        want = diag.relative_cells(valid, grid)
        np.testing.assert_array_equal(got[valid], want[valid])
        assert got.min() >= 0 and got.max() < grid * grid  # off the box: an edge cell, zeroed later


def test_cell_moments_give_each_cells_shrunk_gaussian() -> None:
    rng = np.random.default_rng(0)
    cell = torch.from_numpy(rng.integers(0, 4, size=1200))
    x = torch.from_numpy(
        rng.normal(size=(1200, 3)) * [1.0, 2.0, 0.5] + rng.normal(size=(4, 3))[cell.numpy()] * 5
    )
    acc = CellMoments(4, 3)
    acc.add(x[:500], cell[:500])  # in two batches
    acc.add(x[500:], cell[500:])
    mean, factor = acc.gaussians(shrink=0.1)
    for k in range(4):
        xs = x[cell == k].numpy()
        cov = np.cov(xs.T)
        cov += 0.1 * np.diag(cov).mean() * np.eye(3)
        np.testing.assert_allclose(mean[k].numpy(), xs.mean(0), rtol=1e-5)
        np.testing.assert_allclose((factor[k] @ factor[k].T).numpy(), np.linalg.inv(cov), rtol=1e-4)
    with pytest.raises(ValueError, match="fewer than 2"):
        one = CellMoments(2, 3)
        one.add(x[:3], torch.tensor([0, 0, 1]))
        one.gaussians()
    with pytest.raises(ValueError, match="not finite"):
        bad = CellMoments(1, 3)
        bad.add(
            torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]), torch.zeros(3).long()
        )
        bad.gaussians()


def test_cell_blocks_put_each_position_in_a_slot_of_its_own_cell() -> None:
    rng = np.random.default_rng(7)
    h, w = 36, 28
    valid = np.zeros((8, h, w), dtype=bool)
    for v in valid[:-1]:  # boxes of many sizes and places, some smaller than the grid
        r0, c0 = rng.integers(0, 30), rng.integers(0, 24)
        v[r0 : r0 + rng.integers(1, h - r0 + 1), c0 : c0 + rng.integers(1, w - c0 + 1)] = True
    valid[-1] = True  # the whole grid
    cells = torch.from_numpy(valid[:, None]).float()
    for grid in (1, 4, 16, 40):  # 40: more cells than positions along each side
        box = valid_box(cells)
        index, slot = cell_blocks(box, (h, w), grid)
        per = -(-h // grid) * -(-w // grid)
        assert index.shape == (8, grid * grid * per) and slot.shape == (8, h * w)
        assert int(index.min()) >= 0 and int(index.max()) < h * w
        assert int(slot.min()) >= 0 and int(slot.max()) < grid * grid * per
        cell = position_cells(box, (h, w), grid)
        for n in range(8):
            inside = np.flatnonzero(valid[n].reshape(-1))
            s = slot[n, inside]
            # every position of the box has a slot of its own, in its own cell's block, that reads it back
            assert len(set(s.tolist())) == inside.size
            np.testing.assert_array_equal((s // per).numpy(), cell[n, inside].numpy())
            np.testing.assert_array_equal(index[n, s].numpy(), inside)


def _fitted_cue(gen: torch.Generator, channels: list[int], grid: int = 4) -> PositionCue:
    cue = PositionCue(channels, grid=grid)
    acc = CellMoments(grid * grid, sum(channels))
    for _ in range(3):
        feats = [torch.randn(4, c, 16 // (2**j), 16 // (2**j), generator=gen) for j, c in enumerate(channels)]
        x, cell, _ = cue.embed(feats, None)
        acc.add(x.reshape(-1, x.shape[-1]), cell.reshape(-1))
    cue.mean, cue.factor = acc.gaussians()
    cue.stats = torch.tensor([2.0, 0.5])
    return cue


def test_distances_are_each_positions_mahalanobis_distance_to_its_cell() -> None:
    gen = torch.Generator().manual_seed(2)
    cue = _fitted_cue(gen, [3, 4])
    h, w = 13, 10  # 130 positions, sides not multiples of the grid
    x = torch.randn(2, h * w, 7, generator=gen)
    box = torch.tensor([[2.0, 13.0, 1.0, 8.0], [0.0, 13.0, 0.0, 10.0]])
    index, slot = cell_blocks(box, (h, w), 4)
    cell = position_cells(box, (h, w), 4)
    got = cue.distances(x, index, slot)
    precision = cue.factor @ cue.factor.transpose(1, 2)
    for n in range(2):
        r0, r1, c0, c1 = (int(v) for v in box[n])
        for m in [r * w + c for r in range(r0, r1) for c in range(c0, c1)]:
            k = int(cell[n, m])
            d = x[n, m] - cue.mean[k]
            assert got[n, m].item() == pytest.approx(float(d @ precision[k] @ d) ** 0.5, rel=1e-4)


def test_the_cue_matches_the_calibration_diagnostic() -> None:
    """The product module computes what benchmarks/position_diag.py measured (``--roi``)."""
    diag = load_benchmark("position_diag.py", "bench_position_diag_ref")
    gen = torch.Generator().manual_seed(3)
    cue = _fitted_cue(gen, [3, 4])
    feats = [torch.randn(2, 1, 32, 32, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)]
    feats.append(torch.randn(2, 4, 8, 8, generator=gen))
    valid = _mask(2, 64, 64, [(8, 56, 4, 44), (0, 64, 12, 64)])
    dist, cells = cue.raw(feats[1:], valid)
    emb = diag.joint_embedding(feats)  # [N, h, w, C], the same plain joint embedding
    gauss = diag.PositionGaussians(4)
    gauss.mean, gauss.precision = cue.mean.double(), (cue.factor @ cue.factor.transpose(1, 2)).double()
    vgrid = cells[:, 0].bool().numpy()
    want = diag.distance_maps(gauss, emb, vgrid, None)  # the native form, confirmed on five splits
    torch.testing.assert_close(dist[:, 0], want, rtol=1e-4, atol=1e-4)
    p = cue(feats[1:], valid, (64, 64))
    torch.testing.assert_close(
        p, diag.position_maps(_Sized((64, 64)), want, vgrid, (2.0, 0.5)), rtol=1e-4, atol=1e-4
    )


class _Sized:
    def __init__(self, size: tuple[int, int]) -> None:
        self.input_size = size


class _Graph(nn.Module):
    def __init__(self, cue: PositionCue) -> None:
        super().__init__()
        self.cue = cue

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, valid: torch.Tensor) -> Any:
        return self.cue([f1, f2], valid, (64, 64))


def test_the_cue_exports_with_parity_at_any_batch_size() -> None:
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(4)
    cue = _fitted_cue(gen, [3, 4]).eval()
    graph = _Graph(cue).eval()
    args = (torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 4, 8, 8, generator=gen))
    valid = _mask(2, 64, 64, [(8, 56, 4, 44), (0, 64, 12, 64)])
    proto = to_onnx_proto(graph, (*args, valid), ["f1", "f2", "valid"], ["position"], 18, "gemm")
    ops = op_counts(proto)
    # each position's cell; the positions into their cells' blocks and the distances back; no gathered factor
    assert ops["Floor"] == 2 and ops["GatherElements"] >= 2
    factors = {i.name for i in proto.graph.initializer if list(i.dims) == [16, 7, 7]}
    assert len(factors) == 1
    assert {n.op_type for n in proto.graph.node if factors & set(n.input)} == {"MatMul"}
    assert unsupported_ops(proto) == [] and trt10_issues(proto) == []
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    # another batch size, other boxes (one image without any real pixel): the same graph
    args3 = (torch.randn(3, 3, 16, 16, generator=gen), torch.randn(3, 4, 8, 8, generator=gen))
    valid3 = _mask(3, 64, 64, [(0, 32, 0, 64), None, (20, 60, 30, 50)])
    for (f1, f2), v in (((args[0], args[1]), valid), ((args3[0], args3[1]), valid3)):
        with torch.no_grad():
            want = graph(f1, f2, v).numpy()
        (got,) = sess.run(None, {"f1": f1.numpy(), "f2": f2.numpy(), "valid": v.numpy()})
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
