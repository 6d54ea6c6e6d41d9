"""Functional core of the head model: blendshapes, pose correctives and linear blend skinning in head coordinates.

Follows FLAME (Li et al. 2017, eq. 1-4) with two deliberate differences documented in docs/internals.md: the
root rotation is the identity (the rigid part lives outside, in `server.geometry.to_world`), and joints are
regressed from the identity mesh (template + shape blend), not from the expression-deformed mesh.
"""

from __future__ import annotations

import torch

from server.geometry import rotation_matrix

__all__ = ["rotation_matrix", "blend", "regress_joints", "pose_feature", "rigid_transforms", "skin", "embed_points"]


def blend(coeffs: torch.Tensor, dirs_flat: torch.Tensor) -> torch.Tensor:
    """Linear blendshape offsets (FLAME eq. 2-3). coeffs (B, K), dirs_flat (K, V*3) -> (B, V, 3).

    One row of dirs_flat is one shape key in Blender: the displacement at coefficient 1.
    """
    return (coeffs @ dirs_flat).reshape(coeffs.shape[0], -1, 3)


def regress_joints(j_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Joint positions from a mesh. j_regressor (J, V), vertices (B, V, 3) -> (B, J, 3)."""
    return torch.einsum("jv,bvc->bjc", j_regressor, vertices)


def pose_feature(rot_mats: torch.Tensor) -> torch.Tensor:
    """Pose-corrective feature of FLAME eq. 4: flattened (R_j - I) for joints 1..J-1.

    rot_mats (B, J, 3, 3) -> (B, 9 * (J - 1)), row-major per joint, joints in order (FLAME's layout of posedirs).
    """
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - eye).reshape(rot_mats.shape[0], -1)


def rigid_transforms(
    rot_mats: torch.Tensor, joints: torch.Tensor, parents: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """World transforms of every joint down the kinematic chain, relative to the rest pose.

    rot_mats (B, J, 3, 3) local rotations about each joint; joints (B, J, 3) rest joint positions; parents (J,)
    with -1 at the root. Returns (posed joints (B, J, 3), skinning transforms (B, J, 3, 4)) where a transform
    maps a rest-space point to its posed position under that joint alone.
    """
    rots: list[torch.Tensor] = []
    trans: list[torch.Tensor] = []
    for j, p in enumerate(parents):
        if p < 0:
            rots.append(rot_mats[:, j])
            trans.append(joints[:, j])
        else:
            # A child's frame: parent's rotation composed with the local one, origin at the rotated offset.
            rots.append(rots[p] @ rot_mats[:, j])
            trans.append(trans[p] + (rots[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
    glob_r = torch.stack(rots, dim=1)  # (B, J, 3, 3)
    glob_t = torch.stack(trans, dim=1)  # (B, J, 3) posed joint positions
    # Skinning transform x -> R x + (t - R j_rest): rotate about the rest joint, then move to its posed place.
    offset = glob_t - (glob_r @ joints[..., None])[..., 0]  # (B, J, 3)
    return glob_t, torch.cat([glob_r, offset[..., None]], dim=-1)


def skin(vertices: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning (FLAME eq. 1). vertices (B, V, 3) rest, weights (V, J), transforms (B, J, 3, 4).

    Returns (B, V, 3) posed vertices.
    """
    batch, n_joints = transforms.shape[:2]
    # Blend the transforms per vertex, stored column-major so each column is a contiguous (B, V, 3) slab, then
    # apply them with three fused multiply-adds: several times faster on CPU than V tiny batched matmuls.
    cols = (weights @ transforms.transpose(-1, -2).reshape(batch, n_joints, 12)).reshape(batch, -1, 4, 3)
    out = torch.addcmul(cols[:, :, 3], cols[:, :, 0], vertices[..., 0:1])
    out = torch.addcmul(out, cols[:, :, 1], vertices[..., 1:2])
    return torch.addcmul(out, cols[:, :, 2], vertices[..., 2:3])


def embed_points(
    vertices: torch.Tensor, faces: torch.Tensor, face_idx: torch.Tensor, bary: torch.Tensor
) -> torch.Tensor:
    """Points fixed on the surface by barycentric embedding.

    vertices (B, V, 3), faces (F, 3), face_idx (L,), bary (L, 3) -> (B, L, 3).
    """
    corners = vertices[:, faces[face_idx]]  # (B, L, 3, 3): landmark, corner, xyz
    return (corners * bary[None, :, :, None]).sum(dim=2)
