"""Face tracking (MediaPipe), lost-frame interpolation, the 68-point map, and FAN selection without downloads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from server.landmarks import MP_TO_68, MediaPipeTracker, assemble_track, fill_missing, mp_to_68
from server.landmarks import fan as fan_module
from server.landmarks.mediapipe_tracker import LOST_AFTER_FRAMES, N_MESH

try:  # tests/ as packages (relative) or as rootdir-inserted folders (absolute)
    from .preprocess_clips import astronaut_face, moving_face_frames, two_face_frames
except ImportError:
    from preprocess_clips import astronaut_face, moving_face_frames, two_face_frames  # type: ignore[no-redef,unused-ignore]


def test_fill_missing_interpolates_linearly_and_holds_the_ends() -> None:
    values = np.array([0, 0, 10, 0, 0, 40, 0], dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    found = np.array([False, False, True, False, False, True, False])
    out = fill_missing(values, found)
    np.testing.assert_allclose(out[:, 0, 0], [10, 10, 10, 20, 30, 40, 40])
    assert out.shape == values.shape and out.dtype == np.float32


def test_assemble_track_flags_lost_frames_and_returns_none_without_any_face() -> None:
    assert assemble_track([None, None]) is None
    pts = np.ones((478, 3), np.float32)
    track = assemble_track([(pts, 0.9), None, (3 * pts, 0.7)])
    assert track is not None
    np.testing.assert_array_equal(track.face_found, [True, False, True])
    np.testing.assert_allclose(track.confidence, [0.9, 0.0, 0.7])
    np.testing.assert_allclose(track.landmarks[1], 2 * pts)


def test_tracker_finds_478_points_on_the_face_in_pixels() -> None:
    frames = moving_face_frames(count=3, size=(320, 240))
    with MediaPipeTracker() as tracker:
        results = [tracker(f) for f in frames]
    assert all(r is not None for r in results)
    points, confidence = results[-1]  # type: ignore[misc]
    assert points.shape == (478, 3) and points.dtype == np.float32
    assert 0.5 < confidence <= 1.0
    # The face patch (170 px) sits at x 62..232, y 35..205: the mesh must lie inside it.
    assert points[:, 0].min() > 62 and points[:, 0].max() < 232
    assert points[:, 1].min() > 35 and points[:, 1].max() < 205
    # z uses the x pixel scale: the depth range of a face is of the order of its width, not of 1.
    assert 10 < np.ptp(points[:, 2]) < 200


def test_tracker_keeps_the_larger_face_and_follows_it() -> None:
    with MediaPipeTracker() as tracker:
        results = [tracker(f) for f in two_face_frames(count=3)]
    for t, result in enumerate(results):
        assert result is not None
        centre_x = result[0][:, 0].mean()
        assert 200 + t < centre_x < 380 + t, "the small face on the left was picked"


def test_mapped_68_points_are_in_ibug_order_on_a_real_face() -> None:
    assert MP_TO_68.shape == (68,) and len(set(MP_TO_68.tolist())) == 68 and MP_TO_68.max() < 478
    with MediaPipeTracker() as tracker:
        result = tracker(np.ascontiguousarray(astronaut_face(256)))
    assert result is not None
    p = mp_to_68(result[0])
    assert p.shape == (68, 2)
    x, y = p[:, 0], p[:, 1]
    assert np.argmax(y[:17]) in (7, 8, 9), "the chin must be the lowest jaw point"
    assert x[0] < x[8] < x[16], "the jaw runs from the subject's right (image left) to their left"
    assert x[36] < x[39] < x[42] < x[45], "eye corners in iBUG order"
    assert y[19] < y[37] < y[30] < y[51] < y[57] < y[8], "brow above eye above nose tip above mouth above chin"
    assert x[48] < x[51] < x[54], "mouth corners around the upper-lip centre"


def test_no_fan_weights_means_the_mediapipe_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv(fan_module.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def must_not_load(path: Path) -> Any:
        raise AssertionError("FAN must not be constructed without weights on disk")

    monkeypatch.setattr(fan_module, "load_fan", must_not_load)
    assert fan_module.find_fan_weights() is None
    assert fan_module.select_lmk68() == ("mediapipe-map", None)
    monkeypatch.setenv(fan_module.ENV_VAR, str(tmp_path / "missing.pth.tar"))
    assert fan_module.select_lmk68() == ("mediapipe-map", None)


@pytest.mark.parametrize("where", ["hub", "env_file", "env_dir"])
def test_fan_is_selected_only_when_its_file_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   where: str) -> None:
    import torch

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(fan_module.ENV_VAR, raising=False)
    folder = hub / "checkpoints" if where == "hub" else tmp_path / "weights"
    folder.mkdir(parents=True)
    weights = folder / fan_module.FAN_WEIGHTS_FILE
    weights.write_bytes(b"fake")
    if where == "env_file":
        monkeypatch.setenv(fan_module.ENV_VAR, str(weights))
    elif where == "env_dir":
        monkeypatch.setenv(fan_module.ENV_VAR, str(folder))
    built: list[Path] = []

    def fake_load(path: Path) -> str:
        built.append(path)
        return "estimator"

    monkeypatch.setattr(fan_module, "load_fan", fake_load)
    assert fan_module.select_lmk68() == ("fan", "estimator")
    assert built == [weights]


def test_unloadable_fan_weights_fall_back_to_the_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / fan_module.FAN_WEIGHTS_FILE
    bad.write_bytes(b"not a checkpoint")
    monkeypatch.setenv(fan_module.ENV_VAR, str(bad))
    assert fan_module.select_lmk68() == ("mediapipe-map", None)


@pytest.mark.slow
def test_fan_landmarker_runs_on_a_face_box(tmp_path: Path) -> None:
    """Random (untrained) FAN weights: checks the plumbing (crop, heatmap decoding, image coordinates) only.

    Slow (~20 s on 2 cores): a 95 MB checkpoint round trip and numba compiling face-alignment's heatmap decoder."""
    import torch
    from face_alignment.models import FAN

    torch.manual_seed(0)
    weights = tmp_path / fan_module.FAN_WEIGHTS_FILE
    torch.save(FAN(4).state_dict(), weights)
    estimator = fan_module.FanLandmarker(weights)
    face = astronaut_face(256)
    guide = np.array([[80, 90], [180, 90], [130, 200]], np.float32).repeat(23, axis=0)[:68]
    points = estimator(face, guide)
    assert points.shape == (68, 2) and np.isfinite(points).all()
    # Heatmap maxima map back into the region FAN looked at (box centre +- its scale), in image pixels.
    assert (points > -60).all() and (points < 320).all()
    # In image pixels, not the crop's: the same face moved by (30, 20) px gives the same points moved by that.
    shifted = np.pad(face, ((20, 0), (30, 0), (0, 0)))
    moved = estimator(shifted, guide + np.array([30, 20], np.float32))
    np.testing.assert_allclose(moved - points, np.broadcast_to([30.0, 20.0], points.shape), atol=1.0)


