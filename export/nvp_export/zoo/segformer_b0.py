"""SegFormer-B0 (ADE20K semantic segmentation): transformers' ``SegformerForSemanticSegmentation``.

Built offline from a ``SegformerConfig`` (B0 widths 32/64/160/256, 150 classes);
pretrained weights load where the user has them (a local ``save_pretrained``
directory, e.g. nvidia/segformer-b0-finetuned-ade-512-512); otherwise it runs
randomly initialised and says so.

The all-MLP decode head reads every encoder scale, so a stage boundary carries all
scales computed so far: injection point ``stage{k}`` is a ``MultiPathwayPoint`` of k
maps, and one INR tap feeds each through its own micro adapter. ``postprocess``
upsamples the 1/4-resolution logits to the original frame and takes the argmax.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from ..backbone import MultiPathwayBackbone, Preprocess
from ..weights import WeightsError

__all__ = ["segformer_config", "build", "SegformerBackbone"]

INPUT_SIZE = (384, 672)  # close to the reference clips' 16:9, both sides divisible by 32


def segformer_config(**overrides: Any) -> SegformerConfig:
    """SegFormer-B0 for ADE20K's 150 classes; ``overrides`` shrink it for tests."""
    return SegformerConfig(**{"num_labels": 150, **overrides})


class _EncoderStage(nn.Module):
    """Scales so far (or the image) -> the same scales plus this stage's map."""

    def __init__(self, stage: nn.Module, first: bool):
        super().__init__()
        self.stage, self.first = stage, first

    def forward(self, x):
        scales = [] if self.first else list(x)
        return scales + [self.stage(x if self.first else scales[-1])]


class _LastStageAndHead(nn.Module):
    def __init__(self, stage: nn.Module, head: nn.Module):
        super().__init__()
        self.stage, self.head = stage, head

    def forward(self, scales):
        return self.head(list(scales) + [self.stage(scales[-1])])


class SegformerBackbone(MultiPathwayBackbone):
    def postprocess(self, logits: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, K, h, w) logits -> (N, H, W) int64 class masks at the original frame size (default: input size)."""
        size = image_size or self.preprocess.input_size
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)


def _load(weights: str | os.PathLike) -> SegformerForSemanticSegmentation:
    path = Path(weights)
    if not path.is_dir():
        raise WeightsError(f"SegFormer weights must be a save_pretrained directory; got {path}")
    try:
        return SegformerForSemanticSegmentation.from_pretrained(path, local_files_only=True)
    except Exception as e:  # a broken or foreign checkpoint directory, reported in one line
        raise WeightsError(f"cannot load SegFormer from {path}: {type(e).__name__}: {e}".splitlines()[0]) from None


def build(
    weights: str | os.PathLike | None = None,
    config: SegformerConfig | None = None,
    input_size: tuple[int, int] = INPUT_SIZE,
) -> SegformerBackbone:
    model = _load(weights) if weights is not None else SegformerForSemanticSegmentation(config or segformer_config())
    model.eval()
    encoder_stages = list(model.segformer.stages)
    stages: list[tuple[str, nn.Module]] = [
        (f"stage{i + 1}", _EncoderStage(s, i == 0)) for i, s in enumerate(encoder_stages[:-1])
    ]
    stages.append(("head", _LastStageAndHead(encoder_stages[-1], model.decode_head)))
    model_config: Any = model.config  # transformers types its fields as unions with None
    id2label = model_config.id2label or {}
    backbone = SegformerBackbone(
        "segformer_b0",
        stages,
        Preprocess(input_size=input_size),  # ImageNet mean/std, as SegFormer's image processor
        task="segmentation",
        labels=[id2label.get(i, f"class_{i}") for i in range(model_config.num_labels)],
        pretrained=weights is not None,
        weights_source=str(weights) if weights else "pass weights=DIR of nvidia/segformer-b0-finetuned-ade-512-512",
    )
    backbone.model = model  # the whole transformers model, e.g. for save_pretrained (shares the stages' weights)
    return backbone
