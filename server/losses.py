"""Self-supervised losses of the refinement (paper §IV-C, eq. 23-27) plus the flow-consistency signal that
carries micro-motion: landmark reprojection, flow consistency, Laplacian, normal, flow-guided, priors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from server.geometry import project

MM = 1000.0
"""Metres -> millimetres: geometric losses are computed in millimetres so their weights are O(1)."""


def charbonnier(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Robust penalty sqrt(x² + eps²) - eps: quadratic below eps, linear above. Same shape as x."""
    return torch.sqrt(x * x + eps * eps) - eps


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit face normals (B, F, 3) of vertices (B, V, 3); faces (F, 3) counter-clockwise seen from outside."""
    corners = vertices[:, faces]  # (B, F, 3, 3)
    n = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
    return F.normalize(n, dim=-1, eps=1e-12)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (B, V, 3)."""
    corners = vertices[:, faces]
    n = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])  # (B, F, 3)
    out = torch.zeros_like(vertices)
    for k in range(3):
        out = out.index_add(1, faces[:, k], n)
    return F.normalize(out, dim=-1, eps=1e-12)


def laplacian_loss(delta: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """Eq. 25: E[||L ΔV||²] with the cotangent Laplace-Beltrami operator. delta (B, V, 3) metres -> scalar (mm²)."""
    batch, nv, _ = delta.shape
    flat = (delta * MM).permute(1, 0, 2).reshape(nv, batch * 3)
    lap = torch.sparse.mm(laplacian, flat)  # (V, B*3)
    return lap.pow(2).sum() / (batch * nv)


def normal_consistency_loss(vertices: torch.Tensor, vertices_init: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Eq. 26: mean over faces of 1 - n_f · n_f0 between the refined and initial meshes (B, V, 3)."""
    n = face_normals(vertices, faces)
    n0 = face_normals(vertices_init, faces).detach()
    return (1.0 - (n * n0).sum(-1)).mean()


def flow_guide_loss(delta: torch.Tensor, attention: torch.Tensor, lambda_flow: float = 0.1) -> torch.Tensor:
    """Eq. 27: E[||ΔV|| M_low] - λ_flow E[||ΔV|| W], M_low = [W < 0.5]. delta (B, V, 3) metres, attention (B, V).

    ||ΔV|| in millimetres, smoothed at 0 (1 µm) so the gradient exists at the initial ΔV = 0."""
    norm = torch.sqrt((delta * MM).pow(2).sum(-1) + 1e-6)  # (B, V)
    low = (attention < 0.5).to(norm.dtype)
    return (norm * low).mean() - lambda_flow * (norm * attention.detach()).mean()


def image_to_crop(points: torch.Tensor, boxes: torch.Tensor, crop_size: int = 224) -> torch.Tensor:
    """Image px -> crop px: (p - [x0, y0]) * crop_size / size. points (B, N, 2), boxes (B, 3) [x0, y0, size]."""
    return (points - boxes[:, None, :2]) * (crop_size / boxes[:, None, 2:3])


def sample_flow(flow: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear flow at continuous crop-pixel positions (pixel i spans [i, i+1)). flow (B, 2, H, W),
    points (B, N, 2) (x, y) -> (B, N, 2). Outside the crop the border value is returned (callers mask)."""
    h, w = flow.shape[-2:]
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=points.dtype, device=points.device)
    grid = (points * scale - 1.0)[:, :, None, :]  # (B, N, 1, 2)
    out = F.grid_sample(flow, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)


def flow_consistency_loss(
    world_t: torch.Tensor, world_t1: torch.Tensor, flow: torch.Tensor, boxes_t: torch.Tensor, boxes_t1: torch.Tensor,
    camera: torch.Tensor, faces: torch.Tensor, weight: torch.Tensor, vertex_mask: torch.Tensor | None = None,
    eps: float = 0.05,
) -> torch.Tensor:
    """Projected vertex motion vs observed optical flow, the signal that carries micro-motion.

    world_t, world_t1 (B, V, 3) world vertices at frames t and t+1; flow (B, 2, H, W) crop t -> crop t+1 in crop
    pixels; boxes_t, boxes_t1 (B, 3) crop boxes; camera (4,); weight (B,) per-pair confidence; vertex_mask (V,)
    bool (e.g. face regions only). Each vertex is projected into its own frame's crop (the flow relates the two
    crop images); only vertices whose normal faces the camera at t and that fall inside crop t count.
    Charbonnier penalty (eps in crop px), mean over counted vertices. -> scalar.
    """
    return pair_flow_loss(world_t, world_t1, flow, boxes_t, boxes_t1, camera, faces, weight, vertex_mask, eps,
                          crop_size=flow.shape[-1])


def anchored_flow_loss(
    world_a: torch.Tensor, world_t: torch.Tensor, flow: torch.Tensor, boxes_a: torch.Tensor, boxes_t: torch.Tensor,
    camera: torch.Tensor, faces: torch.Tensor, weight: torch.Tensor, vertex_mask: torch.Tensor | None = None,
    eps: float = 0.05, crop_size: int = 224, visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Onset-anchored flow term: each visible face vertex's projected displacement from anchor frame a to frame t
    vs the flow computed directly from crop a to crop t (not accumulated), sampled at its crop-a position.

    The DEM integrates the dynamics from the onset (eq. 6), so the motion it must explain is the onset-relative
    one: 0.3-3 crop px for a micro-expression against ~0.05 px of flow noise, where adjacent-frame motion
    (~0.04 px) drowns in that noise. world_a, world_t (B, V, 3) world vertices; flow (B, 2, h, h) crop a -> crop t
    in pixels of the `crop_size` crop, stored at any resolution h (e.g. 112 to halve memory); boxes_a, boxes_t
    (B, 3) each frame's own crop box; weight (B,) pair confidence (× seam cross-fade). -> scalar (crop px).
    """
    return pair_flow_loss(world_a, world_t, flow, boxes_a, boxes_t, camera, faces, weight, vertex_mask, eps,
                          crop_size, visible)


def facing_camera(world: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V) bool: vertices of world meshes (B, V, 3) whose normal faces the camera at the origin."""
    return (vertex_normals(world, faces) * -world).sum(-1) > 0


def pair_flow_loss(
    world_a: torch.Tensor, world_b: torch.Tensor, flow: torch.Tensor, boxes_a: torch.Tensor, boxes_b: torch.Tensor,
    camera: torch.Tensor, faces: torch.Tensor, weight: torch.Tensor, vertex_mask: torch.Tensor | None,
    eps: float, crop_size: int, visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Shared body of the flow terms: frame a -> b projected vertex motion (crop px of `crop_size`) vs the flow
    (B, 2, h, w) a -> b in those pixels, bilinearly sampled at the crop-a position (rescaled when h != crop_size).
    Vertices whose normal faces the camera at a (or `visible` (B, V) bool when given: computed once by a caller
    whose meshes barely move between calls), inside crop a, in vertex_mask. Charbonnier, weighted mean."""
    p_a = image_to_crop(project(world_a, camera), boxes_a, crop_size)  # (B, V, 2)
    p_b = image_to_crop(project(world_b, camera), boxes_b, crop_size)
    with torch.no_grad():
        if visible is None:
            visible = facing_camera(world_a, faces)
        inside = ((p_a >= 0) & (p_a < crop_size)).all(-1)
        mask = visible & inside
        if vertex_mask is not None:
            mask = mask & vertex_mask[None]
        observed = sample_flow(flow.to(p_a.dtype), p_a * (flow.shape[-1] / crop_size))
    resid = torch.linalg.vector_norm(p_b - p_a - observed, dim=-1)  # (B, V) crop px
    w = mask.to(resid.dtype) * weight[:, None]
    return (charbonnier(resid, eps) * w).sum() / w.sum().clamp_min(1.0)


def inter_ocular(lmk68: torch.Tensor) -> torch.Tensor:
    """Outer eye-corner distance (points 36 and 45) of (B, 68, 2) landmarks -> (B,), at least 1 px."""
    return torch.linalg.vector_norm(lmk68[:, 36] - lmk68[:, 45], dim=-1).clamp_min(1.0)


def landmark_loss(
    predicted: torch.Tensor, observed: torch.Tensor, iod: torch.Tensor, weight: torch.Tensor, eps: float = 0.01,
) -> torch.Tensor:
    """Confidence-weighted reprojection error in inter-ocular units (Charbonnier). predicted/observed (B, L, 2)
    image px, iod (B,), weight (B,) -> scalar."""
    err = torch.linalg.vector_norm(predicted - observed, dim=-1) / iod[:, None]  # (B, L)
    return (charbonnier(err, eps).mean(-1) * weight).sum() / weight.sum().clamp_min(1e-6)


def second_difference(x: torch.Tensor) -> torch.Tensor:
    """Mean squared 2nd-order temporal difference of x (T, ...) (0 when T < 3): a mild smoothness prior."""
    if x.shape[0] < 3:
        return x.new_zeros(())
    return (x[2:] - 2.0 * x[1:-1] + x[:-2]).pow(2).mean()
