"""benchmarks/position_diag.py: relative grid cells, per-cell Gaussians and the joint embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_benchmark

position_diag = load_benchmark("position_diag.py", "bench_position_diag")


def test_relative_cells_follow_each_images_valid_box() -> None:
    valid = np.zeros((2, 6, 8), dtype=bool)
    valid[0, 1:5, 2:6] = True  # a 4x4 box inside letterbox
    valid[1] = True  # the whole frame
    cells = position_diag.relative_cells(valid, 2)
    assert (cells[~valid] == -1).all()
    # image 0: the box's four quadrants, each 2x2 cells
    np.testing.assert_array_equal(
        cells[0, 1:5, 2:6], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    )
    # image 1: the same relative layout over the whole 6x8 frame
    assert cells[1, 0, 0] == 0 and cells[1, 0, 7] == 1 and cells[1, 5, 0] == 2 and cells[1, 5, 7] == 3
    assert (np.bincount(cells[1].ravel(), minlength=4) == 12).all()


def test_relative_cells_keep_invalid_cells_inside_the_box_out() -> None:
    valid = np.ones((1, 4, 4), dtype=bool)
    valid[0, 0, 0] = False
    cells = position_diag.relative_cells(valid, 4)
    assert cells[0, 0, 0] == -1 and cells[0, 3, 3] == 15


def test_gaussian_distance_is_the_shrunk_mahalanobis_distance() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)) * [1.0, 2.0, 0.5]
    cells = np.r_[np.zeros(200, int), np.ones(200, int)]
    x[cells == 1] += 5.0
    g = position_diag.PositionGaussians(grid=2, shrink=0.0)
    with pytest.raises(ValueError, match="coarser grid"):  # grid cells 2 and 3 have no samples
        g.fit(torch.from_numpy(x), torch.from_numpy(cells))
    cells4 = np.r_[cells, [2, 2, 3, 3]]
    x4 = np.r_[x, rng.normal(size=(4, 3))]
    g.fit(torch.from_numpy(x4), torch.from_numpy(cells4))
    q = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    d = g.distance(torch.from_numpy(q), torch.tensor([1, 1])).numpy()
    mu, cov = x[cells == 1].mean(0), np.cov(x[cells == 1].T)
    want = [np.sqrt((v - mu) @ np.linalg.inv(cov) @ (v - mu)) for v in q]
    np.testing.assert_allclose(d, want, rtol=1e-5)
    assert d[0] > 5 > d[1]  # far from cell 1's Gaussian, near its mean


def test_shared_covariance_pools_the_scatter_around_each_cells_mean() -> None:
    rng = np.random.default_rng(1)
    cells = np.repeat(np.arange(4), 300)
    x = rng.normal(size=(1200, 3)) * [1.0, 2.0, 0.5] + np.repeat(rng.normal(size=(4, 3)) * 10, 300, axis=0)
    g = position_diag.PositionGaussians(grid=2, shrink=0.0, shared=True).fit(
        torch.from_numpy(x), torch.from_numpy(cells)
    )
    assert g.precision is not None and g.precision.shape == (1, 3, 3)
    means = np.stack([x[cells == k].mean(0) for k in range(4)])
    resid = x - means[cells]
    pooled = resid.T @ resid / (1200 - 4)  # within-cell scatter: the cells' offsets do not inflate it
    np.testing.assert_allclose(np.linalg.inv(g.precision[0].numpy()), pooled, rtol=1e-8)
    assert np.allclose(np.diag(pooled), [1.0, 4.0, 0.25], rtol=0.15)
    q = means[2] + np.array([0.0, 4.0, 0.0])  # two standard deviations along the second axis
    d = g.distance(torch.from_numpy(q[None]), torch.tensor([2])).numpy()
    np.testing.assert_allclose(
        d, [np.sqrt((q - means[2]) @ np.linalg.inv(pooled) @ (q - means[2]))], rtol=1e-5
    )
    assert 1.7 < d[0] < 2.3
    # the same point judged against another cell's mean is far
    assert g.distance(torch.from_numpy(q[None]), torch.tensor([0])).item() > 3 * d[0]


def test_joint_embedding_shape_and_average() -> None:
    f1 = torch.ones(2, 4, 6, 8)
    f2 = torch.arange(3 * 3 * 4, dtype=torch.float32).view(1, 3, 3, 4).expand(2, 3, 3, 4)
    emb = position_diag.joint_embedding([torch.zeros(2, 1, 12, 16), f1, f2])
    assert emb.shape == (2, 6, 8, 7)
    assert torch.allclose(emb[..., :4], torch.ones(2, 6, 8, 4))  # a constant stays constant at the border


def test_roi_resampling_gives_every_image_the_same_positions_per_cell() -> None:
    np.testing.assert_array_equal(
        position_diag.roi_cells(4, 2).view(4, 4).numpy(),
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]],
    )
    # two images whose boxes differ in size and place: a left-right ramp over each box
    valid = np.zeros((2, 6, 8), dtype=bool)
    valid[0, 1:5, 2:6] = True
    valid[1] = True
    emb = torch.zeros(2, 6, 8, 1)
    emb[0, 1:5, 2:6, 0] = torch.linspace(0, 1, 4)
    emb[1, :, :, 0] = torch.linspace(0, 1, 8)
    r = position_diag.roi_resample(emb, valid, 4)
    assert r.shape == (2, 4, 4, 1)
    assert torch.all(r[..., 0].diff(dim=-1) > 0)  # the ramp runs along every row of both
    assert torch.allclose(r[..., 0].diff(dim=-2), torch.zeros(2, 3, 4), atol=1e-6)
    assert torch.allclose(r[0, :, 0, 0], torch.zeros(4)) and torch.allclose(r[0, :, -1, 0], torch.ones(4))


def test_distance_maps_native_and_roi_are_zero_off_the_part() -> None:
    rng = np.random.default_rng(2)
    valid = np.zeros((3, 8, 8), dtype=bool)
    valid[:, 2:8, 1:7] = True
    emb = torch.from_numpy(rng.normal(size=(3, 8, 8, 2)))
    g = position_diag.PositionGaussians(grid=2, shrink=0.1)
    x = torch.from_numpy(rng.normal(size=(400, 2)))
    g.fit(x, torch.arange(400) % 4)
    native = position_diag.distance_maps(g, emb, valid, None)
    cells = torch.from_numpy(position_diag.relative_cells(valid, 2))
    want = g.distance(emb[torch.from_numpy(valid)], cells[cells >= 0])
    assert torch.allclose(native[torch.from_numpy(valid)], want)
    roi = position_diag.distance_maps(g, emb, valid, 4)
    for d in (native, roi):
        assert (d[torch.from_numpy(~valid)] == 0).all() and (d[torch.from_numpy(valid)] > 0).all()
    # same Gaussians, nearby positions: the two forms agree on the scale of the distances
    assert 0.5 < roi[torch.from_numpy(valid)].mean() / native[torch.from_numpy(valid)].mean() < 1.5


def test_principal_axes_order_and_projection() -> None:
    # variance 9, 4, 1 along three axes rotated by a known orthogonal matrix
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 3, generator=gen) * torch.tensor([3.0, 2.0, 1.0])
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen))
    x = z @ q.T + torch.tensor([5.0, -1.0, 2.0])
    mean, axes = position_diag.principal_axes(x, 2)
    assert axes.shape == (3, 2)
    torch.testing.assert_close(mean, torch.tensor([5.0, -1.0, 2.0]), atol=0.06, rtol=0)
    # the first axis is q's first column, the second q's second (up to sign)
    assert abs(float(axes[:, 0] @ q[:, 0])) > 0.999
    assert abs(float(axes[:, 1] @ q[:, 1])) > 0.999
    var = ((x - mean) @ axes).var(0)
    torch.testing.assert_close(var, torch.tensor([9.0, 4.0]), rtol=0.05, atol=0)
