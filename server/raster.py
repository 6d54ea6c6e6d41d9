"""A small z-buffered triangle rasteriser and the photometric term it makes possible.

`rasterise` (numpy) gives, per pixel, the visible triangle and its barycentrics; the made clips' renderer
(`server.synth.FaceWarper`) and the onset-anchored photometric term below share it.

**Photometric term** (the paper's L_rec has a photometric loss through a renderer we lack; this is the part that
runs honestly here). For each anchor frame a, the anchor's mesh is rasterised once into crop a: every covered
face pixel q is a surface point with fixed barycentrics on its triangle. At frame t that surface point projects to
p_t(q) = Σ_i b_i · π_t(v_i), differentiable in the frame-t mesh, and the grey crop t sampled there should show what
crop a shows at q: r = g · I_t(p_t(q)) + c - I_a(q), with the gain g and offset c of the flicker fitted in closed
form per pair. Unlike the flow terms it compares the images themselves, with no flow estimator in between.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from server import losses as L
from server.geometry import project, to_world

if TYPE_CHECKING:
    from server.headmodel import HeadModel
    from server.refine import ClipTensors, HeadTopology


def rasterise(points2d: np.ndarray, depth: np.ndarray, faces: np.ndarray, width: int,
               height: int) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffered triangle ids (H, W) int (-1 = none) and barycentrics (H, W, 3) of a projected mesh."""
    tri_id = np.full((height, width), -1, np.int64)
    bary = np.zeros((height, width, 3), np.float32)
    zbuf = np.full((height, width), np.inf, np.float32)
    p = points2d.astype(np.float64)
    for f, (a, b, c) in enumerate(faces):
        pa, pb, pc = p[a], p[b], p[c]
        lo, hi = np.minimum(np.minimum(pa, pb), pc), np.maximum(np.maximum(pa, pb), pc)
        x0, x1 = max(0, math.floor(lo[0])), min(width - 1, math.ceil(hi[0]))
        y0, y1 = max(0, math.floor(lo[1])), min(height - 1, math.ceil(hi[1]))
        if x1 < x0 or y1 < y0:
            continue
        den = (pb[1] - pc[1]) * (pa[0] - pc[0]) + (pc[0] - pb[0]) * (pa[1] - pc[1])
        if abs(den) < 1e-9:
            continue
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        xs_f, ys_f = xs + 0.0, ys + 0.0
        l1 = ((pb[1] - pc[1]) * (xs_f - pc[0]) + (pc[0] - pb[0]) * (ys_f - pc[1])) / den
        l2 = ((pc[1] - pa[1]) * (xs_f - pc[0]) + (pa[0] - pc[0]) * (ys_f - pc[1])) / den
        l3 = 1.0 - l1 - l2
        inside = (l1 >= -1e-6) & (l2 >= -1e-6) & (l3 >= -1e-6)
        if not inside.any():
            continue
        z = l1 * depth[a] + l2 * depth[b] + l3 * depth[c]
        yy, xx = ys[inside], xs[inside]
        closer = z[inside] < zbuf[yy, xx]
        yy, xx = yy[closer], xx[closer]
        zbuf[yy, xx] = z[inside][closer]
        tri_id[yy, xx] = f
        bary[yy, xx] = np.stack([l1[inside][closer], l2[inside][closer], l3[inside][closer]], axis=-1)
    return tri_id, bary


