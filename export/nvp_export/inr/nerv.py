"""NeRV (Chen et al., NeurIPS 2021): frame index -> positional encoding -> MLP -> conv/PixelShuffle blocks -> RGB.

Recipe (REFERENCE.md): t = idx / num_frames, encoded as [sin(t b^i pi), cos(t b^i pi)]
for i < pe_levels, b = pe_base; MLP -> mlp_hidden -> fc_dim x grid with the
activation after every layer ("stem"); blocks Conv3x3 -> PixelShuffle -> GELU,
channels fc_dim * expansion first, then max(C // reduction, lower_width); head
1x1 conv -> (tanh + 1) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import INR, GridConfig, RGBHead, UpBlock


@dataclass
class NeRVConfig(GridConfig):
    mlp_hidden: int = 512
    pe_levels: int = 80
    pe_base: float = 1.25
    expansion: float = 1.0
    reduction: int = 2
    lower_width: int = 12  # NeRV's 96 assumes multi-megabyte models; ours fit a bpp budget

    def channels(self) -> list[int]:
        widths = [self.fc_dim, max(int(self.fc_dim * self.expansion), 1)]
        for _ in self.strides[1:]:
            widths.append(max(widths[-1] // self.reduction, self.lower_width))
        return widths

    def stored_values(self) -> tuple[int, int]:
        h, w = self.grid
        c = self.channels()
        params = (2 * self.pe_levels + 1) * self.mlp_hidden + (self.mlp_hidden + 1) * self.fc_dim * h * w
        for i, s in enumerate(self.strides):
            params += c[i] * c[i + 1] * s * s * 9 + c[i + 1] * s * s
        return params + c[-1] * 3 + 3, 0


class PositionalEncoding(nn.Module):
    """[sin(t b^i pi), cos(t b^i pi)], computed in float64.

    The highest levels' angles reach 1e7 and more, where float32 cannot even
    resolve the angle; float64 keeps the encoding a function of t that the
    runtime (``nvp_rt.prefix.positional_encoding``, numpy) reproduces exactly.
    """

    def __init__(self, levels: int, base: float):
        super().__init__()
        freqs = base ** torch.arange(levels, dtype=torch.float64) * math.pi
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t):
        angles = t.to(torch.float64)[:, None] * self.freqs.to(t.device)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(torch.float32)


class NeRVStem(nn.Module):
    """Positional encoding of t -> MLP -> (fc_dim, grid) feature map; the encoding is the stem's input."""

    def __init__(self, config: NeRVConfig):
        super().__init__()
        self.grid = config.grid
        self.fc_dim = config.fc_dim
        h, w = config.grid
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.pe_levels, config.mlp_hidden),
            nn.GELU(),
            nn.Linear(config.mlp_hidden, config.fc_dim * h * w),
            nn.GELU(),
        )

    def forward(self, encoding):
        return self.mlp(encoding).view(-1, self.fc_dim, *self.grid)


class NeRV(INR):
    family = "nerv"

    def __init__(self, config: NeRVConfig):
        super().__init__(config)
        c = config.channels()
        stages: dict[str, nn.Module] = {"stem": NeRVStem(config)}
        for i, s in enumerate(config.strides):
            stages[f"block{i + 1}"] = UpBlock(c[i], c[i + 1], s, 3)
        stages["rgb"] = RGBHead(c[-1], 1)
        self.stages = nn.ModuleDict(stages)
        self.pe = PositionalEncoding(config.pe_levels, config.pe_base)

    def stem_input(self, frame_idx):
        return self.pe(frame_idx.to(torch.float64) / self.num_frames)
