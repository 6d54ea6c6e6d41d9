"""Mesh graph operators (eq. 16, eq. 25) against dense references, values and gradients, on a small mesh."""

from __future__ import annotations

import numpy as np
import torch

from server.models.graph import GraphConv, cotangent_laplacian, mesh_edges, normalized_adjacency


def small_mesh() -> tuple[torch.Tensor, torch.Tensor]:
    """A bumpy 5×4 grid: 20 vertices, 24 triangles, irregular angles so cotangent weights differ."""
    rng = np.random.default_rng(1)
    gx, gy = np.meshgrid(np.linspace(0, 1, 5), np.linspace(0, 0.8, 4))
    v = np.stack([gx + rng.normal(0, 0.03, gx.shape), gy + rng.normal(0, 0.03, gy.shape), 0.1 * np.sin(3 * gx)], -1)
    idx = np.arange(20).reshape(4, 5)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, c, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)])
    return torch.tensor(v.reshape(-1, 3), dtype=torch.float32), torch.tensor(faces)


def dense_adjacency(faces: torch.Tensor, nv: int) -> torch.Tensor:
    a = torch.zeros(nv, nv)
    for f in faces.tolist():
        for i in range(3):
            j = (i + 1) % 3
            a[f[i], f[j]] = a[f[j], f[i]] = 1.0
    a_tilde = a + torch.eye(nv)
    d = a_tilde.sum(1).rsqrt()
    return d[:, None] * a_tilde * d[None, :]


def dense_cotangent(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Reference built angle by angle with acos, independent of the vectorised implementation."""
    vv = v.double().numpy()
    nv = vv.shape[0]
    w = np.zeros((nv, nv))
    area = np.zeros(nv)
    for f in faces.tolist():
        p = vv[f]
        area[f] += 0.5 * np.linalg.norm(np.cross(p[1] - p[0], p[2] - p[0])) / 3.0
        for k in range(3):
            i, j = f[(k + 1) % 3], f[(k + 2) % 3]
            e1, e2 = vv[i] - vv[f[k]], vv[j] - vv[f[k]]
            angle = np.arccos(e1 @ e2 / (np.linalg.norm(e1) * np.linalg.norm(e2)))
            w[i, j] += 0.5 / np.tan(angle)
            w[j, i] += 0.5 / np.tan(angle)
    lap = np.diag(w.sum(1)) - w
    lap = (area.mean() / area)[:, None] * lap
    return torch.tensor(lap, dtype=torch.float32)


def test_edges_are_unique_and_undirected() -> None:
    _, faces = small_mesh()
    edges = mesh_edges(faces)
    assert (edges[0] < edges[1]).all()
    # A 5×4 grid split into triangles: 4*4 horizontal + 5*3 vertical + 4*3 diagonals.
    assert edges.shape == (2, 16 + 15 + 12)


def test_normalized_adjacency_matches_dense() -> None:
    v, faces = small_mesh()
    sparse = normalized_adjacency(faces, v.shape[0]).to_dense()
    torch.testing.assert_close(sparse, dense_adjacency(faces, v.shape[0]))


def test_graph_conv_matches_dense_values_and_gradients() -> None:
    v, faces = small_mesh()
    nv = v.shape[0]
    adj_sparse = normalized_adjacency(faces, nv)
    adj_dense = dense_adjacency(faces, nv)
    torch.manual_seed(0)
    layer = GraphConv(5, 7)
    x = torch.randn(3, nv, 5, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = layer(x, adj_sparse)
    ref = adj_dense @ (x_ref @ layer.linear.weight.t()) + layer.bias
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, layer.linear.weight], g)
    grads_ref = torch.autograd.grad(ref, [x_ref, layer.linear.weight], g)
    torch.testing.assert_close(grads[0], grads_ref[0])
    torch.testing.assert_close(grads[1], grads_ref[1])


def test_cotangent_laplacian_matches_dense_reference_and_backward() -> None:
    v, faces = small_mesh()
    lap = cotangent_laplacian(v, faces)
    ref = dense_cotangent(v, faces)
    torch.testing.assert_close(lap.to_dense(), ref, atol=1e-5, rtol=1e-4)
    # Rows sum to zero: a rigid translation has no Laplacian.
    torch.testing.assert_close(lap.to_dense().sum(1), torch.zeros(v.shape[0]), atol=1e-5, rtol=0)
    x = torch.randn(v.shape[0], 3, dtype=torch.float32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    (torch.sparse.mm(lap, x) ** 2).sum().backward()
    ((ref @ x_ref) ** 2).sum().backward()
    assert x.grad is not None and x_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