class AnchoredPhotometry:
    """Surface points seen in each anchor frame's crop, and their grey values: the onset-anchored photometric term
    (`loss`).

    Built once per clip from the anchors' meshes. For A anchors and at most M sampled pixels each: corners (A, M, 3)
    vertex ids, bary (A, M, 3), reference (A, M) grey values of the anchor's crop at the pixel, valid (A, M) bool;
    for P anchored pairs (anchor a_k, frame t_k): anchor_row (P,) the row of a_k, frame (P,) = t_k. `gray`
    (T, H, W) is every frame's blurred grey crop.
    """

    def __init__(self, gray: torch.Tensor, anchor_px: dict[int, np.ndarray], anchor_depth: dict[int, np.ndarray],
                 faces: np.ndarray, face_triangles: np.ndarray, pair_anchor: torch.Tensor, pair_frame: torch.Tensor,
                 stride: int = 2) -> None:
        """gray (T, H, W) float; anchor_px / anchor_depth: per anchor frame, its mesh's vertices in crop pixels
        (V, 2) and their distance from the camera (V,); face_triangles (F,) bool: triangles that may be sampled
        (the face regions); pixels on a `stride` grid."""
        self.gray = gray
        height, width = gray.shape[-2:]
        per_anchor: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for a, px in anchor_px.items():
            # Pixel i spans [i, i+1) (as `losses.sample_flow`): rasterise at the pixel centres.
            tri, bary = rasterise(px - 0.5, anchor_depth[a], faces, width, height)
            keep = np.zeros_like(tri, dtype=bool)
            keep[::stride, ::stride] = True
            keep &= tri >= 0
            keep[keep] = face_triangles[tri[keep]]
            ys, xs = np.nonzero(keep)
            per_anchor[a] = (faces[tri[ys, xs]], bary[ys, xs], gray[a, ys, xs].cpu().numpy())
        m = max([len(v[0]) for v in per_anchor.values()], default=0)
        anchors = list(per_anchor)
        corners = np.zeros((len(anchors), m, 3), np.int64)
        bary_all = np.zeros((len(anchors), m, 3), np.float32)
        reference = np.zeros((len(anchors), m), np.float32)
        valid = np.zeros((len(anchors), m), bool)
        for j, a in enumerate(anchors):
            c, b, r = per_anchor[a]
            corners[j, :len(c)], bary_all[j, :len(c)], reference[j, :len(c)], valid[j, :len(c)] = c, b, r, True
        dev = gray.device
        self.anchor_row = torch.as_tensor([anchors.index(a) for a in pair_anchor.tolist()], dtype=torch.long,
                                          device=dev)
        self.corners = torch.as_tensor(corners, device=dev)
        self.bary = torch.as_tensor(bary_all, device=dev)
        self.reference = torch.as_tensor(reference, device=dev)
        self.valid = torch.as_tensor(valid, device=dev)
        self.frame = pair_frame.to(dev)

    def loss(self, frame_px: torch.Tensor, weight: torch.Tensor, eps: float, rows: torch.Tensor | None = None,
             ) -> torch.Tensor:
        """Onset-anchored photometric term, Charbonnier (eps in grey levels, 0-255), weighted mean over pairs and
        pixels. rows (P',) long: the pairs to use (all when None); frame_px (P', V, 2): each one's frame-t mesh in
        crop pixels; weight (P',) their pair weights."""
        sel = slice(None) if rows is None else rows
        row = self.anchor_row[sel]
        corners, bary, reference, valid = self.corners[row], self.bary[row], self.reference[row], self.valid[row]
        batch = torch.arange(frame_px.shape[0], device=frame_px.device)[:, None, None]
        pts = (bary[..., None] * frame_px[batch, corners]).sum(-2)  # (P', M, 2)
        height, width = self.gray.shape[-2:]
        values = L.sample_flow(self.gray[self.frame[sel]][:, None], pts)[..., 0]  # (P', M)
        with torch.no_grad():
            inside = (valid & (pts[..., 0] >= 0) & (pts[..., 0] < width)
                      & (pts[..., 1] >= 0) & (pts[..., 1] < height))
            w = inside.to(values.dtype)
            gain, offset = _brightness(values.detach(), reference, w)
        resid = gain[:, None] * values + offset[:, None] - reference
        wt = w * weight[:, None]
        return (L.charbonnier(resid, eps) * wt).sum() / wt.sum().clamp_min(1.0)


def anchored_photometry(model: HeadModel, topo: HeadTopology, clip: ClipTensors, stride: int) -> AnchoredPhotometry:
    """The photometric samples of every anchor frame, rasterised from the clip's current per-frame estimate (the
    coarse fit before the solve): which surface point a pixel shows need not be exact, only followed consistently."""
    assert clip.gray is not None
    psi, pose, trans = clip.expression, clip.pose, clip.translation
    anchors = sorted(set(clip.pair_anchor.tolist()))
    idx = torch.as_tensor(anchors, device=psi.device)
    with torch.no_grad():
        world = to_world(model(clip.shape[None].expand(len(anchors), -1), psi[idx], pose[idx]).vertices,
                         pose[idx, 0], trans[idx])
        px = L.image_to_crop(project(world, clip.camera), clip.boxes[idx]).cpu().numpy()
        depth = (-world[..., 2]).cpu().numpy()
    faces = topo.faces.cpu().numpy()
    face_triangles = topo.face_mask.cpu().numpy()[faces].all(axis=1)
    return AnchoredPhotometry(clip.gray, {a: px[i] for i, a in enumerate(anchors)},
                              {a: depth[i] for i, a in enumerate(anchors)}, faces, face_triangles,
                              clip.pair_anchor, clip.pair_frame, stride=stride)


def _brightness(values: torch.Tensor, reference: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row gain and offset (P,) minimising Σ w (g·values + c - reference)² (the light's flicker between a
    frame and its anchor)."""
    n = w.sum(-1).clamp_min(1.0)
    mv, mr = (w * values).sum(-1) / n, (w * reference).sum(-1) / n
    dv, dr = values - mv[:, None], reference - mr[:, None]
    gain = (w * dv * dr).sum(-1) / (w * dv * dv).sum(-1).clamp_min(1e-6)
    gain = gain.clamp(0.8, 1.25)
    return gain, mr - gain * mv


def gray_crops(crops: np.ndarray, sigma: float = 1.0, dtype: type = np.float32) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB crops -> (T, H, W) grey levels 0-255, Gaussian-blurred by `sigma` px: float32 for the
    photometric term, uint8 (blurred in uint8) for the anchored flow (`server.refine`)."""
    import cv2

    return np.stack([cv2.GaussianBlur(cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2GRAY).astype(dtype),
                                      (0, 0), sigma) for c in crops])
