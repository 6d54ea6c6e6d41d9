"""Speed and accuracy of each flow mode on a known sub-pixel shift of a real face crop (for docs and the bench)."""

from __future__ import annotations

import time

import cv2
import numpy as np

from server.flow.estimators import FLOW_MODES, FlowEstimator


def shifted_face_pair(shift: tuple[float, float] = (0.5, 0.25), size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's astronaut face cropped to size x size, and the same crop translated by `shift` (dx, dy) px."""
    from skimage.data import astronaut

    face = cv2.resize(astronaut()[20:260, 100:340], (size, size), interpolation=cv2.INTER_AREA)
    warp = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]], dtype=np.float64)
    moved = cv2.warpAffine(face, warp, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return face, moved


def measure_flow_accuracy(
    shift: tuple[float, float] = (0.5, 0.25), repeats: int = 3, modes: tuple[str, ...] = FLOW_MODES
) -> dict[str, dict[str, float]]:
    """Per mode: ms_per_pair (best of `repeats`), mean end-point error (px) against the true shift, mean flow.

    The EPE is averaged over the interior (a 16 px border is excluded, where the warp's padding is not a shift).
    """
    prev, nxt = shifted_face_pair(shift)
    truth = np.array(shift, dtype=np.float32)
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        estimator = FlowEstimator(mode)
        best = float("inf")
        field = np.zeros((*prev.shape[:2], 2), dtype=np.float32)
        for _ in range(repeats):
            start = time.perf_counter()
            field = estimator(prev, nxt)
            best = min(best, time.perf_counter() - start)
        inner = field[16:-16, 16:-16]
        epe = np.linalg.norm(inner - truth, axis=-1)
        results[mode] = {
            "ms_per_pair": 1000.0 * best,
            "epe_mean_px": float(epe.mean()),
            "epe_median_px": float(np.median(epe)),
            "mean_dx": float(inner[..., 0].mean()),
            "mean_dy": float(inner[..., 1].mean()),
        }
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(measure_flow_accuracy(), indent=2))
