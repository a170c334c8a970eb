"""Backbone presets by name: ``load_backbone("efficientnet_lite0")``.

One module per preset or family of presets (architecture, preprocessing, named stages and
injection points, where its weights come from); ``PRESETS`` maps names to their builders,
``reduced`` holds the small configurations tests use, ``torchvision_classifier`` the ImageNet
classifiers with torchvision's parameter names. The ``Backbone`` interface itself is
``nvp_export.backbone`` and the checkpoint loading they share ``nvp_export.weights``: the INRs,
routes and fidelity use them too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import torch

from ..backbone import Backbone
from ..weights import WeightsError
from . import blip, clip_rn50, detr_r50, efficientnet_lite, i3d_r50, resnet50, segformer_b0, slowfast_r50, vit_b_16
from .reduced import REDUCED

PRESETS: dict[str, Callable[..., Backbone]] = {
    "efficientnet_lite0": partial(efficientnet_lite.build, 0),
    "efficientnet_lite1": partial(efficientnet_lite.build, 1),
    "efficientnet_lite2": partial(efficientnet_lite.build, 2),
    "resnet50": resnet50.build,
    "vit_b_16": vit_b_16.build,
    "clip_rn50": clip_rn50.build,
    "detr_r50": detr_r50.build,
    "slowfast_r50": slowfast_r50.build,
    "i3d_r50": i3d_r50.build,
    "blip": blip.build,
    "segformer_b0": segformer_b0.build,
}

__all__ = ["PRESETS", "REDUCED", "load_backbone", "WeightsError"]


def load_backbone(name: str, weights: str | os.PathLike | None = None, reduced: bool = False) -> Backbone:
    """The preset ``name``, with the checkpoint ``weights`` if given, else the weights found locally;
    ``reduced``: its reduced configuration (``zoo.reduced``).

    Weights a preset has no checkpoint for are initialised from a fixed seed, without touching the
    caller's random state: the same preset is then the same model in every process, so its graphs
    (keyed by a hash of the weights) are exported into a model store once, not once per run.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown backbone {name!r}; presets: {', '.join(sorted(PRESETS))}")
    if reduced and name not in REDUCED:
        raise ValueError(f"{name} has no reduced configuration; presets that have one: {', '.join(sorted(REDUCED))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return REDUCED[name](weights) if reduced else PRESETS[name](weights=weights)
