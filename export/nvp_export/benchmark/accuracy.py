"""Task accuracy as agreement with the backbone on the original frames (the clips have no labels).

The reference is the same full backbone graph on the lossless original frames,
preprocessed as the pixel pipelines preprocess (``BackboneRunner``), so a pixel path
fed lossless frames agrees 100%. Classification and action: top-1 agreement;
detection: mean IoU of one-to-one matched boxes above the head's threshold
(``task_fidelity.box_agreement``) and the class logits' relative error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nvp_rt.results import postprocess

from ..fidelity.task_agreement import box_agreement, relative_error
from .pipelines import Answers, BackboneRunner

__all__ = ["reference_outputs", "agreement", "constant_answer_agreement"]


def reference_outputs(runner: BackboneRunner, frames: np.ndarray, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """The backbone's raw outputs on the original uint8 frames ``frames[indices]``."""
    import av

    pictures = [av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24") for i in indices]
    return runner.run(runner.preprocess(pictures))


def agreement(
    runner: BackboneRunner,
    task: str,
    answers: list[Answers],
    references: list[dict[str, np.ndarray]],
    video_size: tuple[int, int],
) -> dict[str, float]:
    """Agreement of a pipeline's answers to ``task`` with the references of the same queries."""
    got = {k: np.concatenate([a[task][k] for a in answers]) for k in answers[0][task]}
    ref = {k: np.concatenate([r[k] for r in references]) for k in references[0]}
    kind = runner.task
    if kind in ("classification", "action"):
        return {
            "top1_agreement": float((got["logits"].argmax(-1) == ref["logits"].argmax(-1)).mean()),
            "logits_rel_error": relative_error(torch.from_numpy(got["logits"]), torch.from_numpy(ref["logits"])),
        }
    if kind == "detection":
        n = len(got["logits"])
        mine = postprocess("detection", got, runner.description, list(range(n)), video_size)
        theirs = postprocess("detection", ref, runner.description, list(range(n)), video_size)
        return {
            "box_iou_agreement": box_agreement(
                [torch.from_numpy(b) for b in mine.boxes], [torch.from_numpy(b) for b in theirs.boxes]
            ),
            "logits_rel_error": relative_error(torch.from_numpy(got["logits"]), torch.from_numpy(ref["logits"])),
            "detections_ref": float(sum(len(b) for b in theirs.boxes)),
        }
    raise ValueError(f"no agreement measure for task kind {kind!r}")


def constant_answer_agreement(references: list[dict[str, np.ndarray]]) -> float:
    """Top-1 agreement of always answering the references' most frequent label: what a path that ignores its
    input can score, so agreement means something only above it."""
    labels = np.concatenate([r["logits"].argmax(-1) for r in references])
    return float(np.bincount(labels).max() / labels.size)
