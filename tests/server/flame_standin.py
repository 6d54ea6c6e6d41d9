"""A FLAME-format stand-in on FLAME's real topology (../shared/flame_topology) with synthetic bases, for tests.

Written exactly like FLAME 2020's generic_model.pkl: arrays pickled as `chumpy.ch.Ch` objects (a fake chumpy
module exists only while writing), the joint regressor as a scipy csc_matrix, latin-1-safe protocol 2.
"""

from __future__ import annotations

import pickle
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse

SHARED = Path(__file__).resolve().parents[2] / "../shared/flame_topology"
EMBEDDING_FILES = ("landmark_embedding.npy", "mediapipe_landmark_embedding.npz", "FLAME_masks.pkl")


def shared_topology() -> Path:
    """The topology folder, or skip the calling test with the reason."""
    needed = ["head_template.obj", "flame2020_joint_regressor.npz", *EMBEDDING_FILES]
    if not all((SHARED / name).is_file() for name in needed):
        pytest.skip(f"FLAME topology files are not at {SHARED.resolve()} (../shared/flame_topology beside the project)")
    return SHARED


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of an OBJ (positions only; 'f a/b/c' indices are 1-based)."""
    verts, faces = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            faces.append([int(tok.split("/")[0]) - 1 for tok in line.split()[1:4]])
    return np.array(verts, dtype=np.float64), np.array(faces, dtype=np.int64)


def _fake_chumpy() -> tuple[type, dict[str, Any]]:
    """A class that pickles as chumpy.ch.Ch, and the sys.modules entries that make pickle accept it."""
    ch_module = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x: np.ndarray) -> None:
            self.x = x

        def __getstate__(self) -> dict[str, Any]:
            return {"x": self.x, "_depends_on_deps": {}}

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch_module.Ch = Ch  # type: ignore[attr-defined]
    package = types.ModuleType("chumpy")
    package.ch = ch_module  # type: ignore[attr-defined]
    return Ch, {"chumpy": package, "chumpy.ch": ch_module}


def synthetic_model(seed: int = 0) -> dict[str, Any]:
    """FLAME's arrays on the real topology: smooth random bases (~mm per unit), skinning from joint distances."""
    topo = shared_topology()
    v, f = read_obj(topo / "head_template.obj")
    jreg = np.load(topo / "flame2020_joint_regressor.npz")["joint_regressor"]
    v = v - jreg[0] @ v  # the root joint at the origin, as in FLAME's own template
    joints = jreg @ v
    rng = np.random.default_rng(seed)
    scale = np.abs(v).max()
    # Smooth bases: random combinations of low-frequency functions of position.
    unit = v / scale
    basis = np.concatenate([np.ones((len(v), 1)), unit, unit**2, np.sin(3 * unit)], axis=1)  # (V, 10)
    coeff = rng.normal(size=(basis.shape[1], 3, 400)) * 1e-3
    shapedirs = np.einsum("vk,kcn->vcn", basis, coeff)
    posedirs = np.einsum("vk,kcn->vcn", basis, rng.normal(size=(basis.shape[1], 3, 36)) * 1e-4)
    masks = pickle.loads((topo / "FLAME_masks.pkl").read_bytes(), encoding="latin1")
    weights = np.zeros((len(v), 5))
    weights[:, 1] = 1.0  # the head on the neck
    weights[masks["neck"], 0] = 1.0
    weights[masks["neck"], 1] = 0.0
    # Jaw: the lower face below the mouth corners' height and in front of the jaw joint, with a soft edge.
    lmk = np.load(topo / "mediapipe_landmark_embedding.npz")
    mouth_y = (v[f[lmk["lmk_face_idx"]]] * lmk["lmk_b_coords"][..., None]).sum(1)[:, 1].min()
    jaw = np.clip((mouth_y + 0.01 - v[:, 1]) / 0.02, 0, 1) * (v[:, 2] > joints[2, 2]) * (1 - weights[:, 0])
    weights[:, 2] = jaw
    weights[:, 1] *= 1 - jaw
    for joint, name in ((3, "left_eyeball"), (4, "right_eyeball")):
        eye = masks[name]
        if v[eye, 0].mean() * (joints[joint, 0] - joints[0, 0]) < 0:  # masks name the other side: trust positions
            eye = masks["right_eyeball" if name == "left_eyeball" else "left_eyeball"]
        weights[eye] = 0.0
        weights[eye, joint] = 1.0
    kintree = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return {"v_template": v, "f": f.astype(np.uint32), "shapedirs": shapedirs, "posedirs": posedirs,
            "J_regressor": scipy.sparse.csc_matrix(jreg), "weights": weights, "kintree_table": kintree,
            "bs_style": "lbs", "bs_type": "lrotmin"}


def write_chumpy_pickle(model: dict[str, Any], path: Path) -> None:
    """Pickle like FLAME 2020: float arrays wrapped in chumpy.ch.Ch; chumpy exists only during this call."""
    ch_cls, modules = _fake_chumpy()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        wrapped = {k: ch_cls(v) if k in ("v_template", "shapedirs", "posedirs", "weights") else v
                   for k, v in model.items()}
        path.write_bytes(pickle.dumps(wrapped, protocol=2))
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def make_flame_folder(folder: Path, seed: int = 0, with_masks: bool = True) -> Path:
    """A folder like a user's FLAME download: generic_model.pkl plus the embeddings (copied into tmp only)."""
    topo = shared_topology()
    folder.mkdir(parents=True, exist_ok=True)
    write_chumpy_pickle(synthetic_model(seed), folder / "generic_model.pkl")
    for name in EMBEDDING_FILES:
        if with_masks or name != "FLAME_masks.pkl":
            shutil.copyfile(topo / name, folder / name)
    return folder
