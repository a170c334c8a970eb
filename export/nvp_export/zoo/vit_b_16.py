"""ViT-B/16 (ImageNet classification) with torchvision's parameter names.

Defined here (torchvision does not import on the CPU-only torch build) with
torchvision's names, so a user's ``vit_b_16-*.pth`` loads unchanged.

Injection point: the patch embedding (768@14x14 at 224), the one place in a ViT
where the features are a spatial map that a resize + 1x1 conv can produce. Deeper
token sequences also carry the class token, which an adapter from an INR map has
no counterpart for.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn

from ..backbone import Backbone, Preprocess
from .torchvision_classifier import torchvision_classifier

PREPROCESS = Preprocess(input_size=(224, 224))  # ImageNet mean/std
CACHED_NAMES = ("vit_b_16-c867db91.pth",)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        # Indices 0 and 3 hold the weights, as in torchvision's MLPBlock.
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim), nn.Dropout(0.0)
        )

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_len: int, layers: int, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_len, dim).normal_(std=0.02))
        self.layers = nn.Sequential(
            OrderedDict((f"encoder_layer_{i}", EncoderBlock(dim, heads, mlp_dim)) for i in range(layers))
        )
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens):
        return self.ln(self.layers(tokens + self.pos_embedding))


class _Tokens(nn.Module):
    """Patch grid -> class token + patch tokens -> encoder -> class logits."""

    def __init__(self, vit: ViTB16):
        super().__init__()
        self.vit = vit

    def forward(self, grid):
        v = self.vit
        tokens = grid.flatten(2).transpose(1, 2)
        tokens = torch.cat([v.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return v.heads(v.encoder(tokens)[:, 0])


class ViTB16(nn.Module):
    def __init__(self, num_classes: int = 1000, image_size: int = 224, patch: int = 16):
        super().__init__()
        dim = 768
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder((image_size // patch) ** 2 + 1, layers=12, dim=dim, heads=12, mlp_dim=3072)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(dim, num_classes))

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("patch_embed", self.conv_proj), ("encoder", _Tokens(self))]

    def forward(self, x):
        return _Tokens(self)(self.conv_proj(x))


def build(weights: str | os.PathLike | None = None) -> Backbone:
    return torchvision_classifier("vit_b_16", ViTB16(), PREPROCESS, weights, CACHED_NAMES)
