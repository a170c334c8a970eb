"""HNeRV (Chen et al., CVPR 2023): a ConvNeXt encoder makes a tiny per-frame embedding, a NeRV-style decoder grows it.

Decoder recipe (REFERENCE.md): 1x1 conv embed_dim -> fc_dim + GELU ("stem"), then
per stage i Conv(k_i) -> PixelShuffle(s_i) -> GELU with k_i = min(ks_first + 2i,
ks_max) and channels max(round(C / reduction), lower_width), then a 3x3 conv head
-> tanh * 0.5 + 0.5. The encoder is used only while fitting; the file stores the
decoder and the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import INR, GridConfig, RGBHead, UpBlock


@dataclass
class HNeRVConfig(GridConfig):
    embed_dim: int = 16
    reduction: float = 1.2
    lower_width: int = 12
    ks_first: int = 1
    # The reference's 5 costs 1.6x the step time of 3; at CPU budgets (~10-15 epochs) the time is worth
    # more as epochs and width: +1.0 dB on bikes and Big Buck Bunny at 0.5 bpp, equal time and bits.
    ks_max: int = 3
    encoder_dim: int = 64

    def channels(self) -> list[int]:
        widths = [self.fc_dim]
        for _ in self.strides:
            widths.append(max(round(widths[-1] / self.reduction), self.lower_width))
        return widths

    def kernels(self) -> list[int]:
        return [min(self.ks_first + 2 * i, self.ks_max) for i in range(len(self.strides))]

    def stored_values(self) -> tuple[int, int]:
        """(decoder parameters, embedding values): what the file stores."""
        c = self.channels()
        params = self.embed_dim * c[0] + c[0]
        for i, (s, k) in enumerate(zip(self.strides, self.kernels())):
            params += c[i] * c[i + 1] * s * s * k * k + c[i + 1] * s * s
        params += c[-1] * 3 * 9 + 3
        h, w = self.grid
        return params, self.num_frames * self.embed_dim * h * w


class HNeRV(INR):
    family = "hnerv"

    def __init__(self, config: HNeRVConfig):
        super().__init__(config)
        c = config.channels()
        stages: dict[str, nn.Module] = {"stem": nn.Sequential(nn.Conv2d(config.embed_dim, c[0], 1), nn.GELU())}
        for i, (s, k) in enumerate(zip(config.strides, config.kernels())):
            stages[f"block{i + 1}"] = UpBlock(c[i], c[i + 1], s, k)
        stages["rgb"] = RGBHead(c[-1], 3)
        self.stages = nn.ModuleDict(stages)
        h, w = config.grid
        self.register_buffer("embeddings", torch.zeros(config.num_frames, config.embed_dim, h, w))

    def stem_input(self, frame_idx):
        return self.embeddings[frame_idx.to(self.embeddings.device)]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor (ConvNeXt's channels-first norm)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))  # ConvNeXt layer scale

    def forward(self, x):
        y = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


# Below this width the embedding is not normalised itself but projected from a normalised stage of
# encoder_dim channels: a LayerNorm over few channels leaves them little freedom (over 2, each is
# +-1 before its affine), and such fits sat at the mean frame (Big Buck Bunny, 0.04 bpp: 13.0 dB,
# 2 fresh starts; projected: 20.8 dB in the same 45 s). At 16 both forms reached 21.6-21.7 dB.
MIN_NORMALISED_EMBED_DIM = 8


class HNeRVEncoder(nn.Module):
    """ConvNeXt, one block per stage, patchify downsampling by the decoder's strides; image -> embedding."""

    def __init__(self, config: HNeRVConfig):
        super().__init__()
        projected = config.embed_dim < MIN_NORMALISED_EMBED_DIM
        last = config.encoder_dim if projected else config.embed_dim
        dims = [config.encoder_dim] * (len(config.strides) - 1) + [last]
        layers: list[nn.Module] = []
        c_in = 3
        for s, d in zip(config.strides, dims):
            layers += [nn.Conv2d(c_in, d, s, stride=s), LayerNorm2d(d, eps=1e-6), ConvNeXtBlock(d)]
            c_in = d
        if projected:
            layers.append(nn.Conv2d(last, config.embed_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images):
        return self.net(images)
