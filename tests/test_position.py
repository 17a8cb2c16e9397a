"""Tests for trainer.models.masf.position: the position cue's box, resampling, Gaussians and export."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_benchmark
from torch import nn

from engines.export.trt_ops import op_counts, trt10_issues, unsupported_ops
from trainer.export.onnx import to_onnx_proto
from trainer.models.masf.position import (
    CellMoments,
    PositionCue,
    box_to_grid,
    grid_to_box,
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


@pytest.mark.parametrize("out", [4, 8, 12])
def test_box_to_grid_is_interpolate_of_the_cropped_box(out: int) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 5, 9, 11, generator=gen)
    boxes = [(1, 8, 2, 7), (0, 9, 0, 11), (3, 5, 4, 10)]
    got = box_to_grid(feats, torch.tensor(boxes, dtype=torch.float32), out)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        want = F.interpolate(
            feats[i : i + 1, :, r0:r1, c0:c1], size=(out, out), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(got[i : i + 1], want, rtol=0, atol=1e-5)


def test_grid_to_box_is_interpolate_onto_the_box_and_zero_elsewhere() -> None:
    gen = torch.Generator().manual_seed(1)
    values = torch.rand(2, 1, 8, 8, generator=gen) + 0.5
    boxes = [(1, 8, 2, 7), (0, 9, 0, 11)]
    got = grid_to_box(values, torch.tensor(boxes, dtype=torch.float32), (9, 11))
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        want = torch.zeros(1, 1, 9, 11)
        want[..., r0:r1, c0:c1] = F.interpolate(values[i : i + 1], size=(r1 - r0, c1 - c0), mode="bilinear")
        torch.testing.assert_close(got[i : i + 1], want, rtol=0, atol=1e-5)


def test_cell_moments_give_each_cells_shrunk_gaussian() -> None:
    rng = np.random.default_rng(0)
    blocks = torch.from_numpy(rng.normal(size=(4, 300, 3)) * [1.0, 2.0, 0.5] + rng.normal(size=(4, 1, 3)) * 5)
    acc = CellMoments(4, 3)
    acc.add(blocks[:, :120])  # in two batches
    acc.add(blocks[:, 120:])
    mean, factor = acc.gaussians(shrink=0.1)
    for k in range(4):
        x = blocks[k].numpy()
        cov = np.cov(x.T)
        cov += 0.1 * np.diag(cov).mean() * np.eye(3)
        np.testing.assert_allclose(mean[k].numpy(), x.mean(0), rtol=1e-5)
        np.testing.assert_allclose((factor[k] @ factor[k].T).numpy(), np.linalg.inv(cov), rtol=1e-4)
    with pytest.raises(ValueError, match="fewer than 2"):
        one = CellMoments(2, 3)
        one.add(blocks[:2, :1])
        one.gaussians()


def _fitted_cue(gen: torch.Generator, channels: list[int], grid: int = 4, roi: int = 8) -> PositionCue:
    cue = PositionCue(channels, grid=grid, roi=roi)
    acc = CellMoments(grid * grid, sum(channels))
    for _ in range(3):
        feats = [torch.randn(4, c, 16 // (2**j), 16 // (2**j), generator=gen) for j, c in enumerate(channels)]
        x, _, _ = cue.resampled(feats, None)
        acc.add(cue.cell_blocks(x))
    cue.mean, cue.factor = acc.gaussians()
    cue.stats = torch.tensor([2.0, 0.5])
    return cue


def test_distances_are_each_positions_mahalanobis_distance_to_its_cell() -> None:
    gen = torch.Generator().manual_seed(2)
    cue = _fitted_cue(gen, [3, 4])
    x = torch.randn(2, 7, 8, 8, generator=gen)
    got = cue.distances(x)
    precision = cue.factor @ cue.factor.transpose(1, 2)
    for n, i, j in [(0, 0, 0), (1, 7, 7), (0, 2, 5), (1, 5, 1)]:
        k = (i // 2) * 4 + j // 2  # 8 positions per side, 4 cells: 2 positions per cell side
        d = x[n, :, i, j] - cue.mean[k]
        assert got[n, 0, i, j].item() == pytest.approx(float(d @ precision[k] @ d) ** 0.5, rel=1e-4)


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
    want = diag.distance_maps(gauss, emb, vgrid, 8)
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


def test_the_cue_exports_with_parity_and_static_shapes() -> None:
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(4)
    cue = _fitted_cue(gen, [3, 4]).eval()
    graph = _Graph(cue).eval()
    args = (torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 4, 8, 8, generator=gen))
    valid = _mask(2, 64, 64, [(8, 56, 4, 44), (0, 64, 12, 64)])
    proto = to_onnx_proto(graph, (*args, valid), ["f1", "f2", "valid"], ["position"], 18, "gemm")
    ops = op_counts(proto)
    assert ops["GridSample"] == 2  # the box in and the distances back: no per-position gather
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
