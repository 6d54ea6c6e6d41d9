"""Clips with known truth: a real photo's face, scripted micro-expressions, warped frame by frame, plus its truth.

The photo is `skimage.data.astronaut()`. Its MediaPipe landmarks give the subject's head model (built-in: from its
neutral geometry, exactly as `server.fit.builtin_head_for_clip` builds one from a clip) and the fitted rigid
pose; each frame's mesh (action-unit events + small head jitter) is projected and the photo is warped
piecewise-affinely from the photo's projected mesh to the frame's. See docs/fit-and-synthetic-clips.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from server.errors import MicroexpError, OutputError
from server.geometry import project, rotation_matrix
from server.raster import rasterise

DEFAULT_AUS = (
    "AU1_inner_brow_raise",
    "AU2_outer_brow_raise",
    "AU4_brow_lower",
    "AU6_cheek_raise",
    "AU12_lip_corner_pull_L",
    "AU12_lip_corner_pull_R",
    "AU14_dimpler",
    "AU15_lip_corner_depress",
    "AU17_chin_raise",
    "AU45_blink",
)
"""Action units a random timeline draws from (those the model has); a name prefixing several components (AU45_blink:
AU45_blink_L and AU45_blink_R) moves them together."""


class SynthError(MicroexpError):
    """A synthetic clip cannot be made (bad size, unknown action unit, no face found in the photo)."""

    code = "synth"


@dataclass
class AUEvent:
    """One action-unit event in frames: 0 at `onset`, smooth rise to 1 at `apex`, held to `apex_end`,
    smooth fall to 0 at `offset`; `peak_mm` is the largest vertex displacement at the apex."""

    name: str
    onset: float
    apex: float
    apex_end: float
    offset: float
    peak_mm: float

    def curve(self, frames: np.ndarray) -> np.ndarray:
        """Activation (T,) in [0, 1] at the given frame positions (cosine ramps: no velocity jumps)."""
        f = np.asarray(frames, dtype=np.float64)
        rise = np.clip((f - self.onset) / max(self.apex - self.onset, 1e-6), 0.0, 1.0)
        fall = np.clip((self.offset - f) / max(self.offset - self.apex_end, 1e-6), 0.0, 1.0)
        ramp = np.where(f < self.apex_end, rise, fall)
        return 0.5 - 0.5 * np.cos(np.pi * ramp)


def resolve_au(name: str, expression_names: Sequence[str]) -> list[int]:
    """Indices of an action unit in the model's expression names: the exact name, else every component it
    prefixes (so 'AU45_blink' means both AU45_blink_L and AU45_blink_R: a bilateral event)."""
    names = list(expression_names)
    if name in names:
        return [names.index(name)]
    hits = [i for i, n in enumerate(names) if n.startswith(name + "_")]
    if hits:
        return hits
    raise SynthError(f"The head model has no expression component named '{name}' "
                     f"(it has {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}).")


def au_coefficients(name: str, expression_names: Sequence[str], exprdirs: np.ndarray) -> np.ndarray:
    """Expression coefficients (E,) of an action unit scaled so its largest vertex displacement is 1 mm.

    exprdirs (V, 3, E) in metres per unit coefficient.
    """
    hits = resolve_au(name, expression_names)
    coef = np.zeros(exprdirs.shape[2])
    coef[hits] = 1.0
    largest_mm = float(np.linalg.norm(exprdirs @ coef, axis=1).max()) * 1000.0
    if largest_mm <= 0.0:
        raise SynthError(f"The expression component '{name}' moves no vertex.")
    return coef / largest_mm


def au_timeline(names: Sequence[str], fps: float, frames: int, rng: np.random.Generator,
                amplitude_mm: tuple[float, float] = (0.5, 3.0)) -> list[AUEvent]:
    """Random, non-overlapping events drawn from `names`, each 40-500 ms long, about one per second.

    The first event starts after a neutral lead-in (frame 0 is the neutral onset reference).
    """
    min_len = max(math.ceil(0.04 * fps), 3)
    max_len = max(min_len, math.floor(0.5 * fps))
    events: list[AUEvent] = []
    start = max(2, int(round(0.15 * fps)))
    while True:
        length = int(rng.integers(min_len, max_len + 1))
        if start + length >= frames:
            break
        apex = start + max(1.0, round(0.35 * length))
        apex_end = min(apex + round(0.15 * length), start + length - 1.0)
        events.append(AUEvent(str(rng.choice(list(names))), float(start), float(apex), float(apex_end),
                              float(start + length), float(rng.uniform(*amplitude_mm))))
        start += length + int(rng.integers(max(1, int(0.1 * fps)), max(2, int(0.6 * fps))))
    if not events and frames >= 4:
        length = min(max_len, frames - 2)
        apex = 1 + max(1.0, round(0.35 * length))
        events.append(AUEvent(str(names[0]), 1.0, float(apex), float(min(apex + 1, length)), float(1 + length),
                              float(np.mean(amplitude_mm))))
    return events


def smooth_noise(rng: np.random.Generator, frames: int, fps: float, dims: int, period_s: float = 0.5) -> np.ndarray:
    """Band-limited noise (T, dims) with unit standard deviation, correlated over about `period_s`."""
    from scipy.ndimage import gaussian_filter1d

    white = rng.standard_normal((frames + 64, dims))
    smooth = gaussian_filter1d(white, sigma=max(1.0, 0.25 * period_s * fps), axis=0, mode="wrap")[32:32 + frames]
    return smooth / max(float(smooth.std()), 1e-9)


def local_motion_field(vertices: np.ndarray, center: int, direction: np.ndarray, radius_mm: float) -> np.ndarray:
    """Displacement field (V, 3) of unit peak: `direction` (unit) at vertex `center`, falling off as a Gaussian
    of the rest-space distance with σ = `radius_mm` (vertices (V, 3) in metres)."""
    dist = np.linalg.norm(vertices - vertices[center], axis=1) * 1000.0
    return np.exp(-0.5 * (dist / radius_mm) ** 2)[:, None] * np.asarray(direction, np.float64)[None]


# --------------------------------------------------------------------------------------------------- the photo


def _mediapipe_points(image: np.ndarray) -> np.ndarray | None:
    """MediaPipe FaceMesh (478 points, refined) on one RGB image -> (478, 3) pixels (z in x's pixel scale)."""
    import mediapipe as mp

    h, w = image.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1,
                                         min_detection_confidence=0.3) as mesh:
        res = mesh.process(np.ascontiguousarray(image))
    if not res.multi_face_landmarks:
        return None
    lm = res.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in lm], dtype=np.float32)


