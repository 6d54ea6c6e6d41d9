"""HeadModel: the one torch module that evaluates every FLAME-format head model (FLAME files or the built-in head)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from . import lbs
from .data import HeadModelData, HeadModelError


@dataclass
class HeadOutput:
    """A batch of evaluated heads, all in head coordinates (root rotation and translation not applied).

    vertices (B, V, 3), joints (B, J, 3) posed joint positions, landmarks68 (B, 68, 3), landmarks_mp (B, N, 3)
    (the MediaPipe points named by `HeadModelData.mp_indices`). The landmarks are embedded in the mesh when first
    read: the flow terms never read them, and embedding them cost the onset solve ~15 % of its time.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    model: HeadModel = field(repr=False)

    @cached_property
    def landmarks68(self) -> torch.Tensor:
        m = self.model
        return lbs.embed_points(self.vertices, m.faces, m.lmk68_faces, m.lmk68_bary)

    @cached_property
    def landmarks_mp(self) -> torch.Tensor:
        m = self.model
        return lbs.embed_points(self.vertices, m.faces, m.mp_faces, m.mp_bary)


class HeadModel(nn.Module):
    """FLAME-format head model as buffers only (no trainable parameters): every input is passed to forward."""

    v_template: torch.Tensor
    shapedirs_flat: torch.Tensor
    exprdirs_flat: torch.Tensor
    posedirs_flat: torch.Tensor
    j_regressor: torch.Tensor
    j_template: torch.Tensor
    j_shapedirs_flat: torch.Tensor
    expr_pose_dirs_flat: torch.Tensor
    weights: torch.Tensor
    faces: torch.Tensor
    lmk68_faces: torch.Tensor
    lmk68_bary: torch.Tensor
    mp_faces: torch.Tensor
    mp_bary: torch.Tensor
    mp_indices: torch.Tensor
    regions: torch.Tensor

    def __init__(self, data: HeadModelData) -> None:
        super().__init__()
        data.validate()
        self.data = data
        nv = data.num_vertices

        def f32(a: object) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float32).clone()

        def i64(a: object) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.int64).clone()

        self.register_buffer("v_template", f32(data.v_template))  # (V, 3)
        # Components first, flattened per vertex, so blending is one (B, K) @ (K, V*3) matmul.
        self.register_buffer("shapedirs_flat", f32(data.shapedirs).permute(2, 0, 1).reshape(-1, nv * 3).contiguous())
        self.register_buffer("exprdirs_flat", f32(data.exprdirs).permute(2, 0, 1).reshape(-1, nv * 3).contiguous())
        self.register_buffer("posedirs_flat", f32(data.posedirs).permute(2, 0, 1).reshape(-1, nv * 3).contiguous())
        self.register_buffer("j_regressor", f32(data.J_regressor))  # (J, V)
        # Joints are linear in shape (regressed from the identity mesh), so regress the bases once.
        j_template = self.j_regressor @ self.v_template  # (J, 3)
        j_shapedirs = torch.einsum("jv,svc->sjc", self.j_regressor, self.shapedirs_flat.reshape(-1, nv, 3))
        self.register_buffer("j_template", j_template)  # (J, 3)
        self.register_buffer("j_shapedirs_flat", j_shapedirs.reshape(-1, j_template.numel()).contiguous())  # (S, J*3)
        # Expression and pose correctives share one matmul.
        self.register_buffer("expr_pose_dirs_flat", torch.cat([self.exprdirs_flat, self.posedirs_flat]).contiguous())
        self.register_buffer("weights", f32(data.weights))  # (V, J)
        self.register_buffer("faces", i64(data.faces))  # (F, 3)
        self.register_buffer("lmk68_faces", i64(data.lmk68_faces))  # (68,)
        self.register_buffer("lmk68_bary", f32(data.lmk68_bary))  # (68, 3)
        self.register_buffer("mp_faces", i64(data.mp_faces))  # (N,)
        self.register_buffer("mp_bary", f32(data.mp_bary))  # (N, 3)
        self.register_buffer("mp_indices", i64(data.mp_indices))  # (N,)
        self.register_buffer("regions", i64(data.regions))  # (V,)
        self.parents: list[int] = [int(p) for p in data.parents]

    @property
    def num_vertices(self) -> int:
        return self.data.num_vertices

    @property
    def num_shape(self) -> int:
        return self.data.num_shape

    @property
    def num_expression(self) -> int:
        return self.data.num_expression

    @property
    def num_joints(self) -> int:
        return self.data.num_joints

    @property
    def expression_names(self) -> list[str]:
        return self.data.expression_names

    @property
    def joint_names(self) -> list[str]:
        return self.data.joint_names

    def _check(self, name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(tensor.shape) != shape:
            raise HeadModelError(f"HeadModel.forward got {name} of shape {tuple(tensor.shape)}, expected {shape}.")

    def identity_mesh(self, shape: torch.Tensor) -> torch.Tensor:
        """Template plus shape blend. shape (B, S) -> (B, V, 3).

        A shape expanded over the batch (`shape[None].expand(B, -1)`, stride 0) is blended once, not B times.
        """
        return _identity(self.v_template, self.shapedirs_flat, shape)

    def identity_joints(self, shape: torch.Tensor) -> torch.Tensor:
        """Rest joint positions of an identity, regressed from template + shape blend.

        shape (S,) -> (J, 3), or (B, S) -> (B, J, 3).
        """
        single = shape.dim() == 1
        batch = shape[None] if single else shape
        joints = self.j_template + (batch @ self.j_shapedirs_flat).reshape(batch.shape[0], -1, 3)
        return joints[0] if single else joints

    def rest_vertices(
        self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unposed mesh: template + shape + expression blends (+ pose correctives) (+ offsets). -> (B, V, 3).

        shape (B, S), expression (B, E), pose (B, J, 3) or None (no correctives), offsets (B, V, 3) or None.
        """
        verts = self.identity_mesh(shape) + lbs.blend(expression, self.exprdirs_flat)
        if pose is not None:
            verts = verts + lbs.blend(lbs.pose_feature(self._local_rotations(pose)), self.posedirs_flat)
        if offsets is not None:
            verts = verts + offsets
        return verts

    def _local_rotations(self, pose: torch.Tensor) -> torch.Tensor:
        """pose (B, J, 3) axis-angle -> (B, J, 3, 3) with the root forced to the identity (head coordinates)."""
        rots = lbs.rotation_matrix(pose[:, 1:])  # (B, J-1, 3, 3)
        eye = torch.eye(3, dtype=rots.dtype, device=rots.device).expand(pose.shape[0], 1, 3, 3)
        return torch.cat([eye, rots], dim=1)

    def forward(
        self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor, offsets: torch.Tensor | None = None,
    ) -> HeadOutput:
        """Evaluate a batch of heads in head coordinates; pose[:, 0] (the root) is ignored.

        shape (B, S), expression (B, E), pose (B, J, 3) axis-angle per joint, offsets (B, V, 3) rest-space
        displacements added before skinning, or None.
        """
        batch = shape.shape[0]
        self._check("shape", shape, (batch, self.num_shape))
        self._check("expression", expression, (batch, self.num_expression))
        self._check("pose", pose, (batch, self.num_joints, 3))
        if offsets is not None:
            self._check("offsets", offsets, (batch, self.num_vertices, 3))
        joints, vertices = self._posed(self.identity_mesh(shape), self.expr_pose_dirs_flat, self.weights, shape,
                                       expression, pose, offsets)
        return HeadOutput(vertices=vertices, joints=joints, model=self)

    def _posed(self, identity: torch.Tensor, expr_pose_dirs_flat: torch.Tensor, weights: torch.Tensor,
               shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor, offsets: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed joints (B, J, 3) and vertices (B, n, 3) of the n vertices whose identity mesh (B, n, 3), flat
        expression/pose blendshape columns (E + P, n*3) and skinning weights (n, J) are given: all of them
        (`forward`) or some (`HeadSubset`)."""
        joints_rest = self.identity_joints(shape)  # (B, J, 3), deliberately expression-free
        rot_mats = self._local_rotations(pose)  # (B, J, 3, 3)
        # FLAME eq. 2-4 in one matmul: expression blend and pose correctives (R_j - I for joints 1..J-1).
        coeffs = torch.cat([expression, lbs.pose_feature(rot_mats)], dim=1)  # (B, E + P)
        rest = identity + lbs.blend(coeffs, expr_pose_dirs_flat)
        if offsets is not None:
            rest = rest + offsets
        joints, transforms = lbs.rigid_transforms(rot_mats, joints_rest, self.parents)
        return joints, lbs.skin(rest, weights, transforms)

    def subset(self, ids: torch.Tensor) -> HeadSubset:
        """An evaluator of these vertices alone: `subset(ids)(shape, expression, pose)` equals
        `forward(shape, expression, pose).vertices[:, ids]` without evaluating the others."""
        return HeadSubset(self, ids)

    def zeros(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Neutral inputs (shape (B, S), expression (B, E), pose (B, J, 3)) on this module's device."""
        dev = self.v_template.device
        return (torch.zeros(batch, self.num_shape, device=dev), torch.zeros(batch, self.num_expression, device=dev),
                torch.zeros(batch, self.num_joints, 3, device=dev))


class HeadSubset:
    """Posed positions of some of a head model's vertices (B, n, 3), from their blendshape rows and skinning weights
    sliced once. Exact, because the joints come from the identity alone (`HeadModel.identity_joints`), not from
    the expression-blended mesh. The onset solve evaluates FLAME's face at 1000 of its 5023 vertices every step."""

    def __init__(self, model: HeadModel, ids: torch.Tensor) -> None:
        self.model = model
        cols = (ids[:, None] * 3 + torch.arange(3, device=ids.device)).flatten()  # the vertices' flat columns
        self.v_template = model.v_template[ids]
        self.shapedirs_flat = model.shapedirs_flat[:, cols].contiguous()
        self.expr_pose_dirs_flat = model.expr_pose_dirs_flat[:, cols].contiguous()
        self.weights = model.weights[ids].contiguous()

    def __call__(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        identity = _identity(self.v_template, self.shapedirs_flat, shape)
        return self.model._posed(identity, self.expr_pose_dirs_flat, self.weights, shape, expression, pose)[1]


def _identity(v_template: torch.Tensor, shapedirs_flat: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Template (n, 3) plus shape blend (S, n*3 columns) -> (B, n, 3); a shape expanded over the batch (stride 0)
    is blended once."""
    if shape.shape[0] > 1 and shape.stride(0) == 0:
        return (v_template + lbs.blend(shape[:1], shapedirs_flat)).expand(shape.shape[0], -1, -1)
    return v_template + lbs.blend(shape, shapedirs_flat)
