"""Small geometry shared by every stage: axis-angle rotations, the pinhole camera, rigid transforms.

Conventions are those of docs/internals.md: head coordinates y up, z towards the camera; the camera
looks down -z with y up; image pixels have v pointing down.
"""

from __future__ import annotations

import torch


def rotation_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula. axis_angle (..., 3) -> rotation matrices (..., 3, 3); smooth at zero."""
    angle = torch.linalg.vector_norm(axis_angle + 1e-12, dim=-1, keepdim=True)  # (..., 1)
    axis = axis_angle / angle
    x, y, z = axis.unbind(-1)
    zeros = torch.zeros_like(x)
    k = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand(k.shape)
    s = torch.sin(angle)[..., None]
    c = torch.cos(angle)[..., None]
    return eye + s * k + (1.0 - c) * (k @ k)


def to_world(vertices: torch.Tensor, root_rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Head coordinates -> world. vertices (B, V, 3), root_rotation (B, 3) axis-angle, translation (B, 3)."""
    rot = rotation_matrix(root_rotation)  # (B, 3, 3)
    return vertices @ rot.transpose(1, 2) + translation[:, None, :]


def project(points: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of world points to image pixels.

    points (B, N, 3) with z < 0 in front of the camera; camera (4,) = [fx, fy, cx, cy] or (B, 4).
    Returns (B, N, 2) pixels (u right, v down).
    """
    cam = camera if camera.dim() == 2 else camera[None].expand(points.shape[0], 4)
    fx, fy, cx, cy = (cam[:, i, None] for i in range(4))  # each (B, 1)
    depth = (-points[..., 2]).clamp_min(1e-6)  # (B, N)
    u = cx + fx * points[..., 0] / depth
    v = cy - fy * points[..., 1] / depth
    return torch.stack([u, v], dim=-1)


def default_camera(width: int, height: int, fov_deg: float = 30.0) -> torch.Tensor:
    """A plausible phone/webcam camera for an image of this size: [f, f, w/2, h/2]."""
    import math

    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor([f, f, width / 2.0, height / 2.0], dtype=torch.float32)
