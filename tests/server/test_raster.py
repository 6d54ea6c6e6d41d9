"""The rasteriser (server/raster.py) and the onset-anchored photometric term it makes possible."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from server.raster import AnchoredPhotometry, gray_crops, rasterise


def _grid_mesh(n: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """An n x n grid of vertices (n², 2) from lo to hi pixels and its triangles."""
    xs = np.linspace(lo, hi, n)
    gx, gy = np.meshgrid(xs, xs)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            i = r * n + c
            faces += [(i, i + 1, i + n), (i + 1, i + n + 1, i + n)]
    return points, np.array(faces, np.int64)


def test_rasterise_interpolates_and_keeps_the_nearer_triangle() -> None:
    points = np.array([[2.0, 2.0], [18.0, 2.0], [2.0, 18.0], [18.0, 18.0]])
    faces = np.array([[0, 1, 2], [0, 1, 3]])
    near_first = rasterise(points, np.array([1.0, 1.0, 1.0, 2.0]), faces, 20, 20)
    near_second = rasterise(points, np.array([1.0, 1.0, 1.0, 0.5]), faces, 20, 20)
    tri, bary = near_first
    covered = tri >= 0
    assert covered.sum() > 100 and not covered[0, 0] and not covered[19, 19]
    np.testing.assert_allclose(bary[covered].sum(-1), 1.0, atol=1e-5)
    ys, xs = np.nonzero(covered)
    corners = points[faces[tri[ys, xs]]]  # (M, 3, 2)
    np.testing.assert_allclose((bary[ys, xs, :, None] * corners).sum(1), np.stack([xs, ys], 1), atol=1e-4)
    # (5, 5) lies in both triangles: the one whose depth there is smaller is drawn.
    assert near_first[0][5, 5] == 0 and near_second[0][5, 5] == 1


def test_photometric_term_finds_a_subpixel_shift_under_flicker() -> None:
    rng = np.random.default_rng(0)
    size = 64
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2.0) * 3.0
    shift = np.array([0.6, -0.4])  # the content moves by this many pixels between the anchor and frame 1
    moved = cv2.warpAffine(texture, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (size, size),
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    gray = torch.as_tensor(np.stack([texture, 1.1 * moved + 4.0]))  # frame 1 is also 10 % brighter
    points, faces = _grid_mesh(9, 12.0, 52.0)
    photometry = AnchoredPhotometry(gray, {0: points}, {0: np.ones(len(points))}, faces, np.ones(len(faces), bool),
                                    torch.tensor([0]), torch.tensor([1]), stride=1)
    assert int(photometry.valid.sum()) > 1000

    def loss(offset: torch.Tensor) -> torch.Tensor:
        px = torch.as_tensor(points, dtype=torch.float32)[None] + offset
        return photometry.loss(px, torch.ones(1), eps=0.5)

    assert float(loss(torch.as_tensor(shift, dtype=torch.float32))) < 0.5 * float(loss(torch.zeros(2)))
    # Its gradient leads there: plain gradient descent on the mesh's translation recovers the shift.
    offset = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([offset], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss(offset).backward()
        opt.step()
    np.testing.assert_allclose(offset.detach().numpy(), shift, atol=0.08)


def test_gray_crops_are_blurred_grey_levels() -> None:
    crops = np.zeros((2, 32, 32, 3), np.uint8)
    crops[:, 16:, :] = 200
    out = gray_crops(crops, sigma=1.0)
    assert out.shape == (2, 32, 32) and out.dtype == np.float32
    assert out[0, 0, 0] == pytest.approx(0.0, abs=1e-3) and out[0, 31, 0] == pytest.approx(200.0, abs=1e-2)
    assert 0.0 < out[0, 16, 0] < 200.0  # the edge is softened


@pytest.mark.usefixtures("one_torch_thread")
def test_refinement_runs_with_the_photometric_term_on_a_made_clip(tmp_path: Path) -> None:
    from server.fit import builtin_head_for_clip, fit_coarse
    from server.preprocess import preprocess
    from server.refine import RefineConfig, refine
    from server.synth import AUEvent, make_clip

    brow = AUEvent("AU1_inner_brow_raise", onset=2, apex=5, apex_end=6, offset=9, peak_mm=3.0)
    make_clip(tmp_path / "clip.mp4", fps=30.0, frames=10, width=320, height=240, seed=2, aus=[brow])
    pre = preprocess(str(tmp_path / "clip.mp4"), flow="fast", cache_dir=str(tmp_path / "cache"))
    model = builtin_head_for_clip(pre)
    coarse = fit_coarse(model, pre)
    cfg = replace(RefineConfig(), w_photo=0.02, photo_stride=3, solve_rigid_steps=10, solve_steps=20, iterations=3)
    result = refine(model, pre, coarse, stages="full", config=cfg)
    final = result.report["loss_final"]
    assert "photometric" in final and np.isfinite(final["photometric"]) and final["photometric"] > 0
    solve = result.report["onset_solve"]["losses"]
    assert solve["data_final"] < solve["data_initial"]  # with the photometric term inside, the solve's loss falls
    # The networks' photometric term does not depend on the anchored flow term being on.
    alone = refine(model, pre, coarse, stages="full", config=replace(cfg, w_anchor_flow=0.0, iterations=2))
    assert "photometric" in alone.report["loss_final"] and "anchor_flow" not in alone.report["loss_final"]
