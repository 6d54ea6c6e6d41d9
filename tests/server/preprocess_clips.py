"""Small synthetic clips with a real face (scikit-image's astronaut photo) for the preprocessing tests."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def astronaut_face(size: int = 160) -> np.ndarray:
    """The astronaut's head and shoulders, (size, size, 3) uint8 RGB."""
    from skimage.data import astronaut

    return cv2.resize(astronaut()[20:260, 90:330], (size, size), interpolation=cv2.INTER_AREA)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 30.0) -> Path:
    """RGB frames -> an mp4v mp4 at `path`."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_raw_mjpeg(path: Path, count: int) -> Path:
    """A raw MJPEG stream (concatenated JPEGs, no container): no frame count; frame i is grey 20 * i."""
    path.write_bytes(b"".join(cv2.imencode(".jpg", np.full((48, 64, 3), 20 * i, np.uint8))[1].tobytes()
                              for i in range(count)))
    return path


def write_undercounted_avi(path: Path, count: int, header_count: int) -> Path:
    """An MJPG avi of `count` frames (frame i is grey 20 * i) whose header (avih and strh) counts `header_count`."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    for i in range(count):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    for tag, offset in ((b"avih", 16), (b"strh", 32)):  # dwTotalFrames, dwLength
        at = data.find(tag) + 8 + offset
        data[at:at + 4] = struct.pack("<I", header_count)
    path.write_bytes(bytes(data))
    return path


def place(canvas: np.ndarray, patch: np.ndarray, x: float, y: float) -> np.ndarray:
    """Paste `patch` with its top-left corner at sub-pixel (x, y)."""
    warp = np.array([[1.0, 0.0, x], [0.0, 1.0, y]])
    h, w = canvas.shape[:2]
    mask = cv2.warpAffine(np.full(patch.shape[:2], 255, np.uint8), warp, (w, h))
    moved = cv2.warpAffine(patch, warp, (w, h))
    out = canvas.copy()
    out[mask > 127] = moved[mask > 127]
    return out


def moving_face_frames(count: int = 12, size: tuple[int, int] = (320, 240), step: float = 1.0,
                       noise: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    """A face drifting right by `step` px per frame on a grey background, optional per-frame sensor noise."""
    rng = np.random.default_rng(seed)
    face = astronaut_face(170)
    base = np.full((size[1], size[0], 3), 110, np.uint8)
    frames = []
    for t in range(count):
        frame = place(base, face, 60 + step * t, 35)
        if noise:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        frames.append(frame)
    return frames


def noise_frames(count: int = 6, size: tuple[int, int] = (160, 120), seed: int = 0) -> list[np.ndarray]:
    """Frames with no face: a gradient plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size[0], dtype=np.float32)[None, :, None]
    return [np.clip(ramp + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8) for _ in range(count)]


def two_face_frames(count: int = 4) -> list[np.ndarray]:
    """A large face on the right and a small one on the left, slightly moving."""
    big, small = astronaut_face(180), astronaut_face(100)
    frames = []
    for t in range(count):
        canvas = np.full((240, 420, 3), 120, np.uint8)
        canvas = place(canvas, small, 20 + t, 70)
        frames.append(place(canvas, big, 200 + t, 30))
    return frames
