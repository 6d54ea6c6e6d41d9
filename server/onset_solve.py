"""Onset-relative motion solve: the rigid head motion and a sparse onset-relative expression change of every frame,
fitted to the flow from each window's anchor (onset) frame. Runs before the networks (`server.refine`).

Why it exists (measured in docs/model.md): on made clips the coarse landmark fit's frame-to-frame noise is about
four times the scripted micro-motion, the adjacent-frame flow (≈0.04 px/frame of signal) drowns in DIS noise,
and the anchored flow a → t carries the onset-relative motion (0.3-3 px) but only once the rigid pose is right.
So the solve (1) fits the per-frame root rotation and translation to the anchored flow with the expression held
at the onset's (the Charbonnier penalty treats the regions that move as outliers), then (2) fits
ψ_t = ψ_onset + Δψ_t with an asymmetric L1 prior on Δψ in millimetres of vertex motion: a micro-expression is a
few action units at a time, mostly raised from a neutral onset, so a component moves only when the flow asks for
it, and lowering one below the onset costs `sparse_negative_factor` times more. The Adam step size decays to
zero over stage 2 (cosine), so components without support settle at zero instead of dithering at the step size.
(3) An L1 prior selects the components well but shrinks the ones it keeps: on the made clips the solved motion
was 0.7-0.8 of the true motion's size (a least-squares slope of 1.3-1.8 from the solved to the true
onset-relative displacement). So the changes the sparse stage kept (over `solve_refit_min_mm` at a frame) are
fitted again to the data alone, the others frozen where the sparse stage left them: a "relaxed lasso"
refit.

The solve can run in passes (`solve_passes`, `server.refine.prepare_clip`): after a pass, the anchored flow is
estimated again on crop t warped by the solved mesh's motion a -> t, so the estimator sees only what the mesh
has not explained (Farnebäck's flow reads about 86 % of moving skin's motion; of a small remainder it loses a
share of the remainder only), and the solve runs again on that flow.

The result is the per-frame initial estimate the dynamic-encoded module starts from (its `dem_base='coarse'`
residual form), in place of the raw landmark fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from server import losses as L
from server.errors import Cancelled, ClipError
from server.geometry import project, to_world

if TYPE_CHECKING:
    from server.headmodel import HeadModel
    from server.refine import ClipTensors, HeadTopology, RefineConfig

Tick = Callable[[int], None]
Cancel = Callable[[], bool]


@dataclass
class OnsetMotion:
    """Solved per-frame expression (T, E), pose (T, J, 3) (root solved, other joints as given), translation (T, 3),
    all torch on the clip's device, and a report (steps, losses, active fraction, seconds)."""

    expression: torch.Tensor
    pose: torch.Tensor
    translation: torch.Tensor
    report: dict[str, Any] = field(default_factory=dict)


def millimetres_per_unit(model: HeadModel) -> torch.Tensor:
    """Largest vertex displacement (mm) of one unit of each expression component (E,): the sparsity prior's scale,
    so a unit of Δψ in the solve moves some vertex by 1 mm whatever the basis' own scaling."""
    dirs = torch.as_tensor(model.data.exprdirs, dtype=torch.float32)  # (V, 3, E) metres
    return (torch.linalg.vector_norm(dirs, dim=1).amax(0) * L.MM).clamp_min(1e-6)


def sparse_prior(delta_mm: torch.Tensor, negative_factor: float) -> torch.Tensor:
    """Asymmetric L1 of onset-relative changes (T, E) in mm: raising costs 1 per mm, lowering `negative_factor`."""
    return (delta_mm.clamp_min(0.0) + negative_factor * (-delta_mm).clamp_min(0.0)).sum(-1).mean()


