"""Residual fusion E^res of the dynamic-encoded module (paper eq. 5-6): a latent neural ODE driven by Δψ."""

from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint


def _mlp(sizes: list[int], zero_last: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    if zero_last:
        last = layers[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers)


class ODEDynamics(nn.Module):
    """E^ode(z_ref, Δψ_τ, τ) of eq. 6 as an ODE right-hand side `forward(t, z)`.

    Δψ is known at the flow steps; step k (frame k -> k+1) is placed at time k + 0.5 and interpolated
    piecewise-linearly in between (held constant before the first and after the last step). Call `set_inputs`
    before integrating. The last layer is zero-initialised, so dz/dτ = 0 and z stays at z0 at initialisation.
    """

    def __init__(self, n_expression: int, latent: int, hidden: int, time_scale: float) -> None:
        super().__init__()
        self.net = _mlp([2 * latent + n_expression + 1, hidden, hidden, latent], zero_last=True)
        self.time_scale = float(time_scale)
        self._z_ref: torch.Tensor | None = None
        self._delta: torch.Tensor | None = None

    def set_inputs(self, z_ref: torch.Tensor, delta: torch.Tensor) -> None:
        """z_ref (B, Z) anchor latent; delta (B, N, E) Δψ per flow step (N >= 1)."""
        self._z_ref = z_ref
        self._delta = delta

    def interpolate(self, t: torch.Tensor) -> torch.Tensor:
        """Δψ at continuous time t (frames since the anchor) -> (B, E)."""
        assert self._delta is not None
        n = self._delta.shape[1]
        pos = (t - 0.5).clamp(0.0, float(n - 1))
        lo = int(torch.floor(pos).item())
        lo = min(lo, n - 1)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        return self._delta[:, lo] * (1.0 - frac) + self._delta[:, hi] * frac

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        assert self._z_ref is not None
        delta = self.interpolate(t)
        tau = (t / self.time_scale).reshape(1, 1).expand(z.shape[0], 1).to(z.dtype)
        return self.net(torch.cat([self._z_ref, delta, z, tau], dim=-1))


class LatentODEFusion(nn.Module):
    """E^latent (ψ -> z), E^ode, D^latent (z -> ψ) of eq. 6, residual around the coarse fit.

    ψ_t = ψ^coarse_t + r_anchor + D(z_t) - D(z_0), z_0 = E^latent(ψ_anchor), z_t = z_0 + ∫_0^t E^ode dτ.
    Subtracting D(z_0) makes the output equal the coarse fit (plus the carried residual r_anchor) exactly at
    initialisation, where E^ode's zero last layer keeps z_t = z_0; D itself is normally initialised so the
    gradient reaches E^ode from the first step.
    """

    def __init__(
        self, n_expression: int, latent: int = 16, hidden: int = 64, window: int = 16,
        solver: str = "rk4", adjoint: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = _mlp([n_expression, hidden, latent])
        self.decoder = _mlp([latent, hidden, n_expression])
        self.dynamics = ODEDynamics(n_expression, latent, hidden, time_scale=float(max(window, 2)))
        self.solver = solver
        self.adjoint = adjoint

    def forward(
        self, psi_anchor: torch.Tensor, psi_coarse: torch.Tensor, delta: torch.Tensor,
        residual_anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """psi_anchor (E,) the anchor (onset) frame's expression, psi_coarse (n, E) the coarse fit on the
        window's n frames, delta (n-1, E) Δψ per flow step, residual_anchor (E,) residual carried into the anchor.
        Returns ψ (n, E); row 0 is psi_coarse[0] + residual_anchor."""
        n = psi_coarse.shape[0]
        carried = residual_anchor if residual_anchor is not None else torch.zeros_like(psi_anchor)
        z0 = self.encoder(psi_anchor[None])  # (1, Z)
        if n == 1:
            return psi_coarse + carried
        self.dynamics.set_inputs(z0, delta[None])
        times = torch.arange(n, dtype=psi_coarse.dtype, device=psi_coarse.device)
        options = {"step_size": 1.0} if self.solver in ("rk4", "euler", "midpoint") else None
        if self.adjoint:
            # The closure inputs (z_ref, Δψ) must be listed too, or the adjoint pass would not reach the encoders.
            extra = tuple(x for x in (z0, self.dynamics._delta) if x is not None and x.requires_grad)
            zt = odeint_adjoint(self.dynamics, z0, times, method=self.solver, options=options,
                                adjoint_params=tuple(self.dynamics.parameters()) + extra)
        else:
            zt = odeint(self.dynamics, z0, times, method=self.solver, options=options)
        zt = zt[:, 0]  # (n, Z)
        return psi_coarse + carried + self.decoder(zt) - self.decoder(z0)
