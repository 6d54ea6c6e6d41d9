"""The built-in head: a FLAME-format face model made by this project's own code from MediaPipe's face-mesh topology.

Topology: the 468-point tessellation's triangles (recovered from its edge list) plus two 4-triangle iris fans,
so V = 478 and every MediaPipe point is a vertex. Geometry: the subject's neutral MediaPipe points in head
coordinates, or a generic neutral measured once from scikit-image's `astronaut` photo. Expressions: procedural
FACS action units; identity: a few smooth global modes; joints root, neck, jaw, eye_L, eye_R. See
docs/head-models.md for what each component does and what this head cannot do.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from .data import HeadModelData, HeadModelError
from .mp68 import MP_TO_68
from .regions import region_label

NUM_MP_POINTS = 478
NUM_MESH_POINTS = 468
INTER_OCULAR = 0.095
"""Metres between the outer eye corners (MediaPipe 33 and 263) of the generic neutral: an adult average."""

JOINT_NAMES = ["root", "neck", "jaw", "eye_L", "eye_R"]
PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int64)

# MediaPipe indices. "R" is the subject's right (image left, -x in head coordinates), "L" their left (+x).
SIDES: dict[str, dict[str, list[int]]] = {
    "R": {
        "brow_inner": [107, 66, 55, 65],
        "brow_outer": [70, 63, 46, 53],
        "brow": [70, 63, 105, 66, 107, 46, 53, 52, 65, 55],
        "upper_lid": [246, 161, 160, 159, 158, 157, 173],
        "lower_lid": [33, 7, 163, 144, 145, 153, 154, 155, 133],
        "crease": [247, 30, 29, 27, 28, 56, 190],
        "cheek": [117, 118, 101, 50, 205, 123, 116, 111],
        "lip_corner": [61, 78],
        "ala": [48, 64, 129, 98, 102],
        "nasolabial": [206, 203, 36, 142],
        "iris": [468, 469, 470, 471, 472],
        "eye_corners": [33, 133],
        "upper_lid_centre": [159],
        "oval_side": [234],
    },
    "L": {
        "brow_inner": [336, 296, 285, 295],
        "brow_outer": [300, 293, 276, 283],
        "brow": [300, 293, 334, 296, 336, 276, 283, 282, 295, 285],
        "upper_lid": [466, 388, 387, 386, 385, 384, 398],
        "lower_lid": [263, 249, 390, 373, 374, 380, 381, 382, 362],
        "crease": [467, 260, 259, 257, 258, 286, 414],
        "cheek": [346, 347, 330, 280, 425, 352, 345, 340],
        "lip_corner": [291, 308],
        "ala": [278, 294, 358, 327, 331],
        "nasolabial": [426, 423, 266, 371],
        "iris": [473, 474, 475, 476, 477],
        "eye_corners": [263, 362],
        "upper_lid_centre": [386],
        "oval_side": [454],
    },
}
UPPER_LIP = [185, 40, 39, 37, 0, 267, 269, 270, 409, 191, 80, 81, 82, 13, 312, 311, 310, 415]
LOWER_LIP = [146, 91, 181, 84, 17, 314, 405, 321, 375, 95, 88, 178, 87, 14, 317, 402, 318, 324]
OUTER_LIPS = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]
CHIN = [152, 175, 199, 200, 18, 171, 396, 148, 377, 208, 428]
NOSE = [168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 48, 278, 64, 294, 98, 327, 129, 358, 49, 279, 209, 429, 217, 437]
NOSE_ROOT = [168, 6, 122, 351, 193, 417]
FOREHEAD = [10, 151, 9, 109, 338, 67, 297, 108, 337]

# The two iris fans: centre, then the ring in MediaPipe's order, wound so normals face +z (checked by tests).
IRIS_TRIANGLES = np.array(
    [[468, 469, 470], [468, 470, 471], [468, 471, 472], [468, 472, 469],
     [473, 474, 475], [473, 475, 476], [473, 476, 477], [473, 477, 474]],
    dtype=np.int64,
)


# --------------------------------------------------------------------------------------------------- topology
@lru_cache(maxsize=1)
def mesh_triangles() -> np.ndarray:
    """(F, 3) int64 triangles of the built-in head, consistently wound with normals out of the face (+z).

    The face-mesh tessellation is published as an edge list only: its triangles are the 3-cliques of the edge
    graph minus the few cliques that are not faces (each of their edges would then border 3 triangles).
    Orientation is propagated across shared edges from a seed wound like the tessellation's directed edges.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    directed = {(int(a), int(b)) for a, b in FACEMESH_TESSELATION}
    edges = {(min(a, b), max(a, b)) for a, b in directed}
    adj: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    cliques = sorted({tuple(sorted((a, b, c))) for a, b in edges for c in adj[a] & adj[b]})
    tris: list[tuple[int, ...]] = list(cliques)
    while True:
        use = Counter(e for t in tris for e in itertools.combinations(t, 2))
        over = [t for t in tris if all(use[e] > 2 for e in itertools.combinations(t, 2))]
        if not over:
            break
        tris.remove(over[0])
    use = Counter(e for t in tris for e in itertools.combinations(t, 2))
    if max(use.values()) > 2:
        raise HeadModelError("MediaPipe's face-mesh tessellation did not resolve into a manifold triangle mesh.")
    oriented = _orient(tris, directed)
    return np.concatenate([np.array(oriented, dtype=np.int64), IRIS_TRIANGLES])


