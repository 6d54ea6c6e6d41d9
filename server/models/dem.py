"""Dynamic-encoded module (paper §IV-A, eq. 4-6): coarse expression + flow sequence -> refined expression per frame."""

from __future__ import annotations

import torch
from torch import nn

from .latent_ode import LatentODEFusion
from .motion_encoder import MotionEncoder


def window_starts(n_frames: int, window: int, overlap: int) -> list[int]:
    """Start frames of overlapping windows covering 0..n_frames-1; the last window ends at the last frame."""
    if n_frames <= window:
        return [0]
    step = max(window - overlap, 1)
    starts = list(range(0, n_frames - window + 1, step))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return starts


class DynamicEncodedModule(nn.Module):
    """Static stream = the coarse fit (no pretrained image encoder exists for us: the onset frame's shape, pose
    and expression come from `fit_coarse`); dynamic stream = MotionEncoder (eq. 4) fused by LatentODEFusion
    (eq. 5-6).

    Long clips are cut into windows of `window` frames overlapping by `overlap`, each anchored at its first
    frame (the paper's onset). Windows run in order: a window's anchor expression and residual are those already
    blended at its first frame, so its trajectory continues the previous one, and in the overlap the two are
    cross-faded with linear weights, leaving no seam.

    `base` = 'coarse': ψ_t = ψ^coarse_t + residual (exactly the coarse fit at initialisation); 'onset': ψ_t =
    ψ_anchor + residual, the closest to eq. 6 (the per-frame coarse fit is not used after the anchor, so its frame-to-
    frame noise is not inherited; at initialisation the expression is held at the anchor's).
    """

    def __init__(
        self, n_expression: int, latent: int = 16, hidden: int = 64, motion_channels: tuple[int, ...] = (8, 16, 32),
        flow_size: int = 56, window: int = 16, overlap: int = 4, solver: str = "rk4", adjoint: bool = False,
        base: str = "coarse",
    ) -> None:
        super().__init__()
        if window < 2 or not 0 <= overlap < window:
            raise ValueError(f"DEM window {window} with overlap {overlap} is invalid: need window >= 2 and "
                             "0 <= overlap < window.")
        if base not in ("coarse", "onset"):
            raise ValueError(f"Unknown DEM base '{base}': use 'coarse' or 'onset'.")
        self.base = base
        self.n_expression = n_expression
        self.window = window
        self.overlap = overlap
        self.motion = MotionEncoder(n_expression, motion_channels, flow_size)
        self.fusion = LatentODEFusion(n_expression, latent, hidden, window, solver, adjoint)

    def forward(self, flow: torch.Tensor, psi_coarse: torch.Tensor) -> torch.Tensor:
        """flow (T-1, 2, H, W) crop pixels, psi_coarse (T, E) -> ψ (T, E). At initialisation ψ = psi_coarse."""
        n_frames = psi_coarse.shape[0]
        if flow.shape[0] != n_frames - 1:
            raise ValueError(f"DEM got {flow.shape[0]} flow steps for {n_frames} frames; expected {n_frames - 1}.")
        delta = self.motion(flow) if n_frames > 1 else psi_coarse[:0]  # (T-1, E), eq. 4
        out: torch.Tensor | None = None
        starts = window_starts(n_frames, self.window, self.overlap)
        for w, s in enumerate(starts):
            e = min(s + self.window, n_frames)
            anchor = psi_coarse[s] if out is None else out[s]
            if self.base == "coarse":
                window_base = psi_coarse[s:e]
                carried = None if out is None else out[s] - psi_coarse[s]
            else:  # closest to eq. 6: the anchor's expression plus the integrated dynamics
                window_base = anchor[None].expand(e - s, -1)
                carried = None
            psi_w = self.fusion(anchor, window_base, delta[s:e - 1], carried)  # (e-s, E), eq. 5-6
            if out is None:
                out = psi_w
                continue
            prev_end = starts[w - 1] + self.window
            n_overlap = max(min(prev_end, n_frames) - s, 0)
            # Linear cross-fade over the overlap: weight of the new window rises from 0 at its anchor to 1.
            ramp = torch.ones(e - s, 1, dtype=psi_w.dtype, device=psi_w.device)
            if n_overlap > 0:
                ramp[:n_overlap, 0] = torch.arange(n_overlap, dtype=psi_w.dtype, device=psi_w.device) / n_overlap
            blended = ramp[:n_overlap] * psi_w[:n_overlap] + (1 - ramp[:n_overlap]) * out[s:s + n_overlap]
            out = torch.cat([out[:s], blended, psi_w[n_overlap:]], dim=0)
        assert out is not None
        return out
