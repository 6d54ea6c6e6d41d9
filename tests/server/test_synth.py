"""Clips with known truth: timeline, warp locality, the written video and truth, and the error metrics."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from server.metrics import face_mask_for, micro_motion_error, vertex_error_mm
from server.synth import AUEvent, FaceWarper, SynthError, au_timeline, main_make_clip, make_clip, resolve_au


def _read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame.astype(np.float32))
    cap.release()
    return frames, fps


@pytest.mark.parametrize("fps", [30.0, 100.0, 200.0])
def test_timeline_events_last_40_to_500_ms(fps: float) -> None:
    rng = np.random.default_rng(0)
    events = au_timeline(["AU1_inner_brow_raise", "AU45_blink"], fps, int(4 * fps), rng)
    assert len(events) >= 2
    for ev in events:
        assert 0.04 <= (ev.offset - ev.onset) / fps <= 0.5
        assert ev.onset < ev.apex <= ev.apex_end < ev.offset
        assert 0.5 <= ev.peak_mm <= 3.0
    for a, b in zip(events, events[1:]):
        assert a.offset < b.onset
    ev = events[0]
    curve = ev.curve(np.array([ev.onset, ev.apex, ev.apex_end, ev.offset, ev.offset + 5]))
    np.testing.assert_allclose(curve, [0.0, 1.0, 1.0, 0.0, 0.0], atol=1e-9)


def test_bilateral_names_and_unknown_aus() -> None:
    names = ["AU45_blink_L", "AU45_blink_R", "AU4_brow_lower"]
    assert resolve_au("AU45_blink", names) == [0, 1]
    assert resolve_au("AU45_blink_R", names) == [1]
    with pytest.raises(SynthError, match="no expression component named 'AU99'"):
        resolve_au("AU99", names)


def test_warp_moves_pixels_only_where_the_mesh_moves() -> None:
    rng = np.random.default_rng(1)
    h, w = 120, 160
    image = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
    gy, gx = np.mgrid[40:81:10, 40:121:10]
    points = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float64)  # a 9 x 5 grid of vertices
    faces = []
    cols = gx.shape[1]
    for r in range(gx.shape[0] - 1):
        for c in range(cols - 1):
            i = r * cols + c
            faces += [[i, i + 1, i + cols], [i + 1, i + cols + 1, i + cols]]
    warper = FaceWarper(points, np.ones(len(points)), np.array(faces), (w, h), feather_px=6.0)
    moved = points.copy()
    centre = 2 * cols + 4  # the middle vertex, at (80, 60)
    moved[centre] += [3.0, -2.0]
    out = warper.warp(image, moved, points)
    diff = np.abs(out - image).sum(-1)
    assert diff[52:68, 72:88].max() > 20  # the triangles around the moved vertex changed
    far = np.ones_like(diff, bool)
    far[35:86, 55:106] = False  # more than a triangle ring away from the moved vertex
    assert diff[far].max() < 1e-3
    # Exactly piecewise affine: the moved vertex's pixel comes from where the vertex was.
    np.testing.assert_allclose(out[58, 83], image[60, 80], atol=1.0)  # grey levels: < 0.05 px


def test_make_clip_writes_video_and_truth(tmp_path: Path) -> None:
    frames, fps = 24, 100.0
    blink = AUEvent("AU45_blink", onset=4, apex=8, apex_end=10, offset=16, peak_mm=3.0)
    brow = AUEvent("AU1_inner_brow_raise", onset=2, apex=6, apex_end=8, offset=14, peak_mm=2.0)
    truth_path = make_clip(tmp_path / "clip.mp4", fps=fps, frames=frames, seed=3, aus=[blink, brow],
                           jitter=False, noise=False, flicker=False)
    assert truth_path == tmp_path / "clip.truth.npz"
    video, got_fps = _read_frames(tmp_path / "clip.mp4")
    assert len(video) == frames and got_fps == pytest.approx(fps)
    assert video[0].shape == (360, 640, 3)

    truth = np.load(truth_path, allow_pickle=False)
    n_vertices = truth["vertices"].shape[1]
    for name, shape in {"vertices": (frames, n_vertices, 3), "translation": (frames, 3), "camera": (4,)}.items():
        assert truth[name].shape == shape
    assert truth["expression"].shape[0] == frames and truth["pose"].shape[:2] == (frames, 5)
    assert truth["faces"].max() < n_vertices and str(truth["model_id"]).startswith("builtin")
    assert float(truth["fps"]) == fps and list(truth["au_names"]) == ["AU45_blink", "AU1_inner_brow_raise"]
    durations = (truth["au_offset"] - truth["au_onset"]) / fps
    assert ((durations >= 0.04) & (durations <= 0.5)).all()
    assert int(truth["onset_frame"]) == 1

    # The largest vertex displacement at the brow-only apex (frame 6 has the blink rising too, so use the truth's
    # own arrays): displacement from the neutral onset is a few millimetres, as scripted.
    disp_mm = np.linalg.norm(truth["vertices"] - truth["vertices"][0], axis=-1).max(axis=1) * 1000
    assert disp_mm[0] == 0.0 and 2.0 <= disp_mm[8] <= 5.5

    # The apex frame differs from the neutral one where the mesh moved, not far outside the face.
    proj = truth["projected"]
    moved = np.linalg.norm(proj[8] - proj[0], axis=-1) > 0.5
    diff = np.abs(video[8] - video[0]).sum(-1)
    near = np.zeros(diff.shape, np.uint8)
    for x, y in proj[0][moved]:
        cv2.circle(near, (int(round(x)), int(round(y))), 12, 1, -1)
    assert diff[near > 0].mean() > 3.0 * (diff[near == 0].mean() + 0.1)
    lo, hi = proj[0].min(axis=0) - 30, proj[0].max(axis=0) + 30
    outside = np.ones(diff.shape, bool)
    outside[int(lo[1]):int(hi[1]), int(lo[0]):int(hi[0])] = False
    # Frames 0 and 1 show the same neutral face: their difference is the codec's noise floor.
    codec_noise = np.abs(video[1] - video[0]).sum(-1)[outside].mean()
    assert diff[outside].mean() < 1.5 * codec_noise + 0.5


def test_local_motion_is_a_gaussian_bump_with_the_events_timing(tmp_path: Path) -> None:
    brow = AUEvent("AU1_inner_brow_raise", onset=2, apex=5, apex_end=6, offset=10, peak_mm=2.0)
    kwargs = dict(fps=30.0, frames=12, seed=5, aus=[brow], jitter=False, noise=False, flicker=False)
    plain = np.load(make_clip(tmp_path / "plain.mp4", **kwargs), allow_pickle=False)
    local = np.load(make_clip(tmp_path / "local.mp4", local_motion=True, **kwargs), allow_pickle=False)
    assert plain["local_center"].shape == (0,) and plain["local_direction"].shape == (0, 3)
    assert local["local_center"].shape == (1,) and 8.0 <= float(local["local_radius_mm"][0]) <= 15.0
    # Same expression, pose and video otherwise: the difference of the meshes is the local motion alone.
    np.testing.assert_array_equal(local["expression"], plain["expression"])
    bump_mm = (local["vertices"] - plain["vertices"]).astype(np.float64) * 1000.0  # (T, V, 3)
    assert np.abs(bump_mm[:3]).max() < 1e-6 and np.abs(bump_mm[10:]).max() < 1e-6  # outside the event: none
    center, direction = int(local["local_center"][0]), local["local_direction"][0]
    apex = bump_mm[5]
    assert float(np.linalg.norm(apex[center])) == pytest.approx(2.0, rel=0.05)  # the event's peak, at the centre
    assert float(apex[center] @ direction) / float(np.linalg.norm(apex[center])) > 0.99
    # Gaussian falloff with the rest-space distance: nothing moves beyond four radii.
    dist_mm = np.linalg.norm(plain["vertices"][0] - plain["vertices"][0][center], axis=1) * 1000.0
    far = dist_mm > 4.0 * float(local["local_radius_mm"][0])
    assert far.any() and np.linalg.norm(apex[far], axis=1).max() < 0.01
    # It lies outside the expression basis: the best expression change leaves over 90 % of it unexplained
    # (measured: 98 %).
    basis = local["expression_basis"].reshape(-1, local["expression_basis"].shape[2]).astype(np.float64) * 1000.0
    coef = np.linalg.lstsq(basis, apex.reshape(-1), rcond=None)[0]
    assert np.linalg.norm(apex.reshape(-1) - basis @ coef) / np.linalg.norm(apex) > 0.9


def test_make_clip_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="at least 2 frames"):
        make_clip(tmp_path / "x.mp4", frames=1)
    with pytest.raises(SynthError, match="no expression component named"):
        make_clip(tmp_path / "x.mp4", frames=8, aus=["AU99_nonsense"])
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.truth.npz").exists()


def test_metrics() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 0.01, (6, 50, 3))
    assert vertex_error_mm(truth, truth) == 0.0
    assert vertex_error_mm(truth + np.array([0.001, 0, 0]), truth) == pytest.approx(1.0)
    assert micro_motion_error(truth, truth, onset=2) == pytest.approx(0.0)
    static = np.repeat(truth[2:3], 6, axis=0)
    assert micro_motion_error(static, truth, onset=2) == pytest.approx(1.0)
    # A constant identity error cancels in the micro-motion error.
    assert micro_motion_error(truth + 0.003, truth) == pytest.approx(0.0, abs=1e-9)
    mask = np.zeros(50, bool)
    mask[:10] = True
    assert vertex_error_mm(truth + np.where(mask[None, :, None], 0.0, 0.01), truth, mask) == 0.0
    basis = np.zeros((50, 3, 2))
    basis[:5, 1, 0] = 0.002
    assert face_mask_for({"expression_basis": basis}).sum() == 5
    with pytest.raises(ValueError, match="same topology"):
        vertex_error_mm(truth[:, :10], truth)


def test_make_clip_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.synth import main_make_clip

    assert main_make_clip([str(tmp_path / "a.mp4"), "--size", "640by360"]) == 2
    assert "--size must look like 640x360" in capsys.readouterr().err
    assert main_make_clip([str(tmp_path / "a.mp4"), "--frames", "1"]) == 1
    assert "at least 2 frames" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("failure", ["full disk", "Ctrl-C"])
def test_a_failed_or_interrupted_make_clip_leaves_the_old_clip_and_truth_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], failure: str) -> None:
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"an older clip")
    (tmp_path / "clip.truth.npz").write_bytes(b"its truth")

    def fails(path: Any, **_arrays: Any) -> None:  # half a truth written, then the failure
        Path(path).write_bytes(b"half a truth")
        if failure == "Ctrl-C":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", fails)
    code = main_make_clip([str(out), "--frames", "2", "--size", "64x64"])
    err = capsys.readouterr().err.strip()
    if failure == "Ctrl-C":
        assert (code, err) == (130, "Cancelled; no clip was written.")
    else:
        assert (code, err) == (1, f"error: Cannot write the clip {out} and its truth clip.truth.npz "
                                  "(No space left on device).")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.truth.npz"]
    assert out.read_bytes() == b"an older clip" and (tmp_path / "clip.truth.npz").read_bytes() == b"its truth"
