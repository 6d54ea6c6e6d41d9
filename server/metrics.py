"""Errors of a reconstruction against a clip's ground truth (server/synth.py): vertex error and micro-motion error."""

from __future__ import annotations

from typing import Any

import numpy as np


def _masked(vertices: np.ndarray, face_mask: np.ndarray | None) -> np.ndarray:
    """(T, V, 3) -> (T, V', 3) restricted to the masked vertices."""
    arr = np.asarray(vertices, dtype=np.float64)
    if face_mask is None:
        return arr
    return arr[:, np.asarray(face_mask, dtype=bool)]


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"Predicted vertices {pred.shape} and ground truth {truth.shape} must both be (T, V, 3) "
                         "with the same topology.")


def vertex_error_mm(pred_vertices: np.ndarray, truth_vertices: np.ndarray,
                    face_mask: np.ndarray | None = None) -> float:
    """Mean per-vertex distance in millimetres; (T, V, 3) each, head coordinates (no alignment is removed:
    head coordinates of the same head model are directly comparable). face_mask (V,) bool or None for all."""
    pred, truth = np.asarray(pred_vertices), np.asarray(truth_vertices)
    _check_pair(pred, truth)
    diff = _masked(pred, face_mask) - _masked(truth, face_mask)
    return float(np.linalg.norm(diff, axis=-1).mean() * 1000.0)


def micro_motion_error(pred_vertices: np.ndarray, truth_vertices: np.ndarray, onset: int = 0,
                       face_mask: np.ndarray | None = None) -> float:
    """Mean per-vertex error of the onset-relative displacement, over the mean true onset-relative displacement.

    pred, truth (T, V, 3). Displacements are taken from frame `onset` (a neutral frame), so a constant identity
    error cancels and only the motion is scored: 0 is perfect, 1 is as bad as predicting no motion at all.
    """
    pred, truth = np.asarray(pred_vertices), np.asarray(truth_vertices)
    _check_pair(pred, truth)
    if not 0 <= onset < pred.shape[0]:
        raise ValueError(f"The onset frame {onset} is outside the clip's {pred.shape[0]} frames.")
    p, t = _masked(pred, face_mask), _masked(truth, face_mask)
    dp, dt = p - p[onset], t - t[onset]
    denom = float(np.linalg.norm(dt, axis=-1).mean())
    if denom <= 0.0:
        raise ValueError("The ground truth does not move, so a micro-motion error is undefined.")
    return float(np.linalg.norm(dp - dt, axis=-1).mean() / denom)


def face_mask_for(take: Any, threshold_m: float = 1e-5) -> np.ndarray:
    """Vertices any expression component moves (V,) bool: the face, without scalp, neck or eyeballs' backs.

    `take` is anything indexable by "expression_basis" (V, 3, E): a take, a truth npz or a dict.
    """
    basis = np.asarray(take["expression_basis"])
    return np.abs(basis).max(axis=(1, 2)) > threshold_m
