"""What every INR shares: named decoder taps, partial decoding, tiling of the frame."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from ..backbone import to_uint8_frames

MAX_SIDE = 8192
MAX_FRAMES = 1 << 20


class UntileableSizeError(ValueError):
    """The frame size cannot be reached by the architecture's upsampling strides."""


def tiling_strides(height: int, width: int, max_stages: int = 5, min_grid: int = 2, min_factor: int = 8) -> list[int]:
    """Upsampling strides from a small grid to (height, width), largest first.

    The grid is (height, width) / prod(strides), so the product must divide both
    sides. Strides are built from the common factors 5, 3 and 2 (NeRV's 5 2 2 2 2
    for 720p and 5 3 2 2 2 for 1080p come out of this rule), leaving a grid of at
    least ``min_grid`` on the short side.
    """
    common, product = math.gcd(height, width), 1
    strides: list[int] = []
    for s in (5, 3, 2):
        while common % s == 0 and len(strides) < max_stages and min(height, width) // (product * s) >= min_grid:
            strides.append(s)
            common //= s
            product *= s
    if product < min_factor:
        raise UntileableSizeError(
            f"frame size {width}x{height} cannot be tiled: width and height must share a factor >= {min_factor} "
            f"built from 2, 3 and 5 (e.g. 320x180, 640x360); resize or crop the video"
        )
    return strides


@dataclass
class GridConfig:
    """What every INR config shares: the video's size and the upsampling from a small grid to it."""

    height: int
    width: int
    num_frames: int
    fc_dim: int
    strides: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.strides:
            self.strides = tiling_strides(self.height, self.width)

    @property
    def grid(self) -> tuple[int, int]:
        p = math.prod(self.strides)
        return self.height // p, self.width // p


def check_config(cfg) -> None:
    """Reject configurations that are not sensible, e.g. from a tampered file, before allocating anything."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.type in ("int", int) and not (isinstance(value, int) and 0 < value <= 1 << 20):
            raise ValueError(f"{type(cfg).__name__}.{f.name} must be a positive integer, got {value!r}")
        if f.type in ("float", float) and not (isinstance(value, (int, float)) and 0 < value <= 1e6):
            raise ValueError(f"{type(cfg).__name__}.{f.name} must be a positive number, got {value!r}")
    if not (cfg.height <= MAX_SIDE and cfg.width <= MAX_SIDE and cfg.num_frames <= MAX_FRAMES):
        raise ValueError(f"frame size {cfg.width}x{cfg.height} x {cfg.num_frames} frames is out of range")
    if not (
        isinstance(cfg.strides, (list, tuple))
        and 0 < len(cfg.strides) <= 8
        and all(isinstance(s, int) and 1 <= s <= 8 for s in cfg.strides)
    ):
        raise ValueError(f"strides must be 1..8 integers in 1..8, got {cfg.strides!r}")
    product = math.prod(cfg.strides)
    if cfg.height % product or cfg.width % product:
        raise ValueError(f"strides {cfg.strides} do not tile {cfg.width}x{cfg.height}")


class UpBlock(nn.Module):
    """Conv (C_in -> C_out * s^2) -> PixelShuffle(s) -> activation, the NeRV/HNeRV decoder block."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out * stride * stride, kernel, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(stride)
        self.act = act()

    def forward(self, x):
        return self.act(self.shuffle(self.conv(x)))


class RGBHead(nn.Module):
    """Conv to 3 channels, then (tanh + 1) / 2 so the image lies in [0, 1]."""

    def __init__(self, c_in: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 3, kernel, padding=kernel // 2)

    def forward(self, x):
        return torch.tanh(self.conv(x)) * 0.5 + 0.5


class INR(nn.Module):
    """A video as a network: frame index -> named decoder taps, shallow to deep, ending in "rgb".

    Subclasses set ``config``, ``stages`` (an ``nn.ModuleDict`` in tap order, ending
    with "rgb") and implement ``stem_input``.
    """

    family: str
    stages: nn.ModuleDict

    def __init__(self, config):
        super().__init__()
        check_config(config)
        self.config = config
        self.num_frames = config.num_frames

    @property
    def tap_names(self) -> list[str]:
        return list(self.stages.keys())

    def stem_input(self, frame_idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run_stages(self, x: torch.Tensor, until: str | None = None) -> dict[str, torch.Tensor]:
        if until is not None and until not in self.stages:
            raise KeyError(f"unknown tap {until!r}; taps are {self.tap_names}")
        taps = {}
        for name, stage in self.stages.items():
            x = taps[name] = stage(x)
            if name == until:
                break
        return taps

    def decode(self, frame_idx: torch.Tensor, until: str | None = None) -> dict[str, torch.Tensor]:
        """Features (B, C, H, W) of every tap up to and including ``until`` (default: all); nothing deeper runs."""
        frame_idx = torch.as_tensor(frame_idx, dtype=torch.long).reshape(-1)
        if frame_idx.numel() and (int(frame_idx.min()) < 0 or int(frame_idx.max()) >= self.num_frames):
            raise IndexError(f"frame index out of range 0..{self.num_frames - 1}")
        return self.run_stages(self.stem_input(frame_idx), until)

    def forward(self, frame_idx: torch.Tensor) -> torch.Tensor:
        return self.decode(frame_idx)["rgb"]

    def tap_shapes(self) -> dict[str, tuple[int, int, int]]:
        (h, w), channels = self.config.grid, self.config.channels()
        shapes = {"stem": (channels[0], h, w)}
        for i, s in enumerate(self.config.strides):
            h, w = h * s, w * s
            shapes[f"block{i + 1}"] = (channels[i + 1], h, w)
        shapes["rgb"] = (3, h, w)
        return shapes

    def config_dict(self) -> dict:
        return {"family": self.family, **asdict(self.config)}

    @torch.no_grad()
    def render(self, frame_idx, batch: int = 1) -> np.ndarray:
        """Frames as uint8 (N, H, W, 3) for people to look at.

        One frame at a time by default: on CPU, batches of 8 decoded slower (18 vs 31 FPS at 320x180,
        bench/encode.py), their full-resolution feature maps no longer fitting in cache.
        """
        frame_idx = torch.as_tensor(frame_idx, dtype=torch.long).reshape(-1)
        out = []
        for chunk in frame_idx.split(batch):
            rgb = self.decode(chunk)["rgb"]
            out.append(to_uint8_frames(rgb))
        return np.concatenate(out) if out else np.zeros((0, self.config.height, self.config.width, 3), np.uint8)
