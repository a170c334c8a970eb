"""A stand-in INR for the task-preset tests: a tiny conv + PixelShuffle decoder with the INR interface.

Its own full decode serves as the "original frames", so it encodes them exactly and
an adapter from any of its taps has a real target to learn, with no fitting needed.
"""

from __future__ import annotations

import torch
from torch import nn


class StandinINR(nn.Module):
    def __init__(self, num_frames: int, size=(64, 96), channels=(16, 12), embed: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        scale = 2 ** len(channels)
        self.num_frames = num_frames
        # Smoothly varying per-frame embeddings, so neighbouring frames look alike as in a video.
        base = torch.randn(2, embed, size[0] // scale, size[1] // scale, generator=g)
        w = torch.linspace(0, 1, num_frames).view(-1, 1, 1, 1)
        self.embeddings = nn.Parameter((1 - w) * base[0] + w * base[1])
        blocks, c_in = [], embed
        for c in channels:
            blocks.append(nn.Sequential(nn.Conv2d(c_in, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.GELU()))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c_in, 3, 3, padding=1)
        self.tap_names = [f"block{i + 1}" for i in range(len(channels))] + ["rgb"]
        self.requires_grad_(False)

    def decode(self, frame_idx: torch.Tensor, until: str | None = None) -> dict[str, torch.Tensor]:
        until = until or self.tap_names[-1]
        out, x = {}, self.embeddings[frame_idx]
        for name, block in zip(self.tap_names, self.blocks):
            x = out[name] = block(x)
            if name == until:
                return out
        out["rgb"] = torch.sigmoid(self.head(x))
        return out

    def tap_shapes(self) -> dict[str, tuple[int, ...]]:
        with torch.no_grad():
            return {k: tuple(v.shape[1:]) for k, v in self.decode(torch.zeros(1, dtype=torch.long)).items()}

    @torch.no_grad()
    def frames(self) -> torch.Tensor:
        """The clip it encodes: (T, 3, H, W) in [0, 1]."""
        return self.decode(torch.arange(self.num_frames))["rgb"]
