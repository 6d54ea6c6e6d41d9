"""The built-in head: a clean oriented surface, AUs that act where they should, full blinks, a working rig."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from server.headmodel import REGION_NAMES, HeadModel, HeadModelError, build_builtin_head
from server.headmodel.builtin import SIDES, generic_neutral, mesh_triangles, neutral_from_mediapipe
from server.headmodel.mp68 import MP_TO_68
from server.headmodel.regions import region_label


@pytest.fixture(scope="module")
def head():  # type: ignore[no-untyped-def]
    return build_builtin_head()


def test_surface_is_a_consistently_oriented_manifold(head) -> None:  # type: ignore[no-untyped-def]
    faces = head.faces
    assert head.v_template.shape == (478, 3) and faces.shape == (860, 3)
    assert len(np.unique(faces)) == 478  # every MediaPipe point, irises included, is on the surface
    directed = Counter((int(a), int(b)) for f in faces for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])))
    assert max(directed.values()) == 1  # no edge traversed twice the same way: consistent winding
    undirected = Counter((min(a, b), max(a, b)) for a, b in directed)
    assert max(undirected.values()) == 2
    # Boundary loops: the face outline, two eye openings, the mouth opening, and the two iris rims.
    boundary = [(a, b) for (a, b) in directed if (b, a) not in directed]
    nxt = dict(boundary)
    assert len(nxt) == len(boundary)  # each boundary vertex starts exactly one boundary edge
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(loop)
    assert sorted(len(loop) for loop in loops)[-1] == 36  # MediaPipe's face oval has 36 points
    assert len(loops) == 6
    n_edges = len(undirected)
    assert 478 - n_edges + len(faces) == 1 - 3 + 2  # disk with 3 holes plus two iris disks
    p = head.v_template
    normals = np.cross(p[faces[:, 1]] - p[faces[:, 0]], p[faces[:, 2]] - p[faces[:, 0]])
    assert (normals[:, 2] > 0).mean() > 0.95 and normals[:, 2].sum() > 0


def test_topology_is_independent_of_the_subject(head) -> None:  # type: ignore[no-untyped-def]
    subject = head.v_template * 1.05 + np.array([0.0, 0.001, 0.0], np.float32)
    subject = subject - 0.5 * (subject[33] + subject[263])
    other = build_builtin_head(subject)
    assert other.topology_hash() == head.topology_hash()
    assert np.allclose(other.v_template, subject)


def test_generic_neutral_is_metric_frontal_and_symmetric() -> None:
    p = generic_neutral()
    assert abs(np.linalg.norm(p[263] - p[33]) - 0.095) < 1e-6
    assert np.allclose(0.5 * (p[33] + p[263]), 0.0, atol=1e-6)
    assert p[263, 0] > 0 > p[33, 0]  # x to the subject's left
    assert p[10, 1] > p[1, 1] > p[152, 1]  # y up: forehead, nose tip, chin
    assert p[1, 2] > p[234, 2] + 0.03  # the nose tip stands out of the face towards +z
    assert abs(p[1, 0]) < 1e-3 and abs(p[152, 0]) < 1e-3


def test_frontalisation_removes_a_head_rotation() -> None:
    p = generic_neutral().astype(np.float64)
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", [0.15, -0.3, 0.1]).as_matrix()
    turned = p @ rot.T
    # Back to MediaPipe's image convention (y down, z into the screen) in pixels.
    image = np.stack([turned[:, 0] * 2000 + 300, -turned[:, 1] * 2000 + 200, -turned[:, 2] * 2000], axis=1)
    again = neutral_from_mediapipe(image)
    assert np.abs(again - p).max() < 1e-3


def _moved_fraction(head, name: str, regions: list[str]) -> float:  # type: ignore[no-untyped-def]
    k = head.expression_names.index(name)
    mag = np.linalg.norm(head.exprdirs[:, :, k], axis=1)
    inside = np.isin(head.regions, [region_label(r) for r in regions])
    return float(mag[inside].sum() / mag.sum())


MOUTH_AREA = ["mouth", "left_cheek", "right_cheek", "chin", "nose"]
AU_REGIONS = {
    "AU1_inner_brow_raise": ["left_eye", "right_eye", "forehead"],
    "AU2_outer_brow_raise_L": ["left_eye", "forehead"],
    "AU2_outer_brow_raise_R": ["right_eye", "forehead"],
    "AU4_brow_lower": ["left_eye", "right_eye", "forehead", "nose"],
    "AU5_upper_lid_raise": ["left_eye", "right_eye"],
    "AU6_cheek_raise_L": ["left_cheek", "left_eye", "nose"],
    "AU6_cheek_raise_R": ["right_cheek", "right_eye", "nose"],
    "AU7_lid_tighten": ["left_eye", "right_eye"],
    "AU9_nose_wrinkle": ["nose", "left_cheek", "right_cheek", "mouth", "left_eye", "right_eye"],
    "AU10_upper_lip_raise": MOUTH_AREA,
    "AU12_lip_corner_pull_L": MOUTH_AREA,
    "AU12_lip_corner_pull_R": MOUTH_AREA,
    "AU14_dimpler_L": MOUTH_AREA,
    "AU14_dimpler_R": MOUTH_AREA,
    "AU15_lip_corner_depress": MOUTH_AREA,
    "AU17_chin_raise": ["chin", "mouth"],
    "AU20_lip_stretch": MOUTH_AREA,
    "AU22_lip_funneler": MOUTH_AREA,
    "AU23_lip_tighten": MOUTH_AREA,
    "AU24_lip_press": MOUTH_AREA,
    "AU25_lips_part": MOUTH_AREA,
    "AU45_blink_L": ["left_eye"],
    "AU45_blink_R": ["right_eye"],
}


def test_every_action_unit_acts_mainly_on_its_own_region(head) -> None:  # type: ignore[no-untyped-def]
    assert set(AU_REGIONS) == set(head.expression_names)
    for name, regions in AU_REGIONS.items():
        assert _moved_fraction(head, name, regions) > 0.85, name
        k = head.expression_names.index(name)
        peak = np.linalg.norm(head.exprdirs[:, :, k], axis=1).max()
        assert 0.002 < peak < 0.02, name  # a full-strength action moves millimetres, not centimetres
    for name in ("AU12_lip_corner_pull_L", "AU15_lip_corner_depress", "AU25_lips_part", "AU17_chin_raise"):
        assert _moved_fraction(head, name, ["forehead"]) < 0.001, name
        assert _moved_fraction(head, name, ["left_eye", "right_eye"]) < 0.05, name  # a smile bunches the lower lid


def test_left_and_right_variants_are_mirror_images(head) -> None:  # type: ignore[no-untyped-def]
    for left, right in (("AU12_lip_corner_pull_L", "AU12_lip_corner_pull_R"), ("AU45_blink_L", "AU45_blink_R"),
                        ("AU2_outer_brow_raise_L", "AU2_outer_brow_raise_R")):
        dl = head.exprdirs[:, :, head.expression_names.index(left)]
        dr = head.exprdirs[:, :, head.expression_names.index(right)]
        mag_l, mag_r = np.linalg.norm(dl, axis=1), np.linalg.norm(dr, axis=1)
        assert (head.v_template[mag_l > 1e-4, 0] > -0.01).all(), left  # the left variant stays on +x
        assert (head.v_template[mag_r > 1e-4, 0] < 0.01).all(), right
        assert abs(mag_l.sum() - mag_r.sum()) < 0.05 * mag_l.sum()


@pytest.mark.parametrize("side", ["L", "R"])
def test_blink_closes_the_lids_fully(head, side: str) -> None:  # type: ignore[no-untyped-def]
    model = HeadModel(head)
    shape, expr, pose = model.zeros(1)
    expr[0, head.expression_names.index(f"AU45_blink_{side}")] = 1.0
    v = model(shape, expr, pose).vertices[0].numpy()
    s = SIDES[side]
    lower = v[s["lower_lid"]]
    order = np.argsort(lower[:, 0])
    for i in s["upper_lid"]:
        lid_y = np.interp(v[i, 0], lower[order, 0], lower[order, 1])
        lid_z = np.interp(v[i, 0], lower[order, 0], lower[order, 2])
        assert np.hypot(v[i, 1] - lid_y, v[i, 2] - lid_z) < 1e-3
    centre = s["upper_lid_centre"][0]
    rest = head.v_template[s["lower_lid"]]
    rest_lid_y = np.interp(head.v_template[centre, 0], np.sort(rest[:, 0]), rest[np.argsort(rest[:, 0]), 1])
    assert head.v_template[centre, 1] - rest_lid_y > 0.005  # the eye was open
    assert np.allclose(v[s["lower_lid"]], rest, atol=1e-7)  # the lower lid stays: the upper one comes down to it
    other = SIDES["R" if side == "L" else "L"]["upper_lid_centre"][0]
    assert np.allclose(v[other], head.v_template[other])


def test_regions_cover_the_face(head) -> None:  # type: ignore[no-untyped-def]
    counts = {name: int((head.regions == region_label(name)).sum()) for name in REGION_NAMES}
    assert all(c >= 10 for c in counts.values()), counts
    p = head.v_template
    assert (p[head.regions == region_label("left_eye"), 0] > 0).all()
    assert (p[head.regions == region_label("right_cheek"), 0] < 0.005).all()
    assert p[head.regions == region_label("forehead"), 1].min() > p[head.regions == region_label("nose"), 1].mean()
    assert p[head.regions == region_label("chin"), 1].max() < p[head.regions == region_label("mouth"), 1].mean()
    assert head.regions[[1, 4]].tolist() == [region_label("nose")] * 2
    assert head.regions[[13, 14, 61, 291]].tolist() == [region_label("mouth")] * 4


def test_rig_joints_weights_and_landmarks(head) -> None:  # type: ignore[no-untyped-def]
    model = HeadModel(head)
    assert head.joint_names == ["root", "neck", "jaw", "eye_L", "eye_R"]
    assert np.allclose(head.weights.sum(axis=1), 1.0)
    joints = head.J_regressor @ head.v_template
    p = head.v_template
    assert joints[0, 2] < p[234, 2] and joints[2, 2] < p[1, 2] - 0.05  # root and jaw sit behind the face
    assert joints[2, 1] < 0 and joints[1, 1] < joints[2, 1]  # jaw below the eyes, neck below the jaw
    assert np.linalg.norm(joints[3] - (p[473] - [0, 0, 0.012])) < 1e-5
    shape, expr, pose = model.zeros(1)
    out = model(shape, expr, pose)
    # MediaPipe landmarks are exactly the vertices; the 68 follow the fixed map.
    assert torch.allclose(out.landmarks_mp[0], out.vertices[0], atol=1e-7)
    assert torch.allclose(out.landmarks68[0], out.vertices[0, torch.as_tensor(MP_TO_68)], atol=1e-7)
    lmk = out.landmarks68[0].numpy()
    assert lmk[0, 0] < lmk[8, 0] < lmk[16, 0] and lmk[36, 0] < 0 < lmk[45, 0] and lmk[8, 1] < lmk[57, 1]
    # Jaw rotation (opening: positive rotation about x) moves the lower lip and chin down, not the upper lip.
    pose[0, 2] = torch.tensor([0.2, 0.0, 0.0])
    moved = model(shape, expr, pose).vertices[0].numpy() - p
    assert moved[14, 1] < -0.003 and moved[152, 1] < -0.003
    assert np.abs(moved[13]).max() < 1e-6 and np.abs(moved[10]).max() < 1e-6
    # Eye rotation moves only that iris.
    pose[0, 2] = 0.0
    pose[0, 3] = torch.tensor([0.0, 0.3, 0.0])
    moved = np.linalg.norm(model(shape, expr, pose).vertices[0].numpy() - p, axis=1)
    assert set(np.flatnonzero(moved > 1e-6)) == set(SIDES["L"]["iris"])


def test_shape_modes_are_smooth_named_and_move_joints(head) -> None:  # type: ignore[no-untyped-def]
    assert len(head.shape_names) == head.num_shape >= 10
    model = HeadModel(head)
    shape = torch.zeros(head.num_shape)
    shape[head.shape_names.index("face_width")] = 1.0
    j0, j1 = model.identity_joints(torch.zeros_like(shape)), model.identity_joints(shape)
    assert torch.isfinite(j1).all() and (j1 - j0).norm(dim=-1).max() < 0.02
    for k, name in enumerate(head.shape_names):
        peak = np.linalg.norm(head.shapedirs[:, :, k], axis=1).max()
        assert 0.001 < peak < 0.015, name


def test_bad_neutral_points_are_refused() -> None:
    with pytest.raises(HeadModelError, match="478"):
        build_builtin_head(np.zeros((468, 3)))
    with pytest.raises(HeadModelError, match="metres"):
        build_builtin_head(generic_neutral() * 1000.0)


def test_triangles_are_cached_and_stable() -> None:
    assert mesh_triangles() is mesh_triangles()
    assert mesh_triangles().dtype == np.int64
