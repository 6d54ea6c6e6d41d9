"""core.rig: the numpy reference of the take formula the Blender rig must reproduce."""

from __future__ import annotations

import numpy as np
from microexp_fixtures import build_take_arrays, make_fixture_take, procedural_mesh

from blender_microexp.core import rig
from blender_microexp.core.take import read_take


def test_rodrigues_matches_known_rotations() -> None:
    r = rig.axis_angle_to_matrix(np.array([[0.0, 0.0, np.pi / 2], [0.0, 0.0, 0.0]]))
    assert np.allclose(r[0] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    assert np.allclose(r[1], np.eye(3))
    aa = np.random.default_rng(0).normal(size=(20, 3))
    m = rig.axis_angle_to_matrix(aa)
    assert np.allclose(m @ np.swapaxes(m, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(m), 1.0)


def test_quaternion_matches_matrix_and_is_continuous() -> None:
    aa = np.linspace([0.0, 0.0, 0.0], [0.0, 0.0, 5.5], 40)  # passes through pi: sign flips without care
    q = rig.axis_angle_to_quaternion(aa)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0)
    assert np.all(np.einsum("ti,ti->t", q[1:], q[:-1]) > 0)
    w, x, y, z = q.T
    # quaternion -> matrix, compared with Rodrigues
    m = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                  2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                  2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)
    assert np.allclose(m, rig.axis_angle_to_matrix(aa), atol=1e-12)


def test_pose_features_follow_flame_order() -> None:
    pose = np.zeros((1, 5, 3))
    pose[0, 2] = [0.3, 0.0, 0.0]  # jaw about x
    feats = rig.pose_features(pose)
    names = rig.pose_corrective_names(["root", "neck", "jaw", "eye_L", "eye_R"])
    assert feats.shape == (1, 36) and len(names) == 36
    nonzero = {names[i] for i in np.flatnonzero(np.abs(feats[0]) > 1e-9)}
    assert nonzero == {"pose.jaw.11", "pose.jaw.12", "pose.jaw.21", "pose.jaw.22"}
    assert np.isclose(feats[0, names.index("pose.jaw.12")], -np.sin(0.3))


def test_zero_pose_gives_rest_vertices() -> None:
    verts, faces = procedural_mesh(50)
    arrays = build_take_arrays(verts, faces, T=3, E=2, K=1, P=36)
    arrays["pose"][:] = 0.0
    assert np.allclose(rig.take_vertices(arrays), rig.rest_vertices(arrays), atol=1e-7)


def test_skinning_rotates_about_the_joint() -> None:
    verts, faces = procedural_mesh(30)
    arrays = build_take_arrays(verts, faces, T=1, E=0, K=0, P=0)
    arrays["skin_weights"][:] = 0.0
    arrays["skin_weights"][:, 2] = 1.0  # everything on the jaw
    arrays["pose"][:] = 0.0
    arrays["pose"][0, 2] = [0.0, 0.4, 0.0]
    out = rig.take_vertices(arrays)[0]
    jaw = arrays["joints_rest"][2].astype(np.float64)
    expect = (verts - jaw) @ rig.axis_angle_to_matrix(np.array([0.0, 0.4, 0.0])).T + jaw
    assert np.allclose(out, expect, atol=1e-6)


def test_root_rotation_is_ignored_by_skinning_and_applied_by_to_world() -> None:
    verts, faces = procedural_mesh(30)
    arrays = build_take_arrays(verts, faces, T=2, E=1, K=0, P=0)
    a = rig.take_vertices(arrays)
    arrays["pose"][:, 0] += 0.5
    assert np.allclose(rig.take_vertices(arrays), a)
    world = rig.to_world(a, arrays["pose"], arrays["translation"])
    r0 = rig.axis_angle_to_matrix(arrays["pose"][0, 0])
    assert np.allclose(world[0], a[0] @ r0.T + arrays["translation"][0], atol=1e-6)


def test_fixture_take_is_consistent(tmp_path) -> None:
    take = read_take(make_fixture_take(tmp_path / "t", T=5, V=120, E=4, K=2, P=36))
    assert take.frame_count == 5 and take["vertices"].shape == (5, 120, 3)
    assert np.allclose(rig.take_vertices(take.arrays), take["vertices"], atol=1e-6)
    assert np.allclose(take["skin_weights"].sum(1), 1.0, atol=1e-5)
    assert take["pose"][:, 1:].std() > 0.01  # the rig really moves