class _Detections:
    """Stands in for MediaPipe's FaceMesh: each process() call returns the next frame's fabricated faces, given as
    (centre x, centre y, size) in normalised image coordinates."""

    def __init__(self, frames: list[list[tuple[float, float, float]]]) -> None:
        self.frames = iter(frames)
        grid = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 22), np.linspace(-0.5, 0.5, 22)), -1).reshape(-1, 2)
        self.unit = grid[:N_MESH]

    def process(self, _rgb: np.ndarray) -> SimpleNamespace:
        faces = [SimpleNamespace(landmark=[SimpleNamespace(x=cx + size * u, y=cy + size * v, z=0.0)
                                           for u, v in self.unit])
                 for cx, cy, size in next(self.frames)]
        return SimpleNamespace(multi_face_landmarks=faces or None)

    def close(self) -> None:
        pass


def _track(frames: list[list[tuple[float, float, float]]]) -> list[float | None]:
    """Run the tracker's matching on fabricated detections; the picked face's centre x (normalised) per frame."""
    tracker = MediaPipeTracker(max_faces=2)
    tracker._mesh.close()
    tracker._mesh = _Detections(frames)
    image = np.zeros((100, 100, 3), np.uint8)
    with tracker:
        results = [tracker(image) for _ in frames]
    return [None if r is None else round(float(r[0][:, 0].mean()) / 100, 2) for r in results]


def test_a_face_lost_and_back_far_away_is_picked_up_again_after_a_few_frames() -> None:
    here, there = (0.2, 0.5, 0.1), (0.8, 0.5, 0.1)  # more than one face size apart
    n = LOST_AFTER_FRAMES
    # Lost for a moment while someone else is visible elsewhere: not swapped for them, followed again when back.
    brief = _track([[here]] + [[there]] * (n - 1) + [[here, there]])
    assert brief == [0.2] + [None] * (n - 1) + [0.2]
    # Gone for N frames (nothing, then only a face far away): the face there is taken as the largest.
    gone = _track([[here], []] + [[there]] * (n + 1))
    assert gone == [0.2] + [None] * n + [0.8] * 2
