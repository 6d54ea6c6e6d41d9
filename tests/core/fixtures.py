"""Internally consistent fixture takes for the add-on's tests and benchmark (numpy + core only).

``vertices`` are computed with core.rig's reference formula, so a correct Blender rig reproduces
them exactly. Procedural meshes by default; the FLAME-topology variant reads
../shared/flame_topology/head_template.obj at test time (never copied into the project).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from blender_microexp.core import rig
from blender_microexp.core.take import write_take

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED = PROJECT_ROOT / ".." / "shared"
FLAME_OBJ = SHARED / "flame_topology" / "head_template.obj"
FLAME_JOINT_REGRESSOR = SHARED / "flame_topology" / "flame2020_joint_regressor.npz"
JOINT_NAMES = ["root", "neck", "jaw", "eye_L", "eye_R"]
JOINT_PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int32)


def procedural_mesh(v_count: int) -> tuple[np.ndarray, np.ndarray]:
    """A head-sized, sphere-ish grid with exactly ``v_count`` vertices: (V, 3) metres, faces (F, 3)."""
    cols = int(np.ceil(np.sqrt(v_count)))
    rows = int(np.ceil(v_count / cols))
    theta = np.linspace(0.15 * np.pi, 0.85 * np.pi, rows)  # polar angle, skipping the poles
    phi = np.linspace(-0.8 * np.pi, 0.8 * np.pi, cols)
    tt, pp = np.meshgrid(theta, phi, indexing="ij")
    verts = np.stack([0.08 * np.sin(tt) * np.sin(pp), 0.11 * np.cos(tt), 0.09 * np.sin(tt) * np.cos(pp)], -1)
    verts = verts.reshape(-1, 3)[:v_count]
    faces = []
    for r in range(rows - 1):
        for c in range(cols - 1):
            a, b, d, e = r * cols + c, r * cols + c + 1, (r + 1) * cols + c, (r + 1) * cols + c + 1
            if max(a, b, d, e) < v_count:
                faces += [(a, d, b), (b, d, e)]
    return verts.astype(np.float32), np.asarray(faces, dtype=np.int32).reshape(-1, 3)


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of a triangulated OBJ (positions only)."""
    verts, faces = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            faces.append([int(tok.split("/")[0]) - 1 for tok in line.split()[1:4]])
    return np.asarray(verts, dtype=np.float32), np.asarray(faces, dtype=np.int32)


