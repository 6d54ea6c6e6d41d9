"""Stable square face boxes over a clip and the 224x224 crops they cut (docs/internals.md "Crops").

The box must follow the head but not the landmark noise: the flow between crops has to show facial motion, not crop
jitter. So the box centre is the mean of all 478 points (noise averages out, unlike a min/max bounding box), its size
comes from the points' RMS spread, and both are smoothed over time with a zero-phase Gaussian.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

CROP_SIZE = 224
# Box side = BOX_SCALE x the face's extent (the larger of its bounding-box width and height).
BOX_SCALE = 1.6
# A MediaPipe mesh's bounding-box extent (larger side) over its RMS radius: measured 3.44 on the frontal face of
# ../shared/clips/single_face.mp4 and 3.30 on scikit-image's astronaut.
_EXTENT_PER_RMS = 3.4


def face_boxes(
    landmarks: np.ndarray, scale: float = BOX_SCALE, centre_sigma: float = 2.0, size_sigma: float = 4.0
) -> np.ndarray:
    """landmarks (T, N, >=2) image pixels -> crop_boxes (T, 3) = [x0, y0, size] in the same pixels, smoothed over T.

    centre_sigma / size_sigma are the Gaussian's standard deviations in frames (0 disables smoothing).
    """
    points = np.asarray(landmarks, dtype=np.float64)[..., :2]  # (T, N, 2)
    centre = points.mean(axis=1)  # (T, 2)
    rms = np.sqrt(((points - centre[:, None, :]) ** 2).sum(axis=-1).mean(axis=1))  # (T,)
    size = scale * _EXTENT_PER_RMS * rms
    if centre_sigma > 0 and len(points) > 1:
        centre = gaussian_filter1d(centre, centre_sigma, axis=0, mode="nearest")
    if size_sigma > 0 and len(points) > 1:
        size = gaussian_filter1d(size, size_sigma, axis=0, mode="nearest")
    size = np.maximum(size, 8.0)
    boxes = np.empty((len(points), 3), dtype=np.float32)
    boxes[:, :2] = centre - size[:, None] / 2.0
    boxes[:, 2] = size
    return boxes


def to_crop_coords(points: np.ndarray, boxes: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Image pixels (T, N, 2) -> crop pixels (T, N, 2): (p - [x0, y0]) * crop_size / size."""
    boxes = np.asarray(boxes, dtype=np.float32)
    return (points[..., :2] - boxes[:, None, :2]) * (crop_size / boxes[:, None, 2:3])


def cut_crop(image: np.ndarray, box: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """image (H, W, 3) uint8, box [x0, y0, size] -> (crop_size, crop_size, 3) uint8; outside the image is black.

    The mapping is exactly crop = (image - [x0, y0]) * crop_size / size (sub-pixel boxes stay sub-pixel). Large
    reductions first go down an image pyramid (Gaussian-filtered halvings) so the resampling does not alias.
    """
    x0, y0, size = (float(v) for v in box)
    factor = crop_size / size
    source = image
    # Only the region around the box is reduced, so the pyramid stays cheap on large frames.
    if factor < 0.5:
        h, w = image.shape[:2]
        pad = int(size * 0.1) + 4
        rx0, ry0 = max(int(x0) - pad, 0), max(int(y0) - pad, 0)
        rx1, ry1 = min(int(x0 + size) + pad, w), min(int(y0 + size) + pad, h)
        if rx1 > rx0 and ry1 > ry0:
            source = image[ry0:ry1, rx0:rx1]
            x0, y0 = x0 - rx0, y0 - ry0
        while factor < 0.5 and min(source.shape[:2]) > 2:
            source = cv2.pyrDown(source)
            x0, y0, size = x0 / 2.0, y0 / 2.0, size / 2.0
            factor *= 2.0
    warp = np.array([[factor, 0.0, -x0 * factor], [0.0, factor, -y0 * factor]], dtype=np.float64)
    return cv2.warpAffine(source, warp, (crop_size, crop_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
