"""A numpy reference of the take's vertex formula, and the rig quantities Blender keys (numpy only).

The Blender rig reproduces a take exactly when it evaluates the same formula as this module:

    rest[t]     = template + expression_basis · expression[t]
                  + pose_corrective_basis · pose_features(pose[t]) + detail_weights[t] · detail_basis
    vertices[t] = LBS(rest[t], pose[t] with the root rotation ignored, joints_rest, joint_parents, skin_weights)

Shape keys carry the first line (keys before the armature), bones the second; the root rotation and
translation are the rigid head-to-world transform (docs/internals.md) and sit on the armature object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula. axis_angle (..., 3) -> rotation matrices (..., 3, 3), float64."""
    aa = np.asarray(axis_angle, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)  # (..., 1)
    safe = np.where(angle > 1e-12, angle, 1.0)
    axis = np.where(angle > 1e-12, aa / safe, 0.0)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zeros = np.zeros_like(x)
    k = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], axis=-1).reshape(*aa.shape[:-1], 3, 3)
    s = np.sin(angle)[..., None]
    c = np.cos(angle)[..., None]
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + s * k + (1.0 - c) * (k @ k)


def axis_angle_to_quaternion(axis_angle: np.ndarray, continuous: bool = True) -> np.ndarray:
    """axis_angle (T, 3) -> unit quaternions (T, 4) as (w, x, y, z), Blender's order.

    With ``continuous`` the sign of each quaternion is chosen to follow the previous frame's, so
    interpolating between keyframes takes the short way round (q and -q are the same rotation).
    """
    aa = np.asarray(axis_angle, dtype=np.float64).reshape(-1, 3)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)  # (T, 1)
    safe = np.where(angle > 1e-12, angle, 1.0)
    axis = np.where(angle > 1e-12, aa / safe, 0.0)
    quat = np.concatenate([np.cos(angle / 2.0), axis * np.sin(angle / 2.0)], axis=-1)  # (T, 4)
    if continuous and len(quat) > 1:
        dots = np.einsum("ti,ti->t", quat[1:], quat[:-1])
        # A flip at frame t flips every later frame too, hence the running parity.
        flips = np.concatenate([[False], np.logical_xor.accumulate(dots < 0.0)])
        quat[flips] *= -1.0
    return quat


def pose_features(pose: np.ndarray) -> np.ndarray:
    """FLAME's pose-corrective input: pose (T, J, 3) -> (T, 9·(J−1)) = flattened (R_j − I), joints 1..J−1.

    Row-major 3×3 per joint, joints in order, the root excluded (FLAME lbs: pose_feature).
    """
    rot = axis_angle_to_matrix(np.asarray(pose)[:, 1:])  # (T, J-1, 3, 3)
    return (rot - np.eye(3)).reshape(rot.shape[0], -1)


def pose_corrective_names(joint_names: Sequence[str]) -> list[str]:
    """Shape key names for the pose-corrective components: ``pose.<joint>.<i><j>`` (P = 9·(J−1))."""
    return [f"pose.{name}.{i}{j}" for name in joint_names[1:] for i in range(3) for j in range(3)]


def detail_key_names(k: int) -> list[str]:
    """Shape key names for the K detail components: detail_00, detail_01, ..."""
    return [f"detail_{i:02d}" for i in range(k)]


def rest_vertices(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Every frame's mesh before skinning (shape keys applied): (T, V, 3), float64."""
    template = np.asarray(arrays["template"], dtype=np.float64)  # (V, 3)
    expr = np.einsum("vce,te->tvc", arrays["expression_basis"].astype(np.float64), arrays["expression"])
    rest = template[None] + expr
    if arrays["pose_corrective_basis"].shape[2] > 0:
        feats = pose_features(arrays["pose"])  # (T, P)
        rest = rest + np.einsum("vcp,tp->tvc", arrays["pose_corrective_basis"].astype(np.float64), feats)
    if arrays["detail_basis"].shape[0] > 0:
        rest = rest + np.einsum("tk,kvc->tvc", arrays["detail_weights"], arrays["detail_basis"].astype(np.float64))
    return rest


def joint_transforms(pose: np.ndarray, joints_rest: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Skinning matrices per frame and joint, root rotation ignored: (T, J, 4, 4), float64.

    pose (T, J, 3), joints_rest (J, 3), parents (J,) with −1 for the root (parents precede children).
    A_j = G_j · T(−J_j), where G_j = G_parent · [R_j | J_j − J_parent] (FLAME/SMPL batch_rigid_transform).
    """
    pose = np.asarray(pose, dtype=np.float64)
    t_count, j_count = pose.shape[:2]
    rot = axis_angle_to_matrix(pose)  # (T, J, 3, 3)
    rot[:, 0] = np.eye(3)
    joints = np.asarray(joints_rest, dtype=np.float64)
    glob = np.zeros((t_count, j_count, 4, 4))
    for j in range(j_count):
        local = np.zeros((t_count, 4, 4))
        local[:, :3, :3] = rot[:, j]
        parent = int(parents[j])
        local[:, :3, 3] = joints[j] - (joints[parent] if parent >= 0 else 0.0)
        local[:, 3, 3] = 1.0
        glob[:, j] = local if parent < 0 else glob[:, parent] @ local
    skin = glob.copy()
    skin[:, :, :3, 3] -= np.einsum("tjab,jb->tja", glob[:, :, :3, :3], joints)
    return skin


def take_vertices(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The take's per-frame vertices in head coordinates, recomputed from its parts: (T, V, 3), float64."""
    rest = rest_vertices(arrays)  # (T, V, 3)
    skin = joint_transforms(arrays["pose"], arrays["joints_rest"], arrays["joint_parents"])  # (T, J, 4, 4)
    weights = np.asarray(arrays["skin_weights"], dtype=np.float64)  # (V, J)
    out = np.zeros_like(rest)
    # Joint by joint rather than one (T, V, 4, 4) blend: a 1000-frame FLAME take would need gigabytes.
    for j in range(skin.shape[1]):
        moved = np.einsum("tab,tvb->tva", skin[:, j, :3, :3], rest) + skin[:, j, None, :3, 3]
        out += weights[None, :, j, None] * moved
    return out


def to_world(vertices: np.ndarray, pose: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Head coordinates -> world: vertices (T, V, 3) @ R(pose[:, 0]).T + translation (T, 3)."""
    rot = axis_angle_to_matrix(np.asarray(pose)[:, 0])  # (T, 3, 3)
    return np.einsum("tvb,tab->tva", vertices, rot) + np.asarray(translation)[:, None, :]
