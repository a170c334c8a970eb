"""3-D ResNet building blocks with pytorchvideo's module names.

pytorchvideo does not import here (its head imports torchvision), so SlowFast and
I3D are defined with these blocks, whose attribute names reproduce pytorchvideo's
(``conv``/``norm`` stems, ``res_blocks.j.branch1_conv``, ``branch2.conv_a`` ...,
``proj`` heads): a user's ``SLOWFAST_8x8_R50.pyth`` / ``I3D_8x8_R50.pyth`` state dict
loads unchanged. Strides sit on ``conv_b`` (pytorchvideo's ``stride_1x1=False``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

KINETICS_MEAN, KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)

Triple = tuple[int, int, int]


def _same_padding(kernel: Triple) -> Triple:
    t, h, w = kernel
    return t // 2, h // 2, w // 2


class BasicStem(nn.Module):
    """conv (stride 1,2,2) -> BN -> ReLU -> max-pool (1,3,3) stride (1,2,2)."""

    def __init__(self, dim_in: int, dim_out: int, kernel: Triple):
        super().__init__()
        self.conv = nn.Conv3d(dim_in, dim_out, kernel, stride=(1, 2, 2), padding=_same_padding(kernel), bias=False)
        self.norm = nn.BatchNorm3d(dim_out)
        self.activation = nn.ReLU()
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x):
        return self.pool(self.activation(self.norm(self.conv(x))))


class BottleneckBlock(nn.Module):
    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, conv_a_kernel: Triple, spatial_stride: int):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, conv_a_kernel, padding=_same_padding(conv_a_kernel), bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(
            dim_inner, dim_inner, (1, 3, 3), stride=(1, spatial_stride, spatial_stride), padding=(0, 1, 1), bias=False
        )
        self.norm_b = nn.BatchNorm3d(dim_inner)
        self.act_b = nn.ReLU()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x):
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, conv_a_kernel: Triple, spatial_stride: int):
        super().__init__()
        self.branch1_conv = self.branch1_norm = None
        if dim_in != dim_out or spatial_stride != 1:
            self.branch1_conv = nn.Conv3d(dim_in, dim_out, 1, stride=(1, spatial_stride, spatial_stride), bias=False)
            self.branch1_norm = nn.BatchNorm3d(dim_out)
        self.branch2 = BottleneckBlock(dim_in, dim_inner, dim_out, conv_a_kernel, spatial_stride)
        self.activation = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return self.activation(self.branch2(x) + shortcut)


class ResStage(nn.Module):
    """``depth`` bottleneck blocks; block j uses ``conv_a_kernels[j % len(conv_a_kernels)]`` (I3D alternates)."""

    def __init__(
        self,
        depth: int,
        dim_in: int,
        dim_inner: int,
        dim_out: int,
        conv_a_kernels: Sequence[Triple],
        spatial_stride: int,
    ):
        super().__init__()
        self.res_blocks = nn.ModuleList(
            ResBlock(
                dim_in if j == 0 else dim_out,
                dim_inner,
                dim_out,
                conv_a_kernels[j % len(conv_a_kernels)],
                spatial_stride if j == 0 else 1,
            )
            for j in range(depth)
        )

    def forward(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class BasicHead(nn.Module):
    """[avg-pool] -> dropout -> Linear over channels -> global average -> (N, classes) logits."""

    def __init__(self, dim_in: int, num_classes: int, pool_kernel: Triple | None, dropout: float = 0.5):
        super().__init__()
        self.pool = None if pool_kernel is None else nn.AvgPool3d(pool_kernel, stride=1)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim_in, num_classes)
        self.output_pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x):
        if self.pool is not None:
            x = self.pool(x)
        x = self.proj(self.dropout(x).permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return self.output_pool(x).flatten(1)


def head_pool_kernel(frames: int, crop: tuple[int, int]) -> Triple:
    """The head's average-pool kernel covering the whole final map (stride 32), as pytorchvideo fixes it for 224."""
    return (frames, crop[0] // 32, crop[1] // 32)


def kinetics400_labels() -> tuple[str, ...]:
    """Kinetics-400 has no label file offline; class indices are named by number."""
    return tuple(f"kinetics400_class_{i}" for i in range(400))


def init_like_pytorchvideo(module: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small-normal linear: a sane random start when no checkpoint is given."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


def action_backbone(name: str, net: nn.Module, config, weights, checkpoint: str):
    """A pytorchvideo-named action model as a Backbone of ``net.stages()``, Kinetics normalisation."""
    from ..backbone import MultiPathwayBackbone, Preprocess
    from ..weights import load_exact, read_state_dict

    if weights is not None:
        load_exact(net, read_state_dict(weights), str(weights))
    return MultiPathwayBackbone(
        name,
        net.stages(),
        Preprocess(input_size=config.crop, mean=KINETICS_MEAN, std=KINETICS_STD, num_frames=config.frames),
        task="action",
        labels=kinetics400_labels() if config.num_classes == 400 else (),
        pretrained=weights is not None,
        weights_source=str(weights) if weights else f"pass weights=PATH to pytorchvideo's {checkpoint}",
    )
