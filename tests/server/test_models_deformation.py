"""Dynamic-guided mesh deformation (eq. 7-22): attention, region patches, landmark lifting, the network."""

from __future__ import annotations

import pytest
import torch

from server.geometry import project
from server.models.deformation import (
    MeshDeformation,
    lift_landmarks,
    motion_attention,
    nearest_landmarks,
    patch_average,
    per_vertex,
    region_centroids,
)
from server.models.graph import MeshGraph
from tests.server.test_models_graph import small_mesh


def test_attention_only_the_moving_region_is_above_half() -> None:
    intensity = torch.tensor([[0.0, 0, 0, 0, 0, 0, 0, 8.0]])
    w = motion_attention(intensity)[0]
    # μ = 1, σ = √7, τ = 1 + 0.5√7: eq. 19 by hand.
    tau = 1.0 + 0.5 * 7**0.5
    expected = torch.sigmoid((intensity[0] - tau) / (tau + 1e-4))
    torch.testing.assert_close(w, expected)
    assert (w[:7] < 0.5).all() and w[7] > 0.5


def test_attention_uniform_motion_and_invalid_regions() -> None:
    w = motion_attention(torch.full((1, 8), 2.0))
    # Equal intensities: I - τ = 0 ... minus 0.5σ = 0, so every region sits at 0.5.
    torch.testing.assert_close(w, torch.full((1, 8), 0.5))
    valid = torch.ones(1, 8, dtype=torch.bool)
    valid[0, 0] = False
    w2 = motion_attention(torch.tensor([[100.0, 0, 0, 0, 0, 0, 0, 8.0]]), valid)
    assert w2[0, 0] == 0 and w2[0, 7] > 0.5  # the invalid region's huge value is ignored


def test_patch_average_5x5_at_known_centroid() -> None:
    fmap = torch.zeros(1, 2, 20, 20)
    fmap[0, 0, 8:13, 3:8] = 1.0  # a 5×5 block centred at pixel (x=5, y=10)
    fmap[0, 1] = torch.arange(20.0)[None, :]  # channel 1 = x coordinate
    centers = torch.tensor([[[5.7, 10.3], [6.0, 10.0], [float("nan"), 1.0]]])
    out = patch_average(fmap, centers, size=5)
    assert out[0, 0, 0] == pytest.approx(1.0)  # (5.7, 10.3) lies in pixel (5, 10), which spans [5, 6) × [10, 11)
    assert out[0, 1, 0] == pytest.approx(20 / 25)  # shifted by one column: 4 of 5 columns
    assert out[0, 0, 1] == pytest.approx(5.0) and out[0, 1, 1] == pytest.approx(6.0)  # mean x of columns 3..7, 4..8
    assert (out[0, 2] == 0).all()  # NaN centroid (empty region) -> zeros
    # At the border the patch is clipped, not zero-padded.
    border = patch_average(torch.ones(1, 1, 10, 10), torch.tensor([[[0.0, 0.0]]]), 5)
    assert border.item() == pytest.approx(1.0)


