"""The take format: round trip, validation of every dimension, version refusal, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blender_microexp.core.take import ARRAY_SCHEMA, TakeError, read_take, write_take


def tiny_take_arrays(t: int = 4, v: int = 6, e: int = 3, k: int = 2, j: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "template": rng.normal(size=(v, 3)),
        "faces": np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]]),
        "shape": np.zeros(2),
        "expression_basis": rng.normal(size=(v, 3, e)),
        "expression": rng.normal(size=(t, e)),
        "pose_corrective_basis": np.zeros((v, 3, 9 * (j - 1))),
        "pose": np.zeros((t, j, 3)),
        "joints_rest": rng.normal(size=(j, 3)),
        "joint_parents": np.array([-1, 0, 1]),
        "skin_weights": np.full((v, j), 1.0 / j),
        "translation": np.zeros((t, 3)),
        "camera": np.array([500.0, 500.0, 320.0, 180.0]),
        "image_size": np.array([640, 360]),
        "displacement": np.zeros((t, v, 3)),
        "detail_basis": rng.normal(size=(k, v, 3)),
        "detail_weights": rng.normal(size=(t, k)),
        "vertices": rng.normal(size=(t, v, 3)),
        "landmarks68": rng.normal(size=(t, 68, 2)),
        "landmarks_mp": rng.normal(size=(t, 478, 2)),
        "confidence": np.ones(t),
        "face_found": np.ones(t, bool),
        "frame_numbers": np.arange(t),
    }


def header(e: int = 3, j: int = 3) -> dict:
    return {"head_model": {"id": "tiny", "expression_names": [f"e{i}" for i in range(e)],
                           "joint_names": [f"j{i}" for i in range(j)]}, "fps": 30.0}


def test_round_trip_keeps_arrays_and_derives_dims(tmp_path):
    arrays = tiny_take_arrays()
    write_take(tmp_path, header(), arrays)
    take = read_take(tmp_path / "take.json")
    assert take.header["dims"] == {"T": 4, "V": 6, "F": 3, "E": 3, "S": 2, "J": 3, "P": 18, "K": 2, "NMP": 478}
    assert set(take.arrays) == set(ARRAY_SCHEMA)
    np.testing.assert_allclose(take["vertices"], arrays["vertices"].astype(np.float32))
    assert take["faces"].dtype == np.int32 and take["face_found"].dtype == np.bool_
    assert take.expression_names == ["e0", "e1", "e2"]
    assert not list(tmp_path.glob("*.part")), "temporary files must not remain"


def test_wrong_shape_is_refused_before_anything_is_written(tmp_path):
    arrays = tiny_take_arrays()
    arrays["vertices"] = arrays["vertices"][:, :5]
    with pytest.raises(TakeError, match="vertices"):
        write_take(tmp_path, header(), arrays)
    assert not (tmp_path / "take.json").exists() and not (tmp_path / "take.npz").exists()


def test_reader_refuses_a_header_that_disagrees_with_the_arrays(tmp_path):
    write_take(tmp_path, header(), tiny_take_arrays())
    h = json.loads((tmp_path / "take.json").read_text())
    h["dims"]["T"] = 5
    (tmp_path / "take.json").write_text(json.dumps(h))
    with pytest.raises(TakeError, match="shape"):
        read_take(tmp_path)


def test_unknown_major_version_is_refused_with_a_clear_message(tmp_path):
    write_take(tmp_path, header(), tiny_take_arrays())
    h = json.loads((tmp_path / "take.json").read_text())
    h["version"] = "2.0"
    (tmp_path / "take.json").write_text(json.dumps(h))
    with pytest.raises(TakeError, match="version 2.0.*reads only 1.x"):
        read_take(tmp_path)


def test_damaged_arrays_file_gives_one_sentence(tmp_path):
    write_take(tmp_path, header(), tiny_take_arrays())
    data = (tmp_path / "take.npz").read_bytes()
    (tmp_path / "take.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TakeError, match="damaged"):
        read_take(tmp_path)


def test_missing_take_and_missing_arrays(tmp_path):
    with pytest.raises(TakeError, match="take.json is missing"):
        read_take(tmp_path)
    write_take(tmp_path, header(), tiny_take_arrays())
    (tmp_path / "take.npz").unlink()
    with pytest.raises(TakeError, match="incomplete"):
        read_take(tmp_path)


def test_nan_is_refused(tmp_path):
    arrays = tiny_take_arrays()
    arrays["expression"][1, 1] = np.nan
    with pytest.raises(TakeError, match="NaN"):
        write_take(tmp_path, header(), arrays)


def test_pickled_object_arrays_are_never_loaded(tmp_path):
    write_take(tmp_path, header(), tiny_take_arrays())
    arrays = dict(np.load(tmp_path / "take.npz"))
    arrays["vertices"] = np.array([object()] * 3, dtype=object)
    np.savez(tmp_path / "take.npz", **arrays)
    with pytest.raises(TakeError, match="damaged"):
        read_take(tmp_path)


def test_rewrite_replaces_the_previous_take(tmp_path):
    write_take(tmp_path, header(), tiny_take_arrays(t=4))
    write_take(tmp_path, header(), tiny_take_arrays(t=7))
    assert read_take(tmp_path).frame_count == 7


@pytest.mark.parametrize(("change", "message"), [
    ({"joint_parents": np.array([-1, 2, 0])}, "joint parents do not form a tree rooted at the first joint"),
    ({"joint_parents": np.array([0, 0, 1])}, "joint parents do not form a tree rooted at the first joint"),
    ({"pose_corrective_basis": np.zeros((6, 3, 9))}, "has 9 pose correctives; a head with 3 joints has 0 or 18"),
])
def test_a_take_from_an_inconsistent_head_is_refused(tmp_path, change, message):
    """What the importer relies on (parents before children, 9 correctives per non-root joint) is checked up front,
    so such a take fails in one sentence instead of midway through building the rig."""
    with pytest.raises(TakeError, match=message):
        write_take(tmp_path, header(), {**tiny_take_arrays(), **change})
    assert not list(tmp_path.iterdir())


def test_a_take_without_frames_is_refused(tmp_path):
    arrays = tiny_take_arrays(t=0)
    with pytest.raises(TakeError, match="holds no frames"):
        write_take(tmp_path, header(), arrays)


def test_an_unreadable_header_is_named_in_plain_words(tmp_path):
    write_take(tmp_path, header(), tiny_take_arrays())
    (tmp_path / "take.json").write_bytes(b"{not json")
    with pytest.raises(TakeError) as err:
        read_take(tmp_path)
    assert str(err.value) == f"{tmp_path / 'take.json'} is not a readable take header (it is not valid UTF-8 JSON)."


def test_take_files_get_the_usual_permissions(tmp_path):
    """Written through private temporary files, the take still ends up as readable as any file the user writes
    (a render farm's other accounts read it): 0o666 less the umask, not mkstemp's 0o600."""
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    write_take(tmp_path, header(), tiny_take_arrays())
    for name in ("take.json", "take.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
