"""Face tracking with MediaPipe FaceMesh (legacy solutions API): 478 points per frame, one face followed through a clip.

Confidence: the legacy API exposes no score. It returns a face only while its internal face-presence score exceeds
`min_tracking_confidence` (or, on a fresh detection, the detector's score exceeds `min_detection_confidence`), so a
returned face has already passed those thresholds. On top of that we report a geometric reliability in [0, 1]:
(fraction of the 478 points inside the image) x min(1, face height / 96 px) -- faces cut by the frame edge or too
small for the 192x192 mesh model get less weight. Frames where the face is lost have confidence 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import numpy as np

N_MESH = 478
# Faces smaller than this (landmark bounding-box height, px) are below the mesh model's working resolution.
_FULL_CONFIDENCE_HEIGHT = 96.0
# After this many frames in a row without the tracked face it counts as gone, and the largest face is taken again
# (else a face that comes back more than one face size away from where it was lost is never picked up).
LOST_AFTER_FRAMES = 5


@dataclass
class TrackResult:
    """A clip's track: landmarks (T, 478, 3) pixels (z scaled by image width), confidence (T,), face_found (T,)."""

    landmarks: np.ndarray
    confidence: np.ndarray
    face_found: np.ndarray


def _box(points: np.ndarray) -> np.ndarray:
    """(N, >=2) -> [x0, y0, x1, y1]."""
    return np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()])


class MediaPipeTracker:
    """Follows one face: the largest at its first appearance, then the face nearest to the previous box; after
    LOST_AFTER_FRAMES frames in a row without it, the largest face again.

    Call it on consecutive RGB frames; it returns ((478, 3) pixels, confidence) or None when the face is not seen.
    """

    def __init__(
        self, max_faces: int = 4, min_detection_confidence: float = 0.3, min_tracking_confidence: float = 0.5
    ) -> None:
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self._prev_box: np.ndarray | None = None
        self._misses = 0  # frames in a row without the tracked face

    def __enter__(self) -> MediaPipeTracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._mesh.close()

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, float] | None:
        """rgb (H, W, 3) uint8 -> (landmarks (478, 3) float32 in pixels, confidence) or None."""
        height, width = rgb.shape[:2]
        result = self._mesh.process(rgb)
        faces = result.multi_face_landmarks
        if not faces:
            self._missed()
            return None
        scale = np.array([width, height, width], dtype=np.float32)
        candidates = [
            np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32) * scale for face in faces
        ]
        boxes = np.stack([_box(c) for c in candidates])  # (F, 4)
        sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        if self._prev_box is None:
            pick = int(np.argmax(sizes))
        else:
            centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])
            prev_centre = 0.5 * (self._prev_box[:2] + self._prev_box[2:])
            dist = np.linalg.norm(centres - prev_centre, axis=1)
            pick = int(np.argmin(dist))
            prev_size = float(max(self._prev_box[2] - self._prev_box[0], self._prev_box[3] - self._prev_box[1]))
            if dist[pick] > prev_size:  # only someone else is visible: the face is lost, not replaced (yet)
                self._missed()
                return None
        points = candidates[pick]
        self._prev_box = boxes[pick]
        self._misses = 0
        inside = np.mean((points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height))
        face_height = float(boxes[pick, 3] - boxes[pick, 1])
        confidence = float(inside) * min(1.0, face_height / _FULL_CONFIDENCE_HEIGHT)
        return points, confidence

    def _missed(self) -> None:
        self._misses += 1
        if self._misses >= LOST_AFTER_FRAMES:
            self._prev_box = None  # gone: the next face seen is picked as at the start


def fill_missing(landmarks: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames without a face, held constant before the first and after the last found frame.

    landmarks (T, ...) with arbitrary values where found is False; found (T,) bool with at least one True.
    Returns a new (T, ...) float32 array.
    """
    found = np.asarray(found, dtype=bool)
    out = np.array(landmarks, dtype=np.float32, copy=True)
    if found.all():
        return out
    t = np.arange(len(found))
    known = t[found]
    missing = t[~found]
    right_pos = np.searchsorted(known, missing)  # first known frame after each missing one
    right = known[np.minimum(right_pos, len(known) - 1)]
    left = known[np.maximum(right_pos - 1, 0)]
    span = np.maximum(right - left, 1)
    w = np.clip((missing - left) / span, 0.0, 1.0).astype(np.float32)
    w = w.reshape((-1,) + (1,) * (out.ndim - 1))
    out[missing] = (1.0 - w) * out[left] + w * out[right]
    return out


def assemble_track(observations: list[tuple[np.ndarray, float] | None]) -> TrackResult | None:
    """Per-frame tracker outputs -> TrackResult with lost frames interpolated; None if no frame had a face."""
    found = np.array([o is not None for o in observations], dtype=bool)
    if not found.any():
        return None
    landmarks = np.zeros((len(observations), N_MESH, 3), dtype=np.float32)
    confidence = np.zeros(len(observations), dtype=np.float32)
    for i, obs in enumerate(observations):
        if obs is not None:
            landmarks[i], confidence[i] = obs
    return TrackResult(fill_missing(landmarks, found), confidence, found)
