"""SlowFast-R50 (Kinetics-400 action recognition) with pytorchvideo's parameter names.

pytorchvideo's ``slowfast_r50`` (``SLOWFAST_8x8_R50.pyth``, keys under ``model_state``)
loads unchanged into this definition. The model sees a clip of ``frames`` frames
(32 in the paper): the fast pathway at full rate, the slow pathway every
alpha = 4th frame with beta_inv = 8 times the fast pathway's channels; after each
of the first four blocks a time-strided conv fuses fast into slow.

Every stage boundary is a two-pathway injection point ``[slow (C_s, T/alpha, H, W),
fast (C_f, T, H, W)]``: a ``PathwayAdapter`` feeds both from one INR tap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import MultiPathwayBackbone, temporal_indices
from .resnet3d import BasicHead, BasicStem, ResStage, action_backbone, init_like_pytorchvideo


@dataclass(frozen=True)
class SlowFastConfig:
    frames: int = 32  # fast-pathway clip length
    crop: tuple[int, int] = (224, 224)
    width: int = 64  # slow stem channels; every stage width scales with it
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    alpha: int = 4  # slow pathway frame stride
    beta_inv: int = 8  # slow / fast channel ratio
    fusion_kernel: int = 7  # temporal kernel of the fast->slow conv
    num_classes: int = 400
    # pytorchvideo's fixed head pool kernels (slow, fast); clipped to the final map for small inputs.
    head_pool: tuple[tuple[int, int, int], tuple[int, int, int]] = ((8, 7, 7), (32, 7, 7))


class FuseFastToSlow(nn.Module):
    def __init__(self, fast_channels: int, kernel: int, alpha: int):
        super().__init__()
        self.conv_fast_to_slow = nn.Conv3d(
            fast_channels,
            2 * fast_channels,
            (kernel, 1, 1),
            stride=(alpha, 1, 1),
            padding=(kernel // 2, 0, 0),
            bias=False,
        )
        self.norm = nn.BatchNorm3d(2 * fast_channels)
        self.activation = nn.ReLU()

    def forward(self, x):
        slow, fast = x
        return [torch.cat([slow, self.activation(self.norm(self.conv_fast_to_slow(fast)))], dim=1), fast]


class MultiPathWayWithFuse(nn.Module):
    def __init__(self, blocks: list[nn.Module], fusion: nn.Module | None):
        super().__init__()
        self.multipathway_blocks = nn.ModuleList(blocks)
        self.multipathway_fusion = fusion if fusion is not None else nn.Identity()

    def forward(self, x):
        return self.multipathway_fusion([block(p) for block, p in zip(self.multipathway_blocks, x)])


class PoolConcatPathway(nn.Module):
    def __init__(self, kernels):
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool3d(k, stride=1) for k in kernels)

    def forward(self, x):
        return torch.cat([pool(p) for pool, p in zip(self.pool, x)], dim=1)


class PackPathway(nn.Module):
    """(N, 3, T, H, W) clip -> [slow: every alpha-th frame, fast: all frames]."""

    def __init__(self, alpha: int):
        super().__init__()
        self.alpha = alpha

    def forward(self, clip):
        t = clip.shape[2]
        return [clip.index_select(2, temporal_indices(t, t // self.alpha, clip.device)), clip]


class SlowFast(nn.Module):
    def __init__(self, config: SlowFastConfig = SlowFastConfig()):
        super().__init__()
        c = config
        if c.frames % c.alpha or c.crop[0] % 32 or c.crop[1] % 32:
            raise ValueError(f"SlowFast needs frames divisible by alpha={c.alpha} and a crop divisible by 32; got {c}")
        slow, fast = c.width, c.width // c.beta_inv
        blocks: list[nn.Module] = [
            MultiPathWayWithFuse(
                [BasicStem(3, slow, (1, 7, 7)), BasicStem(3, fast, (5, 7, 7))],
                FuseFastToSlow(fast, c.fusion_kernel, c.alpha),
            )
        ]
        slow_kernels = ((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1))
        slow_in, fast_in = slow + 2 * fast, fast
        for i, depth in enumerate(c.depths):
            inner_s, inner_f = slow * 2**i, fast * 2**i
            out_s, out_f = 4 * inner_s, 4 * inner_f
            stride = 1 if i == 0 else 2
            last = i == len(c.depths) - 1
            blocks.append(
                MultiPathWayWithFuse(
                    [
                        ResStage(depth, slow_in, inner_s, out_s, [slow_kernels[i]], stride),
                        ResStage(depth, fast_in, inner_f, out_f, [(3, 1, 1)], stride),
                    ],
                    None if last else FuseFastToSlow(out_f, c.fusion_kernel, c.alpha),
                )
            )
            slow_in, fast_in = out_s + (0 if last else 2 * out_f), out_f
        final = ((c.frames // c.alpha, c.crop[0] // 32, c.crop[1] // 32), (c.frames, c.crop[0] // 32, c.crop[1] // 32))
        blocks.append(PoolConcatPathway([tuple(map(min, k, m)) for k, m in zip(c.head_pool, final)]))
        blocks.append(BasicHead(slow_in + fast_in, c.num_classes, None))
        self.blocks = nn.ModuleList(blocks)
        self.pack = PackPathway(c.alpha)
        init_like_pytorchvideo(self)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """stem (with fusion), res2..res5 (each with fusion but res5), head; boundaries are [slow, fast]."""
        b = self.blocks
        return [
            ("stem", nn.Sequential(self.pack, b[0])),
            ("res2", b[1]),
            ("res3", b[2]),
            ("res4", b[3]),
            ("res5", b[4]),
            ("head", nn.Sequential(b[5], b[6])),
        ]

    def forward(self, clip):
        x = self.pack(clip)
        for block in self.blocks:
            x = block(x)
        return x


def build(weights: str | os.PathLike | None = None, config: SlowFastConfig = SlowFastConfig()) -> MultiPathwayBackbone:
    return action_backbone("slowfast_r50", SlowFast(config), config, weights, "SLOWFAST_8x8_R50.pyth")
