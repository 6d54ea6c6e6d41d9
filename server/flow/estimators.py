"""Flow estimators on grayscale crops; each returns (H, W, 2) float32 displacements in crop pixels (prev -> next)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

FLOW_MODES = ("tvl1", "fast")
"""The preprocessing's flow modes (adjacent crops; the CLI's and the add-on's choice)."""
ESTIMATOR_MODES = (*FLOW_MODES, "farneback")
"""Every estimator here: the modes above and Farnebäck's, which the onset-anchored pairs use (`server.refine`)."""


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _farneback(prev: np.ndarray, next_: np.ndarray) -> np.ndarray:
    """Farnebäck on two grey images: pyramid scale 0.5, 4 levels, window 7, 10 iterations, poly_n 5, σ 1.1 (the
    output array is not read as a guess: flags 0)."""
    return cv2.calcOpticalFlowFarneback(prev, next_, np.zeros((*prev.shape, 2), np.float32), 0.5, 4, 7, 10, 5, 1.1, 0)


class FlowEstimator:
    """One flow method, set up once so a clip's pairs reuse its OpenCV object (TV-L1, DIS; one per thread).

    "tvl1": cv2.optflow.DualTVL1OpticalFlow with OpenCV's defaults (the paper's TV-L1; ~0.4 s per 224x224 pair).
    "fast": DIS optical flow, medium preset (a few ms per pair).
    "farneback": Farnebäck's polynomial-expansion flow, 4 levels, 7 px window (~25 ms per pair). Between an onset
    frame and a later one of a made clip (docs/model.md) it reads 62-86% of local skin motion where DIS reads
    36-60% (DIS's patches settle short of the motion on smooth skin), and 65-82% of the expression motion against
    58-72%; its error away from the motion is larger (median 0.12-0.14 px against 0.08-0.10).
    """

    def __init__(self, mode: str = "fast") -> None:
        if mode not in ESTIMATOR_MODES:
            raise ValueError(f"Unknown flow mode {mode!r}; use one of {', '.join(ESTIMATOR_MODES)}.")
        self.mode = mode
        self._local = threading.local()  # OpenCV's TV-L1 and DIS objects keep state: one per calling thread

    def _calc(self) -> Callable[[np.ndarray, np.ndarray], Any]:
        if self.mode == "farneback":
            return _farneback
        calc: Callable[[np.ndarray, np.ndarray], Any] | None = getattr(self._local, "calc", None)
        if calc is None:
            if self.mode == "tvl1":
                tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()  # type: ignore[attr-defined]  # contrib, no stub
                calc = self._local.calc = lambda a, b: tvl1.calc(a, b, None)
            else:
                dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]
                calc = self._local.calc = lambda a, b: dis.calc(a, b, None)
        return calc

    def __call__(self, prev: np.ndarray, next_: np.ndarray) -> np.ndarray:
        """prev, next_ (H, W, 3) RGB or (H, W) gray uint8 -> flow (H, W, 2) float32 with next_(p + flow) ~ prev(p).
        Safe to call from several threads at once."""
        return np.asarray(self._calc()(_gray(prev), _gray(next_)), dtype=np.float32)


def flow(prev: np.ndarray, next_: np.ndarray, mode: str = "fast") -> np.ndarray:
    """One-off flow between two crops (builds a new estimator; use FlowEstimator for a sequence)."""
    return FlowEstimator(mode)(prev, next_)
