"""I3D-R50 (Kinetics-400 action recognition) with pytorchvideo's parameter names.

pytorchvideo's ``i3d_r50`` (``I3D_8x8_R50.pyth``, keys under ``model_state``) loads
unchanged: ``blocks.0`` stem with a (5, 7, 7) conv, ``blocks.1`` res2, ``blocks.2`` a
(2, 1, 1) max-pool that halves the clip's frames, ``blocks.3-5`` res3-res5 (inflated
(3, 1, 1) kernels on alternating blocks), ``blocks.6`` head. Injection points after
the max-pool hold half the frames; the ``PathwayAdapter`` feeds them from the INR
frames that pool keeps in step with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from ..backbone import MultiPathwayBackbone
from .resnet3d import BasicHead, BasicStem, ResStage, action_backbone, init_like_pytorchvideo


@dataclass(frozen=True)
class I3DConfig:
    frames: int = 32
    crop: tuple[int, int] = (224, 224)
    width: int = 64  # stem channels; every stage width scales with it
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    num_classes: int = 400
    head_pool: tuple[int, int, int] = (4, 7, 7)  # pytorchvideo's fixed kernel, clipped to the final map


CONV_A_KERNELS = (
    [(3, 1, 1)],
    [(3, 1, 1), (1, 1, 1)],
    [(3, 1, 1), (1, 1, 1)],
    [(1, 1, 1), (3, 1, 1)],
)


class I3D(nn.Module):
    def __init__(self, config: I3DConfig = I3DConfig()):
        super().__init__()
        c = config
        if c.frames % 2 or c.crop[0] % 32 or c.crop[1] % 32:
            raise ValueError(f"I3D needs an even number of frames and a crop divisible by 32; got {c}")
        blocks: list[nn.Module] = [BasicStem(3, c.width, (5, 7, 7))]
        dim_in = c.width
        for i, depth in enumerate(c.depths):
            inner = c.width * 2**i
            blocks.append(ResStage(depth, dim_in, inner, 4 * inner, CONV_A_KERNELS[i], 1 if i == 0 else 2))
            dim_in = 4 * inner
            if i == 0:
                blocks.append(nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)))
        final = (c.frames // 2, c.crop[0] // 32, c.crop[1] // 32)
        (t, h, w), (ft, fh, fw) = c.head_pool, final
        blocks.append(BasicHead(dim_in, c.num_classes, (min(t, ft), min(h, fh), min(w, fw))))
        self.blocks = nn.ModuleList(blocks)
        init_like_pytorchvideo(self)

    def stages(self) -> list[tuple[str, nn.Module]]:
        b = self.blocks
        return [
            ("stem", b[0]),
            ("res2", b[1]),
            ("res3", nn.Sequential(b[2], b[3])),
            ("res4", b[4]),
            ("res5", b[5]),
            ("head", b[6]),
        ]

    def forward(self, clip):
        for block in self.blocks:
            clip = block(clip)
        return clip


def build(weights: str | os.PathLike | None = None, config: I3DConfig = I3DConfig()) -> MultiPathwayBackbone:
    return action_backbone("i3d_r50", I3D(config), config, weights, "I3D_8x8_R50.pyth")