def _orient(tris: Sequence[tuple[int, ...]], directed: set[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Wind triangles consistently: neighbours traverse their shared edge in opposite directions."""
    edge_tris: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, t in enumerate(tris):
        for e in itertools.combinations(t, 2):
            edge_tris[e].append(i)
    out: list[tuple[int, int, int] | None] = [None] * len(tris)
    for seed in range(len(tris)):
        if out[seed] is not None:
            continue
        a, b, c = tris[seed]
        # The tessellation's directed edges run clockwise seen from the front (checked by the tests): wind the
        # seed against the majority of them so normals point out of the face.
        votes = sum(1 if e in directed else -1 for e in ((a, b), (b, c), (c, a)))
        out[seed] = (a, c, b) if votes >= 0 else (a, b, c)
        queue = deque([seed])
        while queue:
            i = queue.popleft()
            wound = out[i]
            assert wound is not None
            for k in range(3):
                u, v = wound[k], wound[(k + 1) % 3]
                for j in edge_tris[(min(u, v), max(u, v))]:
                    if j == i or out[j] is not None:
                        continue
                    w = next(x for x in tris[j] if x not in (u, v))
                    out[j] = (v, u, w)  # traverse the shared edge the other way
                    queue.append(j)
    return [t for t in out if t is not None]


# --------------------------------------------------------------------------------------------------- geometry
def neutral_from_mediapipe(points: np.ndarray, width: float = 1.0, height: float = 1.0,
                           inter_ocular: float | None = INTER_OCULAR, symmetrize: bool = False) -> np.ndarray:
    """MediaPipe points of one frame -> a frontal head frame in metres. points (478, 3) -> (478, 3).

    points are MediaPipe's (x, y, z): normalised when width/height are the image size, or already pixels with
    width = height = 1 (z in the same units as x). The result: origin between the outer eye corners, x to the
    subject's left, y up, z out of the face; the photo's head rotation removed by a Procrustes fit to the
    face's own mirror image; scaled so the outer eye corners are `inter_ocular` metres apart (None keeps
    MediaPipe's scale, with pixels taken as metres). symmetrize averages each point with its mirror partner.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (NUM_MP_POINTS, 3) or not np.isfinite(pts).all():
        raise HeadModelError(f"Expected 478 finite MediaPipe points of shape (478, 3), got shape {pts.shape}.")
    # Image axes (x right = subject's left, y down, z into the screen) -> head axes.
    p = np.stack([pts[:, 0] * width, -pts[:, 1] * height, -pts[:, 2] * width], axis=1)
    p = p - 0.5 * (p[33] + p[263])
    p = p @ _initial_frame(p).T
    mirror_of = _mirror_pairs(p)
    flip = np.array([-1.0, 1.0, 1.0])
    for _ in range(3):
        # Kabsch rotation of the face onto the average of itself and its mirror image: removes yaw and roll.
        target = 0.5 * (p + p[mirror_of] * flip)
        u, _, vt = np.linalg.svd(p.T @ target)
        d = np.sign(np.linalg.det(u @ vt))
        p = p @ (u @ np.diag([1.0, 1.0, d]) @ vt)
        p = p - 0.5 * (p[33] + p[263])
    # Pitch: the forehead top (10) and chin (152) in one vertical plane, like a face looking straight ahead.
    v = p[10] - p[152]
    ang = np.arctan2(v[2], v[1])
    c, s = np.cos(ang), np.sin(ang)
    p = p @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]).T
    if symmetrize:
        p = 0.5 * (p + p[mirror_of] * flip)
    if inter_ocular is not None:
        p *= inter_ocular / np.linalg.norm(p[263] - p[33])
    return (p - 0.5 * (p[33] + p[263])).astype(np.float32)


