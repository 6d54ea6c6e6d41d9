"""Turn a reconstruction into a take: the detail basis (SVD of the displacements) and the final meshes.

The format itself (schema, validation, atomic write, reader) lives in blender_microexp/core/take.py
so the add-on and the server share one definition; this module computes what goes into it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from blender_microexp.core.take import write_take

from .headmodel.regions import REGION_NAMES

if TYPE_CHECKING:
    from .headmodel import HeadModel

__all__ = ["DetailBasis", "detail_basis", "evaluate_vertices", "build_take_arrays", "head_model_header", "write_take"]


@dataclass
class DetailBasis:
    """A compact basis of per-frame displacements: displacement ≈ weights @ basis."""

    basis: np.ndarray  # (K, V, 3)
    weights: np.ndarray  # (T, K), each column scaled to max |w| = 1 so Blender's sliders fit
    energy_kept: float  # fraction of the displacement energy the K components keep

    def reconstruct(self) -> np.ndarray:
        """(T, V, 3) displacements from the K components."""
        k, v, _ = self.basis.shape
        if k == 0:
            return np.zeros((self.weights.shape[0], v, 3), np.float32)
        return (self.weights @ self.basis.reshape(k, -1)).reshape(-1, v, 3).astype(np.float32)


def detail_basis(displacement: np.ndarray, energy: float = 0.99, max_components: int = 16,
                 min_peak: float = 1e-5) -> DetailBasis:
    """SVD of displacements (T, V, 3) in metres: the fewest components keeping `energy` of the squared norm, capped,
    less those whose largest offset of any vertex in any frame is under `min_peak` (0.01 mm: invisible at any
    scale, while a micro-expression moves the skin 0.3-3 mm). At its defaults the per-clip mesh deformation leaves
    offsets of ~0.001 mm (docs/model.md), noise whose energy spreads over many components: without the floor it
    filled every take with the cap's 16 detail shape keys that move nothing.

    Not mean-centred: a displacement held over the whole clip is one component like any other.
    """
    t, v, _ = displacement.shape
    flat = displacement.reshape(t, -1).astype(np.float64)
    total = float((flat**2).sum())
    if total == 0.0:  # nothing to decompose (components too small to see are left out below)
        return DetailBasis(np.zeros((0, v, 3), np.float32), np.zeros((t, 0), np.float32), 1.0)
    u, s, vt = np.linalg.svd(flat, full_matrices=False)
    cum = np.cumsum(s**2) / total
    k = int(np.searchsorted(cum, energy) + 1)
    k = max(1, min(k, max_components, len(s)))
    weights = u[:, :k] * s[:k]  # (T, K)
    scale = np.abs(weights).max(axis=0)
    peak = scale * np.linalg.norm(vt[:k].reshape(k, v, 3), axis=-1).max(axis=1)  # largest offset per component
    keep = np.flatnonzero(peak >= min_peak)
    weights, scale = weights[:, keep], scale[keep]
    scale[scale == 0] = 1.0
    basis = vt[keep] * scale[:, None]
    return DetailBasis(
        basis=basis.reshape(len(keep), v, 3).astype(np.float32),
        weights=(weights / scale).astype(np.float32),
        energy_kept=float((s[keep] ** 2).sum() / total),
    )


@torch.no_grad()
def evaluate_vertices(model: HeadModel, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray,
                      offsets: np.ndarray | None, batch: int = 64) -> np.ndarray:
    """Head-coordinate meshes (T, V, 3) from per-frame parameters, in batches to bound memory."""
    t = expression.shape[0]
    out = []
    shape_t = torch.as_tensor(shape, dtype=torch.float32)
    for start in range(0, t, batch):
        sl = slice(start, min(t, start + batch))
        b = sl.stop - sl.start
        off = None if offsets is None else torch.as_tensor(offsets[sl], dtype=torch.float32)
        res = model(shape_t[None].expand(b, -1), torch.as_tensor(expression[sl], dtype=torch.float32),
                    torch.as_tensor(pose[sl], dtype=torch.float32), off)
        out.append(res.vertices.numpy())
    return np.concatenate(out, axis=0).astype(np.float32)


def build_take_arrays(model: HeadModel, pre: Any, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray,
                      translation: np.ndarray, camera: np.ndarray, displacement: np.ndarray | None,
                      max_detail: int = 16) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every array of a take, with `vertices` evaluated through the truncated detail basis.

    Blender rebuilds the mesh from the same shape keys (expression, pose correctives, detail) and
    bones, so the take's `vertices` are exactly what the imported rig shows.
    """
    data = model.data
    t = expression.shape[0]
    v = data.v_template.shape[0]
    if displacement is None:
        displacement = np.zeros((t, v, 3), np.float32)
    details = detail_basis(displacement, max_components=max_detail)
    offsets = details.reconstruct() if details.basis.shape[0] else None
    vertices = evaluate_vertices(model, shape, expression, pose, offsets)
    with torch.no_grad():
        shape_t = torch.as_tensor(shape, dtype=torch.float32)
        template = (torch.as_tensor(data.v_template) + torch.einsum(
            "vcs,s->vc", torch.as_tensor(data.shapedirs), shape_t)).numpy()
        joints_rest = model.identity_joints(shape_t).numpy()
    mp = np.asarray(pre.mp_landmarks)[..., :2]
    arrays: dict[str, np.ndarray] = {
        "template": template,
        "faces": data.faces,
        "shape": shape,
        "expression_basis": data.exprdirs,
        "expression": expression,
        "pose_corrective_basis": data.posedirs,
        "pose": pose,
        "joints_rest": joints_rest,
        "joint_parents": data.parents,
        "skin_weights": data.weights,
        "translation": translation,
        "camera": camera,
        "image_size": np.asarray(pre.image_size, np.int32),
        "displacement": displacement,
        "detail_basis": details.basis,
        "detail_weights": details.weights,
        "vertices": vertices,
        "landmarks68": np.asarray(pre.lmk68, np.float32),
        "landmarks_mp": mp.astype(np.float32),
        "confidence": np.asarray(pre.confidence, np.float32),
        "face_found": np.asarray(pre.face_found, bool),
        "frame_numbers": np.asarray(pre.frame_numbers, np.int32),
    }
    info = {"detail_components": int(details.basis.shape[0]), "detail_energy_kept": details.energy_kept}
    return arrays, info


def head_model_header(model: HeadModel) -> dict[str, Any]:
    data = model.data
    return {
        "id": data.model_id,
        "kind": data.kind,
        "topology_hash": data.topology_hash(),
        "vertex_count": int(data.v_template.shape[0]),
        "expression_names": list(data.expression_names),
        "joint_names": list(data.joint_names),
        "region_names": ["none", *REGION_NAMES],
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

