"""Micro-expression refinement (paper §IV): the dynamic-encoded module and the dynamic-guided mesh deformation,
optimised self-supervised on the clip itself (or fine-tuned from a trained checkpoint)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from torch import nn

from server import losses as L
from server.errors import Cancelled, ClipError
from server.flow import FlowEstimator
from server.geometry import project, rotation_matrix, to_world
from server.models.checkpoint import load_checkpoint, load_weights
from server.models.deformation import (
    MeshDeformation,
    lift_landmarks,
    motion_attention,
    nearest_landmarks,
    patch_average,
    region_centroids,
)
from server.models.dem import DynamicEncodedModule, window_starts
from server.models.graph import MeshGraph
from server.onset_solve import cosine_lr, millimetres_per_unit, solve_onset_motion, solve_step_count, sparse_prior
from server.raster import AnchoredPhotometry, anchored_photometry, gray_crops

if TYPE_CHECKING:
    from server.headmodel import HeadModel

Progress = Callable[[str, int, int], None]
Cancel = Callable[[], bool]
CROP = 224
PACE_STEPS = 5
"""Steps of the networks' loop (after the first) timed to fix the length of its cosine schedule
(`RefineConfig.time_budget_s`)."""


@dataclass
class RefineConfig:
    """Settings of the refinement. Architecture fields (ARCH_FIELDS) are taken from a checkpoint when one is loaded."""

    iterations: int = 150
    """Optimisation steps per clip (fewer on a loss plateau): the cosine schedule runs over them, so the same clip
    and settings give the same take, and ablations are compared at equal steps (a wall-clock schedule gave a variant
    with cheaper steps more of them, and moved results by a few hundredths from run to run)."""
    time_budget_s: float = 45.0
    """Wall-clock cap of the optimisation loop (setup and the final pass come on top). On this project's 2-core CPU
    the built-in head's 150 steps take ~35 s, under it. Where the first steps' pace says the cap would bind (a
    FLAME-sized head, a busy machine) the schedule is shortened to the steps that fit, so the step size still decays
    to zero, and the result depends on the machine; the loop also stops at the cap itself."""
    lr: float = 1e-3
    """Adam learning rate of the per-clip optimisation (training uses the paper's 1e-4)."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """'cosine': the networks' step decays to zero over the run (over `iterations` steps, or over the steps that fit
    in `time_budget_s` at the first steps' pace when fewer), so the zero-initialised layers settle instead of
    dithering at the step size around the start (measured: docs/model.md); 'constant' keeps `lr`."""
    batch_frames: int = 12
    """Frames per iteration of stage 'dem': a random contiguous run of the clip (the loss mini-batch)."""
    full_batch_frames: int = 6
    """Frames per iteration of stage 'full' (the mesh deformation costs ~10× more per frame on FLAME's 5023
    vertices)."""
    patience: int = 40
    """Early stopping: stop when the smoothed total loss has not improved by `min_rel_improvement` for this many
    iterations."""
    min_rel_improvement: float = 1e-3
    """Relative improvement of the smoothed loss that counts as progress."""
    seed: int = 0
    """Seed of the network initialisation and the frame sampling."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda'."""
    window: int = 16
    """DEM window in frames (the paper's onset-to-offset span); long clips are processed in overlapping windows."""
    overlap: int = 4
    """Frames shared by consecutive DEM windows, cross-faded."""
    solver: str = "rk4"
    """torchdiffeq method: 'rk4' fixed-step on the frame grid (fast), 'dopri5' adaptive, 'euler', 'midpoint'."""
    adjoint: bool = False
    """Integrate gradients with odeint_adjoint (less memory, slower)."""
    latent: int = 16
    """Latent size of the ODE state z."""
    hidden: int = 64
    """Hidden width of the latent encoder, decoder and ODE function."""
    motion_width: int = 16
    """Channels of the widest 3D-conv layer of the motion encoder (layers use width/2, width, width)."""
    flow_size: int = 56
    """Flow resolution fed to the CNNs (average-pooled from 224; 224 = full resolution)."""
    deform_hidden: int = 32
    """Feature width of the mesh-deformation GCNs and MLPs."""
    geo_layers: int = 2
    """Graph-convolution layers of the geometric encoder (eq. 9)."""
    gcn_layers: int = 3
    """Graph-convolution layers of the deformation network (eq. 16)."""
    motion_channels: int = 16
    """Channels of the pixel-motion CNN (eq. 11)."""
    landmark_k: int = 3
    """Nearest lifted landmarks whose offsets each vertex receives (eq. 10)."""
    lambda_attn: float = 0.02
    """λ_attn of eq. 21."""
    patch: int = 5
    """Patch size of eq. 13 and 18, in pixels of the map it averages."""
    attention_flow: Literal["onset", "adjacent"] = "onset"
    """Flow behind the attention of eq. 18: 'adjacent' = O_t (paper); 'onset' = flow accumulated from the first
    frame with the per-frame median removed (offsets are relative to the onset, so a held apex keeps attention)."""
    use_motion_features: bool = True
    """Ablation: pixel-motion features (eq. 11-13)."""
    use_landmark_features: bool = True
    """Ablation: lifted-landmark features (eq. 10)."""
    use_geometry_features: bool = True
    """Ablation: geometric GCN features (eq. 9)."""
    use_geometric_losses: bool = True
    """Ablation: L_geo of eq. 24 (Laplacian, normal, flow-guided)."""
    dem_base: Literal["coarse", "onset"] = "coarse"
    """DEM output around 'coarse' = the per-frame coarse fit (starts exactly at it) or 'onset' = the anchor frame's
    expression (closest to eq. 6, which decodes D(z_t): ignores the coarse fit's frame-to-frame noise)."""
    dem_scope: Literal["clip", "window"] = "clip"
    """'clip': the DEM runs over the whole clip each step (windows chained as at inference); 'window': only over the
    step's frames, anchored at its first frame (the paper's onset-to-offset training; used by `train`)."""
    expression_priors_on: Literal["clip", "batch"] = "clip"
    """Frames the expression priors (`w_expr_coarse`, `w_expr`, `w_sparse`, `w_temporal_expr`) are evaluated on
    in `dem_scope` 'clip': 'clip' = every frame, every step (the DEM computes the whole clip anyway); 'batch' =
    only the step's frames, as the data terms. The DEM's weights are shared by all frames, so a step on one run of
    frames also moves every other frame's ψ; with the priors on the run alone nothing pulled those back, and the
    DEM drifted from the onset solve (in-basis bench clips, stage 'dem': 0.549 / 0.961 / 0.619 with 'batch',
    0.498 / 0.858 / 0.547 with 'clip', the solve alone 0.483 / 0.841 / 0.544; docs/model.md). Each term is a mean
    over the frames it covers, so a frame's prior weight per step is 1/T instead of 1/batch while in the run: the
    same over the steps in expectation. Window scope (`train`) always uses the batch."""
    flow_face_only: bool = True
    """Flow consistency only on vertices of the 8 face regions (the rest is hair, ears, neck: less reliable flow)."""
    w_flow: float = 1.0
    """Adjacent-frame flow consistency (crop px, Charbonnier)."""
    w_anchor_flow: float = 1.0
    """Onset-anchored flow term (crop px, Charbonnier): vertex motion from each window's anchor frame vs the flow
    computed directly from the anchor crop to each frame's crop: the signal the onset solve fits, kept in the
    networks' loss so they do not drift from it (docs/model.md)."""
    anchor_flow: Literal["crops", "accumulated"] = "crops"
    """Source of the anchored flow: 'crops' = flow from crop a to crop t (`pre.crops`, `anchor_flow_estimator`; falls
    back to 'accumulated' when the crops have no texture at all); 'accumulated' = the sum of the adjacent flows
    (accumulates their noise)."""
    anchor_flow_estimator: Literal["farneback", "fast", "tvl1"] = "farneback"
    """Estimator of the anchored flow from crops (`server.flow.FlowEstimator`). Farnebäck's reads more of the skin's
    motion than DIS ('fast') does. With it the onset solve's error fell by 14-19% on the benchmark's made clips and
    on 6 of 8 held-out ones (medians 6-11% lower; docs/model.md)."""
    anchor_flow_size: int = 112
    """Resolution at which the anchored flow is stored (float16, values in 224-crop pixels); 224 = full."""
    anchor_span: Literal["window", "clip"] = "window"
    """Anchors of the anchored flow: 'window' = the DEM windows' first frames (cross-faded at seams as the DEM
    does); 'clip' = frame 0 for every frame."""
    flow_eps: float = 0.05
    """Charbonnier eps of the flow term, crop px."""
    w_landmark: float = 0.05
    """Landmark reprojection, inter-ocular units (FAN-68 and MediaPipe)."""
    refine_pose: bool = True
    """Also correct the coarse root rotation and translation per frame from the flow (per-clip mode only)."""
    lr_rigid: float = 0.05
    """SparseAdam learning rate of those corrections (units: 0.01 rad and mm, so 0.05 = 0.03° / 0.05 mm a step)."""
    w_pose_coarse: float = 1e-2
    """L2 of the root-rotation (centiradians) and translation (mm) corrections."""
    w_temporal_pose: float = 1e-2
    """2nd-order temporal smoothness of the root-rotation and translation corrections."""
    w_expr_coarse: float = 1.0
    """L2 of ψ - ψ_prior, ψ_prior = the per-frame estimate (the onset solve's, else the coarse fit's) smoothed over
    `expr_prior_smooth_frames`."""
    expr_prior_smooth_frames: float = 0.0
    """Gaussian σ (frames) of the temporal smoothing of the per-frame expression that the prior pulls towards (0:
    the per-frame expression itself)."""
    onset_solve: bool = True
    """Before the networks, solve the rigid motion and a sparse onset-relative expression change from the anchored
    flow (`server/onset_solve.py`); the DEM then starts from that instead of the raw landmark fit."""
    solve_rigid_steps: int = 150
    """Adam steps of the solve's first stage (root rotation and translation only, expression at the onset's)."""
    solve_steps: int = 250
    """Adam steps of the solve's second stage (rigid and expression change together, cosine-decayed step)."""
    solve_refit_steps: int = 150
    """Adam steps of the solve's third stage: the expression changes the sparse stage kept (over
    `solve_refit_min_mm` at a frame) fitted again to the data alone, undoing the L1 prior's shrinkage; 0 = none."""
    solve_refit_min_mm: float = 0.3
    """Smallest change (mm of vertex motion) of a component at a frame that the refit keeps and frees."""
    solve_passes: int = 2
    """Passes of the solve. Each pass after the first estimates the anchored flow again between crop a and crop t
    warped by the solved mesh's motion a -> t, and adds the two, so the estimator's smoothing acts only on what
    the mesh has not explained; then solves again on it. 1 = the flow straight from the crops only."""
    solve_lr_rigid: float = 0.3
    """Step of the rigid-only stage (units 0.01 rad and mm)."""
    solve_lr: float = 0.05
    """Initial step of the second stage (Δψ in mm of vertex motion, rigid as above)."""
    solve_max_vertices: int = 1000
    """The solve's flow term uses at most this many face vertices (evenly thinned by index; 0 = all): all 478 of
    the built-in head's are used, FLAME's are thinned (its solve ran 90 s per 100 frames with all)."""
    w_photo: float = 0.0
    """Weight of the onset-anchored photometric term (`server.raster`, grey levels 0-255) in the onset solve and
    the networks' loss; 0 (off) by default: on made clips it did not pay for its time (docs/model.md)."""
    photo_stride: int = 2
    """Pixel grid step of the photometric term's samples in the 224 crop."""
    photo_eps: float = 0.5
    """Charbonnier eps of the photometric term, grey levels."""
    w_sparse: float = 0.02
    """Weight of the asymmetric L1 of the onset-relative expression change (mm), in the solve and the refinement."""
    sparse_negative_factor: float = 5.0
    """How much more lowering a component below the onset's value costs than raising it (FACS intensities rise
    from a neutral onset; the onset need not be perfectly neutral, so lowering is allowed, at a price)."""
    jaw_deadband_rad: float = 0.01
    """The jaw follows the (smoothed) coarse fit only by how far it moves beyond this from the onset frame's jaw
    (soft threshold): the landmark fit's jaw drift (std ≈ 0.002 rad) moved the whole lower face on made clips, and
    freeing the jaw in the solve made it worse (docs/model.md). 0 keeps the smoothed coarse jaw."""
    joint_smooth_frames: float = 5.0
    """Gaussian σ (frames) of the temporal smoothing applied to the coarse fit's non-root joints (neck, jaw, eyes)
    before refinement: their frame-to-frame landmark jitter moves the whole lower face or the eyes in head
    coordinates, and per-frame flow is too noisy to re-estimate them (see docs/model.md). 0 keeps them as fitted."""
    w_expr: float = 1e-5
    """L2 of ψ."""
    w_temporal_expr: float = 1e-3
    """2nd-order temporal smoothness of ψ (mild: micro-expressions last 40-500 ms)."""
    w_temporal_disp: float = 1e-3
    """2nd-order temporal smoothness of ΔV (mm)."""
    lambda_geo: float = 1.0
    """λ_geo of eq. 23."""
    lambda_lap: float = 0.05
    """λ_lap of eq. 24 (ΔV in mm)."""
    lambda_normal: float = 1.0
    """λ_normal of eq. 24."""
    lambda_flow_guide: float = 0.5
    """λ_flow_guide of eq. 24 (ΔV in mm)."""
    lambda_flow: float = 0.1
    """λ_flow of eq. 27."""


ARCH_FIELDS = ("dem_base", "window", "overlap", "latent", "hidden", "motion_width", "flow_size", "deform_hidden",
               "geo_layers", "gcn_layers", "motion_channels", "landmark_k", "patch")


def config_from_dict(values: dict[str, Any], base: RefineConfig | None = None) -> RefineConfig:
    """A RefineConfig from a (checkpoint) dict; unknown keys are ignored, missing ones keep `base`'s values."""
    cfg = base or RefineConfig()
    known = {f.name for f in fields(RefineConfig)}
    return RefineConfig(**{**asdict(cfg), **{k: v for k, v in values.items() if k in known}})


@dataclass
class Refined:
    """Refinement result (numpy float32): expression (T, E), pose (T, J, 3), translation (T, 3), displacement
    (T, V, 3) rest-space offsets in metres (HeadModel.forward's `offsets`), report (timings, losses, settings)."""

    expression: np.ndarray
    pose: np.ndarray
    translation: np.ndarray
    displacement: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


class PreprocessedLike(Protocol):
    """What refinement reads from `server.preprocess.Preprocessed`."""

    crops: Any  # (T, 224, 224, 3) uint8
    flow: Any  # (T-1, 224, 224, 2) float16, crop px
    lmk68: Any  # (T, 68, 2) image px
    mp_landmarks: Any  # (T, 478, 3) image px
    crop_boxes: Any  # (T, 3)
    confidence: Any  # (T,)
    face_found: Any  # (T,) bool


class CoarseFitLike(Protocol):
    """What refinement reads from `server.fit.CoarseFit`."""

    shape: Any  # (S,)
    expression: Any  # (T, E)
    pose: Any  # (T, J, 3)
    translation: Any  # (T, 3)
    camera: Any  # (4,)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipError("The refinement was asked to run on CUDA, but no CUDA device is available.")
    return torch.device(name)


def topology_hash(model: HeadModel) -> str:
    """The head model's topology hash (from its data when it has one)."""
    data = getattr(model, "data", None)
    if data is not None and hasattr(data, "topology_hash"):
        return str(data.topology_hash())
    return str(model.topology_hash())  # type: ignore[operator]


def model_dims(model: HeadModel) -> dict[str, Any]:
    """The dims a checkpoint must match: n_expression, n_vertices, topology."""
    return {"n_expression": int(model.num_expression), "n_vertices": int(model.num_vertices),
            "topology": topology_hash(model)}


class MicroExpNets(nn.Module):
    """The trainable part: DynamicEncodedModule (eq. 4-6) and MeshDeformation (eq. 7-22)."""

    def __init__(self, n_expression: int, cfg: RefineConfig) -> None:
        super().__init__()
        w = cfg.motion_width
        self.dem = DynamicEncodedModule(
            n_expression, latent=cfg.latent, hidden=cfg.hidden, motion_channels=(max(w // 2, 1), w, w),
            flow_size=cfg.flow_size, window=cfg.window, overlap=cfg.overlap, solver=cfg.solver, adjoint=cfg.adjoint,
            base=cfg.dem_base,
        )
        self.deform = MeshDeformation(
            hidden=cfg.deform_hidden, geo_layers=cfg.geo_layers, gcn_layers=cfg.gcn_layers, motion_in_channels=4,
            motion_channels=cfg.motion_channels, landmark_k=cfg.landmark_k, lambda_attn=cfg.lambda_attn,
            patch=cfg.patch, use_motion_features=cfg.use_motion_features,
            use_landmark_features=cfg.use_landmark_features, use_geometry_features=cfg.use_geometry_features,
        )

    def parameter_groups(self, stage: str) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups optimised in a stage ('dem' or 'full')."""
        groups = {"dem": list(self.dem.parameters())}
        if stage == "full":
            groups["deformation"] = list(self.deform.parameters())
        return groups


class HeadTopology:
    """Per-head-model constants: mesh graph, face mask, landmark -> vertex assignment. Built once per model."""

    def __init__(self, model: HeadModel, shape: torch.Tensor, landmark_k: int) -> None:
        faces = model.faces.long()
        regions = model.regions.long()
        with torch.no_grad():
            s, e, p = model.zeros(1)
            rest = model(shape[None].to(s), e, p)
        self.graph = MeshGraph(faces, rest.vertices[0], regions).to(shape.device)
        self.faces = faces.to(shape.device)
        self.face_mask = (regions > 0).to(shape.device)
        rest_lmk = torch.cat([rest.landmarks68[0], rest.landmarks_mp[0]], dim=0)  # (L, 3)
        self.nearest = nearest_landmarks(rest.vertices[0], rest_lmk, landmark_k).to(shape.device)  # (V, k)
        self.mp_indices = model.mp_indices.long().to(shape.device)


class ClipTensors:
    """One clip's inputs as tensors on the device, plus derived flow maps. T frames."""

    def __init__(self, pre: PreprocessedLike, coarse: CoarseFitLike, device: torch.device, cfg: RefineConfig,
                 jaw: int | None = None, cancel: Cancel | None = None) -> None:
        """`jaw`: index of the jaw joint in the pose (gets `cfg.jaw_deadband_rad`), None when the model has none.
        `cancel()` is polled per pair of the anchored flow (~1.3 s per 100 frames); Cancelled when it turns true."""
        def t32(a: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)

        self.expression = t32(coarse.expression)  # (T, E)
        n = self.expression.shape[0]
        if n < 2:
            raise ClipError("The clip has fewer than 2 frames, so there is no motion to refine.")
        self.n_frames = n
        self.shape = t32(coarse.shape)  # (S,)
        pose = np.asarray(coarse.pose, dtype=np.float32)
        if cfg.joint_smooth_frames > 0 and n > 1:
            pose = pose.copy()
            pose[:, 1:] = gaussian_filter1d(pose[:, 1:], cfg.joint_smooth_frames, axis=0, mode="nearest")
        if cfg.jaw_deadband_rad > 0 and jaw is not None:
            pose = pose.copy()
            pose[:, jaw] = deadband_from_onset(pose[:, jaw], cfg.jaw_deadband_rad)
        self.pose = t32(pose)  # (T, J, 3): root as fitted, other joints temporally smoothed
        self.prior_smooth_frames = cfg.expr_prior_smooth_frames
        self.expression_prior = self.prior_for(t32(np.asarray(coarse.expression, dtype=np.float32)))  # (T, E)
        self.translation = t32(coarse.translation)  # (T, 3)
        self.camera = t32(coarse.camera)  # (4,)
        flow = np.asarray(pre.flow)
        if flow.shape[0] != n - 1 or flow.shape[1:] != (CROP, CROP, 2):
            raise ClipError(f"The preprocessed flow has shape {flow.shape}, which does not fit the coarse fit's "
                            f"{n} frames (expected ({n - 1}, {CROP}, {CROP}, 2)).")
        self.flow = t32(flow).permute(0, 3, 1, 2).contiguous()  # (T-1, 2, 224, 224)
        self.boxes = t32(pre.crop_boxes)  # (T, 3)
        self.lmk68 = t32(pre.lmk68)  # (T, 68, 2)
        self.mp_all = t32(np.asarray(pre.mp_landmarks)[..., :2])  # (T, 478, 2)
        found = np.asarray(pre.face_found, dtype=bool)
        self.confidence = t32(np.where(found, np.asarray(pre.confidence, dtype=np.float32), 0.0))  # (T,)
        self.iod = L.inter_ocular(self.lmk68)
        s = cfg.flow_size
        self.flow_small = F.adaptive_avg_pool2d(self.flow, s) * (s / CROP)  # (T-1, 2, s, s)
        cum = torch.cat([torch.zeros_like(self.flow[:1]), torch.cumsum(self.flow, 0)], 0)  # (T, 2, 224, 224)
        # The per-frame median flow is mostly rigid head motion, which the coarse fit already explains.
        cum = cum - cum.flatten(2).median(dim=2).values[..., None, None]
        adjacent = torch.cat([self.flow, self.flow[-1:]], 0)  # (T, 2, 224, 224): O_t, last frame reuses O_{T-2}
        self.motion_input = torch.cat(
            [F.adaptive_avg_pool2d(adjacent, s) * (s / CROP), F.adaptive_avg_pool2d(cum, s) * (s / CROP)], 1
        )  # (T, 4, s, s)
        self._anchored_pairs(pre, cfg, cancel)
        self.gray: torch.Tensor | None = None  # (T, 224, 224) blurred grey crops, for the photometric term
        self.photometry: AnchoredPhotometry | None = None  # its samples, set by prepare_clip when w_photo > 0
        crops = np.asarray(pre.crops) if cfg.w_photo > 0 else None
        if crops is not None and crops.shape == (n, CROP, CROP, 3) and int(crops.max()) > int(crops.min()):
            self.gray = torch.as_tensor(gray_crops(crops), device=device)  # (none without texture: toy clips)
        source = cum if cfg.attention_flow == "onset" else adjacent
        magnitude = torch.linalg.vector_norm(source, dim=1, keepdim=True)  # (T, 1, 224, 224), eq. 18 input
        # Pooled once: eq. 18's patch mean at every pixel, so a step only gathers 8 values per frame.
        self.intensity = F.avg_pool2d(magnitude, cfg.patch, stride=1, padding=cfg.patch // 2, count_include_pad=False)


    def _anchored_pairs(self, pre: PreprocessedLike, cfg: RefineConfig, cancel: Cancel | None = None) -> None:
        """Anchored-flow pairs (anchor a, frame t, seam weight) and the flow a -> t of each, computed once.

        Sets pair_anchor, pair_frame (P,) long, pair_weight (P,), anchored (P, 2, h, h) float16 (224-crop px)."""
        n = self.n_frames
        if cfg.anchor_span == "clip":
            spans = [(0, n)]
        else:
            spans = [(s, min(s + cfg.window, n)) for s in window_starts(n, cfg.window, cfg.overlap)]
        # Seam weights as the DEM blends its windows (in order, each new window cross-faded linearly over its
        # overlap with the previous one and replacing everything after it): weights[w, t], summing to 1 per frame.
        weights = np.zeros((len(spans), n))
        weights[0, spans[0][0]:spans[0][1]] = 1.0
        for w in range(1, len(spans)):
            s, e = spans[w]
            n_ov = max(spans[w - 1][1] - s, 0)
            ramp = np.arange(n_ov) / max(n_ov, 1)
            weights[:w, s:s + n_ov] *= 1.0 - ramp
            weights[:w, s + n_ov:e] = 0.0
            weights[w, s:s + n_ov] = ramp
            weights[w, s + n_ov:e] = 1.0
        pairs = [(s, t, float(weights[w, t])) for w, (s, e) in enumerate(spans) for t in range(s + 1, e)
                 if weights[w, t] > 0]
        if cfg.w_anchor_flow <= 0 and not cfg.onset_solve:
            pairs = []  # neither the term nor the solve uses it: skip the flow computation
        size = cfg.anchor_flow_size
        maps = torch.zeros(len(pairs), 2, size, size, dtype=torch.float16)
        self.anchor_grays: np.ndarray | None = None  # (T, 224, 224) uint8, when the flow comes from the crops
        self.anchor_estimator: FlowEstimator | None = None
        cum = None
        crops = np.asarray(pre.crops) if cfg.anchor_flow == "crops" and pairs else None
        if crops is not None and crops.shape != (n, CROP, CROP, 3):
            raise ClipError(f"The preprocessed crops have shape {crops.shape}, which does not fit the coarse fit's "
                            f"{n} frames (expected ({n}, {CROP}, {CROP}, 3)).")
        # Crops without any texture (e.g. the toy clip, whose motion exists only as flow) give no flow to measure.
        if pairs and (crops is None or int(crops.max()) == int(crops.min())):
            cum = torch.cat([torch.zeros_like(self.flow[:1]), torch.cumsum(self.flow, 0)], 0)
        elif pairs:
            assert crops is not None
            estimator = self.anchor_estimator = FlowEstimator(cfg.anchor_flow_estimator)
            # Frames far apart differ in exposure (flicker) and sensor noise more than adjacent ones: a light blur
            # and matching each frame's brightness to its anchor's lowered the truth mesh's anchored residual from
            # 0.088 to 0.077 px while a motionless mesh's stayed at 0.10 (docs/model.md).
            grays = gray_crops(crops, 1.0, np.uint8)
            self.anchor_grays = grays
        if cum is not None:
            for k, (a, t, _) in enumerate(pairs):
                maps[k] = _pooled((cum[t] - cum[a]).cpu(), size).to(torch.float16)
        elif pairs:
            flows = parallel_map(lambda pair: estimator(grays[pair[0]], _match_brightness(grays[pair[1]],
                                                                                        grays[pair[0]])), pairs,
                                 cancel)
            for k, flow in enumerate(flows):
                maps[k] = _pooled(torch.from_numpy(flow).permute(2, 0, 1), size).to(torch.float16)
        dev = self.expression.device
        self.pair_anchor = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=dev)
        self.pair_frame = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=dev)
        self.pair_weight = torch.tensor([p[2] for p in pairs], dtype=torch.float32, device=dev)
        self.anchored = maps.to(dev)

    def warp_anchored(self, crop_px: torch.Tensor, depth: torch.Tensor, faces: np.ndarray,
                      cancel: Cancel | None = None) -> bool:
        """Estimate the anchored flow again, starting from a mesh's motion (the onset solve's passes).

        crop_px (T, V, 2): the mesh of every frame in its own crop's pixels; depth (T, V): distance from the camera.
        For each pair a -> t, the mesh's motion m (crop px, at each pixel of crop a: the visible triangle's
        barycentric blend of its vertices' motion; nearest covered pixel's elsewhere) warps crop t onto crop a's
        grid, the estimator reads the remainder r between crop a and the warped crop, and the pair's flow becomes
        m + r. Returns False (and changes nothing) when the flow does not come from the crops (texture-less or
        `anchor_flow="accumulated"`). Raises Cancelled when `cancel()` turns true (polled per pair)."""
        if self.anchor_grays is None or self.anchor_estimator is None or self.pair_anchor.numel() == 0:
            return False
        from scipy.ndimage import distance_transform_edt

        from server.raster import rasterise

        grays, size, estimator = self.anchor_grays, self.anchored.shape[-1], self.anchor_estimator
        px, dist = crop_px.detach().cpu().numpy(), depth.detach().cpu().numpy()
        lookup: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per anchor: corners (H, W, 3), bary (H, W, 3)
        pairs = list(zip(self.pair_anchor.tolist(), self.pair_frame.tolist()))
        for a in sorted({a for a, _ in pairs}):
            tri, bary = rasterise(px[a] - 0.5, dist[a], faces, CROP, CROP)  # pixel centres, as `sample_flow`
            if not (tri >= 0).any():
                return False
            _, (iy, ix) = distance_transform_edt(tri < 0, return_indices=True)
            lookup[a] = (faces[tri[iy, ix]], bary[iy, ix])

        def pair_flow(pair: tuple[int, int]) -> np.ndarray:
            a, t = pair
            corners, weights = lookup[a]
            motion = (weights[..., None] * (px[t] - px[a])[corners]).sum(-2)  # (H, W, 2)
            return warped_flow(estimator, grays[a], grays[t], motion)

        for k, flow in enumerate(parallel_map(pair_flow, pairs, cancel)):
            self.anchored[k] = _pooled(torch.from_numpy(flow).permute(2, 0, 1), size).to(self.anchored)
        return True

    def prior_for(self, expression: torch.Tensor) -> torch.Tensor:
        """The expression prior's target for a per-frame estimate (T, E): itself, or smoothed over time with a
        Gaussian of `expr_prior_smooth_frames` frames."""
        if self.prior_smooth_frames <= 0 or expression.shape[0] < 2:
            return expression
        smoothed = gaussian_filter1d(expression.detach().cpu().numpy(), self.prior_smooth_frames, axis=0,
                                     mode="nearest")
        return torch.as_tensor(smoothed, dtype=expression.dtype, device=expression.device)

    def use_solution(self, expression: torch.Tensor, pose: torch.Tensor, translation: torch.Tensor) -> None:
        """Replace the coarse fit's per-frame estimate by a solved one (`server.onset_solve`): the DEM's base, the
        expression prior (smoothed as the coarse one was) and the pose the rigid corrections start from."""
        self.expression = expression
        self.expression_prior = self.prior_for(expression)
        self.pose = pose
        self.translation = translation


def deadband_from_onset(values: np.ndarray, band: float) -> np.ndarray:
    """values (T, ...) with each frame's change from frame 0 soft-thresholded by `band`: changes within ±band
    vanish, larger ones keep their excess (so a real jaw drop stays continuous)."""
    change = values - values[:1]
    return values[:1] + np.sign(change) * np.maximum(np.abs(change) - band, 0.0)


def joint_index(model: HeadModel, name: str) -> int | None:
    """Index of a named joint of the head model (None when its data has no joint of that name)."""
    names = model.data.joint_names
    return names.index(name) if name in names else None


def warped_flow(estimator: FlowEstimator, prev: np.ndarray, next_: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Flow prev -> next_ (H, W, 2) read as a known motion plus what the estimator finds after it: next_ is warped
    by `motion` (H, W, 2, on prev's grid) onto prev, the estimator reads the remainder, and the two are added.
    An estimator that smooths (Farnebäck's reads ~86 % of moving skin's motion) then loses a share of the
    remainder only. Grey uint8 images; next_'s brightness is matched to prev's after warping."""
    import cv2

    h, w = prev.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    m = np.asarray(motion, np.float32)
    warped = cv2.remap(next_, xs + m[..., 0], ys + m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return m + estimator(prev, _match_brightness(warped, prev))


def parallel_map(fn: Callable[[Any], np.ndarray], items: list[Any], cancel: Cancel | None = None,
                 ) -> list[np.ndarray]:
    """fn over items on up to 4 threads (OpenCV's flow releases the GIL: a pair took 21 ms alone and 11 ms on
    each of 2 threads on the 2-core CI machine; one thread per pair is faster than OpenCV's own threading).
    `cancel()` is polled before each item; when it turns true the rest is skipped and Cancelled raised."""

    def run(item: Any) -> np.ndarray:
        if cancel is not None and cancel():
            raise Cancelled("The refinement was cancelled.")
        return fn(item)

    workers = max(1, min(4, os.cpu_count() or 1))
    if workers == 1 or len(items) < 2:
        return [run(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, items))


def _pooled(flow: torch.Tensor, size: int) -> torch.Tensor:
    """(2, H, W) flow in crop px -> (2, size, size) float32, area-averaged (values stay in crop px)."""
    f = flow.float()
    return F.adaptive_avg_pool2d(f[None], size)[0] if size != f.shape[-1] else f


def _match_brightness(gray: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """gray (H, W) uint8 with its mean and contrast matched to reference's (a global gain and offset)."""
    g, r = gray.astype(np.float32), reference.astype(np.float32)
    out = (g - g.mean()) / (g.std() + 1e-6) * r.std() + r.mean()
    return np.clip(out, 0, 255).astype(np.uint8)


class ClipObjective:
    """Evaluates the networks and the losses on a run of frames of one clip; shared by `refine` and `train`."""

    def __init__(self, model: HeadModel, topo: HeadTopology, clip: ClipTensors, nets: MicroExpNets,
                 cfg: RefineConfig, refine_pose: bool = False) -> None:
        self.model, self.topo, self.clip, self.nets, self.cfg = model, topo, clip, nets, cfg
        n, joints = clip.pose.shape[:2]
        self.joints = joints
        # Per-frame corrections of the coarse root rotation (centiradians, row 0) and translation (mm, row 1):
        # the landmark fit's frame-to-frame rigid jitter is far larger than a micro-expression's image motion,
        # and the flow measures it directly. Only the rigid part: a neck rotation moves the face almost like the
        # root's, but it would show as (spurious) motion in head coordinates. Optimised only in per-clip mode
        # (`refine_pose`). An embedding with
        # sparse gradients, so a lazy optimizer (SparseAdam) moves only the frames a step saw: dense Adam's
        # momentum would keep pushing the other frames with no data behind it.
        self.rigid = nn.Embedding(n, 6, sparse=True).to(clip.pose.device)
        nn.init.zeros_(self.rigid.weight)
        self.rigid.weight.requires_grad_(refine_pose)
        self.mm_per_unit = millimetres_per_unit(model).to(clip.expression.device)  # (E,) scale of the sparse prior

    def corrections(self, frames: torch.Tensor) -> torch.Tensor:
        """Root-rotation (0.01 rad) and translation (mm) corrections (B, 2, 3) of `frames`."""
        return self.rigid(frames).reshape(frames.shape[0], 2, 3)

    def pose(self, frames: torch.Tensor) -> torch.Tensor:
        """Refined pose (B, J, 3) of `frames` (root corrected, other joints as fitted)."""
        pose = self.clip.pose[frames]
        return torch.cat([pose[:, :1] + self.corrections(frames)[:, :1] * 0.01, pose[:, 1:]], dim=1)

    def translation(self, frames: torch.Tensor) -> torch.Tensor:
        """Refined translation (B, 3) of `frames`, metres."""
        return self.clip.translation[frames] + self.corrections(frames)[:, -1] * 1e-3

    def expressions(self, start: int, stop: int) -> torch.Tensor:
        """ψ (stop-start, E) from the DEM, over the whole clip or the window alone (cfg.dem_scope)."""
        c = self.clip
        if self.cfg.dem_scope == "clip":
            return self.nets.dem(c.flow_small, c.expression)[start:stop]
        return self.nets.dem(c.flow_small[start:stop - 1], c.expression[start:stop])

    def deform(self, frames: torch.Tensor, psi: torch.Tensor, init: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔV (B, V, 3) and per-vertex attention (B, V) for `frames` (B,) whose initial heads are `init`."""
        c, cfg = self.clip, self.cfg
        v_init = init.vertices.detach()
        root, trans = self.pose(frames)[:, 0].detach(), self.translation(frames).detach()
        world = to_world(v_init, root, trans)
        crop_px = L.image_to_crop(project(world, c.camera), c.boxes[frames])  # (B, V, 2)
        centers = region_centroids(crop_px, self.topo.graph.regions)  # (B, 8, 2), eq. 12
        valid = torch.isfinite(centers).all(-1)
        intensity = patch_average(c.intensity[frames], centers, 1)[..., 0]  # (B, 8), eq. 18 (pre-pooled)
        attention = motion_attention(intensity, valid)  # eq. 19-20
        # Eq. 10: lift the observed landmarks to the depth of their embedded points; the offset (head coords, mm)
        # from the embedded point to the lifted landmark is the feature of its nearest vertices.
        embedded = torch.cat([init.landmarks68, init.landmarks_mp], 1).detach()  # (B, L, 3) head coords
        observed = torch.cat([c.lmk68[frames], c.mp_all[frames][:, self.topo.mp_indices]], 1)  # (B, L, 2)
        lifted = lift_landmarks(observed, to_world(embedded, root, trans), c.camera)
        lifted_head = (lifted - trans[:, None]) @ rotation_matrix(root)  # inverse of to_world
        offsets = ((lifted_head - embedded) * L.MM).clamp(-20.0, 20.0) * c.confidence[frames, None, None]
        lmk_feat = offsets[:, self.topo.nearest].flatten(2)  # (B, V, 3k)
        scale = cfg.flow_size / CROP
        return self.nets.deform(self.topo.graph, v_init, c.motion_input[frames], centers * scale, attention, lmk_feat)

    def losses(self, start: int, stop: int, stage: str) -> dict[str, torch.Tensor]:
        """Weighted loss terms (and 'total') on frames start..stop-1 (at least 2 frames)."""
        c, cfg, topo = self.clip, self.cfg, self.topo
        dev = c.expression.device
        run = torch.arange(start, stop, device=dev)
        # Anchored pairs whose frame is in the run; their anchors may precede it (clip scope), so the heads are
        # evaluated on the run plus those anchors. In window scope only anchors inside the run are usable.
        sel = (c.pair_frame >= start) & (c.pair_frame < stop)
        if cfg.dem_scope != "clip":
            sel &= c.pair_anchor >= start
        if cfg.w_anchor_flow <= 0 and c.photometry is None:
            sel &= False  # no anchored term reads the pairs
        frames = torch.unique(torch.cat([run, c.pair_anchor[sel]]))  # sorted
        at = torch.searchsorted(frames, run)  # run's rows in `frames`
        batch = frames.shape[0]
        psi_clip = None
        if cfg.dem_scope == "clip":
            psi_clip = self.nets.dem(c.flow_small, c.expression)
            psi_all = psi_clip[frames]
        else:
            psi_all = self.expressions(start, stop)
        shape = c.shape[None].expand(batch, -1)
        pose_all, trans_all = self.pose(frames), self.translation(frames)
        init_all = self.model(shape, psi_all, pose_all)
        terms: dict[str, torch.Tensor] = {}
        delta = None
        if stage == "full":
            delta_all, attention_all = self.deform(frames, psi_all, init_all)
            out_all = self.model(shape, psi_all, pose_all, delta_all)
            delta, attention = delta_all[at], attention_all[at]
        else:
            out_all = init_all
        world_all = to_world(out_all.vertices, pose_all[:, 0], trans_all)
        psi, pose, trans = psi_all[at], pose_all[at], trans_all[at]
        world = world_all[at]
        vertex_mask = topo.face_mask if cfg.flow_face_only else None
        pair_w = c.confidence[run[:-1]] * c.confidence[run[1:]]
        terms["flow"] = cfg.w_flow * L.flow_consistency_loss(
            world[:-1], world[1:], c.flow[run[:-1]], c.boxes[run[:-1]], c.boxes[run[1:]], c.camera,
            topo.faces, pair_w, vertex_mask, cfg.flow_eps,
        )
        if bool(sel.any()):
            pa, pt = c.pair_anchor[sel], c.pair_frame[sel]
            ia, it = torch.searchsorted(frames, pa), torch.searchsorted(frames, pt)
            weight = c.pair_weight[sel] * c.confidence[pa] * c.confidence[pt]
            if cfg.w_anchor_flow > 0:
                terms["anchor_flow"] = cfg.w_anchor_flow * L.anchored_flow_loss(
                    world_all[ia], world_all[it], c.anchored[sel], c.boxes[pa], c.boxes[pt], c.camera, topo.faces,
                    weight, vertex_mask, cfg.flow_eps, CROP,
                )
            if c.photometry is not None:
                px = L.image_to_crop(project(world_all[it], c.camera), c.boxes[pt])
                terms["photometric"] = cfg.w_photo * c.photometry.loss(px, weight, cfg.photo_eps,
                                                                       torch.nonzero(sel).flatten())
        frames = run
        lmk_world = to_world(torch.cat([out_all.landmarks68[at], out_all.landmarks_mp[at]], 1), pose[:, 0], trans)
        observed = torch.cat([c.lmk68[frames], c.mp_all[frames][:, topo.mp_indices]], 1)
        terms["landmark"] = cfg.w_landmark * L.landmark_loss(project(lmk_world, c.camera), observed, c.iod[frames],
                                                             c.confidence[frames])
        # The priors on ψ over the whole clip (expression_priors_on): the DEM's shared weights move every frame.
        reg_psi, reg_prior = psi, c.expression_prior[frames]
        if psi_clip is not None and cfg.expression_priors_on == "clip":
            reg_psi, reg_prior = psi_clip, c.expression_prior
        terms["expr_coarse"] = cfg.w_expr_coarse * (reg_psi - reg_prior).pow(2).sum(-1).mean()
        terms["expr"] = cfg.w_expr * reg_psi.pow(2).sum(-1).mean()
        if cfg.w_sparse > 0:
            change = (reg_psi - c.expression[:1]) * self.mm_per_unit  # onset-relative (frame 0), mm of vertex motion
            terms["sparse"] = cfg.w_sparse * sparse_prior(change, cfg.sparse_negative_factor)
        terms["temporal_expr"] = cfg.w_temporal_expr * L.second_difference(reg_psi)
        if self.rigid.weight.requires_grad:
            rigid = self.corrections(frames)
            terms["pose_prior"] = cfg.w_pose_coarse * rigid.pow(2).sum((1, 2)).mean()
            terms["temporal_pose"] = cfg.w_temporal_pose * L.second_difference(rigid)
        if delta is not None:
            terms["temporal_disp"] = cfg.w_temporal_disp * L.second_difference(delta * L.MM)
            if cfg.use_geometric_losses:
                geo = (cfg.lambda_lap * L.laplacian_loss(delta, topo.graph.laplacian)
                       + cfg.lambda_normal * L.normal_consistency_loss(out_all.vertices[at], init_all.vertices[at],
                                                                           topo.faces)
                       + cfg.lambda_flow_guide * L.flow_guide_loss(delta, attention, cfg.lambda_flow))  # eq. 24
                terms["geo"] = cfg.lambda_geo * geo  # eq. 23
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms

    @torch.no_grad()
    def infer(self, stage: str, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-clip result: ψ (T, E) and ΔV (T, V, 3) (zeros for stage 'dem'); pose via `pose`."""
        c = self.clip
        psi = self.nets.dem(c.flow_small, c.expression)
        nv = int(self.model.num_vertices)
        disp = torch.zeros(c.n_frames, nv, 3, device=psi.device)
        if stage == "full":
            for s in range(0, c.n_frames, chunk):
                frames = torch.arange(s, min(s + chunk, c.n_frames), device=psi.device)
                shape = c.shape[None].expand(frames.shape[0], -1)
                init = self.model(shape, psi[frames], self.pose(frames))
                disp[frames] = self.deform(frames, psi[frames], init)[0]
        return psi, disp

    @torch.no_grad()
    def evaluate(self, stage: str) -> dict[str, float]:
        """Loss terms over the whole clip in consecutive runs of `batch_frames` (a fixed, noise-free measure)."""
        sums: dict[str, float] = {}
        count = 0
        step = max(self.cfg.batch_frames, 2)
        for s in range(0, self.clip.n_frames - 1, step - 1):
            e = min(s + step, self.clip.n_frames)
            if e - s < 2:
                continue
            for k, v in self.losses(s, e, stage).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
        return {k: v / max(count, 1) for k, v in sums.items()}


def _offset_tick(tick: Callable[[int], None], offset: int, step: int) -> None:
    tick(offset + step)


def solve_pass_config(cfg: RefineConfig, k: int) -> RefineConfig:
    """The settings of the solve's pass k. After the first pass the rigid pose is solved already: the later ones
    skip the rigid-only stage (measured on the made clips: the same result, 4 s sooner)."""
    return cfg if k == 0 else replace(cfg, solve_rigid_steps=0)


def solve_progress_steps(cfg: RefineConfig) -> int:
    """Steps of the onset solve over all its passes (0 when off): the first part of `refine`'s progress."""
    if not cfg.onset_solve:
        return 0
    return sum(solve_step_count(solve_pass_config(cfg, k)) for k in range(max(cfg.solve_passes, 1)))


def prepare_clip(model: HeadModel, pre: PreprocessedLike, coarse: CoarseFitLike, cfg: RefineConfig,
                 device: torch.device, tick: Callable[[int], None] | None = None, cancel: Cancel | None = None,
                 ) -> tuple[ClipTensors, HeadTopology, dict[str, Any] | None]:
    """One clip's tensors and topology, with the onset-relative motion solve applied when `cfg.onset_solve`
    (then also its report; None otherwise). Shared by `refine` and `train`."""
    clip = ClipTensors(pre, coarse, device, cfg, jaw=joint_index(model, "jaw"), cancel=cancel)
    if clip.expression.shape[1] != model.num_expression:
        raise ClipError(f"The coarse fit has {clip.expression.shape[1]} expression components but the head model has "
                        f"{model.num_expression}.")
    topo = HeadTopology(model, clip.shape, cfg.landmark_k)
    if cfg.w_photo > 0 and clip.gray is not None and clip.pair_anchor.numel() > 0:
        clip.photometry = anchored_photometry(model, topo, clip, cfg.photo_stride)
    solve_report: dict[str, Any] | None = None
    if cfg.onset_solve:
        offset = 0
        for k in range(max(cfg.solve_passes, 1)):
            pass_cfg = solve_pass_config(cfg, k)
            if k > 0:
                t0 = time.perf_counter()
                with torch.no_grad():
                    psi, pose, trans = clip.expression, clip.pose, clip.translation
                    world = to_world(model(clip.shape[None].expand(clip.n_frames, -1), psi, pose).vertices,
                                     pose[:, 0], trans)
                    crop_px = L.image_to_crop(project(world, clip.camera), clip.boxes)
                if not clip.warp_anchored(crop_px, -world[..., 2], topo.faces.cpu().numpy(), cancel):
                    if tick is not None:  # no crops to warp: another pass would see the same flow
                        tick(solve_progress_steps(cfg))
                    break
                reflow_s = time.perf_counter() - t0
            solved = solve_onset_motion(model, topo, clip, pass_cfg, cancel=cancel,
                                        tick=None if tick is None else partial(_offset_tick, tick, offset))
            clip.use_solution(solved.expression, solved.pose, solved.translation)
            offset += solve_step_count(pass_cfg)
            passes = (solve_report or {}).get("passes", []) + [solved.report]
            if k > 0:
                passes[-1]["reflow_seconds"] = reflow_s
            solve_report = {**solved.report, "passes": passes,
                            "seconds": sum(p["seconds"] + p.get("reflow_seconds", 0.0) for p in passes)}
    return clip, topo, solve_report


def build_nets(model: HeadModel, cfg: RefineConfig, checkpoint: str | Path | None, device: torch.device
               ) -> tuple[MicroExpNets, RefineConfig, dict[str, Any] | None]:
    """Networks for this head model, from a checkpoint (whose architecture fields win) or freshly initialised."""
    ckpt = None
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint, model_dims(model))
        cfg = checkpoint_config(ckpt, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        nets = MicroExpNets(int(model.num_expression), cfg)
    if ckpt is not None and checkpoint is not None:
        load_weights(nets, ckpt, checkpoint)
    return nets.to(device), cfg, ckpt


def checkpoint_config(ckpt: dict[str, Any], cfg: RefineConfig) -> RefineConfig:
    """`cfg` with the checkpoint's architecture fields."""
    saved = ckpt.get("config", {})
    return config_from_dict({k: saved[k] for k in ARCH_FIELDS if k in saved}, cfg)


def check_checkpoint_fits(ckpt: dict[str, Any], checkpoint: str | Path, cfg: RefineConfig) -> None:
    """Build the networks `ckpt` describes (its architecture, its head model's expression count) and load its
    weights, so that weights that do not fit fail before preprocessing rather than after it (milliseconds: the
    networks are small). The global RNG is left untouched."""
    n_expression = ckpt.get("dims", {}).get("n_expression")
    if not isinstance(n_expression, int):  # the head-model check says what is wrong once the head model is known
        return
    with torch.random.fork_rng(devices=[]):
        nets = MicroExpNets(n_expression, checkpoint_config(ckpt, cfg))
    load_weights(nets, ckpt, checkpoint)


def refine(
    model: HeadModel, pre: PreprocessedLike, coarse: CoarseFitLike, stages: str = "dem",
    config: RefineConfig | None = None, progress: Progress | None = None, cancel: Cancel | None = None,
    checkpoint: str | Path | None = None,
) -> Refined:
    """Refine a coarse fit: 'solve' stops after the onset-relative motion solve (no networks: expression, root pose
    and translation from the anchored flow); 'dem' re-estimates expressions (eq. 4-6); 'full' also adds rest-space
    vertex offsets (eq. 7-22), both networks optimised jointly on the clip's self-supervised losses.

    Per-clip mode: networks start at the identity (zero last layers: output = the per-frame estimate, the onset
    solve's by default) or at `checkpoint`, and Adam runs on random runs of `batch_frames` (dem) /
    `full_batch_frames` (full) frames until `iterations`, `time_budget_s` or a loss plateau. 'solve' ignores
    `checkpoint`.
    Raises Cancelled when `cancel()` turns true, ClipError / CheckpointError (one sentence) on bad input.
    """
    cfg = config or RefineConfig()
    if resolve_device(cfg.device).type != "cpu":
        return _refine(model, pre, coarse, stages, cfg, progress, cancel, checkpoint)
    # As in the coarse fit: the per-step tensors are small, so one CPU thread is as fast, and OpenMP workers
    # spinning against each other on a busy 2-core machine made a bench run 3-4x slower (half the time in sys).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _refine(model, pre, coarse, stages, cfg, progress, cancel, checkpoint)
    finally:
        torch.set_num_threads(threads)


def _refine(model: HeadModel, pre: PreprocessedLike, coarse: CoarseFitLike, stages: str, cfg: RefineConfig,
            progress: Progress | None, cancel: Cancel | None, checkpoint: str | Path | None) -> Refined:
    t_start = time.perf_counter()
    if stages not in ("solve", "dem", "full"):
        raise ValueError(f"Unknown refinement stages '{stages}': use 'solve', 'dem' or 'full'.")
    if stages == "solve":  # the DEM at zero iterations returns its base exactly: the solve's result
        cfg = replace(cfg, iterations=0, onset_solve=True)
        checkpoint = None  # trained networks would move that base: 'solve' uses none (reconstruct warns)
    device = resolve_device(cfg.device)
    nets, cfg, ckpt = build_nets(model, cfg, checkpoint, device)
    model = model.to(device)
    solve_total = solve_progress_steps(cfg)
    progress_total = solve_total + cfg.iterations

    def tick(step: int) -> None:
        if progress is not None:
            progress("refine", step, progress_total)

    clip, topo, solve_report = prepare_clip(model, pre, coarse, cfg, device, tick, cancel)
    objective = ClipObjective(model, topo, clip, nets, cfg, refine_pose=cfg.refine_pose)
    params = [p for group in nets.parameter_groups(stages).values() for p in group]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(params, lr=cfg.lr)]
    if cfg.refine_pose:
        optimizers.append(torch.optim.SparseAdam([objective.rigid.weight], lr=cfg.lr_rigid))
    gen = torch.Generator().manual_seed(cfg.seed)
    t_setup = time.perf_counter()
    initial = objective.evaluate(stages)

    n_batch = min(max(cfg.full_batch_frames if stages == "full" else cfg.batch_frames, 2), clip.n_frames)
    best, smoothed, since_best = math.inf, None, 0
    stopped_by, steps = "iterations", 0  # steps: how many optimiser steps ran
    t_loop = time.perf_counter()
    schedule = cfg.iterations  # the cosine schedule's length: the step count, unless the pace says the cap binds
    t_pace = t_loop
    for it in range(1, cfg.iterations + 1):
        if cancel is not None and cancel():
            raise Cancelled("The refinement was cancelled.")
        if it == 2:
            t_pace = time.perf_counter()  # after the first step, which also warms up
        elif it == PACE_STEPS + 2:
            # Fixed once from the pace of steps 2 to PACE_STEPS + 1, so where the cap does not bind the schedule is
            # the step count exactly (while the schedule's progress was the larger of the steps' and the clock's,
            # which the clock was at the first step, a rerun of a bench clip came out 0.006 apart).
            pace = (time.perf_counter() - t_pace) / PACE_STEPS
            fits = it - 1 + int((cfg.time_budget_s - (time.perf_counter() - t_loop)) / max(pace, 1e-9))
            schedule = min(cfg.iterations, max(fits, it))
        if it > schedule:
            stopped_by = "time"
            break
        start = int(torch.randint(0, clip.n_frames - n_batch + 1, (1,), generator=gen))
        if cfg.lr_schedule == "cosine":
            for group in optimizers[0].param_groups:
                group["lr"] = cosine_lr(cfg.lr, (it - 1) / max(schedule, 1))
        terms = objective.losses(start, start + n_batch, stages)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        for opt in optimizers:
            opt.step()
        steps = it
        value = float(terms["total"].detach())
        if not math.isfinite(value):
            raise ClipError("The refinement diverged (non-finite loss); the clip's flow or landmarks are unusable.")
        # Steps see different frames, so single losses are noisy: watch a slow average, and only after a warm-up
        # as long as the patience (before that the average still remembers its first, arbitrary windows).
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        if it <= cfg.patience or smoothed < best * (1.0 - cfg.min_rel_improvement):
            best, since_best = smoothed, 0
        else:
            since_best += 1
        if progress is not None:
            progress("refine", solve_total + it, progress_total)
        if since_best >= cfg.patience:
            stopped_by = "plateau"
            break
        if time.perf_counter() - t_loop > cfg.time_budget_s:
            stopped_by = "time"
            break
    t_opt = time.perf_counter()
    nets.eval()
    final = objective.evaluate(stages) if steps > 0 else dict(initial)  # nothing moved: the same whole-clip pass
    psi, disp = objective.infer(stages)
    all_frames = torch.arange(clip.n_frames, device=device)
    pose = objective.pose(all_frames).detach()
    translation = objective.translation(all_frames).detach()
    t_end = time.perf_counter()
    report = {
        "stages": stages,
        "device": str(device),
        "iterations": steps,
        "stopped_by": stopped_by,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "checkpoint_step": int(ckpt["step"]) if ckpt is not None and "step" in ckpt else None,
        "loss_initial": initial,
        "loss_final": final,
        "max_displacement_mm": float(disp.abs().max() * L.MM),
        "onset_solve": solve_report,
        "mean_expression_change": float((psi - clip.expression).abs().mean()),
        "mean_pose_change_deg": float((pose - clip.pose).abs().mean() * 180.0 / math.pi),
        "mean_translation_change_mm": float((translation - clip.translation).abs().mean() * L.MM),
        "timings": {"setup_s": t_setup - t_start, "optimise_s": t_opt - t_setup,
                    "seconds_per_iteration": (t_opt - t_loop) / max(steps, 1), "inference_s": t_end - t_opt,
                    "total_s": t_end - t_start},
        "config": asdict(cfg),
    }
    return Refined(
        expression=psi.cpu().numpy().astype(np.float32),
        pose=pose.cpu().numpy().astype(np.float32),
        translation=translation.cpu().numpy().astype(np.float32),
        displacement=disp.cpu().numpy().astype(np.float32),
        report=report,
    )
