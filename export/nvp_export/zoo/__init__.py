"""Backbone presets by name: ``load_backbone("efficientnet_lite0")``."""

from __future__ import annotations

import os
from typing import Callable

from ..backbone import Backbone
from . import clip_rn50, efficientnet_lite0, resnet50, vit_b_16
from .weights import WeightsError

PRESETS: dict[str, Callable[..., Backbone]] = {
    "efficientnet_lite0": efficientnet_lite0.build,
    "resnet50": resnet50.build,
    "vit_b_16": vit_b_16.build,
    "clip_rn50": clip_rn50.build,
}

__all__ = ["PRESETS", "load_backbone", "WeightsError"]


def load_backbone(name: str, weights: str | os.PathLike | None = None) -> Backbone:
    """The preset ``name``, with the checkpoint ``weights`` if given, else the weights found locally."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](weights=weights)