def test_region_centroids_and_per_vertex() -> None:
    pts = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [5.0, 5.0]]])
    regions = torch.tensor([1, 1, 3, 0])
    c = region_centroids(pts, regions)
    torch.testing.assert_close(c[0, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(c[0, 2], torch.tensor([10.0, 10.0]))
    assert torch.isnan(c[0, 1]).all()  # region 2 has no vertices
    feats = per_vertex(torch.arange(8.0).reshape(1, 8, 1) + 1, regions)
    torch.testing.assert_close(feats[0, :, 0], torch.tensor([1.0, 1.0, 3.0, 0.0]))


def test_lift_landmarks_inverts_projection_at_anchor_depth() -> None:
    camera = torch.tensor([700.0, 650.0, 110.0, 120.0])
    points = torch.tensor([[[0.03, -0.02, -0.55], [-0.05, 0.04, -0.62]]])
    px = project(points, camera)
    lifted = lift_landmarks(px, points + torch.tensor([0.01, 0.01, 0.0]), camera)  # same depth, other x/y
    torch.testing.assert_close(lifted, points, atol=1e-6, rtol=1e-5)


def make_graph() -> tuple[MeshGraph, torch.Tensor]:
    v, faces = small_mesh()
    regions = torch.tensor([1, 1, 2, 2, 3, 4, 4, 5, 5, 0, 6, 6, 7, 7, 8, 8, 8, 3, 0, 0])
    return MeshGraph(faces, v * 0.1, regions), v * 0.1


def deformation_inputs(batch: int, v: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    v_init = v[None].repeat(batch, 1, 1)
    motion = torch.randn(batch, 4, 16, 16, generator=g)
    centers = torch.rand(batch, 8, 2, generator=g) * 15
    attention = motion_attention(torch.rand(batch, 8, generator=g))
    lmk = torch.randn(batch, v.shape[0], 3 * k, generator=g)
    return v_init, motion, centers, attention, lmk


def test_deformation_zero_at_init_gradients_and_attention() -> None:
    graph, v = make_graph()
    torch.manual_seed(0)
    net = MeshDeformation(hidden=8, geo_layers=2, gcn_layers=2, motion_channels=4, landmark_k=2)
    inputs = deformation_inputs(3, v, 2)
    delta, w = net(graph, *inputs)
    assert delta.shape == (3, 20, 3) and w.shape == (3, 20)
    assert delta.abs().max() == 0  # zero output layer: starts at V_init
    assert (w[:, graph.regions == 0] == 0).all()
    delta.sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert grads["output.2.weight"] is not None and grads["output.2.weight"].abs().sum() > 0
    # After a step every branch influences the output.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    net.zero_grad()
    delta, _ = net(graph, *inputs)
    delta.pow(2).sum().backward()
    for name in ("geo.0.linear.weight", "motion_cnn.body.0.weight", "motion_cnn.attention.weight",
                 "fusion.0.weight", "gcn.0.linear.weight"):
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("flag", ["use_motion_features", "use_landmark_features", "use_geometry_features"])
def test_ablation_flags_remove_a_branch(flag: str) -> None:
    """The switched-off input has no effect, and the same weights with the branch on do read it."""
    graph, v = make_graph()

    def perturbed(**flags: bool) -> MeshDeformation:
        torch.manual_seed(1)
        net = MeshDeformation(hidden=8, motion_channels=4, landmark_k=2, **flags)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        return net

    off, on = perturbed(**{flag: False}), perturbed()
    v_init, motion, centers, attention, lmk = deformation_inputs(2, v, 2)
    changed = {
        "use_motion_features": (v_init, motion * 5 + 1, centers, attention, lmk),
        "use_landmark_features": (v_init, motion, centers, attention, lmk * 5 + 1),
        "use_geometry_features": None,
    }[flag]
    if changed is not None:
        torch.testing.assert_close(off(graph, *changed)[0], off(graph, v_init, motion, centers, attention, lmk)[0])
        assert not torch.allclose(on(graph, *changed)[0], on(graph, v_init, motion, centers, attention, lmk)[0])
    else:
        # V_init also feeds the deformation GCN (eq. 15), so the geometry branch is checked by its gradients.
        off(graph, v_init, motion, centers, attention, lmk)[0].sum().backward()
        assert all(p.grad is None for p in off.geo.parameters())
        on(graph, v_init, motion, centers, attention, lmk)[0].sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in on.geo.parameters())


def test_nearest_landmarks() -> None:
    verts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]])
    lmk = torch.tensor([[0.9, 0, 0], [4.0, 0, 0], [0.1, 0, 0]])
    idx = nearest_landmarks(verts, lmk, 2)
    assert idx.tolist() == [[2, 0], [0, 2], [1, 0]]
