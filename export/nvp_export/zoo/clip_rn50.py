"""CLIP RN50 image tower (image embedding) with OpenAI CLIP / open_clip parameter names.

The "modified ResNet": a three-conv stem with average pooling, anti-aliased
(avg-pool) downsampling in the bottlenecks and an attention-pooling head that
outputs a 1024-d embedding. Module names follow ``visual.*`` of the public
checkpoints, so a user's CLIP state dict (full model or image tower alone) loads
unchanged. Without one it runs randomly initialised and says so.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone, Preprocess
from ..weights import load_exact, read_state_dict

PREPROCESS = Preprocess(
    input_size=(224, 224),
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out)),
                    ]
                )
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        return self.relu3(y + identity)


class AttentionPool2d(nn.Module):
    """Attention of the mean token over the spatial tokens, as in CLIP."""

    def __init__(self, spatial: int, dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial**2 + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)
        self.num_heads = heads

    def forward(self, x):
        x = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + self.positional_embedding[:, None, :].to(x.dtype)
        out, _ = F.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return out.squeeze(0)


class ModifiedResNet(nn.Module):
    def __init__(
        self, layers=(3, 4, 6, 3), output_dim: int = 1024, heads: int = 32, image_size: int = 224, width: int = 64
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, blocks in enumerate(layers, start=1):
            planes, stride = width * 2 ** (i - 1), 1 if i == 1 else 2
            seq = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            seq += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*seq))
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """stem 64@56, layer1 256@56, layer2 512@28, layer3 1024@14, layer4 2048@7 (at 224), attnpool."""
        stem = nn.Sequential(
            self.conv1,
            self.bn1,
            self.relu1,
            self.conv2,
            self.bn2,
            self.relu2,
            self.conv3,
            self.bn3,
            self.relu3,
            self.avgpool,
        )
        return [
            ("stem", stem),
            *((f"layer{i}", self.get_submodule(f"layer{i}")) for i in range(1, 5)),
            ("attnpool", self.attnpool),
        ]

    def forward(self, x):
        for _, stage in self.stages():
            x = stage(x)
        return x


def image_tower_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of a full CLIP state dict, unprefixed; an image-tower dict as is."""
    if any(k.startswith("visual.") for k in state):
        return {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    return state


def _embedding(outputs: torch.Tensor) -> torch.Tensor:
    return F.normalize(outputs.float(), dim=-1)


def build(weights: str | os.PathLike | None = None) -> Backbone:
    net = ModifiedResNet()
    if weights is not None:
        load_exact(net, image_tower_state(read_state_dict(weights)), str(weights))
    return Backbone(
        "clip_rn50",
        net.stages(),
        PREPROCESS,
        task="embedding",
        pretrained=weights is not None,
        weights_source=str(weights) if weights else "pass weights=PATH to a CLIP RN50 state dict",
        postprocess=_embedding,
    )