def cosine_lr(lr: float, progress: float) -> float:
    """Step size decayed from `lr` at progress 0 to zero at progress ≥ 1 along half a cosine."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def solve_step_count(cfg: RefineConfig) -> int:
    """Adam steps of one pass of the solve (its three stages), for progress reports."""
    return cfg.solve_rigid_steps + cfg.solve_steps + cfg.solve_refit_steps


def sample_vertices(mask: torch.Tensor, limit: int) -> torch.Tensor:
    """mask (V,) bool thinned to at most `limit` of its vertices, every k-th in index order (a mean over the face:
    FLAME's 5023 vertices are denser than the 112² flow map they sample, so the loss changes little)."""
    idx = torch.nonzero(mask).flatten()
    if limit <= 0 or idx.numel() <= limit:
        return mask
    keep = idx[torch.linspace(0, idx.numel() - 1, limit, device=idx.device).round().long()]
    out = torch.zeros_like(mask)
    out[keep] = True
    return out


def solve_onset_motion(model: HeadModel, topo: HeadTopology, clip: ClipTensors, cfg: RefineConfig,
                       tick: Tick | None = None, cancel: Cancel | None = None) -> OnsetMotion:
    """Stage 1: `solve_rigid_steps` Adam steps on the root corrections alone (lr `solve_lr_rigid`); stage 2:
    `solve_steps` steps on the corrections and Δψ together (lr `solve_lr`, cosine decay), loss = anchored flow
    (`clip.pair_*`, the DEM windows' anchors) [+ `w_photo` × the anchored photometric term when the clip has its
    samples, `clip.photometry`] + `w_sparse` × asymmetric L1 of Δψ (mm); stage 3: `solve_refit_steps` steps
    on the corrections and the Δψ entries over `solve_refit_min_mm` after stage 2, data term only (lr `solve_lr`,
    cosine decay). Frame 0 is the reference: its Δψ and corrections are held at zero. Whole clip per step (all
    anchored pairs); `tick(k)` after every step (`solve_step_count(cfg)` in all).
    """
    t0 = time.perf_counter()
    dev = clip.expression.device
    n = clip.n_frames
    mm = millimetres_per_unit(model).to(dev)
    base = clip.expression[:1]  # (1, E) the onset frame's coarse expression
    delta = torch.zeros(n, base.shape[1], device=dev, requires_grad=True)  # mm units
    rigid = torch.zeros(n, 6, device=dev, requires_grad=True)  # 0.01 rad, mm
    keep = torch.ones(n, 1, device=dev)
    keep[0] = 0.0  # the reference frame stays where the coarse fit put it
    shape = clip.shape[None].expand(n, -1)
    pa, pt = clip.pair_anchor, clip.pair_frame
    anchored = clip.anchored.float()
    weight = clip.pair_weight * clip.confidence[pa] * clip.confidence[pt]
    vertex_mask = sample_vertices(topo.face_mask if cfg.flow_face_only else torch.ones_like(topo.face_mask),
                                  cfg.solve_max_vertices)
    used = torch.nonzero(vertex_mask).flatten()
    visible: torch.Tensor | None = None  # at the anchors, computed once: corrections of < 1° and a few mm of
    # expression do not change which vertices face the camera, and the normals cost half of each step on FLAME

    def state(with_expression: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ψ (T, E), pose (T, J, 3), translation (T, 3) from the current variables (frame 0 held)."""
        d, r = delta * keep, rigid * keep
        psi = base + d / mm if with_expression else base.expand(n, -1)
        pose = torch.cat([clip.pose[:, :1] + r[:, None, :3] * 0.01, clip.pose[:, 1:]], dim=1)
        return psi, pose, clip.translation + r[:, 3:] * 1e-3

    photometry = clip.photometry
    # Without the photometric term (which samples whole triangles) only the used vertices are evaluated, when they
    # are fewer than the mesh's (FLAME: 1000 of 5023; the built-in head uses all of its 478).
    subset = model.subset(used) if photometry is None and used.numel() < vertex_mask.numel() else None

    def data_loss(with_expression: bool) -> torch.Tensor:
        """Anchored flow + photometric (× w_photo, when the clip has its samples)."""
        nonlocal visible
        psi, pose, trans = state(with_expression)
        if visible is None:
            with torch.no_grad():
                full = to_world(model(shape, psi, pose).vertices, pose[:, 0], trans)
                visible = L.facing_camera(full[pa], topo.faces)[:, used]
        if subset is not None:
            world_all = world = to_world(subset(shape, psi, pose), pose[:, 0], trans)
        else:
            world_all = to_world(model(shape, psi, pose).vertices, pose[:, 0], trans)
            world = world_all[:, used]  # only the vertices the term uses are projected and sampled
        loss = L.anchored_flow_loss(world[pa], world[pt], anchored, clip.boxes[pa], clip.boxes[pt], clip.camera,
                                    topo.faces, weight, None, cfg.flow_eps, 224, visible)
        if photometry is not None:
            px = L.image_to_crop(project(world_all[pt], clip.camera), clip.boxes[pt])
            loss = loss + cfg.w_photo * photometry.loss(px, weight, cfg.photo_eps)
        return loss

    def sparse() -> torch.Tensor:
        return sparse_prior(delta * keep, cfg.sparse_negative_factor)

    losses: dict[str, float] = {}
    steps = cfg.solve_rigid_steps + cfg.solve_steps if pa.numel() > 0 else 0
    refit_steps = cfg.solve_refit_steps if steps else 0
    kept = 0.0
    if steps:
        with torch.no_grad():
            losses["data_initial"] = float(data_loss(False))
        opt_rigid = torch.optim.Adam([rigid], lr=cfg.solve_lr_rigid)
        opt_all = torch.optim.Adam([delta, rigid], lr=cfg.solve_lr)
        for step in range(steps):
            if cancel is not None and cancel():
                raise Cancelled("The refinement was cancelled.")
            if step < cfg.solve_rigid_steps:
                opt, loss = opt_rigid, data_loss(False)
            else:
                for group in opt_all.param_groups:
                    group["lr"] = cosine_lr(cfg.solve_lr, (step - cfg.solve_rigid_steps) / max(cfg.solve_steps, 1))
                opt, loss = opt_all, data_loss(True) + cfg.w_sparse * sparse()
            if not torch.isfinite(loss):
                raise ClipError("The onset solve diverged (non-finite loss); the clip's flow is unusable.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if tick is not None:
                tick(step + 1)
        with torch.no_grad():
            losses["data_before_refit"], losses["sparse_before_refit"] = float(data_loss(True)), float(sparse())
            support = ((delta * keep).abs() > cfg.solve_refit_min_mm).float()  # (T, E) the changes kept
            kept = float(support.mean())
        opt_refit = torch.optim.Adam([delta, rigid], lr=cfg.solve_lr)
        for step in range(refit_steps):
            if cancel is not None and cancel():
                raise Cancelled("The refinement was cancelled.")
            for group in opt_refit.param_groups:
                group["lr"] = cosine_lr(cfg.solve_lr, step / refit_steps)
            loss = data_loss(True)
            if not torch.isfinite(loss):
                raise ClipError("The onset solve diverged (non-finite loss); the clip's flow is unusable.")
            opt_refit.zero_grad(set_to_none=True)
            loss.backward()
            assert delta.grad is not None
            delta.grad.mul_(support)  # entries off the support get no gradient, so Adam never moves them
            opt_refit.step()
            if tick is not None:
                tick(steps + step + 1)
        with torch.no_grad():
            losses["data_final"], losses["sparse_final"] = float(data_loss(True)), float(sparse())
    with torch.no_grad():
        psi, pose, trans = state(True)
        d = delta * keep
        report = {
            "steps": steps + refit_steps,
            "refit_support": kept,
            "pairs": int(pa.numel()),
            "losses": losses,
            "active_fraction": float((d.abs() > 0.05).float().mean()),
            "max_change_mm": float(d.abs().max()),
            "seconds": time.perf_counter() - t0,
        }
    return OnsetMotion(psi.detach(), pose.detach(), trans.detach(), report)
