"""One query's answers over a whole clip, judged as the paper judges them, beside what else those bytes buy.

The reference is the backbone on the original frames. Beside the route's agreement with it stand:
the file's own pixels (full decode, the backbone on them), H.264 at the file's total bytes (routes
included) and the constant answer, the best a path that ignores its input can score. Classification
is scored by top-1 agreement, detection by the mean IoU of one-to-one matched boxes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nvp_rt
from nvp_rt.quality import psnr

from ..backbone import Backbone, classify, to_unit_frames
from .h264 import at_bpp
from .task_agreement import box_agreement

__all__ = ["MEASURES", "PathScore", "QueryAgreement", "query_agreement"]

MEASURES = {"classification": "top-1 agreement", "detection": "matched-box IoU"}


@dataclass(frozen=True)
class PathScore:
    agreement: float
    psnr: float  # dB against the original frames
    bpp: float


@dataclass(frozen=True)
class QueryAgreement:
    task: str
    measure: str  # what ``agreement`` means for this task's kind (MEASURES)
    route: float  # the route's agreement (Session, torch-free)
    pixels: PathScore  # the file's own pixels, full decode
    h264: PathScore  # H.264 at the file's total bpp
    constant: float  # the best constant answer's agreement
    reference: list[Any]  # per frame, the backbone's answer on the original frame (top-k rows, or detections)


@torch.no_grad()
def _outputs(backbone: Backbone, frames: np.ndarray, batch: int = 8) -> Any:
    """The full backbone on uint8 frames: logits (N, K), or a tuple of such tensors for detection."""
    x = to_unit_frames(frames)
    parts = [backbone(backbone.preprocess(x[s : s + batch])) for s in range(0, len(x), batch)]
    if isinstance(parts[0], (tuple, list)):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


def _answers(backbone: Backbone, outputs: Any, size: tuple[int, int]) -> list[Any]:
    if backbone.task == "classification":
        return [row.argmax().item() for row in outputs]
    return [d.boxes for d in backbone.postprocess(outputs, size)]


def _agreement(kind: str, got: list[Any], want: list[Any]) -> float:
    if kind == "classification":
        return float(np.mean([g == w for g, w in zip(got, want)]))
    return box_agreement(got, want)


def _constant(kind: str, want: list[Any]) -> float:
    if kind == "classification":
        return float(np.bincount(want).max()) / len(want)
    return max(box_agreement([w] * len(want), want) for w in want)  # the one frame's boxes that fit all best


def query_agreement(
    path: str | os.PathLike, session: nvp_rt.Session, task: str, backbone: Backbone, frames: np.ndarray
) -> QueryAgreement:
    """Score route ``task`` of the file at ``path`` (opened as ``session``) over all its frames against
    ``backbone`` on ``frames``, the uint8 (N, H, W, 3) originals it was encoded from."""
    kind = backbone.task
    if kind not in MEASURES:
        raise ValueError(f"{task}: agreement over a clip is measured for {' and '.join(MEASURES)}, not {kind}")
    n, h, w, _ = frames.shape
    bpp = 8 * Path(path).stat().st_size / (n * h * w)
    reference_outputs = _outputs(backbone, frames)
    want = _answers(backbone, reference_outputs, (h, w))

    routed = session.run([task], frames=range(n))[task]
    got: list[Any] = (
        [int(row.argmax()) for row in routed.logits]
        if kind == "classification"
        else [torch.from_numpy(b) for b in routed.boxes]
    )

    def pixel_path(decoded: np.ndarray, rate: float) -> PathScore:
        answers = _answers(backbone, _outputs(backbone, decoded), (h, w))
        return PathScore(_agreement(kind, answers, want), psnr(frames, decoded), rate)

    coded = at_bpp(frames, bpp)
    if kind == "classification":
        reference = classify(reference_outputs, backbone.labels, k=3)
    else:
        reference = backbone.postprocess(reference_outputs, (h, w))
    return QueryAgreement(
        task,
        MEASURES[kind],
        _agreement(kind, got, want),
        pixel_path(session.decode(range(n)), bpp),
        pixel_path(coded.frames, coded.bpp),
        _constant(kind, want),
        reference,
    )
