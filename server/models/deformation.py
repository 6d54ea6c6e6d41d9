"""Dynamic-guided mesh deformation (paper §IV-B, eq. 7-22): multi-modal local features -> GCN -> attended offsets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .graph import GraphConv, MeshGraph

N_REGIONS = 8


def region_centroids(points: torch.Tensor, regions: torch.Tensor, n_regions: int = N_REGIONS) -> torch.Tensor:
    """Eq. 12: mean projected position of each region's vertices. points (B, V, 2), regions (V,) labels 0..R
    -> (B, R, 2); a region without vertices gets NaN (callers mask it)."""
    batch = points.shape[0]
    sums = points.new_zeros(batch, n_regions + 1, 2).index_add_(1, regions, points)
    counts = points.new_zeros(n_regions + 1).index_add_(0, regions, torch.ones_like(regions, dtype=points.dtype))
    centroids = sums / counts[None, :, None]  # 0/0 -> NaN for empty regions
    return centroids[:, 1:]


def patch_average(maps: torch.Tensor, centers: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Eq. 13 / 18: mean of a size×size pixel patch of `maps` around each center (the pixel that contains it:
    pixel i spans [i, i+1), as in `losses.sample_flow`), clipped at the border. maps (B, C, H, W), centers (B, R, 2)
    as (x, y) pixel coordinates of `maps` -> (B, R, C). NaN centers give zeros."""
    batch, ch, h, w = maps.shape
    pooled = F.avg_pool2d(maps, size, stride=1, padding=size // 2, count_include_pad=False)  # (B, C, H, W)
    valid = torch.isfinite(centers).all(-1)  # (B, R)
    c = torch.nan_to_num(centers.detach(), nan=0.0)
    x = c[..., 0].floor().long().clamp(0, w - 1)
    y = c[..., 1].floor().long().clamp(0, h - 1)
    flat = pooled.reshape(batch, ch, h * w)
    idx = (y * w + x)[:, None, :].expand(batch, ch, -1)  # (B, C, R)
    out = torch.gather(flat, 2, idx).transpose(1, 2)  # (B, R, C)
    return out * valid[..., None].to(out.dtype)


def motion_attention(intensity: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 19-20: W(r) = sigmoid((I(r) - τ) / (τ + 1e-4)), τ = μ + 0.5 σ over the (valid) regions of each frame.
    intensity (B, R) -> (B, R); invalid regions get 0."""
    if valid is None:
        valid = torch.ones_like(intensity, dtype=torch.bool)
    m = valid.to(intensity.dtype)
    count = m.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (intensity * m).sum(-1, keepdim=True) / count
    std = (((intensity - mean) ** 2 * m).sum(-1, keepdim=True) / count).sqrt()
    tau = mean + 0.5 * std
    return torch.sigmoid((intensity - tau) / (tau + 1e-4)) * m


def per_vertex(region_values: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Give every vertex its region's value; region 0 gets zeros. region_values (B, R, C) -> (B, V, C)."""
    table = torch.cat([region_values.new_zeros(region_values.shape[0], 1, region_values.shape[2]), region_values], 1)
    return table[:, regions]


def lift_landmarks(pixels: torch.Tensor, anchors: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """Eq. 10, Π^{-1}: back-project 2D landmarks to the depth of their embedded mesh points.
    pixels (B, L, 2) image px, anchors (B, L, 3) world points (z < 0), camera (4,) [fx, fy, cx, cy] -> (B, L, 3)."""
    fx, fy, cx, cy = camera[0], camera[1], camera[2], camera[3]
    depth = (-anchors[..., 2]).clamp_min(1e-6)
    x = (pixels[..., 0] - cx) * depth / fx
    y = -(pixels[..., 1] - cy) * depth / fy
    return torch.stack([x, y, -depth], dim=-1)


def nearest_landmarks(vertices: torch.Tensor, landmarks: torch.Tensor, k: int) -> torch.Tensor:
    """Fixed vertex -> landmark assignment: indices of the k nearest landmarks. vertices (V, 3), landmarks (L, 3)
    -> (V, k) int64."""
    dist = torch.cdist(vertices[None].float(), landmarks[None].float())[0]  # (V, L)
    return dist.topk(min(k, landmarks.shape[0]), dim=1, largest=False).indices


class MotionCNN(nn.Module):
    """CNN^motion of eq. 11 with spatial attention: (B, C_in, h, w) flow maps -> (B, C, h, w) features."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        )
        self.attention = nn.Conv2d(channels, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.body(x)
        return feats * torch.sigmoid(self.attention(feats))


class MeshDeformation(nn.Module):
    """G(M_init, E^local(I, O, M_init)) of eq. 7: per-frame vertex offsets ΔV (metres) and attention W.

    The offsets are used as REST-SPACE offsets (`HeadModel.forward(offsets=...)`, before skinning), which is what
    the take stores; V_init is in head coordinates (no root rotation), so with the small neck/jaw angles of a
    face clip the two spaces differ by a rotation of a few degrees at most, which the GCN absorbs.
    Feature branches can be switched off for ablations (their features become zeros; shapes stay the same).
    """

    def __init__(
        self, hidden: int = 32, geo_layers: int = 2, gcn_layers: int = 3, motion_in_channels: int = 4,
        motion_channels: int = 16, landmark_k: int = 3, lambda_attn: float = 0.02, patch: int = 5,
        use_motion_features: bool = True, use_landmark_features: bool = True, use_geometry_features: bool = True,
    ) -> None:
        super().__init__()
        self.lambda_attn = lambda_attn
        self.patch = patch
        self.landmark_k = landmark_k
        self.use_motion_features = use_motion_features
        self.use_landmark_features = use_landmark_features
        self.use_geometry_features = use_geometry_features
        self.geo = nn.ModuleList([GraphConv(3 if i == 0 else hidden, hidden) for i in range(geo_layers)])  # eq. 9
        self.motion_cnn = MotionCNN(motion_in_channels, motion_channels)  # eq. 11
        self.motion_channels = motion_channels
        self.hidden = hidden
        self.fusion = nn.Sequential(  # eq. 14
            nn.Linear(hidden + 3 * landmark_k + motion_channels, hidden), nn.ReLU(), nn.Linear(hidden, hidden)
        )
        self.gcn = nn.ModuleList([GraphConv(3 + hidden if i == 0 else hidden, hidden) for i in range(gcn_layers)])
        self.output = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3))  # eq. 17
        last = self.output[-1]
        assert isinstance(last, nn.Linear)
        # Zero last layer: ΔV = 0 at initialisation (training starts at V_init); with λ_attn = 0.02 a unit of
        # ΔV_base is 2 cm, so millimetre offsets need |ΔV_base| ~ 0.05.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(
        self, graph: MeshGraph, v_init: torch.Tensor, motion_input: torch.Tensor, centers: torch.Tensor,
        region_attention: torch.Tensor, landmark_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v_init (B, V, 3) head coordinates (metres); motion_input (B, C_in, h, w) flow maps; centers (B, 8, 2)
        region centroids in motion_input pixels (eq. 12); region_attention (B, 8) from eq. 19-20;
        landmark_features (B, V, 3k) lifted-landmark offsets in millimetres (eq. 10).
        Returns ΔV (B, V, 3) metres (eq. 21) and the per-vertex attention W (B, V)."""
        batch, nv, _ = v_init.shape
        coords = (v_init - v_init.mean(dim=1, keepdim=True)) * 10.0  # decimetres: O(1) inputs
        zeros = v_init.new_zeros
        if self.use_geometry_features:
            f_geo = coords
            for layer in self.geo:
                f_geo = F.relu(layer(f_geo, graph.adjacency))  # eq. 9 with A from eq. 8
        else:
            f_geo = zeros(batch, nv, self.hidden)
        if self.use_motion_features:
            fmap = self.motion_cnn(motion_input)  # eq. 11
            region_feat = patch_average(fmap, centers, self.patch)  # (B, 8, C), eq. 13
            f_motion = per_vertex(region_feat, graph.regions)
        else:
            f_motion = zeros(batch, nv, self.motion_channels)
        f_ldm = landmark_features if self.use_landmark_features else zeros(batch, nv, 3 * self.landmark_k)
        f_local = self.fusion(torch.cat([f_geo, f_ldm, f_motion], dim=-1))  # eq. 14
        x = torch.cat([coords, f_local], dim=-1)  # eq. 15
        for layer in self.gcn:
            x = F.relu(layer(x, graph.adjacency))  # eq. 16
        base = self.output(x)  # ΔV_base, eq. 17
        w_vertex = per_vertex(region_attention[..., None], graph.regions)[..., 0]  # (B, V), region 0 -> 0
        return w_vertex[..., None] * (self.lambda_attn * base), w_vertex  # eq. 21
