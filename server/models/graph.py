"""Mesh graph operators for one fixed topology: normalised adjacency (eq. 16), graph convolution, cotangent
Laplace-Beltrami (eq. 25). Sparse matrices are built once from the faces."""

from __future__ import annotations

import torch
from torch import nn


def mesh_edges(faces: torch.Tensor) -> torch.Tensor:
    """Unique undirected edges of a triangle mesh. faces (F, 3) int -> (2, E) with row 0 < row 1."""
    f = faces.long()
    pairs = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], dim=0)  # (3F, 2)
    pairs = torch.sort(pairs, dim=1).values
    return torch.unique(pairs, dim=0).t().contiguous()


def normalized_adjacency(faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """D̃^{-1/2} (A + I) D̃^{-1/2} of eq. 16 as a coalesced sparse (V, V) float32 matrix."""
    edges = mesh_edges(faces).to(torch.long)
    loops = torch.arange(num_vertices, device=edges.device)
    rows = torch.cat([edges[0], edges[1], loops])
    cols = torch.cat([edges[1], edges[0], loops])
    ones = torch.ones(rows.shape[0], dtype=torch.float32, device=edges.device)
    degree = torch.zeros(num_vertices, dtype=torch.float32, device=edges.device).index_add_(0, rows, ones)
    inv_sqrt = degree.rsqrt()
    values = inv_sqrt[rows] * inv_sqrt[cols]
    adj = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (num_vertices, num_vertices), check_invariants=False
    )
    return adj.coalesce()


def cotangent_laplacian(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Cotangent Laplace-Beltrami operator L (V, V), sparse, for the Laplacian smoothness loss (eq. 25).

    (L x)_i = (Ā / A_i) Σ_j w_ij (x_i - x_j) with w_ij = (cot α_ij + cot β_ij) / 2 and A_i the barycentric
    vertex area. Dividing by A_i makes it the Laplace-Beltrami operator (independent of mesh density); the
    mean area Ā keeps the units of a graph Laplacian, so loss weights do not depend on the mesh's scale.
    vertices (V, 3) float, faces (F, 3) int. Isolated vertices get zero rows.
    """
    v = vertices.detach().to(torch.float64)
    f = faces.long()
    nv = v.shape[0]
    corners = v[f]  # (F, 3, 3)
    rows_list, cols_list, vals_list = [], [], []
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        a = corners[:, i] - corners[:, k]
        b = corners[:, j] - corners[:, k]
        cross = torch.linalg.vector_norm(torch.linalg.cross(a, b), dim=-1).clamp_min(1e-12)
        cot = (a * b).sum(-1) / cross  # angle at corner k, opposite edge (i, j)
        rows_list += [f[:, i], f[:, j]]
        cols_list += [f[:, j], f[:, i]]
        vals_list += [0.5 * cot, 0.5 * cot]
    rows = torch.cat(rows_list)
    cols = torch.cat(cols_list)
    w = torch.cat(vals_list)
    area = 0.5 * torch.linalg.vector_norm(
        torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), dim=-1
    )  # (F,)
    vert_area = torch.zeros(nv, dtype=torch.float64, device=v.device)
    for k in range(3):
        vert_area.index_add_(0, f[:, k], area / 3.0)
    used = vert_area > 0
    mean_area = vert_area[used].mean() if used.any() else torch.tensor(1.0, dtype=torch.float64)
    scale = torch.where(used, mean_area / vert_area.clamp_min(1e-30), torch.zeros_like(vert_area))  # (V,)
    diag = torch.zeros(nv, dtype=torch.float64, device=v.device).index_add_(0, rows, w)
    idx = torch.arange(nv, device=v.device)
    all_rows = torch.cat([rows, idx])
    all_cols = torch.cat([cols, idx])
    all_vals = torch.cat([-w, diag]) * scale[all_rows]
    lap = torch.sparse_coo_tensor(torch.stack([all_rows, all_cols]), all_vals, (nv, nv), check_invariants=False)
    lap = lap.coalesce()
    return lap.to(torch.float32)


def sparse_apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """matrix (V, V) sparse applied to every batch item of x (B, V, C) -> (B, V, C) in one sparse matmul."""
    batch, nv, ch = x.shape
    flat = x.permute(1, 0, 2).reshape(nv, batch * ch)  # (V, B*C)
    out = torch.sparse.mm(matrix, flat)  # (V, B*C)
    return out.reshape(nv, batch, ch).permute(1, 0, 2)


class MeshGraph(nn.Module):
    """The fixed operators of one topology, as buffers so they follow `.to(device)`.

    adjacency: normalised D̃^{-1/2}(A+I)D̃^{-1/2} (V, V) sparse; laplacian: cotangent Laplace-Beltrami (V, V)
    sparse built on `rest_vertices`; regions (V,) int64 labels 0..8.
    """

    adjacency: torch.Tensor
    laplacian: torch.Tensor
    faces: torch.Tensor
    regions: torch.Tensor

    def __init__(self, faces: torch.Tensor, rest_vertices: torch.Tensor, regions: torch.Tensor) -> None:
        super().__init__()
        nv = int(rest_vertices.shape[0])
        self.num_vertices = nv
        self.register_buffer("faces", faces.long().clone(), persistent=False)
        self.register_buffer("regions", regions.long().clone(), persistent=False)
        self.register_buffer("adjacency", normalized_adjacency(faces, nv), persistent=False)
        self.register_buffer("laplacian", cotangent_laplacian(rest_vertices, faces), persistent=False)


class GraphConv(nn.Module):
    """One graph convolution X' = Â X W + b (eq. 16 without the activation). x (B, V, C_in) -> (B, V, C_out)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.xavier_uniform_(self.linear.weight)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)  # (B, V, C_out); project first: Â is applied to the narrower side
        out = sparse_apply(adjacency, h)
        if self.bias is not None:
            out = out + self.bias
        return out
