"""The coarse fit: landmark-only evaluation matches the head model, recovery of known truth, blinks, gaps, errors."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from server.errors import ClipError
from server.fit import FitConfig, LandmarkHead, builtin_head_for_clip, fit_coarse, neutral_points_from_landmarks
from server.geometry import default_camera, project, rotation_matrix
from server.headmodel import HeadModel, build_builtin_head
from server.headmodel.mp68 import MP_TO_68

REAL_CLIP = Path(__file__).resolve().parents[2] / "../shared/clips/single_face.mp4"
WIDTH, HEIGHT = 640, 360


@dataclass
class FakeTrack:
    """The attributes of `Preprocessed` that the fit reads."""

    mp_landmarks: np.ndarray
    lmk68: np.ndarray
    confidence: np.ndarray
    face_found: np.ndarray
    image_size: tuple[int, int]
    fps: float = 30.0


@pytest.fixture(scope="module")
def model() -> HeadModel:
    return HeadModel(build_builtin_head())


def _truth(model: HeadModel, frames: int, seed: int = 0, blink: tuple[int, int] | None = None):
    """Random smooth AU activity + head motion; returns (expression, pose, translation, vertices, projected)."""
    rng = np.random.default_rng(seed)
    names = model.expression_names
    expr = np.zeros((frames, len(names)), np.float32)
    t = np.arange(frames)
    for e in rng.choice(len(names), 4, replace=False):
        if names[e].startswith("AU45"):
            continue
        expr[:, e] = 0.4 * np.exp(-0.5 * ((t - rng.integers(3, frames - 3)) / 2.5) ** 2)
    if blink is not None:
        for n in ("AU45_blink_L", "AU45_blink_R"):
            expr[blink[0]:blink[1], names.index(n)] = 1.0
    pose = np.zeros((frames, model.num_joints, 3), np.float32)
    pose[:, 0] = np.array([0.05, 0.15, 0.02]) + 0.02 * np.sin(t[:, None] / 4.0 + np.arange(3))
    translation = np.tile([0.01, 0.015, -0.55], (frames, 1)).astype(np.float32)
    with torch.no_grad():
        shape = torch.zeros(frames, model.num_shape)
        verts = model(shape, torch.as_tensor(expr), torch.as_tensor(pose)).vertices
        rot = rotation_matrix(torch.as_tensor(pose[:, 0]))
        world = verts @ rot.transpose(1, 2) + torch.as_tensor(translation)[:, None]
        proj = project(world, default_camera(WIDTH, HEIGHT)).numpy()
    # MediaPipe's z: depth relative to the face centre, in the same pixel scale as x (nearer is smaller).
    depth = (world[..., 2] - world[..., 2].mean(dim=1, keepdim=True)).numpy()
    proj = np.concatenate([proj, -depth[..., None] * float(default_camera(WIDTH, HEIGHT)[0]) / 0.55], axis=-1)
    return expr, pose, translation, verts.numpy(), proj


def _track(proj: np.ndarray, noise_px: float, seed: int = 1) -> FakeTrack:
    """proj (T, 478, 3): pixels and MediaPipe-style depth; noise goes on x and y."""
    rng = np.random.default_rng(seed)
    frames = proj.shape[0]
    mp = proj.copy()
    mp[..., :2] += rng.normal(0.0, noise_px, mp[..., :2].shape)
    return FakeTrack(mp.astype(np.float32), mp[:, MP_TO_68, :2].astype(np.float32), np.ones(frames, np.float32),
                     np.ones(frames, bool), (WIDTH, HEIGHT))


def test_landmark_head_matches_forward(model: HeadModel) -> None:
    rng = np.random.default_rng(3)
    shape = torch.as_tensor(rng.normal(0, 0.5, model.num_shape), dtype=torch.float32)
    expr = torch.as_tensor(rng.normal(0, 0.3, (4, model.num_expression)), dtype=torch.float32)
    pose = torch.as_tensor(rng.normal(0, 0.1, (4, model.num_joints, 3)), dtype=torch.float32)
    ref = model(shape[None].expand(4, -1), expr, pose)
    lm68, lmp, _ = LandmarkHead(model)(shape, expr, pose)
    assert torch.allclose(lm68, ref.landmarks68, atol=1e-6)
    assert torch.allclose(lmp, ref.landmarks_mp, atol=1e-6)


def test_fit_recovers_known_truth(model: HeadModel) -> None:
    frames = 20
    expr, pose, translation, verts, proj = _truth(model, frames)
    track = _track(proj, noise_px=0.3)
    start = time.perf_counter()
    fit = fit_coarse(model, track)
    seconds = time.perf_counter() - start
    assert fit.vertices.shape == verts.shape and fit.expression.shape == expr.shape
    assert fit.pose.shape == pose.shape and fit.translation.shape == (frames, 3) and fit.camera.shape == (4,)
    assert fit.landmark_error_iod < 0.01
    assert np.isfinite(fit.per_frame_error).all()
    with torch.no_grad():
        neutral = model(torch.zeros(frames, model.num_shape), torch.zeros(frames, model.num_expression),
                        torch.as_tensor(pose)).vertices.numpy()
    err = np.linalg.norm(fit.vertices - verts, axis=-1).mean()
    err_neutral = np.linalg.norm(neutral - verts, axis=-1).mean()
    assert err < 0.6 * err_neutral
    # Motion relative to frame 0 is what micro-expressions are: it must be recovered better than "no motion".
    motion_err = np.linalg.norm((fit.vertices - fit.vertices[:1]) - (verts - verts[:1]), axis=-1).mean()
    assert motion_err < 0.6 * np.linalg.norm(verts - verts[:1], axis=-1).mean()
    assert np.degrees(np.abs(fit.pose[:, 0] - pose[:, 0]).max()) < 2.0
    assert np.abs(fit.translation - translation).max() < 0.02
    assert seconds < 60.0  # generous: a shared 2-core CI machine; see the docs for measured speed


def test_blink_closes_the_eyes(model: HeadModel) -> None:
    frames = 16
    *_, verts, proj = _truth(model, frames, seed=2, blink=(7, 11))
    fit = fit_coarse(model, _track(proj, noise_px=0.3))
    for upper, lower in ((159, 145), (386, 374)):
        gap_open = abs(verts[0, upper, 1] - verts[0, lower, 1])
        gap_true = abs(verts[8, upper, 1] - verts[8, lower, 1])
        gap_fit = abs(fit.vertices[8, upper, 1] - fit.vertices[8, lower, 1])
        assert gap_open > 0.005
        assert gap_fit < max(0.2 * gap_open, gap_true + 0.001)
        assert abs(fit.vertices[0, upper, 1] - fit.vertices[0, lower, 1]) > 0.7 * gap_open


def test_frames_without_a_face_are_filled(model: HeadModel) -> None:
    frames = 12
    *_, proj = _truth(model, frames, seed=4)
    track = _track(proj, noise_px=0.3)
    track.face_found[5] = False
    track.mp_landmarks[5] = np.nan  # what a tracker may leave where it lost the face
    track.lmk68[5] = 0.0
    fit = fit_coarse(model, track, FitConfig(iterations=80))
    assert np.isnan(fit.per_frame_error[5]) and np.isfinite(fit.landmark_error_iod)
    neighbours = 0.5 * (fit.vertices[4] + fit.vertices[6])
    assert np.linalg.norm(fit.vertices[5] - neighbours, axis=-1).mean() < 0.002
    assert np.abs(fit.translation[5] - 0.5 * (fit.translation[4] + fit.translation[6])).max() < 0.005


def test_no_face_is_a_clip_error(model: HeadModel) -> None:
    track = _track(np.zeros((3, 478, 3), np.float32), noise_px=0.0)
    track.face_found[:] = False
    with pytest.raises(ClipError, match="No face"):
        fit_coarse(model, track)


def test_cancel_stops_the_fit(model: HeadModel) -> None:
    from server.errors import Cancelled

    *_, proj = _truth(model, 8)
    with pytest.raises(Cancelled):
        fit_coarse(model, _track(proj, 0.0), cancel=lambda: True)


def test_builtin_head_for_clip_is_metric_and_frontal(model: HeadModel) -> None:
    *_, proj = _truth(model, 10, seed=5)
    track = _track(proj, noise_px=0.2)
    neutral = neutral_points_from_landmarks(track.mp_landmarks, track.face_found)
    assert neutral.shape == (478, 3)
    assert np.linalg.norm(neutral[263] - neutral[33]) == pytest.approx(0.095, rel=1e-3)
    assert neutral[263, 0] > neutral[33, 0] and neutral[10, 1] > neutral[152, 1]  # left eye at +x, forehead up
    head = builtin_head_for_clip(track)
    assert head.num_vertices == 478 and head.data.model_id == "builtin-subject"


def test_fit_on_a_made_clip_through_preprocessing(made_clip_pair: tuple[Path, Path]) -> None:
    from server.metrics import face_mask_for, micro_motion_error, vertex_error_mm
    from server.preprocess import preprocess

    clip, truth_path = made_clip_pair
    truth = np.load(truth_path, allow_pickle=False)
    pre = preprocess(str(clip), use_cache=False)
    head = builtin_head_for_clip(pre)
    fit = fit_coarse(head, pre)
    assert fit.landmark_error_iod < 0.02
    mask = face_mask_for(truth)
    onset = int(truth["onset_frame"])
    # Same topology and head coordinates as the truth: the error is a few millimetres at most.
    assert vertex_error_mm(fit.vertices, truth["vertices"], mask) < 3.0
    # The coarse fit's frame-to-frame noise (~0.15 mm per vertex) is as large as the scripted motion averaged
    # over the clip, so the micro-motion error is finite but not small (the refinement's job); what it must do is
    # see the strongest event: the vertices it moves most move more at its apex than in the neutral lead-in.
    assert np.isfinite(micro_motion_error(fit.vertices, truth["vertices"], onset, mask))
    k = int(np.argmax(truth["au_peak_mm"]))
    apex = int(truth["au_apex"][k])
    true_disp = np.linalg.norm(truth["vertices"][apex] - truth["vertices"][onset], axis=-1)
    moving = true_disp > 0.5 * true_disp.max()
    fit_disp = np.linalg.norm(fit.vertices[:, moving] - fit.vertices[onset, moving], axis=-1).mean(axis=1)  # (T,)
    lead_in = fit_disp[: int(truth["au_onset"].min())]
    assert fit_disp[apex] > 2.0 * lead_in.mean()
    # Measured: the coarse fit recovers about 30 % of the apex displacement there (MediaPipe under-reports
    # millimetre motions); the refinement is what recovers the rest.
    assert 0.15 * true_disp[moving].mean() < fit_disp[apex] < 1.5 * true_disp[moving].mean()


@pytest.mark.shared
def test_fit_on_flame_format_model(flame_folder: Path) -> None:
    from server.headmodel import load_head_model

    flame = HeadModel(load_head_model(str(flame_folder)))
    head = LandmarkHead(flame)
    assert len(head.pupil_vertices) == 2  # eyeballs found: gaze is fitted from the iris centres
    frames = 8
    rng = np.random.default_rng(0)
    expr = torch.as_tensor(rng.normal(0, 0.3, (frames, flame.num_expression)), dtype=torch.float32)
    pose = torch.zeros(frames, flame.num_joints, 3)
    pose[:, 0] = torch.tensor([0.05, 0.15, 0.0])
    pose[:, 3:, 1] = 0.1  # both eyes look to the subject's left
    with torch.no_grad():
        out = flame(torch.zeros(frames, flame.num_shape), expr, pose)
        rot = rotation_matrix(pose[:, 0])
        shift = torch.tensor([0.0, 0.0, -0.6])
        cam = default_camera(WIDTH, HEIGHT)
        lm_mp = project(out.landmarks_mp @ rot.transpose(1, 2) + shift, cam).numpy()
        lm68 = project(out.landmarks68 @ rot.transpose(1, 2) + shift, cam).numpy()
        pupils = project(out.vertices[:, head.pupil_vertices] @ rot.transpose(1, 2) + shift, cam).numpy()
    mp = np.zeros((frames, 478, 3), np.float32)
    mp[:, flame.data.mp_indices, :2] = lm_mp
    mp[:, [473, 468], :2] = pupils
    track = FakeTrack(mp, lm68.astype(np.float32), np.ones(frames, np.float32), np.ones(frames, bool), (WIDTH, HEIGHT))
    fit = fit_coarse(flame, track)
    assert fit.vertices.shape == (frames, 5023, 3)
    assert fit.landmark_error_iod < 0.03
    assert np.abs(fit.pose[:, 3:, 1] - 0.1).mean() < 0.05


@pytest.mark.shared
def test_real_clip_landmark_error() -> None:
    if not REAL_CLIP.exists():
        pytest.skip(f"real footage {REAL_CLIP} is absent (../shared is not part of the project)")
    from server.preprocess import preprocess

    pre = preprocess(str(REAL_CLIP), use_cache=False)
    fit = fit_coarse(builtin_head_for_clip(pre), pre)
    assert fit.vertices.shape[0] == len(pre.face_found)
    assert fit.landmark_error_iod <= 0.015
