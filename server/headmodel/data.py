"""The head-model data schema shared by FLAME files and the built-in head, with its consistency checks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from server.errors import MicroexpError

from .regions import REGION_NAMES


class HeadModelError(MicroexpError):
    """A head model cannot be loaded or built: missing, corrupt, or not a FLAME-format model."""

    code = "head_model"


@dataclass
class HeadModelData:
    """Every array a FLAME-format head model needs (float32 unless noted; faces and indices int64).

    Shapes: v_template (V, 3), shapedirs (V, 3, S), exprdirs (V, 3, E), posedirs (V, 3, P) with
    P = 9 * (J - 1), J_regressor (J, V), weights (V, J), parents (J,) int64 with -1 at the root,
    faces (F, 3), lmk68_faces (68,), lmk68_bary (68, 3), mp_faces (N,), mp_bary (N, 3),
    mp_indices (N,) (which of MediaPipe's 478 points each embedded landmark is), regions (V,) int64
    (0 = none, 1..8 = REGION_NAMES).
    """

    model_id: str
    kind: Literal["flame", "builtin"]
    v_template: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    expression_names: list[str]
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    joint_names: list[str]
    faces: np.ndarray
    lmk68_faces: np.ndarray
    lmk68_bary: np.ndarray
    mp_faces: np.ndarray
    mp_bary: np.ndarray
    mp_indices: np.ndarray
    regions: np.ndarray
    shape_names: list[str] = field(default_factory=list)
    """Optional names of the identity components (the built-in head names its modes); empty for FLAME."""

    def __post_init__(self) -> None:
        float_fields = ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights",
                        "lmk68_bary", "mp_bary")
        int_fields = ("parents", "faces", "lmk68_faces", "mp_faces", "mp_indices", "regions")
        for name in float_fields:
            setattr(self, name, np.ascontiguousarray(np.asarray(getattr(self, name), dtype=np.float32)))
        for name in int_fields:
            setattr(self, name, np.ascontiguousarray(np.asarray(getattr(self, name), dtype=np.int64)))
        self.expression_names = list(self.expression_names)
        self.joint_names = list(self.joint_names)
        self.shape_names = list(self.shape_names)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def num_joints(self) -> int:
        return int(self.J_regressor.shape[0])

    def topology_hash(self) -> str:
        """Short hex digest of the triangle list and vertex count: equal hashes mean interchangeable meshes."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.faces, dtype=np.int64).tobytes())
        digest.update(str(self.num_vertices).encode("ascii"))
        return digest.hexdigest()[:16]

    def validate(self) -> HeadModelData:
        """Check that every array agrees with every other; raise HeadModelError naming the first mismatch."""

        def fail(what: str) -> None:
            raise HeadModelError(f"Head model '{self.model_id}' is inconsistent: {what}.")

        v = self.v_template
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 3:
            fail(f"v_template has shape {v.shape}, expected (V, 3)")
        nv = v.shape[0]
        for name in ("shapedirs", "exprdirs", "posedirs"):
            arr = getattr(self, name)
            if arr.ndim != 3 or arr.shape[:2] != (nv, 3):
                fail(f"{name} has shape {arr.shape}, expected ({nv}, 3, K)")
        if len(self.expression_names) != self.exprdirs.shape[2]:
            fail(f"{len(self.expression_names)} expression names for {self.exprdirs.shape[2]} expression components")
        if self.shape_names and len(self.shape_names) != self.shapedirs.shape[2]:
            fail(f"{len(self.shape_names)} shape names for {self.shapedirs.shape[2]} shape components")
        jr = self.J_regressor
        if jr.ndim != 2 or jr.shape[1] != nv or jr.shape[0] < 1:
            fail(f"J_regressor has shape {jr.shape}, expected (J, {nv})")
        nj = jr.shape[0]
        if self.posedirs.shape[2] != 9 * (nj - 1):
            fail(f"posedirs has {self.posedirs.shape[2]} columns, expected 9 * (J - 1) = {9 * (nj - 1)}")
        if self.weights.shape != (nv, nj):
            fail(f"weights has shape {self.weights.shape}, expected ({nv}, {nj})")
        if not np.allclose(self.weights.sum(axis=1), 1.0, atol=1e-3):
            fail("skinning weights do not sum to 1 for every vertex")
        if self.parents.shape != (nj,) or self.parents[0] != -1:
            fail(f"parents has shape {self.parents.shape} or a root other than -1, expected ({nj},), root -1")
        for j in range(1, nj):
            if not 0 <= self.parents[j] < j:
                fail(f"joint {j} has parent {self.parents[j]}; parents must come before their children")
        if len(self.joint_names) != nj:
            fail(f"{len(self.joint_names)} joint names for {nj} joints")
        f = self.faces
        if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] < 1:
            fail(f"faces has shape {f.shape}, expected (F, 3)")
        if f.min() < 0 or f.max() >= nv:
            fail(f"faces index vertices outside 0..{nv - 1}")
        nf = f.shape[0]
        if self.lmk68_faces.shape != (68,) or self.lmk68_bary.shape != (68, 3):
            fail(f"the 68-landmark embedding has shapes {self.lmk68_faces.shape} and {self.lmk68_bary.shape}, "
                 "expected (68,) and (68, 3)")
        n_mp = self.mp_faces.shape[0]
        if self.mp_faces.ndim != 1 or self.mp_bary.shape != (n_mp, 3) or self.mp_indices.shape != (n_mp,):
            fail(f"the MediaPipe embedding has shapes {self.mp_faces.shape}, {self.mp_bary.shape} and "
                 f"{self.mp_indices.shape}, expected (N,), (N, 3) and (N,)")
        for name in ("lmk68_faces", "mp_faces"):
            idx = getattr(self, name)
            if idx.size and (idx.min() < 0 or idx.max() >= nf):
                fail(f"{name} indexes triangles outside 0..{nf - 1}")
        if self.mp_indices.size and (self.mp_indices.min() < 0 or self.mp_indices.max() >= 478):
            fail("mp_indices name MediaPipe points outside 0..477")
        if self.regions.shape != (nv,) or self.regions.min() < 0 or self.regions.max() > len(REGION_NAMES):
            fail(f"regions must be ({nv},) labels in 0..{len(REGION_NAMES)}")
        for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "weights"):
            if not np.isfinite(getattr(self, name)).all():
                fail(f"{name} contains NaN or infinite values")
        return self
