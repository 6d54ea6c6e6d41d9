"""Refinement losses (§IV-C): each is zero where it should be and grows with the error it is named after."""

from __future__ import annotations

import math

import pytest
import torch

from server import losses as L
from server.geometry import project
from server.models.graph import cotangent_laplacian
from tests.server.test_models_graph import small_mesh


def test_laplacian_loss_ignores_translation_penalises_bumps() -> None:
    v, faces = small_mesh()
    lap = cotangent_laplacian(v, faces)
    shift = torch.zeros(1, 20, 3)
    shift[..., 1] = 0.002
    assert L.laplacian_loss(shift, lap).item() == pytest.approx(0.0, abs=1e-6)
    bump = torch.zeros(1, 20, 3)
    bump[0, 7, 2] = 0.001
    assert L.laplacian_loss(bump, lap).item() > 0.1  # 1 mm spike


def test_normal_consistency() -> None:
    v, faces = small_mesh()
    assert L.normal_consistency_loss(v[None], v[None], faces).item() == pytest.approx(0.0, abs=1e-6)
    bent = v.clone()
    bent[7, 2] += 0.2
    assert L.normal_consistency_loss(bent[None], v[None], faces).item() > 1e-3


def test_flow_guide_loss_eq27() -> None:
    delta = torch.zeros(1, 4, 3)
    delta[0, :, 0] = 0.001  # 1 mm everywhere
    attention = torch.tensor([[0.1, 0.2, 0.9, 0.8]])
    value = L.flow_guide_loss(delta, attention, 0.1).item()
    norm = math.sqrt(1 + 1e-6)
    expected = norm * 2 / 4 - 0.1 * norm * (0.1 + 0.2 + 0.9 + 0.8) / 4
    assert value == pytest.approx(expected, rel=1e-5)
    # Moving a low-attention vertex costs; moving a high-attention one is rewarded.
    d = torch.zeros(1, 4, 3, requires_grad=True)
    g = torch.autograd.grad(L.flow_guide_loss(d + torch.tensor([1e-3, 0, 0]), attention), d)[0]
    assert g[0, 0, 0] > 0 and g[0, 2, 0] < 0


def plane(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """A frontal square (world, z = -0.5), counter-clockwise towards the camera."""
    g = torch.linspace(-0.05, 0.05, n)
    gy, gx = torch.meshgrid(g.flip(0), g, indexing="ij")
    v = torch.stack([gx, gy, torch.full_like(gx, -0.5)], -1).reshape(-1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, c, d], -1).reshape(-1, 3), torch.stack([a, d, b], -1).reshape(-1, 3)])
    return v, faces


CAMERA = torch.tensor([500.0, 500.0, 112.0, 112.0])
BOX = torch.tensor([[0.0, 0.0, 224.0]])


def test_flow_consistency_zero_for_matching_flow_and_grows_with_error() -> None:
    v, faces = plane()
    moved = v + torch.tensor([0.001, 0.0, 0.0])  # 1 mm right = 1 px at f=500, depth 0.5
    dx = (project(moved[None], CAMERA) - project(v[None], CAMERA))[0, 0, 0].item()
    flow = torch.zeros(1, 2, 224, 224)
    flow[:, 0] = dx
    w = torch.ones(1)
    good = L.flow_consistency_loss(v[None], moved[None], flow, BOX, BOX, CAMERA, faces, w)
    assert good.item() == pytest.approx(0.0, abs=1e-5)
    still = L.flow_consistency_loss(v[None], v[None], flow, BOX, BOX, CAMERA, faces, w)
    assert still.item() == pytest.approx(L.charbonnier(torch.tensor(dx), 0.05).item(), rel=1e-3)
    # The gradient pulls the t+1 vertices along the flow.
    nxt = v[None].clone().requires_grad_(True)
    L.flow_consistency_loss(v[None], nxt, flow, BOX, BOX, CAMERA, faces, w).backward()
    assert nxt.grad is not None and (nxt.grad[0, :, 0] <= 0).all() and nxt.grad[0, :, 0].sum() < 0


