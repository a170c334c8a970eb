"""A tiny HNeRV-style INR implementing the nvp INR interface, for the adapt tests.

Per-frame learned embeddings -> (3x3 conv -> PixelShuffle -> GELU) blocks -> 3x3 conv head.
``fit`` trains it on a clip for a few hundred steps so its taps genuinely encode the frames.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyINR(nn.Module):
    def __init__(
        self, num_frames: int, size=(64, 64), channels=(24, 16, 12), strides=(2, 2, 2), embed: int = 8, seed: int = 0
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        scale = int(np.prod(strides))
        h0, w0 = size[0] // scale, size[1] // scale
        self.num_frames = num_frames
        self.embeddings = nn.Parameter(torch.randn(num_frames, embed, h0, w0, generator=g) * 0.5)
        self.blocks = nn.ModuleList()
        c_in = embed
        for c, s in zip(channels, strides):
            self.blocks.append(nn.Sequential(nn.Conv2d(c_in, c * s * s, 3, padding=1), nn.PixelShuffle(s), nn.GELU()))
            c_in = c
        self.head = nn.Conv2d(c_in, 3, 3, padding=1)
        self.tap_names = [f"block{i + 1}" for i in range(len(channels))] + ["rgb"]

    def decode(self, frame_idx: torch.Tensor, until: str | None = None) -> dict[str, torch.Tensor]:
        until = until or self.tap_names[-1]
        if until not in self.tap_names:
            raise ValueError(f"no tap {until!r}")
        out, x = {}, self.embeddings[frame_idx]
        for name, block in zip(self.tap_names, self.blocks):
            x = block(x)
            out[name] = x
            if name == until:
                return out
        out["rgb"] = torch.tanh(self.head(x)) * 0.5 + 0.5
        return out

    def tap_shapes(self) -> dict[str, tuple[int, ...]]:
        with torch.no_grad():
            return {k: tuple(v.shape[1:]) for k, v in self.decode(torch.zeros(1, dtype=torch.long)).items()}


def fit(inr: TinyINR, frames: torch.Tensor, steps: int = 300, lr: float = 3e-3, seed: int = 0) -> float:
    """Fit the INR to (T, 3, H, W) frames in [0, 1] with L2; returns the final PSNR (dB)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(inr.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t = frames.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, t, (min(4, t),))
        loss = F.mse_loss(inr.decode(idx)["rgb"], frames[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    inr.requires_grad_(False)
    with torch.no_grad():
        mse = F.mse_loss(inr.decode(torch.arange(t))["rgb"], frames)
    return float(10 * torch.log10(1 / mse))


def pan_clip(image: np.ndarray, frames: int, size=(64, 64), zoom: float = 0.8) -> torch.Tensor:
    """A smooth horizontal pan over ``image`` (H, W, 3 uint8): (frames, 3, h, w) float in [0, 1]."""
    img = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float()[None] / 255
    _, _, h, w = img.shape
    ch, cw = int(h * zoom), int(w * zoom)
    out = []
    for i in range(frames):
        x0 = round((w - cw) * i / max(frames - 1, 1))
        y0 = (h - ch) // 2
        crop = img[..., y0 : y0 + ch, x0 : x0 + cw]
        out.append(F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out).clamp(0, 1)
