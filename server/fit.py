"""Coarse reconstruction: one identity per clip and per-frame expression, joints, rigid pose from 2D landmarks.

Every frame is optimised at once (batched tensors). Inside the loop only the landmark vertices are evaluated
(the rows of the bases for the embedded triangles' corners are gathered once); the full mesh is computed once at
the end with `HeadModel.forward`. See docs/fit-and-synthetic-clips.md for the losses and their weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from server.errors import Cancelled, ClipError
from server.geometry import default_camera, project, rotation_matrix
from server.headmodel import HeadModel, lbs

# MediaPipe's iris centres: 468 is the subject's right eye (image left in a non-mirrored view), 473 the left.
MP_IRIS_RIGHT = 468
MP_IRIS_LEFT = 473
# Upper/lower eyelid pairs whose vertical gap must match (closed eyes close fully). MediaPipe: subject's right
# eye (159/145, 158/153, 160/144) then left eye (386/374, 385/380, 387/373); iBUG 68: 37/41, 38/40, 43/47, 44/46.
MP_LID_PAIRS = ((159, 145), (158, 153), (160, 144), (386, 374), (385, 380), (387, 373))
LMK68_LID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))
# Outer eye corners in the 68-point scheme: their distance is the inter-ocular distance (IOD) used as unit.
LMK68_OUTER_EYE = (36, 45)


class LandmarkTrack(Protocol):
    """What the fit reads from `server.preprocess.Preprocessed` (any object with these attributes will do)."""

    mp_landmarks: Any  # (T, 478, 3) image pixels (x, y) and MediaPipe's relative depth (z)
    lmk68: Any  # (T, 68, 2) image pixels
    confidence: Any  # (T,)
    face_found: Any  # (T,) bool
    image_size: Any  # (w, h)
    fps: float


@dataclass
class FitConfig:
    """Weights and iteration counts of the coarse fit (losses in units of the inter-ocular distance)."""

    rigid_iterations: int = 30
    """Adam steps of stage 1 (root rotation and translation only, neutral face)."""
    iterations: int = 120
    """Adam steps of stage 2 (everything)."""
    lr: float = 0.03
    """Adam step (decaying linearly to 10 %) for rotations (radians), coefficients and translation (centimetres)."""
    w_mp: float = 1.0
    """Reprojection of the MediaPipe points embedded in the model."""
    w_68: float = 1.0
    """Reprojection of the 68 landmarks."""
    w_lids: float = 4.0
    """Vertical upper-to-lower lid gap: keeps blinks and closed eyes closed."""
    w_gaze: float = 1.0
    """Pupil (front of each eyeball) onto MediaPipe's iris centre, when the model has eyeballs but no iris points."""
    w_smooth: float = 2e-3
    """Second temporal difference of every per-frame parameter at 30 fps (mild: micro-expressions are 1-15 frames)."""
    w_shape: float = 1e-4
    """L2 prior on identity coefficients."""
    w_expression: float = 1e-5
    """L2 prior on expression coefficients."""
    w_expression_l1: float = 1e-5
    """Sparsity prior (smooth L1) on expression coefficients: prefers few active components (one blink rather
    than a blend of lid raisers and tighteners that looks the same in 2D), which is also what an artist edits."""
    w_jaw: float = 1e-4
    """L2 prior on the jaw rotation (radians)."""
    w_eyes: float = 1e-4
    """L2 prior on the eye rotations (radians)."""
    fit_neck: bool = False
    """Landmarks cannot tell the neck from the root rotation, so by default the neck stays at zero and the root
    carries the whole head motion."""
    optimise_focal: bool = False
    """Let the focal length move (log-scale, mildly regularised) from `default_camera`'s 30-degree guess."""
    fov_deg: float = 30.0
    """Field of view of the initial camera across the longer image side."""


@dataclass
class CoarseFit:
    """Result of `fit_coarse` (numpy float32). shape (S,), expression (T, E), pose (T, J, 3) with the root at
    index 0, translation (T, 3) metres, camera (4,) = [fx, fy, cx, cy] processed-frame pixels, vertices (T, V, 3) head
    coordinates; landmark_error_iod: mean 2D error of the 68 landmarks / inter-ocular distance over frames with a
    face; per_frame_error (T,) the same per frame (NaN where no face was found)."""

    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    translation: np.ndarray
    camera: np.ndarray
    vertices: np.ndarray
    landmark_error_iod: float
    per_frame_error: np.ndarray


