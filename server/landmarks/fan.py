"""68-point landmarks from face-alignment's FAN (2D-FAN-4) when its weights are already on disk; never downloads.

We build face-alignment's FAN network directly and feed it the MediaPipe face box, instead of constructing
`face_alignment.FaceAlignment`: that constructor also loads the S3FD face detector (a second file it would download
when absent), and the detector is redundant here because MediaPipe already tracks the face.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# face-alignment 1.x's file name for 2D-FAN-4 (its `models_urls["2DFAN-4"]`), as stored in the torch hub cache.
FAN_WEIGHTS_FILE = "2DFAN4-11f355bf06.pth.tar"
ENV_VAR = "MICROEXP_FAN_WEIGHTS"
# face-alignment's convention: scale 1 corresponds to a 195-pixel (S3FD) face box; our box comes from the 68 mapped
# MediaPipe points, which is tighter than S3FD's, hence the enlargement.
_REFERENCE_SCALE = 195.0
_BOX_ENLARGE = 1.15
_CENTER_Y_OFFSET = 0.12


def find_fan_weights() -> Path | None:
    """The 2D-FAN-4 weights if present: $MICROEXP_FAN_WEIGHTS (the file or its folder), else the torch hub cache."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            path = path / FAN_WEIGHTS_FILE
        if path.is_file():
            return path
        log.warning("%s=%s names no FAN weights file; using the MediaPipe 68-point map.", ENV_VAR, env)
        return None
    import torch

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / FAN_WEIGHTS_FILE
    return hub_file if hub_file.is_file() else None


class FanLandmarker:
    """2D-FAN-4 on CPU, one face per call, located by a box from the MediaPipe-mapped 68 points."""

    def __init__(self, weights: Path) -> None:
        import torch
        from face_alignment.models import FAN

        self._torch = torch
        self.net = FAN(4)
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.net.eval()

    def __call__(self, rgb: np.ndarray, guide68: np.ndarray) -> np.ndarray:
        """rgb (H, W, 3) uint8, guide68 (68, 2) approximate points -> (68, 2) float32 image pixels."""
        from face_alignment.utils import crop, get_preds_fromhm

        x0, y0 = guide68.min(axis=0)
        x1, y1 = guide68.max(axis=0)
        center = np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1) - (y1 - y0) * _CENTER_Y_OFFSET], dtype=np.float64)
        scale = _BOX_ENLARGE * float((x1 - x0) + (y1 - y0)) / _REFERENCE_SCALE
        patch = crop(rgb, center, scale).transpose(2, 0, 1).astype(np.float32) / 255.0  # (3, 256, 256)
        with self._torch.no_grad():
            out = self.net(self._torch.from_numpy(patch)[None])
        heatmaps = (out[-1] if isinstance(out, list | tuple) else out).float().numpy()
        _, pts_img, _ = get_preds_fromhm(heatmaps, center, scale)
        return np.asarray(pts_img, dtype=np.float32).reshape(68, 2)


def load_fan(weights: Path) -> Any:
    """Construct the FAN estimator (a seam the tests replace)."""
    return FanLandmarker(weights)


def select_lmk68() -> tuple[str, Any]:
    """("fan", estimator) when the FAN weights are on disk, else ("mediapipe-map", None). Never downloads."""
    weights = find_fan_weights()
    if weights is None:
        return "mediapipe-map", None
    try:
        return "fan", load_fan(weights)
    except Exception as exc:  # a damaged or incompatible file must not stop preprocessing
        log.warning("The FAN weights %s could not be loaded (%s); using the MediaPipe 68-point map.", weights, exc)
        return "mediapipe-map", None
