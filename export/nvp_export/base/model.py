"""The base: one HNeRV-family encoder + decoder, pretrained once, that every video is encoded against.

Encoder (HNeRV's ConvNeXt with patchify downsampling): frame (N, 3, H, W) -> latent (N, latent_dim,
H / factor, W / factor) in one pass (the default strides 5 then 2: factor 10). Decoder (HNeRV's, taps
kept), mirroring the encoder: latent -> "stem" (3x3 conv + a residual 3x3 conv at the latent's size) ->
"block1" (1x1 conv, PixelShuffle of the last stride) -> "block2" (3x3 conv, PixelShuffle 5) -> "rgb"
(3x3 conv, tanh / 2 + 1 / 2). Both are fully convolutional: any frame whose sides are multiples of the
factor decodes (320x180 -> an 18x32 latent).

Why this shape (docs/base.md): a latent 10x smaller than the frame, not HNeRV's 20x, leaves less for
the decoder to invent, so an hour of one CPU core trains it further; the 1x1 first block (HNeRV's
ks_first = 1) and narrow late blocks keep the decoder at about 0.4 GMAC per 320x180 frame, which a
per-video fit of 64 frames can run many times within a minute.

A video's own decoder is the base's parameters plus a per-video modulation (``modulate``), so each
parameter name below is what a file's delta is keyed by.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nvp_rt import bases

from ..inr.hnerv import ConvNeXtBlock, LayerNorm2d


@dataclass(frozen=True)
class BaseConfig:
    # The shipped base's shape: a latent 10x smaller than the frame, 16 channels. A finer one (5x, 8
    # channels: twice the values) raised the ceiling on real clips (unquantised Big Buck Bunny 27.75 dB
    # against 26.05, bikes 36.53 against 33.43) but, pretrained fully, lost 2-3 dB at 0.1 bpp, where its
    # coded latents need steps of 2-3 that its pretraining noise (at most 1) never showed it: BD-PSNR
    # against x264 -6.24 / -11.57 dB against this shape's -6.58 / -8.62 (docs/base.md, "Latent shape").
    latent_dim: int = 16
    encoder_dims: tuple[int, ...] = (64, 128)
    strides: tuple[int, ...] = (5, 2)  # encoder downsampling, first to last; the decoder mirrors them
    stem_dim: int = 128
    block_dims: tuple[int, ...] = (32, 16)  # decoder block outputs, shallow to deep
    block_kernels: tuple[int, ...] = (1, 3)

    def __post_init__(self):
        n = len(self.strides)
        if not (len(self.encoder_dims) == len(self.block_dims) == len(self.block_kernels) == n > 0):
            raise ValueError("encoder_dims, block_dims, block_kernels and strides must have one entry per stage")
        values = (self.latent_dim, self.stem_dim, *self.encoder_dims, *self.block_dims, *self.strides)
        if not all(isinstance(v, int) and 0 < v <= 4096 for v in values):
            raise ValueError(f"base sizes must be positive integers, got {asdict(self)}")
        if not all(k in (1, 3, 5) for k in self.block_kernels):
            raise ValueError(f"block kernels must be 1, 3 or 5, got {self.block_kernels}")

    @property
    def factor(self) -> int:
        """Frame side / latent side."""
        return math.prod(self.strides)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        if height % self.factor or width % self.factor or min(height, width) < self.factor:
            raise ValueError(
                f"frame size {width}x{height} does not suit the base: both sides must be multiples of {self.factor}"
            )
        return self.latent_dim, height // self.factor, width // self.factor

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> BaseConfig:
        known = set(cls.__dataclass_fields__)
        if not isinstance(values, dict) or set(values) - known:
            raise ValueError(f"not a base configuration: {values!r:.200}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})  # type: ignore[arg-type]


class BaseEncoder(nn.Module):
    """Frame -> latent: per stage a patchify conv (kernel = stride) + channels-first LayerNorm + one ConvNeXt
    block, then a 1x1 projection to the latent's channels."""

    def __init__(self, config: BaseConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for s, d in zip(config.strides, config.encoder_dims):
            layers += [nn.Conv2d(c_in, d, s, stride=s), LayerNorm2d(d, eps=1e-6), ConvNeXtBlock(d)]
            c_in = d
        layers.append(nn.Conv2d(c_in, config.latent_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


class Stem(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.mix = nn.Conv2d(c_out, c_out, 3, padding=1)  # context at the latent's size, where it is cheap
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.conv(x))
        return x + self.act(self.mix(x))


class Up(nn.Module):
    """HNeRV's block: conv (C_in -> C_out * s^2) -> PixelShuffle(s) -> GELU."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out * stride * stride, kernel, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(stride)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.shuffle(self.conv(x)))


class Head(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x)) * 0.5 + 0.5


class BaseDecoder(nn.Module):
    """Latent -> named taps, shallow to deep, ending in "rgb" (like every INR's ``decode``)."""

    def __init__(self, config: BaseConfig):
        super().__init__()
        self.config = config
        stages: dict[str, nn.Module] = {"stem": Stem(config.latent_dim, config.stem_dim)}
        c_in = config.stem_dim
        for i, (s, c, k) in enumerate(zip(reversed(config.strides), config.block_dims, config.block_kernels)):
            stages[f"block{i + 1}"] = Up(c_in, c, s, k)
            c_in = c
        stages["rgb"] = Head(c_in)
        self.stages = nn.ModuleDict(stages)

    @property
    def tap_names(self) -> list[str]:
        return list(self.stages.keys())

    def forward(self, latent: torch.Tensor, until: str = "rgb") -> dict[str, torch.Tensor]:
        """Features (N, C, H, W) of every tap up to and including ``until``; nothing deeper runs. A forward
        (not a method of its own) so that ``torch.func.functional_call`` runs it with a video's own weights."""
        if until not in self.stages:
            raise KeyError(f"unknown tap {until!r}; taps are {self.tap_names}")
        taps = {}
        x = latent
        for name, stage in self.stages.items():
            x = taps[name] = stage(x)
            if name == until:
                break
        return taps

    def tap_shapes(self, height: int, width: int) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of every tap for frames of ``height`` x ``width``."""
        _, h, w = self.config.latent_shape(height, width)
        shapes = {"stem": (self.config.stem_dim, h, w)}
        for i, (s, c) in enumerate(zip(reversed(self.config.strides), self.config.block_dims)):
            h, w = h * s, w * s
            shapes[f"block{i + 1}"] = (c, h, w)
        shapes["rgb"] = (3, h, w)
        return shapes


class Base(nn.Module):
    """Encoder + decoder; its identity in files is ``weights_hash`` of its state."""

    def __init__(self, config: BaseConfig | None = None):
        super().__init__()
        self.config = config or BaseConfig()
        self.encoder = BaseEncoder(self.config)
        self.decoder = BaseDecoder(self.config)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(frames))["rgb"]


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the weights' names, dtypes, shapes and bytes in name order: the base's identity in files
    (``nvp_rt.bases.weights_hash``, which the runtime recomputes from the weights file)."""
    return bases.weights_hash({name: t.detach().cpu().contiguous().numpy() for name, t in state.items()})