def test_flow_consistency_uses_each_frames_crop_box_and_skips_backfaces() -> None:
    v, faces = plane()
    flow = torch.zeros(1, 2, 224, 224)
    flow[:, 1] = 3.0
    # Crop t+1 sits 1.5 image px higher at scale 2 (size 112): a static face moves +3 crop px in y.
    box_t = torch.tensor([[56.0, 56.0, 112.0]])
    box_t1 = torch.tensor([[56.0, 54.5, 112.0]])
    w = torch.ones(1)
    value = L.flow_consistency_loss(v[None], v[None], flow, box_t, box_t1, CAMERA, faces, w)
    assert value.item() == pytest.approx(0.0, abs=1e-4)
    flipped = faces[:, [0, 2, 1]]  # normals now point away from the camera: nothing is visible
    far = L.flow_consistency_loss(v[None], v[None] + 0.01, flow, BOX, BOX, CAMERA, flipped, w)
    assert far.item() == 0.0


def test_landmark_loss_and_inter_ocular() -> None:
    lmk = torch.zeros(1, 68, 2)
    lmk[0, 36] = torch.tensor([10.0, 0.0])
    lmk[0, 45] = torch.tensor([70.0, 0.0])
    iod = L.inter_ocular(lmk)
    assert iod.item() == pytest.approx(60.0)
    assert L.landmark_loss(lmk, lmk, iod, torch.ones(1)).item() == pytest.approx(0.0, abs=1e-7)
    off = L.landmark_loss(lmk + torch.tensor([6.0, 0.0]), lmk, iod, torch.ones(1)).item()
    assert off == pytest.approx(L.charbonnier(torch.tensor(0.1), 0.01).item(), rel=1e-4)
    # Zero-confidence frames do not count.
    both = torch.cat([lmk, lmk + 30.0])
    assert L.landmark_loss(both, torch.cat([lmk, lmk]), iod.repeat(2), torch.tensor([1.0, 0.0])).item() == 0.0


def test_second_difference() -> None:
    linear = torch.arange(6.0)[:, None] * torch.ones(1, 3)
    assert L.second_difference(linear).item() == 0.0
    spike = torch.zeros(5, 1)
    spike[2] = 1.0
    assert L.second_difference(spike).item() == pytest.approx((1 + 4 + 1) / 3)
    assert L.second_difference(torch.ones(2, 3)).item() == 0.0


def test_anchored_flow_zero_for_truth_motion_positive_when_perturbed_per_frame_boxes() -> None:
    """Anchor a -> frame t: a toy mesh whose vertices move with a smooth field; the flow map (stored at 112 px,
    values in 224-crop px) is that field's projected motion plus the shift between the two frames' crop boxes."""
    v, faces = plane()
    a = v[None]
    # A non-rigid motion: x displacement grows with y (a shear), 0.6-1.8 mm.
    t = a + torch.stack([0.0006 + 0.004 * (v[:, 1] - v[:, 1].min()), 0 * v[:, 1], 0 * v[:, 1]], -1)[None]
    box_a = torch.tensor([[56.0, 56.0, 112.0]])
    box_t = torch.tensor([[57.0, 56.0, 112.0]])  # crop t 1 image px right: everything moves -2 crop px in x
    pa = L.image_to_crop(project(a, CAMERA), box_a)[0]
    pt = L.image_to_crop(project(t, CAMERA), box_t)[0]
    # At a fixed depth the crop-px motion is affine in the crop-a position, which bilinear sampling reproduces.
    design = torch.cat([pa, torch.ones(pa.shape[0], 1)], 1)
    coef = torch.linalg.lstsq(design, pt - pa).solution  # (3, 2)
    ys, xs = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 2) * 2.0 + 1.0  # 224-crop px of each 112-map pixel centre
    field = torch.cat([centres, torch.ones(centres.shape[0], 1)], 1) @ coef
    flow = field.T.reshape(1, 2, 112, 112)
    w = torch.ones(1)
    truth = L.anchored_flow_loss(a, t, flow.half(), box_a, box_t, CAMERA, faces, w, eps=0.05)
    assert truth.item() < 1e-3  # float16 storage only
    wrong_box = L.anchored_flow_loss(a, t, flow, box_a, box_a, CAMERA, faces, w, eps=0.05)
    assert wrong_box.item() > 1.0  # ignoring crop t's own box misses the 2 px shift
    held = L.anchored_flow_loss(a, a, flow, box_a, box_t, CAMERA, faces, w, eps=0.05)  # no motion at all
    assert held.item() > truth.item() + 0.3
    bumped = t.clone()
    bumped[0, 7, 2] -= 0.002  # one vertex 2 mm towards the camera
    assert L.anchored_flow_loss(a, bumped, flow, box_a, box_t, CAMERA, faces, w).item() > truth.item()
    # Zero pair weight: nothing counts.
    assert L.anchored_flow_loss(a, bumped, flow, box_a, box_t, CAMERA, faces, torch.zeros(1)).item() == 0.0
