"""Reduced configurations of the heavy presets: the same ``build`` code path at a fraction of the size.

Few layers, narrow widths and a 64x96 input (64x64 for BLIP), 8-frame clips for the
video models: what tests and machines with little memory run (``nvp-export --reduced``).
The injection points keep their names; outputs are meaningless unless the checkpoint
passed as ``weights`` was trained in the same reduced shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from transformers import ResNetConfig

from ..backbone import Backbone
from . import blip, detr_r50, i3d_r50, segformer_b0, slowfast_r50

__all__ = ["REDUCED", "INPUT_SIZE"]

INPUT_SIZE = (64, 96)
Weights = str | os.PathLike | None


def detr(weights: Weights = None) -> Backbone:
    config = detr_r50.detr_config(
        backbone_config=ResNetConfig(  # type: ignore[call-arg]  # out_features: BackboneConfigMixin's, untyped
            embedding_size=8, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], out_features=["stage4"]
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
    )
    return detr_r50.build(weights, config=config, input_size=INPUT_SIZE)


def slowfast(weights: Weights = None) -> Backbone:
    return slowfast_r50.build(
        weights,
        config=slowfast_r50.SlowFastConfig(frames=8, crop=INPUT_SIZE, width=16, depths=(1, 1, 1, 1), num_classes=10),
    )


def i3d(weights: Weights = None) -> Backbone:
    return i3d_r50.build(
        weights, config=i3d_r50.I3DConfig(frames=8, crop=INPUT_SIZE, width=8, depths=(1, 1, 1, 1), num_classes=10)
    )


def blip_small(weights: Weights = None) -> Backbone:
    return blip.build(
        weights,
        config=blip.blip_config(
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=4,
                num_attention_heads=2,
                image_size=64,
                patch_size=16,
            ),
            text_config=dict(
                vocab_size=120,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                bos_token_id=100,
                sep_token_id=101,
                pad_token_id=0,
                encoder_hidden_size=32,
            ),
        ),
    )


def segformer(weights: Weights = None) -> Backbone:
    return segformer_b0.build(
        weights,
        config=segformer_b0.segformer_config(
            hidden_sizes=[8, 16, 24, 32],
            depths=[1, 1, 1, 1],
            decoder_hidden_size=16,
            num_attention_heads=[1, 1, 1, 1],
            num_labels=5,
        ),
        input_size=INPUT_SIZE,
    )


REDUCED: dict[str, Callable[[Weights], Backbone]] = {
    "detr_r50": detr,
    "slowfast_r50": slowfast,
    "i3d_r50": i3d,
    "blip": blip_small,
    "segformer_b0": segformer,
}
