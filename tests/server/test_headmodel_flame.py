"""The FLAME loader on a chumpy-style stand-in with FLAME's real topology; refusal of bad and malicious files."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flame_standin import make_flame_folder, synthetic_model

from server.headmodel import REGION_NAMES, HeadModel, HeadModelError, load_flame, load_head_model
from server.headmodel.regions import region_label


@pytest.fixture(scope="module")
def flame(flame_folder: Path):  # type: ignore[no-untyped-def]
    return load_head_model(str(flame_folder))


def test_loads_the_real_topology_without_chumpy(flame_folder: Path) -> None:
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    data = load_head_model(flame_folder)
    assert "chumpy" not in sys.modules
    assert data.kind == "flame" and data.v_template.shape == (5023, 3) and data.faces.shape == (9976, 3)
    assert data.num_shape == 100 and data.num_expression == 50 and data.posedirs.shape == (5023, 3, 36)
    assert data.expression_names[:2] == ["expr_000", "expr_001"]
    assert data.joint_names == ["root", "neck", "jaw", "eye_L", "eye_R"] and data.parents.tolist() == [-1, 0, 1, 1, 1]
    assert data.mp_indices.shape == (105,) and data.lmk68_faces.shape == (68,)
    # The expression columns are FLAME's columns 300.., the shape ones 0..
    source = synthetic_model()
    assert np.allclose(data.exprdirs[:, :, 0], source["shapedirs"][:, :, 300], atol=1e-7)
    assert np.allclose(data.shapedirs[:, :, 5], source["shapedirs"][:, :, 5], atol=1e-7)
    assert np.allclose(data.J_regressor, source["J_regressor"].toarray(), atol=1e-7)


def test_file_path_and_counts(flame_folder: Path) -> None:
    data = load_flame(flame_folder / "generic_model.pkl", n_shape=300, n_expression=100)
    assert data.num_shape == 300 and data.num_expression == 100
    assert load_head_model(str(flame_folder / "generic_model.pkl")).topology_hash() == data.topology_hash()
    with pytest.raises(HeadModelError, match="cannot give"):
        load_flame(flame_folder / "generic_model.pkl", n_expression=101)


def test_regions_from_masks_are_plausible(flame) -> None:  # type: ignore[no-untyped-def]
    counts = {name: int((flame.regions == region_label(name)).sum()) for name in REGION_NAMES}
    assert all(30 <= c <= 1200 for c in counts.values()), counts
    p = flame.v_template
    left, right = flame.regions == region_label("left_eye"), flame.regions == region_label("right_eye")
    assert p[left, 0].mean() > 0 > p[right, 0].mean()
    assert p[flame.regions == region_label("forehead"), 1].mean() > p[flame.regions == region_label("nose"), 1].mean()
    assert p[flame.regions == region_label("chin"), 1].mean() < p[flame.regions == region_label("mouth"), 1].mean()


def test_regions_without_masks_come_from_landmarks(tmp_path: Path) -> None:
    data = load_head_model(make_flame_folder(tmp_path / "nomasks", with_masks=False))
    counts = {name: int((data.regions == region_label(name)).sum()) for name in REGION_NAMES}
    assert all(c >= 20 for c in counts.values()), counts
    p = data.v_template
    cheek_l, cheek_r = data.regions == region_label("left_cheek"), data.regions == region_label("right_cheek")
    assert p[cheek_l, 0].min() > p[cheek_r, 0].max()


def test_landmarks_lie_on_the_face_front(flame) -> None:  # type: ignore[no-untyped-def]
    model = HeadModel(flame)
    out = model(*model.zeros(1))
    lmk, v = out.landmarks68[0].numpy(), flame.v_template
    span = v.max(0) - v.min(0)
    assert (lmk[27:, 2] > np.median(v[:, 2])).all()  # nose, eyes and mouth in front of the head's middle
    assert (lmk[:, 2] > v[:, 2].min() + 0.5 * span[2]).all()  # jaw line and brows on the front half too
    assert lmk[36, 0] < lmk[45, 0] and lmk[8, 1] < lmk[30, 1] < lmk[27, 1]  # x to the left, y up
    assert np.ptp(lmk[:, 0]) < span[0]
    mp = out.landmarks_mp[0].numpy()
    assert (mp[:, 2] > v[:, 2].min() + 0.5 * span[2]).all()


def test_a_batch_equals_its_frames_and_the_jaw_moves_only_jaw_skinned_vertices(flame) -> None:  # type: ignore[no-untyped-def]
    model = HeadModel(flame)
    shape, expr, pose = model.zeros(100)
    expr.normal_()
    pose[:, 2, 0] = 0.1
    batch = model(shape, expr, pose).vertices
    assert batch.shape == (100, 5023, 3) and torch.isfinite(batch).all()
    one = model(shape[37:38], expr[37:38], pose[37:38]).vertices[0]
    torch.testing.assert_close(batch[37], one, atol=1e-6, rtol=0)
    # A jaw rotation alone: vertices the jaw does not skin move only by the pose correctives (~1e-4 of it).
    jaw_open = model(shape[:1], torch.zeros_like(expr[:1]), pose[:1]).vertices[0] - model.v_template
    jaw = torch.as_tensor(flame.weights[:, 2] > 0)
    jaw_max = jaw_open[jaw].norm(dim=-1).max()
    assert jaw_max > 0.005  # 0.1 rad about the jaw joint moves the chin by centimetres
    assert jaw_open[~jaw].norm(dim=-1).max() < 0.01 * jaw_max


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(pickle.dumps({"v_template": Exploit()}, protocol=2))
    with pytest.raises(HeadModelError, match=r"pickled object of type (posix|os|nt)\.system that a FLAME file never"):
        load_head_model(str(bad))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file, not FLAME\n", "not a pickle"),
        (pickle.dumps([1, 2, 3]), "holds a list"),
        (pickle.dumps({"v_template": np.zeros((4, 3))}), "has no 'f'"),
        (b"", "is empty"),
    ],
)
def test_bad_model_files_give_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(content)
    with pytest.raises(HeadModelError, match=message) as info:
        load_head_model(str(path))
    assert str(path) in str(info.value) and str(info.value).count(". ") == 0


def test_truncated_and_incomplete_models(tmp_path: Path, flame_folder: Path) -> None:
    raw = (flame_folder / "generic_model.pkl").read_bytes()
    folder = make_flame_folder(tmp_path / "t")
    (folder / "generic_model.pkl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(HeadModelError) as info:
        load_head_model(str(folder))
    assert str(info.value) == f"{folder / 'generic_model.pkl'} is truncated or corrupt, so it cannot be read."
    model = synthetic_model()
    del model["shapedirs"]
    (folder / "generic_model.pkl").write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(HeadModelError, match="no 'shapedirs'"):
        load_head_model(str(folder))


def test_missing_embeddings_and_paths(tmp_path: Path, flame_folder: Path) -> None:
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "generic_model.pkl").write_bytes((flame_folder / "generic_model.pkl").read_bytes())
    with pytest.raises(HeadModelError, match="landmark_embedding.npy"):
        load_head_model(str(lonely))
    with pytest.raises(HeadModelError, match="does not exist"):
        load_head_model(str(tmp_path / "nowhere"))
    with pytest.raises(HeadModelError, match="no FLAME model file"):
        load_head_model(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(HeadModelError, match="expected a .pkl"):
        load_head_model(str(tmp_path / "notes.txt"))


def _single_array(path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.zeros(3))


def _npz_without_b_coords(path: Path) -> None:
    with np.load(path) as z:
        kept = {k: z[k] for k in z.files if k != "lmk_b_coords"}
    np.savez(path, **kept)


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("landmark_embedding.npy", lambda p: p.write_bytes(b"junk junk junk"), "is not a numpy .npy file."),
        ("mediapipe_landmark_embedding.npz", lambda p: p.write_bytes(b"junk junk junk"),
         "is not a readable .npz file: it is damaged or of another kind."),
        ("mediapipe_landmark_embedding.npz", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
         "is not a readable .npz file: it is damaged or of another kind."),
        ("mediapipe_landmark_embedding.npz", lambda p: p.write_bytes(b"PK\x03\x04 damaged"),
         "is not a readable .npz file: it is damaged or of another kind."),
        ("mediapipe_landmark_embedding.npz", _single_array,
         "holds a single array, not FLAME's MediaPipe embedding (an .npz archive)."),
        ("mediapipe_landmark_embedding.npz", _npz_without_b_coords,
         "is not FLAME's MediaPipe embedding: it has no 'lmk_b_coords'."),
    ],
    ids=["npy-junk", "npz-junk", "npz-truncated", "npz-bad-zip", "npz-is-npy", "npz-missing-key"],
)
def test_damaged_embedding_files_give_one_plain_sentence(tmp_path: Path, name: str, damage: Callable[[Path], object],
                                                         reason: str) -> None:
    folder = make_flame_folder(tmp_path / "d")
    damage(folder / name)
    with pytest.raises(HeadModelError) as info:
        load_head_model(str(folder))
    assert str(info.value) == f"{folder / name} {reason}"


def test_builtin_spec(tmp_path: Path) -> None:
    assert load_head_model("builtin").kind == "builtin"
