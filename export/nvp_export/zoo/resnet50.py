"""ResNet-50 (ImageNet classification) with torchvision's parameter names.

torchvision does not import with the CPU-only torch build here, so the model is
defined in this file with torchvision's module names: a user's
``resnet50-*.pth`` state dict loads unchanged. Without one it runs randomly
initialised and says so.
"""

from __future__ import annotations

import os

from torch import nn

from ..backbone import Backbone, Preprocess
from .torchvision_classifier import torchvision_classifier

PREPROCESS = Preprocess(input_size=(224, 224))  # ImageNet mean/std
# torchvision's file names for its V1 and V2 ImageNet weights, looked up in torch hub's cache.
CACHED_NAMES = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        width, out = planes, planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # Stride on the 3x3 conv (ResNet v1.5), as torchvision does.
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
            layers = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            layers += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[tuple[str, nn.Module]]:
        """stem 64@56, layer1 256@56, layer2 512@28, layer3 1024@14, layer4 2048@7 (at 224), classifier."""
        return [
            ("stem", nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)),
            *((f"layer{i}", self.get_submodule(f"layer{i}")) for i in range(1, 5)),
            ("classifier", nn.Sequential(self.avgpool, nn.Flatten(1), self.fc)),
        ]

    def forward(self, x):
        for _, stage in self.stages():
            x = stage(x)
        return x


def build(weights: str | os.PathLike | None = None) -> Backbone:
    return torchvision_classifier("resnet50", ResNet50(), PREPROCESS, weights, CACHED_NAMES)
