"""Dynamic-encoded module (eq. 4-6): motion encoder, latent ODE fusion, windows without seams."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from server.models.dem import DynamicEncodedModule, window_starts
from server.models.latent_ode import LatentODEFusion
from server.models.motion_encoder import MotionEncoder


def smooth_flow(n: int, size: int = 56, seed: int = 0) -> torch.Tensor:
    """(n, 2, size, size) flow that varies slowly in time and space."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(2, 2, 4, 4, generator=g)
    t = torch.linspace(0, 3.0, n)
    coeff = torch.stack([torch.sin(t), torch.cos(0.7 * t)], 1)  # (n, 2)
    field = torch.einsum("nk,kcij->ncij", coeff, base)
    return nn.functional.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Give the zero-initialised layers random weights, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_motion_encoder_shapes_zero_init_and_gradient() -> None:
    enc = MotionEncoder(n_expression=6, channels=(4, 8), input_size=56)
    flow = torch.randn(9, 2, 224, 224)
    out = enc(flow)
    assert out.shape == (9, 6)
    assert out.abs().max() == 0  # zero head: training starts at the coarse fit
    out.sum().backward()
    assert enc.head.weight.grad is not None and enc.head.weight.grad.abs().sum() > 0


def test_motion_encoder_keeps_time_resolution() -> None:
    enc = MotionEncoder(n_expression=3, channels=(4,), input_size=32)
    perturb(enc)
    flow = torch.zeros(7, 2, 32, 32)
    flow[3] = 1.0  # motion in one step only
    out = enc(flow)
    # A 3-frame temporal kernel: steps 0, 1, 5 and 6 see no motion and give the same (bias-only) output.
    torch.testing.assert_close(out[0], out[6])
    torch.testing.assert_close(out[1], out[5])
    assert (out[3] - out[0]).abs().max() > 1e-4


def test_latent_ode_starts_at_coarse_fit_and_learns() -> None:
    fusion = LatentODEFusion(n_expression=5, latent=4, hidden=16, window=8)
    psi_coarse = torch.randn(8, 5)
    delta = torch.randn(7, 5, requires_grad=True)
    out = fusion(psi_coarse[0], psi_coarse, delta)
    torch.testing.assert_close(out, psi_coarse)  # exactly the coarse fit at initialisation
    out.pow(2).sum().backward()
    last = fusion.dynamics.net[-1]
    assert isinstance(last, nn.Linear) and last.weight.grad is not None
    assert last.weight.grad.abs().sum() > 0  # the zero-initialised E^ode layer receives gradient


def fine_step_reference(fusion: LatentODEFusion, psi: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Eq. 6 integrated independently of `LatentODEFusion.forward`: RK4 at a twentieth of a frame."""
    with torch.no_grad():
        z0 = fusion.encoder(psi[0][None])
        fusion.dynamics.set_inputs(z0, delta[None])
        times = torch.arange(psi.shape[0], dtype=psi.dtype)
        zt = odeint(fusion.dynamics, z0, times, method="rk4", options={"step_size": 0.05})[:, 0]
        return psi + fusion.decoder(zt) - fusion.decoder(z0)


@pytest.mark.parametrize(("solver", "adjoint"), [("rk4", False), ("dopri5", False), ("rk4", True)])
def test_latent_ode_solvers_agree_and_propagate_to_delta(solver: str, adjoint: bool) -> None:
    torch.manual_seed(0)
    ref = LatentODEFusion(n_expression=3, latent=4, hidden=16, window=6)
    perturb(ref, 0.5)
    fusion = LatentODEFusion(n_expression=3, latent=4, hidden=16, window=6, solver=solver, adjoint=adjoint)
    fusion.load_state_dict(ref.state_dict())
    psi = torch.zeros(6, 3)
    delta = torch.randn(5, 3, requires_grad=True)
    out = fusion(psi[0], psi, delta)
    expected = fine_step_reference(ref, psi, delta.detach())
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=1e-2)
    assert (out - psi).abs().max() > 1e-4
    out.sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_window_starts_cover_clip() -> None:
    assert window_starts(10, 16, 4) == [0]
    assert window_starts(40, 16, 4) == [0, 12, 24]
    starts = window_starts(41, 16, 4)
    assert starts[-1] + 16 == 41


def test_dem_identity_at_init_and_no_seam_between_windows() -> None:
    torch.manual_seed(0)
    dem = DynamicEncodedModule(n_expression=4, latent=4, hidden=16, motion_channels=(4, 8), flow_size=32,
                               window=12, overlap=4)
    n = 60
    flow = smooth_flow(n - 1, 32)
    psi_coarse = torch.zeros(n, 4)
    torch.testing.assert_close(dem(flow, psi_coarse), psi_coarse)
    perturb(dem, 0.3)
    psi = dem(flow, psi_coarse).detach()
    assert psi.shape == (n, 4)
    steps = (psi[1:] - psi[:-1]).norm(dim=1)  # frame-to-frame motion, step k = frame k -> k+1
    starts = window_starts(n, 12, 4)[1:]
    seam_steps = torch.tensor(sorted({s + k for s in starts for k in range(-1, 5) if s + k < n - 1}))
    mask = torch.ones(n - 1, dtype=torch.bool)
    mask[seam_steps] = False
    typical = steps[mask]
    assert typical.median() > 1e-3  # the perturbed module does move
    # The largest step across a seam is no larger than the motion elsewhere.
    assert steps[seam_steps].max() <= typical.max() * 1.05, (steps[seam_steps].max(), typical.max())


def test_dem_rejects_mismatched_flow() -> None:
    dem = DynamicEncodedModule(n_expression=2, flow_size=16, motion_channels=(2,), window=4, overlap=1)
    with pytest.raises(ValueError, match="flow steps"):
        dem(torch.zeros(3, 2, 16, 16), torch.zeros(6, 2))
