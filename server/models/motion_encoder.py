"""Motion encoder E^motion of the dynamic-encoded module (paper eq. 4): optical-flow sequence -> Δψ per flow step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MotionEncoder(nn.Module):
    """Stacked 3D convolutions over (time, height, width), stride 1 in time and 2 in space, global spatial
    pooling and a zero-initialised linear head, so Δψ = 0 at initialisation (training starts at the coarse fit).

    flow (N, 2, H, W) in crop pixels (N = T-1 flow steps) -> Δψ (N, E). The flow is average-pooled to
    `input_size`² first (224 keeps full resolution; 56 is the CPU default) and scaled by `input_size / H` so the
    numbers stay in pixels of the pooled map.
    """

    def __init__(self, n_expression: int, channels: tuple[int, ...] = (8, 16, 32), input_size: int = 56) -> None:
        super().__init__()
        self.input_size = int(input_size)
        layers: list[nn.Module] = []
        prev = 2
        for ch in channels:
            layers += [nn.Conv3d(prev, ch, kernel_size=3, stride=(1, 2, 2), padding=1), nn.GELU()]
            prev = ch
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, n_expression)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def prepare(self, flow: torch.Tensor) -> torch.Tensor:
        """Pool a (N, 2, H, W) flow in crop pixels to (N, 2, s, s) in pooled pixels (s = input_size)."""
        size = flow.shape[-1]
        if size == self.input_size:
            return flow
        return F.adaptive_avg_pool2d(flow, self.input_size) * (self.input_size / size)

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        x = self.prepare(flow.float())  # (N, 2, s, s)
        x = x.permute(1, 0, 2, 3)[None]  # (1, 2, N, s, s): time is the depth axis
        feats = self.body(x)  # (1, C, N, s', s')
        pooled = feats.mean(dim=(3, 4))[0].t()  # (N, C)
        return self.head(pooled)  # (N, E)