def _smooth_fields(verts: np.ndarray, count: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """``count`` smooth random displacement fields over the mesh: (V, 3, count)."""
    centred = (verts - verts.mean(0)) / (np.abs(verts - verts.mean(0)).max() + 1e-9)  # (V, 3) in [-1, 1]
    freqs = rng.normal(size=(count, 3, 3)) * 2.0  # (count, out, in)
    phases = rng.uniform(0, 2 * np.pi, size=(count, 3))
    fields = np.sin(np.einsum("coi,vi->voc", freqs, centred) + phases.T[None])  # (V, 3, count)
    return (scale * fields).astype(np.float32)


def _skin_weights(verts: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Soft weights from distance to each joint, sparse (small ones zeroed) and summing to 1: (V, J)."""
    d2 = ((verts[:, None, :] - joints[None]) ** 2).sum(-1)  # (V, J)
    w = np.exp(-d2 / (2 * 0.03**2))
    w[:, 0] += 0.05
    w /= w.sum(1, keepdims=True)
    w[w < 0.02] = 0.0
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _joints_for(verts: np.ndarray) -> np.ndarray:
    lo, hi = verts.min(0), verts.max(0)
    size = hi - lo
    c = (lo + hi) / 2
    return np.array([
        c,
        c + [0, -0.35 * size[1], -0.1 * size[2]],
        c + [0, -0.15 * size[1], 0.1 * size[2]],
        c + [0.18 * size[0], 0.12 * size[1], 0.35 * size[2]],
        c + [-0.18 * size[0], 0.12 * size[1], 0.35 * size[2]],
    ], dtype=np.float32)


def build_take_arrays(verts: np.ndarray, faces: np.ndarray, *, T: int, E: int, K: int, P: int,
                      joints: np.ndarray | None = None, big_expression: bool = False, seed: int = 0,
                      first_frame: int = 0, nmp: int = 478) -> dict[str, np.ndarray]:
    """Every take array for this mesh, with ``vertices`` from the reference formula."""
    rng = np.random.default_rng(seed)
    V = len(verts)
    J = len(JOINT_NAMES)
    if P not in (0, 9 * (J - 1)):
        raise ValueError(f"P must be 0 or {9 * (J - 1)}")
    joints = _joints_for(verts) if joints is None else joints.astype(np.float32)
    t = np.arange(T, dtype=np.float64)[:, None]
    expression = 1.5 * np.sin(2 * np.pi * t * rng.uniform(0.01, 0.1, E) + rng.uniform(0, 6, E))  # (T, E)
    if big_expression and E:
        expression[:, 0] *= 16.0  # beyond Blender's ±10 slider limit: the importer must rescale
    pose = np.zeros((T, J, 3))
    amp = np.array([0.25, 0.15, 0.2, 0.1, 0.1])
    for j in range(J):
        pose[:, j] = amp[j] * np.sin(2 * np.pi * t * rng.uniform(0.01, 0.05, 3) + rng.uniform(0, 6, 3))
    pose[:, 2, 0] = np.abs(pose[:, 2, 0])  # the jaw opens one way
    detail_basis = np.moveaxis(_smooth_fields(verts, K, rng, 1.0), 2, 0) if K else np.zeros((0, V, 3))
    if K:
        flat = detail_basis.reshape(K, -1)
        detail_basis = (flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(K, V, 3)
    detail_weights = 0.004 * np.sin(2 * np.pi * t * rng.uniform(0.02, 0.2, K) + rng.uniform(0, 6, K))  # (T, K)
    arrays: dict[str, np.ndarray] = {
        "template": verts,
        "faces": faces,
        "shape": np.zeros(10, np.float32),
        "expression_basis": _smooth_fields(verts, E, rng, 0.004),
        "expression": expression.astype(np.float32),
        "pose_corrective_basis": _smooth_fields(verts, P, rng, 0.002) if P else np.zeros((V, 3, 0), np.float32),
        "pose": pose.astype(np.float32),
        "joints_rest": joints,
        "joint_parents": JOINT_PARENTS,
        "skin_weights": _skin_weights(verts, joints),
        "translation": np.stack([0.01 * np.sin(t[:, 0] / 7), 0.005 * np.cos(t[:, 0] / 5),
                                 -0.5 + 0.01 * np.sin(t[:, 0] / 11)], -1).astype(np.float32),
        "camera": np.array([1000.0, 1000.0, 330.0, 250.0], np.float32),
        "image_size": np.array([640, 480], np.int32),
        "detail_basis": detail_basis.astype(np.float32),
        "detail_weights": detail_weights.astype(np.float32),
        "landmarks68": np.zeros((T, 68, 2), np.float32),
        "landmarks_mp": np.zeros((T, nmp, 2), np.float32),
        "confidence": np.ones(T, np.float32),
        "face_found": np.ones(T, bool),
        "frame_numbers": np.arange(first_frame, first_frame + T, dtype=np.int32),
    }
    # The reference formula works in float64 on the float32 arrays the take stores.
    stored = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    arrays["displacement"] = np.einsum("tk,kvc->tvc", stored["detail_weights"], stored["detail_basis"]) \
        if K else np.zeros((T, V, 3), np.float32)
    arrays["vertices"] = rig.take_vertices(stored).astype(np.float32)
    return arrays


def fixture_header(E: int, *, clip: str = "", model_id: str = "fixture", kind: str = "builtin", fps: float = 30.0,
                   frames: tuple[int, int] | None = None, take_id: str | None = None) -> dict[str, Any]:
    return {
        "id": take_id or uuid.uuid4().hex,
        "fps": fps,
        "head_model": {
            "id": model_id,
            "kind": kind,
            "expression_names": [f"expr_{i:02d}" for i in range(E)],
            "joint_names": list(JOINT_NAMES),
            "topology_hash": model_id,
        },
        "source": {"path": clip, "frames": list(frames) if frames else None},
        "settings": {"flow": "fast", "stages": "full"},
        "timings": {},
    }


def make_fixture_take(folder: str | Path, T: int = 12, V: int = 200, E: int = 6, K: int = 3, J: int = 5, P: int = 36,
                      *, big_expression: bool = False, seed: int = 0, clip: str = "", fps: float = 30.0,
                      first_frame: int = 0, take_id: str | None = None) -> Path:
    """Write a procedural take into ``folder`` and return the folder."""
    if len(JOINT_NAMES) != J:
        raise ValueError(f"fixtures have {len(JOINT_NAMES)} joints")
    verts, faces = procedural_mesh(V)
    arrays = build_take_arrays(verts, faces, T=T, E=E, K=K, P=P, big_expression=big_expression, seed=seed,
                               first_frame=first_frame)
    header = fixture_header(E, clip=clip, fps=fps, frames=(first_frame, first_frame + T), take_id=take_id)
    return write_take(folder, header, arrays)


def make_flame_fixture_take(folder: str | Path, T: int = 10, E: int = 10, K: int = 4, P: int = 36, seed: int = 1,
                            clip: str = "") -> Path:
    """A take on the real FLAME topology (5023 vertices); the caller skips when ../shared is absent."""
    verts, faces = read_obj(FLAME_OBJ)
    joints = None
    if FLAME_JOINT_REGRESSOR.is_file():
        with np.load(FLAME_JOINT_REGRESSOR) as npz:
            joints = (npz["joint_regressor"] @ verts).astype(np.float32)
    arrays = build_take_arrays(verts, faces, T=T, E=E, K=K, P=P, joints=joints, seed=seed)
    header = fixture_header(E, clip=clip, model_id="flame-topology-fixture", kind="flame", frames=(0, T))
    return write_take(folder, header, arrays)
