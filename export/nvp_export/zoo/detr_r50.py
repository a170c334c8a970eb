"""DETR-R50 (COCO object detection): transformers' ``DetrForObjectDetection`` as named stages.

Built offline from a ``DetrConfig`` with ``use_timm_backbone=False`` (transformers' own
ResNet-50, frozen BN). Pretrained weights load where the user has them: a local
directory saved by ``save_pretrained`` (e.g. facebook/detr-resnet-50 at revision
``no_timm``) or a state-dict file with the same keys; otherwise it runs randomly
initialised and says so.

Stages: ``stem`` (ResNet embedder), ``stage1``-``stage4`` (ResNet stages), then
``detector``: the 1x1 input projection, sine position embedding from an all-valid
mask, the transformer encoder/decoder and the class/box heads. Injection points
are the ResNet stage boundaries. The raw output is ``(logits, boxes)`` with boxes
as normalised (cx, cy, w, h); since preprocessing resizes the whole frame, they
scale straight back to the original video's pixels in ``postprocess``.

``set_loss`` is DETR's Hungarian-matched set loss (transformers' implementation),
usable as L_task against ``DetrBackbone.pseudo_targets`` of the original frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DetrConfig, DetrForObjectDetection
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

from ..backbone import Backbone, Preprocess
from ..weights import WeightsError, load_exact, read_state_dict

__all__ = ["coco_labels", "detr_config", "build", "DetrBackbone", "Detections", "set_loss"]

# 16:9 like the reference clips, both sides divisible by 32 (DETR's stride); DETR trains at shortest side 800.
INPUT_SIZE = (448, 800)


@cache
def coco_labels() -> tuple[str, ...]:
    """DETR's 91 COCO category ids -> names ("N/A" for ids COCO does not use)."""
    lines = Path(__file__).with_name("coco91_classes.txt").read_text(encoding="utf-8").splitlines()
    if len(lines) != 91:
        raise RuntimeError(f"coco91_classes.txt must hold 91 names; it holds {len(lines)}")
    return tuple(lines)


def detr_config(**overrides: Any) -> DetrConfig:
    """DETR-R50 with transformers' ResNet-50 backbone and COCO's 91 ids; ``overrides`` shrink it for tests."""
    labels = coco_labels()
    kwargs: dict[str, Any] = dict(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={},
    )
    kwargs.update(overrides)
    return DetrConfig(**kwargs)