def _initial_frame(p: np.ndarray) -> np.ndarray:
    """Rows x, y, z of a rough head frame from the eye corners (x) and forehead-to-chin line (y)."""
    x = p[263] - p[33]
    x /= np.linalg.norm(x)
    y = p[10] - p[152]
    y -= x * (x @ y)
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)])


def _mirror_pairs(p: np.ndarray) -> np.ndarray:
    """(478,) index of each point's left-right partner: nearest neighbour of its mirror image on the same side."""
    scale = np.linalg.norm(p[263] - p[33])
    mirrored = p * np.array([-1.0, 1.0, 1.0])
    d = np.linalg.norm(p[:, None, :] - mirrored[None, :, :], axis=-1)  # (478, 478)
    out = d.argmin(axis=0)
    # Points on the midline are their own partners; keep them so rather than pairing with a neighbour.
    out[np.abs(p[:, 0]) < 0.01 * scale] = np.arange(len(p))[np.abs(p[:, 0]) < 0.01 * scale]
    return out


@lru_cache(maxsize=1)
def generic_neutral() -> np.ndarray:
    """(478, 3) float32 generic neutral face in head coordinates (metres), from MediaPipe on `astronaut`."""
    import mediapipe as mp
    import skimage.data

    image = skimage.data.astronaut()
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        result = mesh.process(image)
    if not result.multi_face_landmarks:
        raise HeadModelError("MediaPipe found no face in the built-in reference photo; check the mediapipe install.")
    lm = result.multi_face_landmarks[0].landmark
    pts = np.array([[q.x, q.y, q.z] for q in lm], dtype=np.float64)
    h, w = image.shape[:2]
    out = neutral_from_mediapipe(pts, width=w, height=h, symmetrize=True)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------------- fields
def _bump(dist: np.ndarray, radius: float) -> np.ndarray:
    """Smooth compact falloff (1 - s^2)^2 for s = dist / radius < 1: C1 at the rim, 1 at the centre."""
    s2 = np.clip((dist / radius) ** 2, 0.0, 1.0)
    return (1.0 - s2) ** 2


def _field(p: np.ndarray, anchors: Sequence[int], disp: np.ndarray | Sequence[float], radius: float) -> np.ndarray:
    """Displacement field (V, 3): each anchor vertex pulls its neighbourhood by its displacement, smoothly.

    disp is one (3,) displacement for all anchors or (A, 3). Overlapping anchors are normalised so no vertex
    moves more than a full-strength anchor would.
    """
    anchors = list(anchors)
    d = np.broadcast_to(np.asarray(disp, dtype=np.float64), (len(anchors), 3))
    w = _bump(np.linalg.norm(p[:, None, :] - p[anchors][None], axis=-1), radius)  # (V, A)
    total = w.sum(axis=1, keepdims=True)
    return (w @ d) / np.maximum(total, 1.0)


