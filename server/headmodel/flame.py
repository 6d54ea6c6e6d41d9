"""Loader for the user's FLAME files (FLAME 2020 chumpy pickles, FLAME 2023 Open) without chumpy or unsafe unpickling.

A FLAME pickle holds numpy arrays, chumpy `Ch` wrappers around numpy arrays and a scipy sparse joint
regressor; the landmark embedding (`landmark_embedding.npy`) is a pickled dict that also holds a few torch
tensors. `RestrictedUnpickler` rebuilds exactly those classes (chumpy's and torch's as inert stand-ins) and
refuses every other global, so a crafted file cannot run code.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .data import HeadModelData, HeadModelError
from .regions import region_label

FLAME_SHAPE_COMPONENTS = 300
"""FLAME's shapedirs hold 300 identity columns, then the expression columns."""
FLAME_JOINT_NAMES = ["root", "neck", "jaw", "eye_L", "eye_R"]
MODEL_FILE_NAMES = ("generic_model.pkl", "flame2023_Open.pkl", "flame2023.pkl", "flame2023_no_jaw.pkl")
LANDMARK_FILE = "landmark_embedding.npy"
MEDIAPIPE_FILE = "mediapipe_landmark_embedding.npz"
MASKS_FILE = "FLAME_masks.pkl"


