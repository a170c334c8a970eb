"""Adapter-only training and fidelity for one route of a task preset (detection, action, captioning, segmentation).

Samples are frames for image backbones and clips of ``preprocess.num_frames``
consecutive frames for video backbones. The adapter (one micro adapter per
pathway) learns the backbone's own features at the injection point on the
original frames; fidelity compares the NVP path's answers with the backbone's
answers on the original frames, in the task's own terms:

- action: relative error of the logits and top-1 agreement;
- detection: relative error of the class logits and box IoU agreement of the detections;
- segmentation: relative error of the logits and mIoU of the masks at the frame size;
- captioning: relative error of the vision tower's output and BLEU-4 / token F1 of the captions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .backbone import Backbone, to_unit_frames
from .multipathway import FitConfig, PathwayAdapter, as_pathways, decode_clips, fit_adapter
from .task_cost import RouteCost, route_cost
from .task_fidelity import box_agreement, caption_agreement, mean_iou, relative_error

__all__ = ["TaskRoute", "samples_of", "adapt_route", "task_fidelity"]


@dataclass
class TaskRoute:
    tap: str
    point: str
    adapter: PathwayAdapter
    history: list[float]  # mean feature loss per epoch, index 0 before training
    fidelity: dict[str, float]
    cost: RouteCost
    train_seconds: float
    pretrained: bool


def samples_of(backbone: Backbone, num_frames: int, stride: int | None = None) -> torch.Tensor:
    """Frame indices of the samples: (N,) frames, or (N, T) clips every ``stride`` frames for video backbones."""
    t = backbone.preprocess.num_frames
    if t == 1:
        return torch.arange(num_frames)
    if num_frames < t:
        raise ValueError(f"{backbone.name} needs clips of {t} frames; the video has {num_frames}")
    starts = range(0, num_frames - t + 1, stride or t)
    return torch.stack([torch.arange(s, s + t) for s in starts])


def _pixels(frames: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    x = frames[idx]
    return x.permute(0, 2, 1, 3, 4) if idx.dim() == 2 else x


def _mean_baseline(reference: torch.Tensor) -> float:
    """Relative error of answering every sample with the mean reference output: what an input-blind path scores."""
    return relative_error(reference.mean(0, keepdim=True).expand_as(reference), reference)


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(0, *range(2, x.dim())), keepdim=True)


@torch.no_grad()
def task_fidelity(backbone: Backbone, nvp_out: Any, ref_out: Any, image_size: tuple[int, int]) -> dict[str, float]:
    """Agreement of the NVP path's outputs with those from the original frames, in the task's terms.

    ``*_rel_error_blind`` is the relative error an input-blind path (the mean reference output) would
    have: random backbones vary little with their input, so a rel. error means something only below it.
    """
    task = backbone.task
    if task == "action":
        return {"logits_rel_error": relative_error(nvp_out, ref_out), "logits_rel_error_blind": _mean_baseline(ref_out),
                "top1_agreement": float((nvp_out.argmax(1) == ref_out.argmax(1)).double().mean())}
    if task == "detection":
        det, ref = backbone.postprocess(nvp_out, image_size), backbone.postprocess(ref_out, image_size)
        return {"logits_rel_error": relative_error(nvp_out[0], ref_out[0]),
                "logits_rel_error_blind": _mean_baseline(ref_out[0]),
                "boxes_rel_error": relative_error(nvp_out[1], ref_out[1]),
                "box_iou_agreement": box_agreement([d.boxes for d in det], [r.boxes for r in ref]),
                "detections_ref": float(sum(len(r.boxes) for r in ref))}
    if task == "segmentation":
        masks, ref = backbone.postprocess(nvp_out, image_size), backbone.postprocess(ref_out, image_size)
        return {"logits_rel_error": relative_error(nvp_out, ref_out), "logits_rel_error_blind": _mean_baseline(ref_out),
                "miou": mean_iou(masks, ref, len(backbone.labels)),
                "pixel_agreement": float((masks == ref).double().mean())}
    if task == "captioning":
        return caption_agreement(backbone.postprocess(nvp_out), backbone.postprocess(ref_out))
    raise ValueError(f"no task fidelity for task {task!r}")


def adapt_route(inr, frames: Any, backbone: Backbone, tap: str, point: str, config: FitConfig = FitConfig(),
                clip_stride: int | None = None) -> TaskRoute:
    """Train the adapter of ``tap`` -> ``point`` on the clip the INR encodes and measure its fidelity and cost."""
    frames = to_unit_frames(frames)
    if inr.num_frames != frames.shape[0]:
        raise ValueError(f"the INR encodes {inr.num_frames} frames but {frames.shape[0]} original frames were given")
    if tap not in inr.tap_names:
        raise ValueError(f"the INR has no tap {tap!r}; it has {inr.tap_names}")
    idx = samples_of(backbone, frames.shape[0], clip_stride)
    with torch.no_grad():
        taps = decode_clips(inr, idx, tap)
        inputs = backbone.preprocess(_pixels(frames, idx))
        targets = backbone.prefix(inputs, point)
        ref_out = backbone(inputs)
    adapter = PathwayAdapter(taps.shape[1], backbone.point(point))
    t0 = time.perf_counter()
    history = fit_adapter(adapter, taps, targets, config)
    train_s = time.perf_counter() - t0
    adapter.eval()
    with torch.no_grad():
        adapted = adapter(taps)
        nvp_out = backbone.suffix(adapted, point)
        fid = task_fidelity(backbone, nvp_out, ref_out, tuple(frames.shape[-2:]))
        # How well the adapter reproduces the backbone's features at the point (pathways pooled), next to
        # a bias-only adapter's error (the per-channel mean), as adapt.py scales its validation loss.
        pairs = list(zip(as_pathways(adapted), as_pathways(targets)))
        flat = torch.cat([t.flatten() for _, t in pairs])
        fid["features_rel_error"] = relative_error(torch.cat([a.flatten() for a, _ in pairs]), flat)
        fid["features_rel_error_bias_only"] = relative_error(
            torch.cat([_channel_mean(t).expand_as(t).flatten() for _, t in pairs]), flat)
        if backbone.task == "captioning":  # random weights caption alike whatever they see: compare the vision features too
            ref_embeds = backbone.vision_embeds(targets, point)
            fid["vision_rel_error"] = relative_error(backbone.vision_embeds(adapter(taps), point), ref_embeds)
            fid["vision_rel_error_blind"] = _mean_baseline(ref_embeds)
    return TaskRoute(tap, point, adapter, history, fid, route_cost(inr, backbone, tap, point), train_s,
                     backbone.pretrained)