def _lip_line_y(p: np.ndarray) -> np.ndarray:
    """(V,) height of the line between the lips below each vertex (piecewise linear across the mouth)."""
    corner_r, corner_l = p[61], p[291]
    centre_y = 0.5 * (p[13, 1] + p[14, 1])
    xs = np.array([corner_r[0], 0.0, corner_l[0]])
    ys = np.array([corner_r[1], centre_y, corner_l[1]])
    return np.interp(p[:, 0], xs, ys)


def _lip_masks(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V,) weights of the upper and lower lip/mouth surroundings: 1 above (below) the lip line, 0 across it."""
    half = 0.5 * np.linalg.norm(p[291] - p[61])
    rel = p[:, 1] - _lip_line_y(p)
    upper = np.clip(rel / (0.06 * half) + 0.5, 0.0, 1.0)
    return upper, 1.0 - upper


def _blink(p: np.ndarray, side: str) -> np.ndarray:
    """AU45 for one eye: the upper lid lands on the lower lid's line; the skin above follows with falloff."""
    s = SIDES[side]
    lower = p[s["lower_lid"]]
    order = np.argsort(lower[:, 0])
    lx, ly, lz = lower[order, 0], lower[order, 1], lower[order, 2]
    lids = s["upper_lid"]
    target = np.stack([p[lids, 0], np.interp(p[lids, 0], lx, ly), np.interp(p[lids, 0], lx, lz)], axis=1)
    lid_disp = target - p[lids]
    # The closed lid bulges over the cornea: keep the lid a little proud of the straight lower-lid line.
    eye_width = float(np.linalg.norm(p[s["eye_corners"][0]] - p[s["eye_corners"][1]]))
    out = _field(p, lids, lid_disp, radius=0.35 * eye_width)
    crease = s["crease"]
    out[crease] = 0.35 * _field(p, lids, lid_disp, radius=0.02)[crease]
    eye_centre = p[s["eye_corners"]].mean(axis=0)
    below = (p[:, 1] < np.interp(p[:, 0], lx, ly) + 1e-4) & (np.linalg.norm(p - eye_centre, axis=1) < 0.03)
    out[below] = 0.0
    out[s["lower_lid"]] = 0.0
    out[np.arange(NUM_MESH_POINTS, NUM_MP_POINTS)] = 0.0  # irises ride on the eye joints
    out[lids] = lid_disp
    return out


