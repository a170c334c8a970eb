"""ImageNet classifiers defined with torchvision's parameter names (ResNet-50, ViT-B/16) as Backbones."""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import nn

from ..backbone import Backbone
from ..weights import find_cached, load_exact, read_state_dict
from .labels import imagenet_labels


def torchvision_classifier(
    name: str, net: nn.Module, preprocess, weights: str | os.PathLike | None, cached_names: Sequence[str]
):
    """An ImageNet classifier defined with torchvision's parameter names, as a Backbone of ``net.stages()``.

    Weights come from ``weights``, else a checkpoint found in the local caches, else none (random init).
    """
    path = weights if weights is not None else find_cached(cached_names)
    if path is not None:
        load_exact(net, read_state_dict(path), str(path))
    return Backbone(
        name,
        net.stages(),
        preprocess,
        task="classification",
        labels=imagenet_labels(),
        pretrained=path is not None,
        weights_source=str(path) if path else f"pass weights=PATH to a torchvision {name} state dict",
    )