def photo_frame(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut photo cropped around her face to the frame's aspect and resized to (height, width, 3) RGB,
    and its MediaPipe landmarks (478, 3) in that frame's pixels."""
    from skimage import data as skdata

    photo = skdata.astronaut()  # (512, 512, 3) RGB
    pts = _mediapipe_points(photo)
    if pts is None:
        raise SynthError("MediaPipe found no face in the bundled photo, so no clip can be made.")
    ph, pw = photo.shape[:2]
    lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
    centre = 0.5 * (lo + hi)
    # The face fills about 40 % of the frame's height: big enough that millimetres are pixels.
    crop_h = min(2.5 * float(hi[1] - lo[1]), float(ph))
    crop_w = crop_h * width / height
    if crop_w > pw:
        crop_w, crop_h = float(pw), pw * height / width
    x0 = float(np.clip(centre[0] - crop_w / 2, 0, pw - crop_w))
    y0 = float(np.clip(centre[1] - crop_h / 2, 0, ph - crop_h))
    sx, sy = width / crop_w, height / crop_h
    affine = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], dtype=np.float64)
    frame = cv2.warpAffine(photo, affine, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    frame_pts = _mediapipe_points(frame)
    if frame_pts is None:
        raise SynthError(f"MediaPipe found no face in the photo framed at {width}x{height}; try a larger size.")
    return frame, frame_pts


# --------------------------------------------------------------------------------------------------- the warp


class FaceWarper:
    """Backward piecewise-affine warp of one image from a base mesh projection to moved projections.

    The base mesh is rasterised once (z-buffered: the visible triangle per pixel and its barycentrics). For a
    frame, each covered pixel's displacement is the barycentric blend of its triangle's corner displacements
    (exactly piecewise affine); holes (eye and mouth openings) take a normalised-convolution fill, and outside
    the face the displacement fades to zero over `feather_px`, so background and hair stay put. The backward map
    is the fixed point src = q - D(src) (three iterations: under 0.05 px for
    displacement gradients up to 0.4), and one `cv2.remap` renders the frame.
    """

    def __init__(self, points2d: np.ndarray, depth: np.ndarray, faces: np.ndarray, size: tuple[int, int],
                 feather_px: float = 12.0) -> None:
        """points2d (V, 2) base projection in pixels, depth (V,) distance from the camera, faces (F, 3)."""
        width, height = size
        self.size = size
        tri_id, bary = rasterise(points2d, depth, faces, width, height)
        covered = tri_id >= 0
        self.pix = np.nonzero(covered.ravel())[0]  # (M,)
        self.corners = faces[tri_id.ravel()[self.pix]]  # (M, 3)
        self.bary = bary.reshape(-1, 3)[self.pix].astype(np.float32)  # (M, 3)
        mask = covered.astype(np.uint8)
        scale = float(np.ptp(points2d[:, 1])) if len(points2d) else float(height)
        self.sigma = max(2.0, 0.04 * scale)
        # Outside = reachable from the image border without crossing the face; the rest uncovered is a hole.
        flood = mask.copy()
        pad = np.zeros((height + 2, width + 2), np.uint8)
        outside = np.zeros_like(mask)
        for seed in ((0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)):
            if flood[seed[1], seed[0]] == 0:
                cv2.floodFill(flood, pad, seed, (2,))
        outside = (flood == 2).astype(np.float32)
        dist = cv2.distanceTransform((1 - mask).astype(np.uint8), cv2.DIST_L2, 5)
        taper = np.clip(1.0 - dist / feather_px, 0.0, 1.0)
        taper = taper * taper * (3.0 - 2.0 * taper)  # smoothstep: no kink where the fade ends
        self.fill_weight = np.where(outside > 0, taper, 1.0).astype(np.float32) * (1 - mask)  # (H, W)
        self.mask = mask.astype(np.float32)
        self.mask_blur = cv2.GaussianBlur(self.mask, (0, 0), self.sigma)
        gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.grid = np.stack([gx, gy], axis=-1)  # (H, W, 2)

    def displacement(self, moved2d: np.ndarray, base2d: np.ndarray) -> np.ndarray:
        """Dense forward displacement (H, W, 2) in base-image coordinates for vertex positions (V, 2)."""
        width, height = self.size
        dv = (moved2d - base2d).astype(np.float32)  # (V, 2)
        field = np.zeros((height * width, 2), np.float32)
        field[self.pix] = np.einsum("mk,mkc->mc", self.bary, dv[self.corners])
        field = field.reshape(height, width, 2)
        blurred = cv2.GaussianBlur(field, (0, 0), self.sigma)  # field is zero off the mask already
        fill = blurred / np.maximum(self.mask_blur, 1e-3)[..., None]
        return field + self.fill_weight[..., None] * fill

    def warp(self, image: np.ndarray, moved2d: np.ndarray, base2d: np.ndarray) -> np.ndarray:
        """The image with its face moved from base2d (V, 2) to moved2d (V, 2)."""
        disp = self.displacement(moved2d, base2d)
        src = self.grid - disp
        for _ in range(3):
            at_src = cv2.remap(disp, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            src = self.grid - at_src
        return cv2.remap(image, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# --------------------------------------------------------------------------------------------------- the clip


@dataclass
class _Track:
    """A one-image landmark track in the shape `server.fit.fit_coarse` reads."""

    mp_landmarks: np.ndarray
    lmk68: np.ndarray
    confidence: np.ndarray
    face_found: np.ndarray
    image_size: tuple[int, int]
    fps: float = 30.0


def _subject_model(spec: str, track: _Track) -> Any:
    """The head model of the photo's subject: built-in from its neutral geometry, or the user's FLAME files."""
    if spec == "builtin":
        from server.fit import builtin_head_for_clip

        return builtin_head_for_clip(track)
    from server.headmodel import HeadModel, load_head_model

    return HeadModel(load_head_model(spec))


def _lmk68_from_mp(mp_points: np.ndarray) -> np.ndarray:
    """(T, 478, 3) -> (T, 68, 2) through the project's MediaPipe-to-68 map."""
    from server.headmodel.mp68 import MP_TO_68

    table = np.asarray(MP_TO_68)
    if table.ndim == 1:
        return mp_points[:, table, :2]
    # A weighted map (68, K) of indices with (68, K) weights is also accepted.
    idx, w = table[..., 0].astype(np.int64), table[..., 1]
    return (mp_points[:, idx, :2] * w[..., None]).sum(axis=2) / w.sum(axis=-1)[None, :, None]


def make_clip(out_path: str | Path, fps: float = 30, frames: int = 90, width: int = 640, height: int = 360,
              seed: int = 0, aus: Sequence[AUEvent | str] | None = None,
              amplitude_mm: tuple[float, float] = (0.5, 3.0), jitter: bool = True, noise: bool = True,
              flicker: bool = True, model: str = "builtin", local_motion: bool = False) -> Path:
    """Write OUT (mp4, 'mp4v') with scripted micro-expressions and OUT.truth.npz; return the truth's path.

    `local_motion`: each event also moves the skin around a random face point (`local_motion_field`), with the
    event's timing and peak: motion outside the head model's expression basis, which only per-vertex offsets
    (the mesh deformation) can reproduce.

    `aus`: None for a random timeline over DEFAULT_AUS, a list of names to draw the random timeline from, or
    explicit `AUEvent`s (frames). Truth arrays (see docs/fit-and-synthetic-clips.md): vertices (T, V, 3) head
    coordinates of the subject's head model, expression (T, E), pose (T, J, 3), translation (T, 3), camera (4,),
    faces, au_names, au_onset / au_apex / au_offset (frame indices), au_peak_mm, onset_frame, fps, model_id.
    """
    from server.fit import fit_coarse

    out = Path(out_path)
    if frames < 2 or width < 64 or height < 64 or fps <= 0:
        raise SynthError(f"A clip needs at least 2 frames, 64x64 pixels and a positive frame rate "
                         f"(asked for {frames} frames at {width}x{height}, {fps} fps).")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the folder {out.parent} ({exc.strerror or exc}).") from None
    rng = np.random.default_rng(seed)

    image, mp_photo = photo_frame(width, height)
    track = _Track(mp_photo[None], _lmk68_from_mp(mp_photo[None]), np.ones(1, np.float32), np.ones(1, bool),
                   (width, height), float(fps))
    head = _subject_model(model, track)
    base = fit_coarse(head, track)
    names = list(head.expression_names)

    # The action-unit timeline and truth coefficients.
    events = _events_for(aus, names, fps, frames, rng, amplitude_mm, head.data.kind)
    exprdirs = head.data.exprdirs  # (V, 3, E)
    expression = np.repeat(base.expression, frames, axis=0).astype(np.float64)  # (T, E)
    fidx = np.arange(frames, dtype=np.float64)
    for ev in events:
        expression += ev.curve(fidx)[:, None] * ev.peak_mm * au_coefficients(ev.name, names, exprdirs)[None]

    # Local skin motion (drawn only when asked for, so a seed's default clip does not change).
    centers, directions, radii = [], [], []
    offsets = None
    if local_motion:
        candidates = np.flatnonzero(np.abs(exprdirs).max(axis=(1, 2)) > 1e-5)  # the face (metrics.face_mask_for)
        offsets = np.zeros((frames, exprdirs.shape[0], 3))
        for ev in events:
            centers.append(int(rng.choice(candidates)))
            d = rng.standard_normal(3)
            directions.append(d / np.linalg.norm(d))
            radii.append(float(rng.uniform(8.0, 15.0)))
            field = local_motion_field(base.vertices[0], centers[-1], directions[-1], radii[-1])
            offsets += ev.curve(fidx)[:, None, None] * (ev.peak_mm * 1e-3) * field[None]
    local: dict[str, np.ndarray] = {"local_center": np.array(centers, np.int64),
                                    "local_direction": np.array(directions, np.float32).reshape(-1, 3),
                                    "local_radius_mm": np.array(radii, np.float32)}

    pose = np.repeat(base.pose, frames, axis=0).astype(np.float64)  # (T, J, 3)
    translation = np.repeat(base.translation, frames, axis=0).astype(np.float64)  # (T, 3)
    if jitter:
        pose[:, 0] += np.radians(0.3) * smooth_noise(rng, frames, fps, 3, period_s=1.0)
        translation += 0.0003 * smooth_noise(rng, frames, fps, 3, period_s=1.0)

    shape_t = torch.as_tensor(base.shape, dtype=torch.float32)
    with torch.no_grad():
        verts = torch.cat([
            head(shape_t[None].expand(len(c), -1), torch.as_tensor(expression[c], dtype=torch.float32),
                 torch.as_tensor(pose[c], dtype=torch.float32),
                 None if offsets is None else torch.as_tensor(offsets[c], dtype=torch.float32)).vertices
            for c in np.array_split(np.arange(frames), max(1, frames // 64))
        ])  # (T, V, 3)
        rot = rotation_matrix(torch.as_tensor(pose[:, 0], dtype=torch.float32))
        world = verts @ rot.transpose(1, 2) + torch.as_tensor(translation, dtype=torch.float32)[:, None]
        cam = torch.as_tensor(base.camera)
        proj = project(world, cam).numpy()  # (T, V, 2)
        base_world = torch.as_tensor(base.vertices) @ rotation_matrix(torch.as_tensor(base.pose[:, 0])).transpose(
            1, 2) + torch.as_tensor(base.translation)[:, None]
        base2d = project(base_world, cam)[0].numpy()  # (V, 2)
        base_depth = (-base_world[0, :, 2]).numpy()

    warper = FaceWarper(base2d, base_depth, head.data.faces, (width, height))
    gain = 1.0 + (0.015 * smooth_noise(rng, frames, fps, 1, period_s=0.3)[:, 0] if flicker else np.zeros(frames))
    # Both go to temporary names in the folder and are renamed at the end, the truth last (an older truth removed
    # first), so a failed or interrupted run leaves neither half a file nor an old truth beside a new video.
    truth_path = out.with_name(out.name + ".truth.npz") if out.suffix == "" else out.with_suffix(".truth.npz")
    video_tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # the suffix picks OpenCV's container
    truth_tmp = truth_path.with_name(truth_path.name + ".tmp.npz")
    onset_frame = int(max(0, min([int(ev.onset) for ev in events], default=1) - 1))
    photo_f = image.astype(np.float32)
    try:
        writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise OutputError(f"Cannot write the video {out}.")
        try:
            for t in range(frames):
                frame = warper.warp(photo_f, proj[t], base2d) * gain[t]
                if noise:
                    frame = frame + rng.normal(0.0, 1.5, frame.shape)
                writer.write(cv2.cvtColor(np.clip(frame + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        np.savez_compressed(
            truth_tmp,
            vertices=verts.numpy().astype(np.float32),
            expression=expression.astype(np.float32),
            pose=pose.astype(np.float32),
            translation=translation.astype(np.float32),
            camera=base.camera.astype(np.float32),
            shape=base.shape.astype(np.float32),
            faces=head.data.faces.astype(np.int64),
            expression_basis=exprdirs.astype(np.float32),
            expression_names=np.array(names),
            au_names=np.array([ev.name for ev in events], dtype=str),
            au_onset=np.array([int(round(ev.onset)) for ev in events], dtype=np.int64),
            au_apex=np.array([int(round(ev.apex)) for ev in events], dtype=np.int64),
            au_offset=np.array([int(round(ev.offset)) for ev in events], dtype=np.int64),
            au_peak_mm=np.array([ev.peak_mm for ev in events], dtype=np.float32),
            onset_frame=np.int64(onset_frame),
            fps=np.float64(fps),
            image_size=np.array([width, height], dtype=np.int64),
            model_id=np.array(head.data.model_id),
            projected=proj.astype(np.float32),
            **local,
        )
        truth_path.unlink(missing_ok=True)
        video_tmp.replace(out)
        truth_tmp.replace(truth_path)
    except OSError as exc:
        raise OutputError(f"Cannot write the clip {out} and its truth {truth_path.name} "
                          f"({exc.strerror or exc}).") from None
    finally:
        for tmp in (video_tmp, truth_tmp):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return truth_path


def _events_for(aus: Sequence[AUEvent | str] | None, names: list[str], fps: float, frames: int,
                rng: np.random.Generator, amplitude_mm: tuple[float, float], kind: str) -> list[AUEvent]:
    """Explicit events as given, else a random timeline over the requested (or default) action units."""
    if aus and all(isinstance(a, AUEvent) for a in aus):
        events = [a for a in aus if isinstance(a, AUEvent)]
        for ev in events:
            resolve_au(ev.name, names)
        return events
    if aus:
        pool = [str(a) for a in aus]
        for n in pool:
            resolve_au(n, names)
    else:
        pool = [n for n in DEFAULT_AUS if any(m == n or m.startswith(n + "_") for m in names)]
        if not pool:  # a FLAME model has no named action units: its first expression components stand in
            pool = names[: min(10, len(names))]
    return au_timeline(pool, fps, frames, rng, amplitude_mm)


def main_make_clip(argv: Sequence[str] | None = None) -> int:
    """`microexp make-clip OUT.mp4 [--fps 30|100|200] [--frames N] [--seed S] [--size WxH] [--model builtin|PATH]
    [--local-motion]`."""
    p = argparse.ArgumentParser(prog="microexp make-clip",
                                description="Make a clip with scripted micro-expressions and its ground truth.")
    p.add_argument("out", help="output .mp4; the truth goes beside it as OUT.truth.npz")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="640x360", help="WxH in pixels")
    p.add_argument("--model", default="builtin", help="'builtin' or a FLAME model path")
    p.add_argument("--local-motion", action="store_true",
                   help="each event also moves the skin around a random face point: motion outside the expression "
                        "basis")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        w_str, h_str = args.size.lower().split("x")
        width, height = int(w_str), int(h_str)
    except ValueError:
        print(f"error: --size must look like 640x360, not '{args.size}'.", file=sys.stderr)
        return 2
    try:
        truth = make_clip(args.out, fps=args.fps, frames=args.frames, width=width, height=height, seed=args.seed,
                          model=args.model, local_motion=args.local_motion)
    except MicroexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nCancelled; no clip was written.", file=sys.stderr)
        return 130  # as `reconstruct`
    print(f"wrote {args.out} and {truth}", file=sys.stderr)
    return 0