def _au_fields(p: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The procedural action units on neutral points p (478, 3): (name, displacement (V, 3) at coefficient 1)."""
    mm = 1e-3
    upper, lower = _lip_masks(p)
    up_of_eyes = {k: (p[:, 1] > p[SIDES[k]["crease"], 1].min()).astype(np.float64)[:, None] for k in SIDES}
    aus: list[tuple[str, np.ndarray]] = []

    def both(group: str, disp: Callable[[str], Sequence[float]], radius: float,
             extra: Callable[[str], list[int]] | None = None) -> np.ndarray:
        """One field over both sides' anchors, normalised together so the midline does not move twice."""
        anchors = [i for k in ("R", "L") for i in SIDES[k][group] + (extra(k) if extra else [])]
        per = [disp(k) for k in ("R", "L") for _ in SIDES[k][group] + (extra(k) if extra else [])]
        return _field(p, anchors, np.array(per, dtype=np.float64), radius)

    def sgn(side: str) -> float:
        return 1.0 if side == "L" else -1.0

    above_lids = np.maximum(up_of_eyes["L"], up_of_eyes["R"])
    aus.append(("AU1_inner_brow_raise", both("brow_inner", lambda k: [0, 8 * mm, 1 * mm], 0.028) * above_lids))
    for k in ("L", "R"):
        aus.append((f"AU2_outer_brow_raise_{k}",
                    _field(p, SIDES[k]["brow_outer"], [sgn(k) * 1 * mm, 8 * mm, 0], 0.028) * up_of_eyes[k]))
    aus.append(("AU4_brow_lower", both("brow_inner", lambda k: [-sgn(k) * 3 * mm, -6 * mm, 1.5 * mm], 0.026,
                                       extra=lambda k: [SIDES[k]["brow"][2]]) * above_lids))
    aus.append(("AU5_upper_lid_raise", both("upper_lid", lambda k: [0, 3 * mm, 0], 0.008)
                * (p[:, 1] > p[33, 1])[:, None]))
    for k in ("L", "R"):
        field = _field(p, SIDES[k]["cheek"], [0, 4 * mm, 2 * mm], 0.025)
        field += _field(p, SIDES[k]["lower_lid"][2:7], [0, 1.5 * mm, 0], 0.008)
        aus.append((f"AU6_cheek_raise_{k}", field))
    aus.append(("AU7_lid_tighten", both("lower_lid", lambda k: [0, 2.5 * mm, 0.5 * mm], 0.009)
                * (1.0 - np.isin(np.arange(len(p)), [33, 133, 263, 362]))[:, None]
                + both("upper_lid", lambda k: [0, -1.5 * mm, 0], 0.006)))
    aus.append(("AU9_nose_wrinkle", _field(p, NOSE_ROOT, [0, -3 * mm, -1 * mm], 0.015)
                + both("ala", lambda k: [0, 4 * mm, 0], 0.016)
                + _field(p, UPPER_LIP[:9], [0, 1.5 * mm, 0], 0.012) * upper[:, None]))
    aus.append(("AU10_upper_lip_raise", (_field(p, UPPER_LIP, [0, 5 * mm, 0.5 * mm], 0.014)
                                         + both("nasolabial", lambda k: [0, 2 * mm, 0], 0.012))
                * upper[:, None]))
    for k in ("L", "R"):
        corner = SIDES[k]["lip_corner"]
        aus.append((f"AU12_lip_corner_pull_{k}",
                    _field(p, corner, [sgn(k) * 6 * mm, 6 * mm, -3 * mm], 0.03)
                    + _field(p, SIDES[k]["cheek"], [0, 2 * mm, 1.5 * mm], 0.02)))
    for k in ("L", "R"):
        aus.append((f"AU14_dimpler_{k}", _field(p, SIDES[k]["lip_corner"], [-sgn(k) * 2 * mm, 0, -3 * mm], 0.018)))
    aus.append(("AU15_lip_corner_depress", both("lip_corner", lambda k: [0, -5 * mm, 0], 0.022)))
    aus.append(("AU17_chin_raise", (_field(p, CHIN, [0, 4 * mm, 2 * mm], 0.022)
                                    + _field(p, LOWER_LIP, [0, 2 * mm, 2 * mm], 0.012)) * lower[:, None]))
    aus.append(("AU20_lip_stretch", both("lip_corner", lambda k: [sgn(k) * 7 * mm, -1.5 * mm, -1 * mm], 0.026)))
    lips = UPPER_LIP + LOWER_LIP
    aus.append(("AU22_lip_funneler", _field(p, lips, [0, 0, 6 * mm], 0.012)
                + both("lip_corner", lambda k: [-sgn(k) * 5 * mm, 0, 2 * mm], 0.015)))
    aus.append(("AU23_lip_tighten", _field(p, UPPER_LIP[:9], [0, -1.5 * mm, -0.5 * mm], 0.008) * upper[:, None]
                + _field(p, LOWER_LIP[:9], [0, 1.5 * mm, -0.5 * mm], 0.008) * lower[:, None]
                + both("lip_corner", lambda k: [-sgn(k) * 2 * mm, 0, 0], 0.012)))
    aus.append(("AU24_lip_press", _field(p, UPPER_LIP, [0, -2.5 * mm, -1 * mm], 0.012) * upper[:, None]
                + _field(p, LOWER_LIP, [0, 2.5 * mm, -1 * mm], 0.012) * lower[:, None]))
    aus.append(("AU25_lips_part", _field(p, UPPER_LIP, [0, 2.5 * mm, 0], 0.012) * upper[:, None]
                + _field(p, LOWER_LIP, [0, -5 * mm, 0], 0.016) * lower[:, None]))
    for k in ("L", "R"):
        aus.append((f"AU45_blink_{k}", _blink(p, k)))
    return aus


def _shape_fields(p: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Identity modes on neutral points p (478, 3): (name, displacement (V, 3) per unit, about 3-6 mm at most)."""
    mm = 1e-3
    zero = np.zeros_like(p)
    centre = p.mean(axis=0)
    rel = p - centre
    extent = np.abs(rel).max(axis=0)
    mouth_y = _lip_line_y(p)
    below_mouth = np.clip((mouth_y - p[:, 1]) / 0.03, 0.0, 1.0)
    upper, lower = _lip_masks(p)

    def axis_scale(axis: int, amount: float, weight: np.ndarray | None = None) -> np.ndarray:
        out = zero.copy()
        out[:, axis] = rel[:, axis] / extent[axis] * amount
        return out if weight is None else out * weight[:, None]

    nose = _field(p, NOSE, [1.0, 1.0, 1.0], 0.02)[:, 0]  # (V,) smooth nose weight
    brows: np.ndarray = np.sum([_field(p, SIDES[k]["brow"], [1.0, 1.0, 1.0], 0.02)[:, 0] for k in SIDES], axis=0)
    eyes = {k: _field(p, SIDES[k]["upper_lid"] + SIDES[k]["lower_lid"] + SIDES[k]["iris"], [1.0, 1.0, 1.0],
                      0.022)[:, 0] for k in SIDES}
    cheeks: np.ndarray = np.sum([_field(p, SIDES[k]["cheek"], [1.0, 1.0, 1.0], 0.03)[:, 0] for k in SIDES], axis=0)
    lips = np.clip(_field(p, UPPER_LIP + LOWER_LIP, [1.0, 1.0, 1.0], 0.012)[:, 0], 0, 1)
    forehead = np.clip((p[:, 1] - p[FOREHEAD, 1].min()) / 0.04, 0, 1)
    modes: list[tuple[str, np.ndarray]] = [
        ("face_width", axis_scale(0, 5 * mm)),
        ("face_height", axis_scale(1, 6 * mm)),
        ("face_depth", axis_scale(2, 5 * mm)),
        ("jaw_width", axis_scale(0, 5 * mm, below_mouth)),
        ("chin_length", zero + np.array([0, -5 * mm, 0]) * below_mouth[:, None]),
        ("nose_length", zero + np.array([0, -3 * mm, 1 * mm]) * nose[:, None]),
        ("nose_width", axis_scale(0, 12 * mm, nose)),
        ("nose_projection", zero + np.array([0, 0, 4 * mm]) * nose[:, None]),
        ("brow_height", zero + np.array([0, 3 * mm, 0]) * brows[:, None]),
        ("eye_spacing", sum(eyes[k][:, None] * np.array([(1 if k == "L" else -1) * 2.5 * mm, 0, 0]) for k in SIDES)),
        ("eye_size", sum(eyes[k][:, None] * (p - p[SIDES[k]["eye_corners"]].mean(axis=0)) * 0.12 for k in SIDES)),
        ("mouth_width", axis_scale(0, 10 * mm, lips)),
        ("lip_thickness", zero + np.array([0, 2 * mm, 0]) * (lips * (upper - lower))[:, None]),
        ("cheek_fullness", zero + np.array([0, 0, 4 * mm]) * cheeks[:, None]),
        ("forehead_slope", zero + np.array([0, 0, -6 * mm]) * forehead[:, None]),
    ]
    return [(name, np.asarray(field, dtype=np.float64)) for name, field in modes]


# --------------------------------------------------------------------------------------------------- rig
def _joint_targets(p: np.ndarray) -> np.ndarray:
    """(5, 3) rest joints: root and neck behind the face, jaw at the hinge, eyeball centres behind the irises."""
    ear_y = 0.5 * (p[234, 1] + p[454, 1])
    side_z = 0.5 * (p[234, 2] + p[454, 2])
    eyeball_radius = 0.012
    return np.array([
        [0.0, ear_y, side_z - 0.04],  # root: head centre, between the ears
        [0.0, p[152, 1] + 0.01, side_z - 0.03],  # neck: top of the neck, behind the chin
        [0.0, ear_y - 0.015, side_z - 0.005],  # jaw: the hinge axis just below and in front of the ears
        p[473] - np.array([0.0, 0.0, eyeball_radius]),  # eye_L
        p[468] - np.array([0.0, 0.0, eyeball_radius]),  # eye_R
    ])


JOINT_ANCHORS: list[list[int]] = [
    [33, 263, 152, 10, 234, 454, 1],
    [33, 263, 152, 10, 234, 454, 1],
    [33, 263, 152, 10, 234, 454, 1],
    [473, 474, 475, 476, 477, 263, 362],
    [468, 469, 470, 471, 472, 33, 133],
]


def _joint_regressor(p: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(J, V) affine weights (rows sum to 1) over a few anchors each that reproduce `targets` on p exactly.

    Minimum-norm weights, so joints follow the identity's shape blend smoothly and translate with the mesh.
    """
    reg = np.zeros((len(targets), len(p)))
    for j, (anchors, target) in enumerate(zip(JOINT_ANCHORS, targets)):
        a = np.vstack([p[anchors].T, np.ones(len(anchors))])  # (4, A)
        reg[j, anchors] = np.linalg.pinv(a) @ np.append(target, 1.0)
    return reg


def _skinning_weights(p: np.ndarray) -> np.ndarray:
    """(V, 5) weights: irises on their eyes, the lower lip and chin on the jaw with a smooth band, the rest on the
    neck (a face-only mesh moves as one with the head), nothing on the root."""
    w = np.zeros((len(p), 5))
    half = 0.5 * np.linalg.norm(p[291] - p[61])
    below = _lip_line_y(p) - p[:, 1]  # (V,) metres below the lip line
    jaw = np.clip(below / (0.12 * half) + 0.5, 0.0, 1.0)
    # The band fades out towards the ears, where the jaw meets the skull near its hinge.
    ear_dist = np.abs(p[:, 0]) / np.abs(p[[234, 454], 0]).mean()
    jaw *= np.clip((1.0 - ear_dist) / 0.25, 0.0, 1.0) ** 0.5
    jaw[LOWER_LIP] = 1.0
    jaw[UPPER_LIP] = 0.0
    w[:, 2] = jaw
    w[:, 1] = 1.0 - jaw
    for k, j in (("L", 3), ("R", 4)):
        iris = SIDES[k]["iris"]
        w[iris] = 0.0
        w[iris, j] = 1.0
    return w


def _regions(p: np.ndarray) -> np.ndarray:
    """(V,) region labels from MediaPipe landmark groups on the neutral points."""
    from scipy.spatial import Delaunay

    def inside(poly_pts: np.ndarray, grow: float) -> np.ndarray:
        c = poly_pts.mean(axis=0)
        hull = Delaunay(c + (poly_pts - c) * grow)
        return hull.find_simplex(p[:, :2]) >= 0

    labels = np.zeros(len(p), dtype=np.int64)
    iod = np.linalg.norm(p[263] - p[33])
    lip_bottom = p[OUTER_LIPS, 1].min()
    for k, name, cheek in (("L", "left_eye", "left_cheek"), ("R", "right_eye", "right_cheek")):
        s = SIDES[k]
        eye_pts = p[s["brow"] + s["upper_lid"] + s["lower_lid"], :2].copy()
        low = p[s["lower_lid"], :2] - np.array([0.0, 0.05 * iod])
        labels[inside(np.vstack([eye_pts, low]), 1.1)] = region_label(name)
        side = (p[:, 0] > 0) if k == "L" else (p[:, 0] <= 0)
        labels[(labels == 0) & side] = region_label(cheek)
    brow_top = max(p[SIDES[k]["brow"], 1].max() for k in SIDES)
    labels[(p[:, 1] > brow_top) | ((p[:, 1] > p[SIDES["R"]["brow"], 1].min()) & (np.abs(p[:, 0]) < 0.08 * iod))] = (
        region_label("forehead"))
    mouth_half = 0.5 * np.linalg.norm(p[291] - p[61])
    chin = (p[:, 1] < lip_bottom) & (np.abs(p[:, 0]) < 1.2 * mouth_half)
    labels[chin] = region_label("chin")
    labels[inside(p[NOSE, :2], 1.05)] = region_label("nose")
    labels[inside(p[OUTER_LIPS, :2], 1.15)] = region_label("mouth")
    for k, name in (("L", "left_eye"), ("R", "right_eye")):
        labels[SIDES[k]["iris"] + SIDES[k]["upper_lid"] + SIDES[k]["lower_lid"]] = region_label(name)
    labels[UPPER_LIP + LOWER_LIP] = region_label("mouth")
    return labels


def _vertex_embedding(faces: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embed vertices exactly: for each, a triangle containing it and the one-hot barycentric of its corner."""
    first: dict[int, tuple[int, int]] = {}
    for f, tri in enumerate(faces):
        for corner, v in enumerate(tri):
            first.setdefault(int(v), (f, corner))
    face_idx = np.array([first[int(v)][0] for v in vertices], dtype=np.int64)
    bary = np.zeros((len(vertices), 3), dtype=np.float32)
    bary[np.arange(len(vertices)), [first[int(v)][1] for v in vertices]] = 1.0
    return face_idx, bary


def _stack(fields: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, list[str]]:
    return np.stack([f for _, f in fields], axis=2).astype(np.float32), [n for n, _ in fields]


def build_builtin_head(neutral_points: np.ndarray | None = None) -> HeadModelData:
    """The built-in head on a subject's neutral geometry, or on the generic neutral when None.

    neutral_points (478, 3): MediaPipe's points of the subject's neutral face in head coordinates, metres
    (origin between the outer eye corners, x to the subject's left, y up, z out of the face;
    `neutral_from_mediapipe` makes them from one frame). The topology (and so `topology_hash`) never changes.
    """
    if neutral_points is None:
        p = generic_neutral().astype(np.float64)
        model_id = "builtin"
    else:
        p = np.asarray(neutral_points, dtype=np.float64)
        if p.shape != (NUM_MP_POINTS, 3) or not np.isfinite(p).all():
            raise HeadModelError(f"The built-in head needs 478 finite neutral points of shape (478, 3), got {p.shape}.")
        iod = np.linalg.norm(p[263] - p[33])
        if not 0.03 < iod < 0.2 or p[263, 0] <= p[33, 0]:
            raise HeadModelError("The neutral points are not a face in metres in head coordinates "
                                 f"(outer eye corners {iod:.3f} m apart, expected about 0.09 with the left eye at +x).")
        model_id = "builtin-subject"
    faces = mesh_triangles()
    exprdirs, expr_names = _stack(_au_fields(p))
    shapedirs, shape_names = _stack(_shape_fields(p))
    joints = _joint_targets(p)
    all_points = np.arange(NUM_MP_POINTS)
    mp_faces, mp_bary = _vertex_embedding(faces, all_points)
    lmk_faces, lmk_bary = _vertex_embedding(faces, MP_TO_68)
    data = HeadModelData(
        model_id=model_id, kind="builtin", v_template=p.astype(np.float32), shapedirs=shapedirs, exprdirs=exprdirs,
        expression_names=expr_names, posedirs=np.zeros((NUM_MP_POINTS, 3, 9 * (len(JOINT_NAMES) - 1)), np.float32),
        J_regressor=_joint_regressor(p, joints), weights=_skinning_weights(p), parents=PARENTS,
        joint_names=JOINT_NAMES, faces=faces, lmk68_faces=lmk_faces, lmk68_bary=lmk_bary,
        mp_faces=mp_faces, mp_bary=mp_bary, mp_indices=all_points, regions=_regions(p), shape_names=shape_names,
    )
    return data.validate()
