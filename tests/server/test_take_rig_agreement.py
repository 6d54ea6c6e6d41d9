"""The server's head model and the add-on's rig formula agree, so an imported take is exact.

The take's `vertices` come from HeadModel.forward (torch); Blender rebuilds them from shape keys and
bones, whose formula is blender_microexp/core/rig.py (numpy). The two must give the same meshes for
FLAME-format models (pose correctives on) and for the built-in head, detail offsets included.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from blender_microexp.core.rig import take_vertices
from server.headmodel import HeadModel, build_builtin_head, load_head_model
from server.take import build_take_arrays, detail_basis


def fake_pre(t: int) -> SimpleNamespace:
    return SimpleNamespace(
        mp_landmarks=np.zeros((t, 478, 3), np.float32), lmk68=np.zeros((t, 68, 2), np.float32),
        confidence=np.ones(t, np.float32), face_found=np.ones(t, bool), frame_numbers=np.arange(t),
        image_size=(640, 360),
    )


def random_take(model: HeadModel, t: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = model.data
    shape = rng.normal(scale=0.5, size=data.shapedirs.shape[2]).astype(np.float32)
    expression = rng.normal(scale=0.7, size=(t, data.exprdirs.shape[2])).astype(np.float32)
    pose = rng.normal(scale=0.12, size=(t, len(data.joint_names), 3)).astype(np.float32)
    translation = rng.normal(size=(t, 3)).astype(np.float32)
    displacement = rng.normal(scale=5e-4, size=(t, data.v_template.shape[0], 3)).astype(np.float32)
    camera = np.array([800.0, 800.0, 320.0, 180.0], np.float32)
    arrays, _ = build_take_arrays(model, fake_pre(t), shape, expression, pose, translation, camera, displacement)
    return arrays


def assert_rig_matches(arrays: dict[str, np.ndarray]) -> None:
    rebuilt = take_vertices(arrays)
    err = np.abs(rebuilt - arrays["vertices"]).max()
    assert err < 1e-5, f"rig formula differs from the server's mesh by {err:.2e} m"


def test_flame_format_model_with_pose_correctives(flame_folder: Path) -> None:
    model = HeadModel(load_head_model(str(flame_folder)))
    assert model.data.posedirs.shape[2] == 36 and np.abs(model.data.posedirs).max() > 0
    arrays = random_take(model)
    assert arrays["detail_basis"].shape[0] > 0
    assert_rig_matches(arrays)


def test_builtin_head() -> None:
    arrays = random_take(HeadModel(build_builtin_head()), seed=1)
    assert_rig_matches(arrays)


def test_detail_basis_keeps_the_energy_it_promises_and_is_capped() -> None:
    rng = np.random.default_rng(2)
    low_rank = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 50 * 3))  # rank 3
    d = (low_rank + 1e-3 * rng.normal(size=low_rank.shape)).reshape(40, 50, 3)
    basis = detail_basis(d)
    assert basis.basis.shape[0] == 3 and basis.energy_kept >= 0.99
    assert np.abs(basis.weights).max() == pytest.approx(1.0)
    np.testing.assert_allclose(basis.reconstruct(), d, atol=0.02)
    capped = detail_basis(rng.normal(size=(40, 50, 3)), max_components=5)
    assert capped.basis.shape[0] == 5 and capped.energy_kept < 0.99
    assert detail_basis(np.zeros((4, 50, 3))).basis.shape[0] == 0


def test_detail_basis_leaves_out_components_too_small_to_see() -> None:
    """Offsets of ~1 µm (what the per-clip deformation leaves at its defaults) make no detail shape key; a 1 mm
    motion beside them makes one, and the noise's share of the energy is reported as not kept."""
    rng = np.random.default_rng(3)
    noise = 1e-6 * rng.normal(size=(60, 50, 3))  # metres
    assert detail_basis(noise).basis.shape[0] == 0
    assert detail_basis(noise).energy_kept < 0.01
    bump = np.zeros((60, 50, 3))
    bump[20:30, :5, 1] = 1e-3  # 1 mm on 5 vertices for 10 frames
    both = detail_basis(bump + noise)
    assert both.basis.shape[0] == 1
    assert 0.9 < both.energy_kept < 1.0
    np.testing.assert_allclose(both.reconstruct(), bump, atol=2e-5)
