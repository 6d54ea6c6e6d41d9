"""preview.mp4: the reconstructed mesh drawn over the source frames, to judge a fit at a glance."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .errors import Cancelled
from .geometry import project, to_world


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (M, 2) of a triangle mesh (F, 3)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=0)
    e.sort(axis=1)
    return np.unique(e, axis=0)


def projected_vertices(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Image-pixel positions (T, V, 2) of the take's meshes."""
    with torch.no_grad():
        verts = torch.as_tensor(arrays["vertices"])
        world = to_world(verts, torch.as_tensor(arrays["pose"][:, 0]), torch.as_tensor(arrays["translation"]))
        return project(world, torch.as_tensor(arrays["camera"])).numpy()


def write_preview(clip: str, out_path: Path, pre: Any, arrays: dict[str, np.ndarray],
                  cancel: Callable[[], bool] | None = None) -> bool:
    """Draw the mesh wireframe over each processed frame into `out_path` (the caller's temporary name, moved into
    place once the take is written). False, with no file left, when OpenCV cannot open an mp4 writer here; a
    failure or a cancel also removes the file."""
    from .video import iter_frames

    pix = projected_vertices(arrays)
    edges = mesh_edges(arrays["faces"])
    frame_numbers = [int(f) for f in pre.frame_numbers]
    by_source = {f: i for i, f in enumerate(frame_numbers)}
    w, h = (int(x) for x in pre.image_size)
    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter.fourcc(*"mp4v"), float(pre.fps), (w, h))
    done = False
    try:
        if not writer.isOpened():
            return False
        frames = (frame_numbers[0], frame_numbers[-1] + 1)
        for frame in iter_frames(clip, frames=frames, max_side=max(w, h)):
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            i = by_source.get(int(frame.index))
            if i is None:
                continue
            img = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
            if img.shape[1] != w or img.shape[0] != h:
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            pts = np.round(pix[i] * 16).astype(np.int32)  # 4 fractional bits for smooth lines
            lines = pts[edges]  # (M, 2, 2)
            colour = (80, 220, 80) if bool(arrays["face_found"][i]) else (60, 60, 230)
            cv2.polylines(img, list(lines), False, colour, 1, cv2.LINE_AA, shift=4)
            writer.write(img)
        done = True
    finally:
        writer.release()
        if not done and os.path.exists(out_path):
            os.unlink(out_path)
    return True