@dataclass
class Detections:
    """One frame's detections: ``boxes`` (K, 4) as (x0, y0, x1, y1) in the original frame's pixels."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor  # COCO category ids
    names: list[str]


class _Detector(nn.Module):
    """Last backbone feature map -> (class logits (N, Q, K+1), boxes (N, Q, 4) normalised cx, cy, w, h)."""

    def __init__(self, detr: DetrForObjectDetection):
        super().__init__()
        self.detr = detr

    def forward(self, feature_map: torch.Tensor):
        model = self.detr.model
        n = feature_map.shape[0]
        mask = torch.ones(n, *feature_map.shape[-2:], dtype=torch.bool, device=feature_map.device)
        tokens = model.input_projection(feature_map).flatten(2).transpose(1, 2)
        pos = (
            model.position_embedding(
                shape=feature_map.shape, device=feature_map.device, dtype=feature_map.dtype, mask=mask
            )
            .flatten(2)
            .transpose(1, 2)
        )
        # Every position is valid (whole frames, no padding): no attention masks, as transformers does for all-ones.
        memory = model.encoder(inputs_embeds=tokens, spatial_position_embeddings=pos).last_hidden_state
        query_pos = model.query_position_embeddings.weight.unsqueeze(0).repeat(n, 1, 1)
        hidden = model.decoder(
            inputs_embeds=torch.zeros_like(query_pos),
            spatial_position_embeddings=pos,
            object_queries_position_embeddings=query_pos,
            encoder_hidden_states=memory,
        ).last_hidden_state
        return self.detr.class_labels_classifier(hidden), self.detr.bbox_predictor(hidden).sigmoid()


def _stages(detr: DetrForObjectDetection) -> list[tuple[str, nn.Module]]:
    resnet = detr.model.backbone.model
    stages = [("stem", resnet.embedder)]
    stages += [(f"stage{i + 1}", stage) for i, stage in enumerate(resnet.encoder.stages)]
    return stages + [("detector", _Detector(detr))]


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


class DetrBackbone(Backbone):
    detr_config: DetrConfig  # the matcher and loss weights of ``task_loss``

    def task_loss(self, outputs, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """L_task for joint optimisation: the set loss against ``pseudo_targets`` of the original frames."""
        return set_loss(outputs, targets, self.detr_config)

    def pseudo_targets(self, outputs, threshold: float = 0.7) -> list[dict[str, torch.Tensor]]:
        """Confident detections of the original frames as DETR training targets (normalised cx, cy, w, h)."""
        logits, boxes = outputs
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        return [{"class_labels": l[s > threshold], "boxes": b[s > threshold]} for s, l, b in zip(scores, labels, boxes)]

    def postprocess(
        self, outputs, image_size: tuple[int, int] | None = None, threshold: float = 0.7
    ) -> list[Detections]:
        """Per frame, the queries whose best real class scores above ``threshold``, with boxes in the
        pixel coordinates of a frame of ``image_size`` (H, W) (default: the backbone's input size)."""
        logits, boxes = outputs
        h, w = image_size or self.preprocess.input_size
        probs = logits.softmax(-1)[..., :-1]  # the last class is "no object"
        scores, labels = probs.max(-1)
        scale = boxes.new_tensor([w, h, w, h])
        result = []
        for s, l, b in zip(scores, labels, boxes):
            keep = s > threshold
            result.append(
                Detections(
                    _cxcywh_to_xyxy(b[keep]) * scale, s[keep], l[keep], [self.labels[i] for i in l[keep].tolist()]
                )
            )
        return result


def _load(weights: str | os.PathLike, config: DetrConfig) -> DetrForObjectDetection:
    path = Path(weights)
    if path.is_dir():
        try:
            detr = DetrForObjectDetection.from_pretrained(path, local_files_only=True)
        except Exception as e:  # a broken or foreign checkpoint directory, reported in one line
            raise WeightsError(f"cannot load DETR from {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
        if detr.config.use_timm_backbone:
            raise WeightsError(f"{path} is the timm-backbone DETR; use revision 'no_timm' of facebook/detr-resnet-50")
        return detr
    detr = DetrForObjectDetection(config)
    load_exact(detr, read_state_dict(path), str(path))
    return detr


def build(
    weights: str | os.PathLike | None = None, config: DetrConfig | None = None, input_size: tuple[int, int] = INPUT_SIZE
) -> DetrBackbone:
    config = config or detr_config()
    detr = _load(weights, config) if weights is not None else DetrForObjectDetection(config)
    detr.eval()
    model_config: Any = detr.config  # transformers types its fields as unions with None
    id2label, num_labels = model_config.id2label, model_config.num_labels
    backbone = DetrBackbone(
        "detr_r50",
        _stages(detr),
        Preprocess(input_size=input_size),  # ImageNet mean/std, as DETR's image processor
        task="detection",
        labels=[id2label.get(i, str(i)) for i in range(num_labels)],
        pretrained=weights is not None,
        weights_source=str(weights) if weights else "pass weights=DIR of facebook/detr-resnet-50 (revision no_timm)",
        points=["stem", "stage1", "stage2", "stage3", "stage4"],
    )
    backbone.detr_config = detr.config
    return backbone


def set_loss(outputs, targets: list[dict[str, torch.Tensor]], config: DetrConfig) -> torch.Tensor:
    """DETR's set loss: Hungarian matching, then CE (no-object weighted by eos_coefficient) + L1 + GIoU."""
    logits, boxes = outputs
    loss, _, _ = ForObjectDetectionLoss(logits, targets, logits.device, boxes, config)
    return loss
