"""HeadModel's LBS layer on a small synthetic FLAME-format model: identities, correctives, skinning, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.headmodel import HeadModel, HeadModelData, HeadModelError


def small_model(seed: int = 0) -> HeadModelData:
    """A 5-joint FLAME-like chain (root, neck, jaw, eye_L, eye_R) over a random 60-vertex blob."""
    rng = np.random.default_rng(seed)
    nv, nj = 60, 5
    v = rng.normal(size=(nv, 3)).astype(np.float32) * 0.05
    weights = np.zeros((nv, nj), np.float32)
    weights[:30, 1] = 1.0  # upper head on the neck
    weights[30:50, 2] = 1.0  # lower part on the jaw
    weights[50:55, 3] = 1.0
    weights[55:, 4] = 1.0
    jreg = np.zeros((nj, nv), np.float32)
    for j, sl in enumerate([slice(0, 60), slice(0, 30), slice(30, 50), slice(50, 55), slice(55, 60)]):
        jreg[j, sl] = 1.0 / (sl.stop - sl.start)
    faces = np.stack([np.arange(0, 58), np.arange(1, 59), np.arange(2, 60)], axis=1)
    return HeadModelData(
        model_id="small", kind="builtin", v_template=v,
        shapedirs=rng.normal(size=(nv, 3, 4)) * 0.01, exprdirs=rng.normal(size=(nv, 3, 6)) * 0.01,
        expression_names=[f"e{i}" for i in range(6)], posedirs=rng.normal(size=(nv, 3, 36)) * 0.01,
        J_regressor=jreg, weights=weights, parents=np.array([-1, 0, 1, 1, 1]),
        joint_names=["root", "neck", "jaw", "eye_L", "eye_R"], faces=faces,
        lmk68_faces=np.arange(68) % 58, lmk68_bary=np.full((68, 3), 1 / 3),
        mp_faces=np.arange(10), mp_bary=np.tile([1.0, 0.0, 0.0], (10, 1)), mp_indices=np.arange(10),
        regions=np.arange(nv) % 9,
    )


@pytest.fixture()
def model() -> HeadModel:
    return HeadModel(small_model())


def test_zero_inputs_give_the_template(model: HeadModel) -> None:
    out = model(*model.zeros(2))
    assert torch.allclose(out.vertices, model.v_template.expand(2, -1, -1), atol=1e-7)
    assert out.vertices.shape == (2, 60, 3) and out.joints.shape == (2, 5, 3)
    assert out.landmarks68.shape == (2, 68, 3) and out.landmarks_mp.shape == (2, 10, 3)
    # The MediaPipe embedding with bary (1, 0, 0) lands exactly on a triangle's first corner.
    assert torch.allclose(out.landmarks_mp[0], model.v_template[model.faces[model.mp_faces, 0]])


def test_root_rotation_is_ignored(model: HeadModel) -> None:
    shape, expr, pose = model.zeros(1)
    pose[0, 0] = torch.tensor([0.3, -0.5, 0.2])
    assert torch.allclose(model(shape, expr, pose).vertices, model.v_template[None], atol=1e-7)


def test_pose_correctives_vanish_at_zero_pose(model: HeadModel) -> None:
    shape, expr, pose = model.zeros(1)
    expr[0, 2] = 1.5
    rest = model.rest_vertices(shape, expr, pose)
    assert torch.allclose(rest, model.rest_vertices(shape, expr, None), atol=1e-7)
    pose[0, 2, 0] = 0.2
    assert not torch.allclose(model.rest_vertices(shape, expr, pose), rest, atol=1e-5)


def test_jaw_rotation_moves_only_jaw_weighted_vertices() -> None:
    data = small_model()
    data.posedirs[:] = 0.0  # correctives would move every vertex a little; isolate skinning
    model = HeadModel(data)
    shape, expr, pose = model.zeros(1)
    pose[0, 2] = torch.tensor([0.25, 0.0, 0.0])
    moved = (model(shape, expr, pose).vertices[0] - model.v_template).norm(dim=-1)
    jaw = torch.as_tensor(data.weights[:, 2] > 0)
    assert (moved[jaw] > 1e-4).all()
    assert moved[~jaw].max() < 1e-6
    # The jaw joint itself stays put under its own rotation.
    out = model(shape, expr, pose)
    assert torch.allclose(out.joints[0, 2], model.identity_joints(shape[0])[2], atol=1e-6)


def test_neck_rotation_carries_the_jaw_down_the_chain(model: HeadModel) -> None:
    shape, expr, pose = model.zeros(1)
    pose[0, 1] = torch.tensor([0.0, 0.4, 0.0])
    out = model(shape, expr, pose)
    rest_joints = model.identity_joints(shape)
    assert not torch.allclose(out.joints[0, 2], rest_joints[0, 2], atol=1e-4)
    assert torch.allclose(out.joints[0, 1], rest_joints[0, 1], atol=1e-6)


def test_joints_come_from_the_identity_mesh_not_the_expression(model: HeadModel) -> None:
    shape, expr, pose = model.zeros(1)
    shape[0, 0] = 2.0
    j_neutral = model(shape, expr, pose).joints
    expr[0] = 3.0
    assert torch.allclose(model(shape, expr, pose).joints, j_neutral)
    assert torch.allclose(j_neutral[0], model.identity_joints(shape[0]), atol=1e-6)


def test_gradients_reach_every_input(model: HeadModel) -> None:
    g = torch.Generator().manual_seed(1)
    shape = (torch.randn(2, 4, generator=g) * 0.5).requires_grad_()
    expr = (torch.randn(2, 6, generator=g) * 0.5).requires_grad_()
    pose = (torch.randn(2, 5, 3, generator=g) * 0.1).requires_grad_()
    offsets = (torch.randn(2, 60, 3, generator=g) * 1e-3).requires_grad_()
    out = model(shape, expr, pose, offsets)
    (out.vertices.square().sum() + out.landmarks68.sum() + out.joints.sum()).backward()
    assert pose.grad is not None
    for grad in (shape.grad, expr.grad, pose.grad[:, 1:], offsets.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert pose.grad[:, 0].abs().max() == 0  # the root is not part of head coordinates


def test_batch_equals_singles(model: HeadModel) -> None:
    g = torch.Generator().manual_seed(2)
    shape, expr = torch.randn(3, 4, generator=g), torch.randn(3, 6, generator=g)
    pose, offsets = torch.randn(3, 5, 3, generator=g) * 0.2, torch.randn(3, 60, 3, generator=g) * 1e-3
    batched = model(shape, expr, pose, offsets)
    for i in range(3):
        single = model(shape[i : i + 1], expr[i : i + 1], pose[i : i + 1], offsets[i : i + 1])
        assert torch.allclose(batched.vertices[i], single.vertices[0], atol=1e-6)
        assert torch.allclose(batched.landmarks68[i], single.landmarks68[0], atol=1e-6)


def test_a_vertex_subset_equals_the_same_vertices_of_the_whole_mesh(model: HeadModel) -> None:
    """`HeadModel.subset` (the onset solve evaluates only the vertices its flow term uses) gives the whole mesh's
    positions and gradients at those vertices, for a shape per frame and for one shape expanded over the batch."""
    g = torch.Generator().manual_seed(3)
    ids = torch.tensor([0, 7, 8, 31, 59])
    expr = (torch.randn(3, 6, generator=g) * 0.5).requires_grad_()
    pose = torch.randn(3, 5, 3, generator=g) * 0.2
    for shape in (torch.randn(3, 4, generator=g), torch.randn(4, generator=g)[None].expand(3, -1)):
        whole = model(shape, expr, pose).vertices[:, ids]
        part = model.subset(ids)(shape, expr, pose)
        assert part.shape == (3, 5, 3)
        torch.testing.assert_close(part, whole, atol=1e-7, rtol=1e-6)
        (grad_whole,) = torch.autograd.grad(whole.square().sum(), expr)
        (grad_part,) = torch.autograd.grad(part.square().sum(), expr)
        torch.testing.assert_close(grad_part, grad_whole, atol=1e-7, rtol=1e-5)


def test_lbs_matches_a_per_vertex_reference(model: HeadModel) -> None:
    """The rigid chain by hand for a jaw vertex: R_neck (R_jaw (x - j_jaw) + j_jaw - j_neck) + j_neck."""
    data = small_model()
    data.posedirs[:] = 0.0
    model = HeadModel(data)
    shape, expr, pose = model.zeros(1)
    pose[0, 1] = torch.tensor([0.1, 0.2, -0.1])
    pose[0, 2] = torch.tensor([0.3, 0.0, 0.05])
    out = model(shape, expr, pose)
    from server.geometry import rotation_matrix

    j = model.identity_joints(shape[0])
    r_neck, r_jaw = rotation_matrix(pose[0, 1]), rotation_matrix(pose[0, 2])
    x = model.v_template[40]
    expected = r_neck @ (r_jaw @ (x - j[2]) + j[2] - j[1]) + j[1]
    assert torch.allclose(out.vertices[0, 40], expected, atol=1e-6)


def test_wrong_input_shape_is_one_clear_error(model: HeadModel) -> None:
    shape, expr, pose = model.zeros(1)
    with pytest.raises(HeadModelError, match="expression of shape"):
        model(shape, expr[:, :3], pose)


def test_validate_names_the_inconsistent_array() -> None:
    data = small_model()
    data.weights = data.weights[:, :4]
    with pytest.raises(HeadModelError, match="weights has shape"):
        data.validate()
    data = small_model()
    data.posedirs = data.posedirs[:, :, :27]
    with pytest.raises(HeadModelError, match="posedirs"):
        HeadModel(data)


def test_topology_hash_depends_on_faces_only() -> None:
    a, b = small_model(0), small_model(1)
    assert a.topology_hash() == b.topology_hash() and len(a.topology_hash()) == 16
    b.faces = b.faces[::-1].copy()
    assert a.topology_hash() != b.topology_hash()
