"""MediaPipe 478-point mesh -> the 68 iBUG/300-W landmarks through the project's one fixed map (the FAN-less path)."""

from __future__ import annotations

import numpy as np

from server.headmodel.mp68 import MP_TO_68

__all__ = ["MP_TO_68", "mp_to_68"]


def mp_to_68(mp_landmarks: np.ndarray) -> np.ndarray:
    """MediaPipe points (..., 478, C) -> iBUG-68 points (..., 68, 2) in the same pixel units (x, y only)."""
    return np.ascontiguousarray(mp_landmarks[..., MP_TO_68, :2], dtype=np.float32)