class ChStandIn:
    """Inert stand-in for chumpy objects: keeps the pickled state; `.r` / `.x` give the wrapped array."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"x": state}

    @property
    def x(self) -> Any:
        return self.state.get("x")

    @property
    def r(self) -> Any:
        return self.state.get("x")


class SkippedTensor:
    """What a pickled torch tensor becomes: nothing is decoded (FLAME's dynamic contour data is not used)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _skip(*args: Any, **kwargs: Any) -> SkippedTensor:
    return SkippedTensor()


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, 'latin1'); only that is allowed."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("unexpected _codecs.encode arguments")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    import scipy.sparse

    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "object"): object,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "object"): object,
        ("__builtin__", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        # Protocol 0-1 pickles rebuild new-style objects through this; it only calls __new__ of classes
        # that this table itself allowed.
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
        ("copyreg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
        ("_codecs", "encode"): _latin1_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): _skip,
        ("torch._utils", "_rebuild_tensor"): _skip,
        ("torch.storage", "_load_from_bytes"): _skip,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = np.core.multiarray._reconstruct  # type: ignore[attr-defined]
        table[(module, "scalar")] = np.core.multiarray.scalar  # type: ignore[attr-defined]
    for kind in ("csc", "csr", "coo"):
        cls = getattr(scipy.sparse, f"{kind}_matrix")
        for module in (f"scipy.sparse.{kind}", f"scipy.sparse._{kind}"):
            table[(module, f"{kind}_matrix")] = cls
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what FLAME's files contain; any other global raises HeadModelError before it is used."""

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path
        self.table = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.table:
            return self.table[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return ChStandIn
        raise HeadModelError(
            f"{self.path} contains a pickled object of type {module}.{name} that a FLAME file never has; "
            "it was not loaded."
        )


def restricted_load(path: Path, data: bytes | None = None) -> Any:
    """Unpickle a file (or its bytes) with RestrictedUnpickler; every failure becomes one HeadModelError."""
    try:
        raw = path.read_bytes() if data is None else data
    except OSError as exc:
        raise HeadModelError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
    if not raw:
        raise HeadModelError(f"{path} is empty.")
    try:
        return RestrictedUnpickler(io.BytesIO(raw), path).load()
    except HeadModelError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            UnicodeDecodeError, MemoryError, OverflowError) as exc:
        if raw[:1] != b"\x80" and raw[:1] not in (b"(", b"}", b"]", b"c"):
            raise HeadModelError(f"{path} is not a pickle file, so it is not a FLAME model file.") from exc
        raise HeadModelError(f"{path} is truncated or corrupt, so it cannot be read.") from exc


def _load_npy_pickle(path: Path) -> Any:
    """Read a .npy holding a pickled object (np.save of a dict) without np.load's unrestricted unpickling."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HeadModelError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
    buf = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buf)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(buf)
    except (ValueError, OSError) as exc:
        raise HeadModelError(f"{path} is not a numpy .npy file.") from exc
    if dtype != np.dtype(object):
        raise HeadModelError(f"{path} holds a plain {dtype} array of shape {shape}, not FLAME's landmark dictionary.")
    obj = restricted_load(path, raw[buf.tell():])
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return obj


def _array(value: Any, key: str, path: Path) -> np.ndarray:
    """A FLAME entry as a dense numpy array, whatever wrapper it was pickled in."""
    import scipy.sparse

    if isinstance(value, ChStandIn):
        value = value.r
    if scipy.sparse.issparse(value):
        value = value.toarray()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    raise HeadModelError(f"{path} has '{key}' of type {type(value).__name__}, not a numeric array.")


def _require(d: dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in d:
        raise HeadModelError(f"{path} is not a FLAME model: it has no '{key}'.")
    return _array(d[key], key, path)


def load_flame(path: str | Path, n_shape: int = 100, n_expression: int = 50) -> HeadModelData:
    """Load a FLAME model file plus the embeddings beside it.

    path: `generic_model.pkl` (FLAME 2020) or `flame2023_Open.pkl`; `landmark_embedding.npy` and
    `mediapipe_landmark_embedding.npz` must sit in the same folder, `FLAME_masks.pkl` may. Keeps the first
    n_shape identity and n_expression expression components (at most 300 and 100).
    """
    path = Path(path)
    if not path.is_file():
        raise HeadModelError(f"FLAME model file {path} does not exist.")
    model = restricted_load(path)
    if not isinstance(model, dict):
        raise HeadModelError(f"{path} is not a FLAME model: it holds a {type(model).__name__}, not a dictionary.")
    v_template = _require(model, "v_template", path).astype(np.float32)
    faces = _require(model, "f", path).astype(np.int64)
    shapedirs = _require(model, "shapedirs", path).astype(np.float32)
    posedirs = _require(model, "posedirs", path).astype(np.float32)
    j_regressor = _require(model, "J_regressor", path).astype(np.float32)
    weights = _require(model, "weights", path).astype(np.float32)
    kintree = _require(model, "kintree_table", path)
    nv = v_template.shape[0] if v_template.ndim == 2 else -1
    if v_template.ndim != 2 or v_template.shape[1] != 3:
        raise HeadModelError(f"{path} has v_template of shape {v_template.shape}, expected (V, 3).")
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (nv, 3):
        raise HeadModelError(f"{path} has shapedirs of shape {shapedirs.shape}, expected ({nv}, 3, K).")
    n_expr_available = shapedirs.shape[2] - FLAME_SHAPE_COMPONENTS
    if not 0 < n_shape <= FLAME_SHAPE_COMPONENTS or not 0 < n_expression <= max(n_expr_available, 0):
        raise HeadModelError(
            f"{path} has {shapedirs.shape[2]} shapedirs columns, which cannot give {n_shape} shape and "
            f"{n_expression} expression components (FLAME has 300 shape columns, then the expression ones)."
        )
    if kintree.ndim != 2 or kintree.shape[0] != 2:
        raise HeadModelError(f"{path} has kintree_table of shape {kintree.shape}, expected (2, J).")
    parents = kintree[0].astype(np.int64)
    parents[(parents < 0) | (parents >= kintree.shape[1])] = -1  # FLAME marks the root with a huge sentinel
    if posedirs.ndim == 2:  # some exports flatten it to (V*3, P)
        posedirs = posedirs.reshape(nv, 3, -1)
    folder = path.parent
    lmk68_faces, lmk68_bary = _landmarks68(folder / LANDMARK_FILE)
    mp_faces, mp_bary, mp_indices = _mediapipe_embedding(folder / MEDIAPIPE_FILE)
    n_joints = j_regressor.shape[0]
    joint_names = FLAME_JOINT_NAMES if n_joints == 5 else [f"joint_{j}" for j in range(n_joints)]
    data = HeadModelData(
        model_id=f"flame:{path.name}", kind="flame", v_template=v_template,
        shapedirs=shapedirs[:, :, :n_shape],
        exprdirs=shapedirs[:, :, FLAME_SHAPE_COMPONENTS:FLAME_SHAPE_COMPONENTS + n_expression],
        expression_names=[f"expr_{i:03d}" for i in range(n_expression)], posedirs=posedirs,
        J_regressor=j_regressor, weights=weights, parents=parents, joint_names=joint_names, faces=faces,
        lmk68_faces=lmk68_faces, lmk68_bary=lmk68_bary, mp_faces=mp_faces, mp_bary=mp_bary, mp_indices=mp_indices,
        regions=np.zeros(nv, dtype=np.int64),
    )
    try:
        data.validate()
    except HeadModelError as exc:
        raise HeadModelError(f"{path} is not a usable FLAME model: {str(exc).split(': ', 1)[-1]}") from exc
    data.regions = flame_regions(data, folder / MASKS_FILE)
    return data


def _landmarks68(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise HeadModelError(f"FLAME's landmark embedding {path} is missing; put {LANDMARK_FILE} beside the model.")
    emb = _load_npy_pickle(path)
    if not isinstance(emb, dict) or "full_lmk_faces_idx" not in emb or "full_lmk_bary_coords" not in emb:
        raise HeadModelError(f"{path} is not FLAME's landmark embedding: it has no 'full_lmk_faces_idx'.")
    faces = np.asarray(emb["full_lmk_faces_idx"]).reshape(-1).astype(np.int64)
    bary = np.asarray(emb["full_lmk_bary_coords"], dtype=np.float32).reshape(-1, 3)
    if faces.shape != (68,) or bary.shape != (68, 3):
        raise HeadModelError(f"{path} embeds {faces.shape[0]} landmarks, expected the 68-point set.")
    return faces, bary


def _mediapipe_embedding(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise HeadModelError(f"FLAME's MediaPipe embedding {path} is missing; put {MEDIAPIPE_FILE} beside the model.")
    damaged = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
    unreadable = f"{path} is not a readable .npz file: it is damaged or of another kind."
    try:
        z = np.load(path, allow_pickle=False)
    except damaged as exc:
        raise HeadModelError(unreadable) from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise HeadModelError(f"{path} holds a single array, not FLAME's MediaPipe embedding (an .npz archive).")
    with z:
        missing = [k for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices") if k not in z.files]
        if missing:
            raise HeadModelError(f"{path} is not FLAME's MediaPipe embedding: it has no '{missing[0]}'.")
        try:
            faces = z["lmk_face_idx"].astype(np.int64).reshape(-1)
            bary = z["lmk_b_coords"].astype(np.float32).reshape(-1, 3)
            indices = z["landmark_indices"].astype(np.int64).reshape(-1)
        except damaged as exc:
            raise HeadModelError(unreadable) from exc
    if not len(faces) == len(bary) == len(indices):
        raise HeadModelError(f"{path} has embeddings of different lengths.")
    return faces, bary, indices


def _embedded(data: HeadModelData, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    return np.einsum("lkc,lk->lc", data.v_template[data.faces[faces]], bary)


def flame_regions(data: HeadModelData, masks_path: Path) -> np.ndarray:
    """(V,) region labels on a FLAME mesh: from FLAME_masks.pkl when present, else from the 68 landmarks.

    Masks give eyes, nose, lips and forehead; cheeks and chin split the rest of the 'face' mask by where it lies
    relative to the mouth. Sides come from positions (x > 0 is the subject's left), not from mask names.
    """
    p = data.v_template
    lmk = _embedded(data, data.lmk68_faces, data.lmk68_bary)  # (68, 3)
    labels = np.zeros(len(p), dtype=np.int64)
    side_left = p[:, 0] > lmk[27:31, 0].mean()
    mouth_bottom = lmk[48:60, 1].min()
    mouth_half = 0.5 * abs(lmk[54, 0] - lmk[48, 0])
    if masks_path.is_file():
        masks = restricted_load(masks_path)
        if not isinstance(masks, dict):
            raise HeadModelError(f"{masks_path} is not FLAME's masks file: it holds a {type(masks).__name__}.")

        def mask(name: str) -> np.ndarray:
            idx = np.asarray(masks.get(name, np.zeros(0)), dtype=np.int64).reshape(-1)
            out = np.zeros(len(p), dtype=bool)
            out[idx[(idx >= 0) & (idx < len(p))]] = True
            return out

        face = mask("face")
        labels[face & side_left] = region_label("left_cheek")
        labels[face & ~side_left] = region_label("right_cheek")
        below_mouth = (p[:, 1] < mouth_bottom) & (np.abs(p[:, 0] - lmk[8, 0]) < 1.3 * mouth_half)
        labels[face & below_mouth] = region_label("chin")
        labels[mask("forehead")] = region_label("forehead")
        labels[mask("nose")] = region_label("nose")
        labels[mask("lips")] = region_label("mouth")
        for name in ("left_eye_region", "right_eye_region", "left_eyeball", "right_eyeball"):
            m = mask(name)
            if m.any():
                labels[m] = region_label("left_eye" if p[m, 0].mean() > lmk[27:31, 0].mean() else "right_eye")
        if (labels > 0).sum() > 0.05 * len(p):
            return labels
        labels[:] = 0  # masks that cover almost nothing: fall back to the landmarks
    return _regions_from_landmarks(p, lmk, side_left)


def _regions_from_landmarks(p: np.ndarray, lmk: np.ndarray, side_left: np.ndarray) -> np.ndarray:
    """Label front-facing vertices by their nearest 68-landmark group; forehead above the brows."""
    iod = np.linalg.norm(lmk[45] - lmk[36])
    groups = {
        "left_eye": list(range(22, 27)) + list(range(42, 48)),
        "right_eye": list(range(17, 22)) + list(range(36, 42)),
        "nose": list(range(27, 36)),
        "mouth": list(range(48, 68)),
        "left_cheek": list(range(11, 17)),
        "right_cheek": list(range(0, 6)),
        "chin": list(range(6, 11)),
    }
    names = [name for name, idx in groups.items() for _ in idx]
    pts = lmk[[i for idx in groups.values() for i in idx]]
    # The face: in front of the jaw line's depth and within its width, up to one eye distance above the brows.
    brow_top = lmk[17:27, 1].max()
    half_width = 0.5 * abs(lmk[16, 0] - lmk[0, 0])
    front = (p[:, 2] > lmk[[0, 16], 2].mean() - 0.01) & (np.abs(p[:, 0] - lmk[27, 0]) < half_width)
    face = front & (p[:, 1] > lmk[8, 1] - 0.01) & (p[:, 1] < brow_top + 0.8 * iod)
    nearest = np.linalg.norm(p[:, None, :] - pts[None], axis=-1).argmin(axis=1)
    labels = np.array([region_label(names[k]) for k in nearest], dtype=np.int64)
    # Cheeks are the wide areas between the features: far from every feature landmark, use the side.
    far = np.linalg.norm(p[:, None, :] - pts[None], axis=-1).min(axis=1) > 0.35 * iod
    labels[far] = np.where(side_left[far], region_label("left_cheek"), region_label("right_cheek"))
    labels[p[:, 1] > brow_top + 0.05 * iod] = region_label("forehead")
    labels[~face] = 0
    return labels


def find_flame_file(folder: Path) -> Path:
    """The FLAME model file in a folder: a known name first, else the one .pkl that loads as FLAME."""
    for name in MODEL_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(q for q in folder.glob("*.pkl") if q.name != MASKS_FILE)
    if not candidates:
        raise HeadModelError(f"{folder} holds no FLAME model file (generic_model.pkl or flame2023_Open.pkl).")
    if len(candidates) == 1:
        return candidates[0]
    for candidate in candidates:
        try:
            obj = restricted_load(candidate)
        except HeadModelError:
            continue
        if isinstance(obj, dict) and "shapedirs" in obj:
            return candidate
    raise HeadModelError(f"{folder} holds .pkl files but none is a FLAME model with 'shapedirs'.")