class LandmarkHead(torch.nn.Module):
    """The head model restricted to its landmark vertices: exact same LBS as `HeadModel.forward`, far cheaper.

    Gathers once the rows of every basis for the corners of the triangles holding the 68 and MediaPipe landmarks
    (plus one pupil vertex per eyeball), so each optimiser step blends a few hundred vertices instead of V.
    """

    v_template: torch.Tensor
    shapedirs: torch.Tensor
    exprdirs: torch.Tensor
    posedirs: torch.Tensor
    weights: torch.Tensor
    joint_template: torch.Tensor
    joint_dirs: torch.Tensor
    faces68: torch.Tensor
    faces_mp: torch.Tensor
    bary68: torch.Tensor
    bary_mp: torch.Tensor
    pupils: torch.Tensor

    def __init__(self, model: HeadModel) -> None:
        super().__init__()
        data = model.data
        nv = data.num_vertices
        self.parents = list(model.parents)
        self.pupil_vertices = _pupil_vertices(model)
        corners68 = data.faces[data.lmk68_faces]  # (68, 3)
        corners_mp = data.faces[data.mp_faces]  # (N, 3)
        pupils = np.asarray(self.pupil_vertices, dtype=np.int64)
        used = np.unique(np.concatenate([corners68.ravel(), corners_mp.ravel(), pupils]))
        local = np.full(nv, -1, dtype=np.int64)
        local[used] = np.arange(used.size)
        idx = torch.as_tensor(used)

        def rows(flat: torch.Tensor) -> torch.Tensor:  # (K, V*3) -> (K, n*3)
            return flat.reshape(flat.shape[0], nv, 3)[:, idx].reshape(flat.shape[0], -1).contiguous()

        self.register_buffer("v_template", model.v_template[idx].clone())  # (n, 3)
        self.register_buffer("shapedirs", rows(model.shapedirs_flat))  # (S, n*3)
        self.register_buffer("exprdirs", rows(model.exprdirs_flat))  # (E, n*3)
        self.register_buffer("posedirs", rows(model.posedirs_flat))  # (P, n*3)
        self.register_buffer("weights", model.weights[idx].clone())  # (n, J)
        # Joints come from the identity mesh only, so J_regressor folds into the shape basis once.
        jreg = model.j_regressor  # (J, V)
        self.register_buffer("joint_template", jreg @ model.v_template)  # (J, 3)
        sd = model.shapedirs_flat.reshape(-1, nv, 3)  # (S, V, 3)
        self.register_buffer("joint_dirs", torch.einsum("jv,svc->sjc", jreg, sd).reshape(sd.shape[0], -1))
        self.register_buffer("faces68", torch.as_tensor(local[corners68]))  # (68, 3) local indices
        self.register_buffer("faces_mp", torch.as_tensor(local[corners_mp]))  # (N, 3)
        self.register_buffer("bary68", model.lmk68_bary.clone())
        self.register_buffer("bary_mp", model.mp_bary.clone())
        self.register_buffer("pupils", torch.as_tensor(local[np.asarray(self.pupil_vertices, dtype=np.int64)]))
        self.num_joints = data.num_joints

    def forward(self, shape: torch.Tensor, expression: torch.Tensor,
                pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """shape (S,), expression (T, E), pose (T, J, 3) (root ignored) -> landmarks68 (T, 68, 3),
        landmarks_mp (T, N, 3), pupils (T, P, 3) in head coordinates."""
        t = expression.shape[0]
        n = self.v_template.shape[0]
        identity = self.v_template + (shape @ self.shapedirs).reshape(n, 3)  # (n, 3)
        joints = (self.joint_template + (shape @ self.joint_dirs).reshape(-1, 3)).expand(t, -1, -1)  # (T, J, 3)
        rots = rotation_matrix(pose[:, 1:])  # (T, J-1, 3, 3)
        eye = torch.eye(3, dtype=rots.dtype).expand(t, 1, 3, 3)
        rot_mats = torch.cat([eye, rots], dim=1)  # (T, J, 3, 3)
        rest = identity + lbs.blend(expression, self.exprdirs)
        if self.posedirs.shape[0]:
            rest = rest + lbs.blend(lbs.pose_feature(rot_mats), self.posedirs)  # FLAME eq. 4
        _, transforms = lbs.rigid_transforms(rot_mats, joints, self.parents)
        verts = lbs.skin(rest, self.weights, transforms)  # (T, n, 3), FLAME eq. 1
        lm68 = (verts[:, self.faces68] * self.bary68[None, :, :, None]).sum(dim=2)
        lmp = (verts[:, self.faces_mp] * self.bary_mp[None, :, :, None]).sum(dim=2)
        return lm68, lmp, verts[:, self.pupils]


def _pupil_vertices(model: HeadModel) -> list[int]:
    """Front-most vertex of each eyeball (eye_L, eye_R order), or [] when the model has no skinned eyeballs."""
    data = model.data
    out: list[int] = []
    for name in ("eye_L", "eye_R"):
        if name not in data.joint_names:
            return []
        j = data.joint_names.index(name)
        ball = np.nonzero(data.weights[:, j] > 0.5)[0]
        if ball.size < 3:
            return []
        out.append(int(ball[np.argmax(data.v_template[ball, 2])]))
    return out


def _iod(lmk68: np.ndarray) -> np.ndarray:
    """Inter-ocular distance per frame (T,) in pixels from (T, 68, 2)."""
    a, b = LMK68_OUTER_EYE
    return np.linalg.norm(lmk68[:, a] - lmk68[:, b], axis=-1)


def _rigid_init(points3d: np.ndarray, points2d: np.ndarray, valid: np.ndarray,
                camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PnP of the neutral landmarks. points3d (L, 3) head coords, points2d (T, L, 2) pixels.

    Returns root axis-angle (T, 3) and translation (T, 3) in our OpenGL-style camera; frames that are not valid
    get their nearest valid neighbour's pose.
    """
    fx, fy, cx, cy = (float(c) for c in camera)
    k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    t_count = points2d.shape[0]
    rot = np.zeros((t_count, 3))
    trans = np.zeros((t_count, 3))
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) -> ours (y up, z backward)
    obj = points3d.astype(np.float64)
    good = np.zeros(t_count, dtype=bool)
    for t in np.nonzero(valid)[0]:
        ok, rvec, tvec = cv2.solvePnP(obj, points2d[t].astype(np.float64), k, np.zeros(4), flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            continue
        r_cv, _ = cv2.Rodrigues(rvec)
        r_gl, _ = cv2.Rodrigues(flip @ r_cv)
        rot[t] = r_gl.ravel()
        trans[t] = (flip @ tvec).ravel()
        good[t] = True
    if not good.any():
        raise ClipError("The face's pose could not be estimated in any frame, so the clip cannot be fitted.")
    idx = np.nonzero(good)[0]
    nearest = idx[np.abs(np.arange(t_count)[:, None] - idx[None]).argmin(axis=1)]
    return rot[nearest], trans[nearest]


def _second_difference(x: torch.Tensor) -> torch.Tensor:
    """Mean squared second temporal difference of (T, ...) (zero for T < 3)."""
    if x.shape[0] < 3:
        return x.new_zeros(())
    d2 = x[2:] - 2.0 * x[1:-1] + x[:-2]
    return d2.pow(2).sum(dim=tuple(range(1, x.dim()))).mean()


def fit_coarse(model: HeadModel, pre: LandmarkTrack, config: FitConfig | None = None,
               progress: Callable[[str, int, int], None] | None = None,
               cancel: Callable[[], bool] | None = None) -> CoarseFit:
    """Fit identity (S,), expression (T, E), joints (T, J, 3), translation (T, 3) to a clip's landmarks.

    Stage 1 solves the rigid pose of the neutral head from a per-frame PnP initialisation; stage 2 optimises
    everything jointly over all frames. Frames with `face_found` False carry no landmark weight and are filled
    by the smoothness term. Raises ClipError when no frame has a face; `Cancelled` when `cancel()` says so.
    """
    cfg = config or FitConfig()
    torch_threads = torch.get_num_threads()
    data = model.data
    mp_all = np.asarray(pre.mp_landmarks, dtype=np.float32)  # (T, 478, 3)
    lmk68 = np.asarray(pre.lmk68, dtype=np.float32)  # (T, 68, 2)
    t_count = lmk68.shape[0]
    if mp_all.shape[:2] != (t_count, 478) or lmk68.shape != (t_count, 68, 2):
        raise ClipError(f"The landmark track has shapes {mp_all.shape} and {lmk68.shape}, expected (T, 478, 3) "
                        "and (T, 68, 2).")
    # A tracker may leave NaN where it lost the face: such frames carry no weight, and zeros keep the loss finite.
    found = np.asarray(pre.face_found, dtype=bool) & np.isfinite(mp_all).all(axis=(1, 2)) & np.isfinite(lmk68).all(
        axis=(1, 2))
    mp_all, lmk68 = np.nan_to_num(mp_all), np.nan_to_num(lmk68)
    conf = np.nan_to_num(np.clip(np.asarray(pre.confidence, dtype=np.float32), 0.0, 1.0))
    if t_count == 0 or not found.any():
        raise ClipError("No face was found in any frame of the clip, so there is nothing to fit.")
    width, height = (int(s) for s in pre.image_size)
    camera0 = default_camera(width, height, cfg.fov_deg)  # (4,)
    fps = float(getattr(pre, "fps", 30.0) or 30.0)

    iod = _iod(lmk68)
    iod_ref = float(np.median(iod[found]))
    iod = np.where(found & (iod > 0.2 * iod_ref), iod, iod_ref).astype(np.float32)
    frame_w = np.where(found, np.maximum(conf, 0.05), 0.0).astype(np.float32)
    frame_w = frame_w / max(float(frame_w.sum()), 1e-8) * t_count  # (T,) mean 1 over the clip

    head = LandmarkHead(model)
    mp_idx = data.mp_indices
    obs_mp = torch.as_tensor(mp_all[:, mp_idx, :2])  # (T, N, 2)
    obs_68 = torch.as_tensor(lmk68)  # (T, 68, 2)
    inv_iod = torch.as_tensor(1.0 / iod)[:, None, None]  # (T, 1, 1)
    w_t = torch.as_tensor(frame_w)  # (T,)

    # Lid pairs available in this model's embedding, as positions in obs_mp / obs_68.
    mp_pos = {int(m): i for i, m in enumerate(mp_idx)}
    lid_mp = [(mp_pos[a], mp_pos[b]) for a, b in MP_LID_PAIRS if a in mp_pos and b in mp_pos]
    lid_68 = list(LMK68_LID_PAIRS)
    # Gaze: the pupil vertices chase the iris centres unless the iris points are embedded landmarks already.
    use_gaze = bool(head.pupil_vertices) and MP_IRIS_LEFT not in mp_pos and cfg.w_gaze > 0
    obs_iris = torch.as_tensor(mp_all[:, [MP_IRIS_LEFT, MP_IRIS_RIGHT], :2])  # eye_L, eye_R order

    # Stage 0: PnP of the neutral head's landmarks.
    with torch.no_grad():
        z_shape = torch.zeros(data.num_shape)
        n68, nmp, _ = head(z_shape, torch.zeros(1, data.num_expression), torch.zeros(1, data.num_joints, 3))
    pts3d = torch.cat([nmp[0], n68[0]]).numpy()
    pts2d = np.concatenate([mp_all[:, mp_idx, :2], lmk68], axis=1)
    rot0, trans0 = _rigid_init(pts3d, pts2d, found, camera0.numpy())

    shape = torch.zeros(data.num_shape, requires_grad=True)
    expression = torch.zeros(t_count, data.num_expression, requires_grad=True)
    joints = torch.zeros(t_count, data.num_joints - 1, 3, requires_grad=True)  # every joint but the root
    root = torch.as_tensor(rot0, dtype=torch.float32).clone().requires_grad_(True)
    # Translation is optimised in centimetres so one Adam step size suits rotations and translations alike.
    trans_cm = torch.as_tensor(trans0 * 100.0, dtype=torch.float32).clone().requires_grad_(True)
    log_focal = torch.zeros((), requires_grad=True)
    joint_mask = torch.ones(data.num_joints - 1, 1)
    names = data.joint_names
    if not cfg.fit_neck and "neck" in names:
        joint_mask[names.index("neck") - 1] = 0.0
    joint_prior = torch.zeros(data.num_joints - 1)
    for j, name in enumerate(names[1:]):
        joint_prior[j] = cfg.w_jaw if name == "jaw" else cfg.w_eyes if name.startswith("eye") else cfg.w_jaw
    smooth_scale = cfg.w_smooth * (fps / 30.0) ** 2  # per-frame differences shrink with the frame rate

    def camera() -> torch.Tensor:
        if not cfg.optimise_focal:
            return camera0
        scale = torch.exp(log_focal)
        return torch.cat([camera0[:2] * scale, camera0[2:]])

    def losses(full: bool) -> torch.Tensor:
        pose = torch.cat([root[:, None], joints * joint_mask], dim=1)  # (T, J, 3)
        if full:
            lm68, lmp, pupils = head(shape, expression, pose)
        else:
            with torch.no_grad():
                lm68, lmp, pupils = head(z_shape, torch.zeros(1, data.num_expression),
                                         torch.zeros(1, data.num_joints, 3))
            lm68, lmp, pupils = (x.expand(t_count, -1, -1) for x in (lm68, lmp, pupils))
        rot = rotation_matrix(root)  # (T, 3, 3)
        trans = trans_cm * 0.01

        def img(points: torch.Tensor) -> torch.Tensor:  # head coords (T, L, 3) -> pixels (T, L, 2)
            return project(points @ rot.transpose(1, 2) + trans[:, None], camera())

        p_mp, p_68 = img(lmp), img(lm68)
        r_mp = (p_mp - obs_mp) * inv_iod  # (T, N, 2) in IOD units
        r_68 = (p_68 - obs_68) * inv_iod
        per_frame = cfg.w_mp * r_mp.pow(2).sum(-1).mean(-1) + cfg.w_68 * r_68.pow(2).sum(-1).mean(-1)  # (T,)
        if full:
            gaps = []
            for pred, obs, pairs in ((p_mp, obs_mp, lid_mp), (p_68, obs_68, lid_68)):
                for a, b in pairs:
                    gaps.append(((pred[:, a, 1] - pred[:, b, 1]) - (obs[:, a, 1] - obs[:, b, 1])) * inv_iod[:, 0, 0])
            if gaps:
                per_frame = per_frame + cfg.w_lids * torch.stack(gaps, dim=1).pow(2).mean(-1)
            if use_gaze:
                per_frame = per_frame + cfg.w_gaze * ((img(pupils) - obs_iris) * inv_iod).pow(2).sum(-1).mean(-1)
        loss = (w_t * per_frame).mean()
        loss = loss + smooth_scale * (_second_difference(root) + _second_difference(trans_cm * 0.1))
        if full:
            loss = loss + smooth_scale * (_second_difference(expression) + _second_difference(joints))
            loss = loss + cfg.w_shape * shape.pow(2).sum() + cfg.w_expression * expression.pow(2).sum(-1).mean()
            loss = loss + cfg.w_expression_l1 * (expression.pow(2) + 1e-4).sqrt().sum(-1).mean()
            loss = loss + (joint_prior[None, :, None] * joints.pow(2)).sum((1, 2)).mean()
            if cfg.optimise_focal:
                loss = loss + 1e-3 * log_focal.pow(2)
        return loss

    total = cfg.rigid_iterations + cfg.iterations
    step = 0

    def run(params: list[torch.Tensor], iterations: int, full: bool) -> None:
        nonlocal step
        if iterations <= 0:
            return
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - 0.9 * i / iterations)
        for _ in range(iterations):
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            opt.zero_grad(set_to_none=True)
            losses(full).backward()
            opt.step()
            sched.step()
            step += 1
            if progress is not None and (step % 10 == 0 or step == total):
                progress("fit", step, total)

    try:
        # The loop's tensors are small (T x a few hundred points): one thread is as fast, and it avoids OpenMP
        # workers spinning against each other on a busy 2-core machine (measured: 20x slower there).
        torch.set_num_threads(1)
        run([root, trans_cm], cfg.rigid_iterations, full=False)
        params = [shape, expression, joints, root, trans_cm] + ([log_focal] if cfg.optimise_focal else [])
        run(params, cfg.iterations, full=True)
    finally:
        torch.set_num_threads(torch_threads)

    with torch.no_grad():
        pose = torch.cat([root[:, None], joints * joint_mask], dim=1)
        vertices = torch.cat([
            model(shape[None].expand(len(c), -1), expression[c], pose[c]).vertices
            for c in torch.arange(t_count).split(64)
        ])
        lm68, _, _ = head(shape, expression, pose)
        rot = rotation_matrix(root)
        p68 = project(lm68 @ rot.transpose(1, 2) + (trans_cm * 0.01)[:, None], camera())
        err = ((p68 - obs_68).norm(dim=-1).mean(-1) * inv_iod[:, 0, 0]).numpy()
    per_frame_error = np.where(found, err, np.nan).astype(np.float32)
    return CoarseFit(
        shape=shape.detach().numpy().astype(np.float32),
        expression=expression.detach().numpy().astype(np.float32),
        pose=pose.numpy().astype(np.float32),
        translation=(trans_cm.detach() * 0.01).numpy().astype(np.float32),
        camera=camera().detach().numpy().astype(np.float32),
        vertices=vertices.numpy().astype(np.float32),
        landmark_error_iod=float(np.nanmean(per_frame_error)),
        per_frame_error=per_frame_error,
    )


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: scale s, rotation R (3, 3), translation t minimising |s R src + t - dst|. src, dst (L, 3)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float((sig * np.diag(d)).sum() / max((a**2).sum(), 1e-12))
    return scale, rot, mu_d - scale * rot @ mu_s


def neutral_points_from_landmarks(mp_landmarks: np.ndarray, face_found: np.ndarray | None = None) -> np.ndarray:
    """The subject's neutral face (478, 3) in metres and head coordinates from MediaPipe tracks (T, 478, 3).

    Every frame's points (x, y pixels, z MediaPipe's relative depth in the same pixel scale) are aligned to the
    middle frame by a similarity transform and the per-point median taken, which is robust to brief expressions
    and head turns; `headmodel.builtin.neutral_from_mediapipe` then frontalises that face (mirror-symmetric
    Procrustes), puts the origin between the outer eye corners and scales it to the inter-ocular prior.
    """
    from server.headmodel.builtin import neutral_from_mediapipe

    pts = np.asarray(mp_landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (478, 3):
        raise ClipError(f"MediaPipe landmarks have shape {pts.shape}, expected (T, 478, 3).")
    keep = np.ones(len(pts), bool) if face_found is None else np.asarray(face_found, bool)
    keep &= np.isfinite(pts).all(axis=(1, 2))
    if not keep.any():
        raise ClipError("No face was found in any frame of the clip, so the subject's head cannot be built.")
    faces3d = pts[keep]
    ref = faces3d[len(faces3d) // 2]
    aligned = []
    for f in faces3d:
        s, r, t = _similarity(f[:468], ref[:468])
        aligned.append(s * f @ r.T + t)
    neutral = np.median(np.stack(aligned), axis=0)  # (478, 3) in the middle frame's pixels
    return neutral_from_mediapipe(neutral)


def builtin_head_for_clip(pre: LandmarkTrack) -> HeadModel:
    """The built-in head for this clip's subject: `build_builtin_head` on `neutral_points_from_landmarks`."""
    from server.headmodel import build_builtin_head

    neutral = neutral_points_from_landmarks(np.asarray(pre.mp_landmarks), np.asarray(pre.face_found))
    built = build_builtin_head(neutral)
    return built if isinstance(built, HeadModel) else HeadModel(built)
