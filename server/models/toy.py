"""A tiny synthetic head and clip with known micro-motion, for tests and demos of the refinement (no files)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from server.geometry import project, to_world

if TYPE_CHECKING:
    from server.headmodel import HeadModel, HeadModelData

REGION_GRID = ((2, 7, 1), (6, 3, 5), (0, 4, 8))
"""Region labels of the toy face's 3×3 tiles, top row first, subject's right (x < 0) first."""


def toy_head_data(nx: int = 20, ny: int = 24, n_expression: int = 4, seed: int = 0) -> HeadModelData:
    """A gently curved 16×20 cm grid facing +z as a FLAME-format HeadModelData: 2 joints, smooth global expression
    modes (a few mm per unit), 3×3 tiles of region labels, landmarks embedded on random triangles."""
    from server.headmodel import HeadModelData

    rng = np.random.default_rng(seed)
    xs = np.linspace(-0.08, 0.08, nx)
    ys = np.linspace(0.10, -0.10, ny)
    gx, gy = np.meshgrid(xs, ys)  # (ny, nx), row 0 at the top
    gz = -2.0 * (gx**2 + gy**2)
    v = np.stack([gx, gy, gz], -1).reshape(-1, 3).astype(np.float32)
    nv = v.shape[0]
    idx = np.arange(nv).reshape(ny, nx)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    # Counter-clockwise seen from +z (y up): top-left, bottom-left, bottom-right / top-left, bottom-right, top-right.
    faces = np.concatenate([np.stack([a, c, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)])
    col = np.clip(((gx + 0.08) / 0.16 * 3).astype(int), 0, 2)
    row = np.clip(((0.10 - gy) / 0.20 * 3).astype(int), 0, 2)
    regions = np.asarray(REGION_GRID)[row, col].reshape(-1)
    modes = []
    for k in range(n_expression):
        fx, fy = rng.uniform(-1, 1, 2)
        phase = rng.uniform(0, np.pi)
        field = np.stack([np.cos(phase) * gy * 10, np.sin(phase) * gx * 10, (fx * gx + fy * gy) * 5], -1)
        modes.append(field.reshape(-1, 3) * 0.004 * (1.0 + 0.2 * k))
    exprdirs = np.stack(modes, -1).astype(np.float32)  # (V, 3, E)
    shapedirs = (rng.normal(size=(1, 3, 2)) * 0.005 * np.ones((nv, 1, 1))).astype(np.float32)
    weights = np.zeros((nv, 2), np.float32)
    weights[:, 0] = 1.0
    jreg = np.full((2, nv), 1.0 / nv, np.float32)
    n_faces = faces.shape[0]
    n_mp = 20
    return HeadModelData(
        model_id="toy", kind="builtin", v_template=v, shapedirs=shapedirs, exprdirs=exprdirs,
        expression_names=[f"e{i}" for i in range(n_expression)], posedirs=np.zeros((nv, 3, 9), np.float32),
        J_regressor=jreg, weights=weights, parents=np.array([-1, 0]), joint_names=["root", "neck"],
        faces=faces, lmk68_faces=rng.integers(0, n_faces, 68), lmk68_bary=np.full((68, 3), 1 / 3),
        mp_faces=rng.integers(0, n_faces, n_mp), mp_bary=np.full((n_mp, 3), 1 / 3), mp_indices=np.arange(n_mp),
        regions=regions,
    )


@dataclass
class ToyPreprocessed:
    """The fields of `Preprocessed` that refinement reads."""

    crops: np.ndarray
    flow: np.ndarray
    lmk68: np.ndarray
    mp_landmarks: np.ndarray
    crop_boxes: np.ndarray
    confidence: np.ndarray
    face_found: np.ndarray


@dataclass
class ToyCoarseFit:
    """The fields of `CoarseFit` that refinement reads."""

    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    translation: np.ndarray
    camera: np.ndarray
    vertices: np.ndarray


def bump_offsets(model: HeadModel, n_frames: int, region: int = 4, amplitude: float = 0.003) -> np.ndarray:
    """Ground-truth rest-space offsets (T, V, 3): a smooth upward bump centred on `region`, ramping from 0 at the
    onset to `amplitude` metres at 60 % of the clip and held."""
    v = model.v_template.cpu().numpy()
    regions = model.regions.cpu().numpy()
    centre = v[regions == region].mean(0)
    radius = 0.025
    weight = np.exp(-np.sum((v - centre) ** 2, -1) / (2 * radius**2))  # (V,)
    ramp = np.clip(np.arange(n_frames) / max(0.6 * (n_frames - 1), 1), 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    out = np.zeros((n_frames, v.shape[0], 3), np.float32)
    out[..., 1] = amplitude * ramp[:, None] * weight[None]
    return out


def make_toy_clip(
    model: HeadModel, offsets: np.ndarray, expression: np.ndarray | None = None
) -> tuple[ToyPreprocessed, ToyCoarseFit]:
    """Render a clip of `model` with per-frame rest-space `offsets` (T, V, 3) (and expressions (T, E), default
    zeros) as flow and landmarks; returns (ToyPreprocessed, ToyCoarseFit) where the coarse fit has the true
    expressions and no offsets (what a landmark fit would see of a micro-motion)."""
    from scipy.interpolate import LinearNDInterpolator

    n = offsets.shape[0]
    e = model.num_expression
    psi = np.zeros((n, e), np.float32) if expression is None else expression.astype(np.float32)
    camera = torch.tensor([700.0, 700.0, 112.0, 112.0])
    translation = torch.tensor([[0.0, 0.0, -0.6]]).repeat(n, 1)
    pose = torch.zeros(n, model.num_joints, 3)
    shape = torch.zeros(n, model.num_shape)
    with torch.no_grad():
        truth = model(shape, torch.from_numpy(psi), pose, torch.from_numpy(offsets))
        coarse = model(shape, torch.from_numpy(psi), pose)
        px = project(to_world(truth.vertices, pose[:, 0], translation), camera).numpy()  # (T, V, 2)
        lmk = project(to_world(truth.landmarks68, pose[:, 0], translation), camera).numpy()
        mp = project(to_world(truth.landmarks_mp, pose[:, 0], translation), camera).numpy()
    # Interpolated at 56² pixel centres and upsampled: the toy's flow is smooth, and this keeps tests fast.
    grid_y, grid_x = (np.mgrid[0:56, 0:56].astype(np.float32) + 0.5) * 4.0
    coarse_flow = np.zeros((n - 1, 56, 56, 2), np.float32)
    for t in range(n - 1):
        interp = LinearNDInterpolator(px[t], px[t + 1] - px[t], fill_value=0.0)
        coarse_flow[t] = interp(grid_x, grid_y)
    flow = torch.nn.functional.interpolate(
        torch.from_numpy(coarse_flow).permute(0, 3, 1, 2), size=(224, 224), mode="bilinear", align_corners=False
    ).permute(0, 2, 3, 1).numpy()
    mp_full = np.zeros((n, 478, 3), np.float32)
    mp_full[:, model.mp_indices.cpu().numpy(), :2] = mp
    pre = ToyPreprocessed(
        crops=np.zeros((n, 224, 224, 3), np.uint8), flow=flow.astype(np.float16), lmk68=lmk.astype(np.float32),
        mp_landmarks=mp_full, crop_boxes=np.tile(np.array([[0.0, 0.0, 224.0]], np.float32), (n, 1)),
        confidence=np.ones(n, np.float32), face_found=np.ones(n, bool),
    )
    fit = ToyCoarseFit(
        shape=np.zeros(model.num_shape, np.float32), expression=psi, pose=pose.numpy(),
        translation=translation.numpy(), camera=camera.numpy(), vertices=coarse.vertices.numpy(),
    )
    return pre, fit
