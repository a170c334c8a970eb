"""How closely a task's NVP-path answers agree with the answers on the original frames.

With no pretrained weights the presets' answers mean nothing, so agreement is
measured on raw outputs too (relative error of logits / embeddings); with weights,
on the answers (box IoU, mask mIoU, caption BLEU and token overlap).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from scipy.optimize import linear_sum_assignment
from transformers.loss.loss_for_object_detection import box_iou

__all__ = ["relative_error", "box_agreement", "mean_iou", "caption_agreement"]


def relative_error(pred: torch.Tensor, reference: torch.Tensor) -> float:
    """||pred - reference|| / ||reference|| over the whole batch."""
    return float((pred.double() - reference.double()).norm() / reference.double().norm().clamp_min(1e-12))


def box_agreement(pred_boxes: Sequence[torch.Tensor], ref_boxes: Sequence[torch.Tensor]) -> float:
    """Mean IoU of reference boxes to NVP boxes, one-to-one (Hungarian on IoU) per frame.

    Unmatched boxes on either side count as IoU 0, so missing or extra detections lower it;
    frames where neither side detects anything count as full agreement.
    """
    scores = []
    for p, r in zip(pred_boxes, ref_boxes):
        if len(p) == 0 and len(r) == 0:
            scores.append(1.0)
            continue
        if len(p) == 0 or len(r) == 0:
            scores.append(0.0)
            continue
        iou, _ = box_iou(p.double(), r.double())
        rows, cols = linear_sum_assignment(-iou.numpy())
        scores.append(float(iou[rows, cols].sum()) / max(len(p), len(r)))
    return float(np.mean(scores)) if scores else float("nan")


def mean_iou(pred: torch.Tensor, reference: torch.Tensor, num_classes: int) -> float:
    """mIoU of integer masks ``pred`` against ``reference`` over the classes present in either."""
    pred, reference = pred.reshape(-1).long(), reference.reshape(-1).long()
    confusion = torch.bincount(reference * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    inter = confusion.diagonal().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def caption_agreement(pred: Sequence[Sequence], reference: Sequence[Sequence]) -> dict[str, float]:
    """BLEU-4 (smoothed, corpus level) and mean token-overlap F1 of captions against the references.

    Captions are token sequences (word lists or token ids); text is split on whitespace.
    """
    pred = [p.split() if isinstance(p, str) else list(p) for p in pred]
    reference = [r.split() if isinstance(r, str) else list(r) for r in reference]
    bleu = corpus_bleu([[r] for r in reference], pred, smoothing_function=SmoothingFunction().method1)
    f1 = []
    for p, r in zip(pred, reference):
        common = sum((Counter(p) & Counter(r)).values())
        f1.append(0.0 if common == 0 else 2 * common / (len(p) + len(r)))
    return {"bleu4": float(bleu), "token_f1": float(np.mean(f1)) if f1 else float("nan")}
