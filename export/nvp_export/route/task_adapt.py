"""Adapter-only training and fidelity for the routes of a task preset (detection, action, captioning, segmentation).

``adapt_task`` selects the route as ``adapt.adapt`` does for classifiers: CKA ranks every
(INR tap, injection point) pair (``cka.cka_matrix``: clips for video backbones, pathways
averaged), the candidates of ``adapt.candidate_pairs`` (CKA top-K or each point's best tap,
within the adapter size budget) are trained with ``adapt_route`` and scored by their held-out
feature loss relative to a bias-only adapter's (feature losses at different points have
different scales); among those within ``select_tolerance`` of the best score, the one that
saves the most compute is kept.

Samples are frames for image backbones and clips of ``preprocess.num_frames``
consecutive frames for video backbones. The adapter (one micro adapter per
pathway) learns the backbone's own features at the injection point on the
original frames; fidelity compares the NVP path's answers with the backbone's
answers on the original frames, in the task's own terms:

- action: relative error of the logits and top-1 agreement;
- detection: relative error of the class logits and box IoU agreement of the detections;
- segmentation: relative error of the logits and mIoU of the masks at the frame size;
- captioning: relative error of the vision tower's output and BLEU-4 / token F1 of the captions;
  with a ``ClipScorer`` and text captions, the CLIP-score of both paths' captions on the original frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from nvp_rt.nvpfile import Route as FileRoute

from ..backbone import Backbone, as_pathways, to_unit_frames
from ..fidelity.clip_score import ClipScorer
from ..fidelity.task_agreement import box_agreement, caption_agreement, mean_iou, relative_error
from .adapt import AdaptConfig, candidate_pairs, storable
from .cka import CKAMatrix, cka_matrix
from .multipathway import FitConfig, PathwayAdapter, decode_clips, fit_adapter
from .task_cost import RouteCost, route_cost

__all__ = [
    "TaskRoute",
    "samples_of",
    "adapt_route",
    "task_fidelity",
    "TaskCandidate",
    "TaskAdaptResult",
    "adapt_task",
    "task_file_route",
]


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
def task_fidelity(
    backbone: Backbone,
    nvp_out: Any,
    ref_out: Any,
    image_size: tuple[int, int],
    clip_scorer: ClipScorer | None = None,
    pixels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Agreement of the NVP path's outputs with those from the original frames, in the task's terms.

    ``clip_scorer`` with ``pixels`` (the samples' original frames, (N, 3, H, W) in [0, 1]): text captions
    are CLIP-scored against them too.

    ``*_rel_error_blind`` is the relative error an input-blind path (the mean reference output) would
    have: random backbones vary little with their input, so a rel. error means something only below it.
    """
    task = backbone.task
    if task == "action":
        return {
            "logits_rel_error": relative_error(nvp_out, ref_out),
            "logits_rel_error_blind": _mean_baseline(ref_out),
            "top1_agreement": float((nvp_out.argmax(1) == ref_out.argmax(1)).double().mean()),
        }
    if task == "detection":
        det, ref = backbone.postprocess(nvp_out, image_size), backbone.postprocess(ref_out, image_size)
        return {
            "logits_rel_error": relative_error(nvp_out[0], ref_out[0]),
            "logits_rel_error_blind": _mean_baseline(ref_out[0]),
            "boxes_rel_error": relative_error(nvp_out[1], ref_out[1]),
            "box_iou_agreement": box_agreement([d.boxes for d in det], [r.boxes for r in ref]),
            "detections_ref": float(sum(len(r.boxes) for r in ref)),
        }
    if task == "segmentation":
        masks, ref = backbone.postprocess(nvp_out, image_size), backbone.postprocess(ref_out, image_size)
        return {
            "logits_rel_error": relative_error(nvp_out, ref_out),
            "logits_rel_error_blind": _mean_baseline(ref_out),
            "miou": mean_iou(masks, ref, len(backbone.labels)),
            "pixel_agreement": float((masks == ref).double().mean()),
        }
    if task == "captioning":
        captions, ref = backbone.postprocess(nvp_out), backbone.postprocess(ref_out)
        fid = caption_agreement(captions, ref)
        if clip_scorer is not None and pixels is not None and captions and isinstance(captions[0], str):
            fid["clip_score"] = float(clip_scorer.score(pixels, captions).mean())
            fid["clip_score_ref"] = float(clip_scorer.score(pixels, ref).mean())
        return fid
    raise ValueError(f"no task fidelity for task {task!r}")


def _feature_errors(adapted: Any, targets: Any, mask: torch.Tensor) -> tuple[float, float]:
    """Relative error of the adapted features over the samples in ``mask`` (pathways pooled), and that of a
    bias-only adapter (the per-channel mean of those samples' targets), as adapt.py scales its validation loss."""
    pairs = [(a[mask], t[mask]) for a, t in zip(as_pathways(adapted), as_pathways(targets))]
    flat = torch.cat([t.flatten() for _, t in pairs])
    error = relative_error(torch.cat([a.flatten() for a, _ in pairs]), flat)
    bias_only = relative_error(torch.cat([_channel_mean(t).expand_as(t).flatten() for _, t in pairs]), flat)
    return error, bias_only


def adapt_route(
    inr,
    frames: Any,
    backbone: Backbone,
    tap: str,
    point: str,
    config: FitConfig = FitConfig(),
    clip_stride: int | None = None,
    holdout_every: int | None = None,
    clip_scorer: ClipScorer | None = None,
    reference: Any = None,
) -> TaskRoute:
    """Train the adapter of ``tap`` -> ``point`` on the clip the INR encodes and measure its fidelity and cost.

    ``holdout_every``: every such sample (frame or clip) is kept out of training, and the adapter's
    feature errors on them are reported as ``holdout_features_rel_error`` (and ``..._bias_only``);
    a clip with fewer samples than that trains on all of them. ``clip_scorer``: CLIP-scores captions.
    ``reference``: the full backbone's outputs on the samples' original frames, where the caller
    already has them (``adapt_task`` computes them once for all its candidates).
    """
    frames = to_unit_frames(frames)
    if inr.num_frames != frames.shape[0]:
        raise ValueError(f"the INR encodes {inr.num_frames} frames but {frames.shape[0]} original frames were given")
    if tap not in inr.tap_names:
        raise ValueError(f"the INR has no tap {tap!r}; it has {inr.tap_names}")
    idx = samples_of(backbone, frames.shape[0], clip_stride)
    held = torch.zeros(idx.shape[0], dtype=torch.bool)
    if holdout_every and idx.shape[0] >= holdout_every:
        held[holdout_every - 1 :: holdout_every] = True
    with torch.no_grad():
        taps = decode_clips(inr, idx, tap)
        inputs = backbone.preprocess(_pixels(frames, idx))
        targets = backbone.prefix(inputs, point)
        ref_out = backbone(inputs) if reference is None else reference
    adapter = PathwayAdapter(taps.shape[1], backbone.point(point))
    t0 = time.perf_counter()
    history = fit_adapter(adapter, taps[~held], [t[~held] for t in as_pathways(targets)], config)
    train_s = time.perf_counter() - t0
    adapter.eval()
    adapter.round_to_storage()  # the figures below are the stored route's
    with torch.no_grad():
        adapted = adapter(taps)
        nvp_out = backbone.suffix(adapted, point)
        fid = task_fidelity(
            backbone,
            nvp_out,
            ref_out,
            tuple(frames.shape[-2:]),
            clip_scorer,
            _pixels(frames, idx) if clip_scorer else None,
        )
        everything = torch.ones_like(held)
        fid["features_rel_error"], fid["features_rel_error_bias_only"] = _feature_errors(adapted, targets, everything)
        if held.any():
            fid["holdout_features_rel_error"], fid["holdout_features_rel_error_bias_only"] = _feature_errors(
                adapted, targets, held
            )
        if (
            backbone.task == "captioning"
        ):  # random weights caption alike whatever they see: compare the vision features too
            ref_embeds = backbone.vision_embeds(targets, point)
            fid["vision_rel_error"] = relative_error(backbone.vision_embeds(adapted, point), ref_embeds)
            fid["vision_rel_error_blind"] = _mean_baseline(ref_embeds)
    return TaskRoute(
        tap, point, adapter, history, fid, route_cost(inr, backbone, tap, point), train_s, backbone.pretrained
    )


@dataclass
class TaskCandidate:
    """One trained pair."""

    route: TaskRoute
    cka: float
    cka_rank: int
    # Feature rel. error / a bias-only adapter's, on held-out samples where the clip has them.
    score: float
    scored_on: str  # "held-out samples" or "training samples"


@dataclass
class TaskAdaptResult:
    route: TaskRoute  # the chosen candidate's
    candidates: list[TaskCandidate]
    cka: CKAMatrix
    seconds: dict[str, float]  # cka, training (all candidates), total

    @property
    def chosen(self) -> TaskCandidate:
        return next(c for c in self.candidates if c.route is self.route)

    def metrics(self) -> dict[str, Any]:
        """Numbers and strings describing the route, as the .nvp route metadata keeps them."""
        r, c, cost = self.route, self.chosen, self.route.cost
        return {
            "cka": c.cka,
            "cka_rank": c.cka_rank,
            "pairs": int(self.cka.values.size),
            "candidates_trained": len(self.candidates),
            "selection_score": c.score,
            "selected_on": c.scored_on,
            "adapter_params": cost.adapter_params,
            "backbone_params": cost.backbone_params,
            "adapter_percent": cost.adapter_percent,
            "macs_nvp": cost.macs_nvp,
            "macs_full": cost.macs_full,
            "macs_ratio": cost.macs_ratio,
            "epochs": len(r.history) - 1,
            "train_seconds": self.seconds["training"],
            "backbone_pretrained": r.pretrained,
            **r.fidelity,
        }

    def summary(self) -> str:
        r, c, cost = self.route, self.chosen, self.route.cost
        agreement = ", ".join(f"{k} {v:.4g}" for k, v in r.fidelity.items())
        kind = "" if r.pretrained else " (random weights: output agreement with the original frames, not accuracy)"
        return (
            f"{cost.backbone}: INR tap {r.tap} -> {r.point} "
            f"(CKA {c.cka:.3f}, rank {c.cka_rank}/{self.cka.values.size}; "
            f"{len(self.candidates)} candidate(s) trained, scored by feature loss on {c.scored_on}), adapter "
            f"{cost.adapter_params} params ({cost.adapter_percent:.3f}% of backbone), "
            f"{cost.macs_nvp / 1e9:.3f} vs {cost.macs_full / 1e9:.3f} GFLOPs per sample "
            f"(NVP path / full pipeline {cost.macs_ratio:.3f}), trained in {self.seconds['training']:.1f}s\n"
            f"fidelity{kind}: {agreement}"
        )


def task_file_route(task: str, kind: str, result) -> FileRoute:
    """A task preset's route (``TaskAdaptResult``) as the .nvp container stores it."""
    route = result.route
    arrays, layout = route.adapter.to_route()
    metadata = {
        "kind": kind,
        "in_channels": route.adapter.adapters[0].spec.in_channels,
        **layout,
        **{k: v for k, v in result.metrics().items() if storable(v)},
    }
    return FileRoute(task, route.cost.backbone, route.tap, route.point, arrays, metadata)


def adapt_task(
    inr,
    frames: Any,
    backbone: Backbone,
    config: AdaptConfig = AdaptConfig(),
    clip_stride: int | None = None,
    clip_scorer: ClipScorer | None = None,
) -> TaskAdaptResult:
    """Select an (INR tap, injection point) pair for a task preset, train its adapter, measure fidelity and cost.

    ``config``: as for ``adapt.adapt`` (candidates, top_fraction, taps/points, size budget, training
    settings, ``val_every`` for the held-out samples, ``select_tolerance``); ``clip_stride``: frames
    between the starts of a video backbone's training clips (default: the clip length); ``clip_scorer``:
    CLIP-scores a captioning preset's captions (text captions only).
    """
    if config.hidden is not None:
        raise ValueError("task routes train single-conv adapters; hidden must be None")
    frames = to_unit_frames(frames)
    idx = samples_of(backbone, frames.shape[0], clip_stride)  # a clip too short fails here, before any work
    t_start = time.perf_counter()
    cka = cka_matrix(inr, backbone, frames, config.cka, taps=config.taps, points=config.points)
    seconds = {"cka": time.perf_counter() - t_start, "training": 0.0}
    with torch.no_grad():  # the teacher's answers, the same for every candidate
        reference = backbone(backbone.preprocess(_pixels(frames, idx)))
    fit = FitConfig(
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        patience=config.patience,
        loss=config.loss,
        init=config.init,
        ridge=config.ridge,
        seed=config.seed,
        progress=False,
    )
    candidates = []
    bar = tqdm(
        candidate_pairs(cka, inr, backbone, config),
        desc=f"adapters for {backbone.name}",
        unit="pair",
        disable=not config.progress,
    )
    for tap, point, value in bar:
        bar.set_description_str(f"{tap} -> {point}")
        route = adapt_route(
            inr,
            frames,
            backbone,
            tap,
            point,
            fit,
            clip_stride,
            holdout_every=config.val_every,
            clip_scorer=clip_scorer,
            reference=reference,
        )
        seconds["training"] += route.train_seconds
        fid = route.fidelity
        held = "holdout_features_rel_error" in fid
        prefix = "holdout_" if held else ""
        baseline = fid[prefix + "features_rel_error_bias_only"]
        score = fid[prefix + "features_rel_error"] / baseline if baseline > 0 else float("inf")
        candidates.append(
            TaskCandidate(
                route, value, cka.rank_of(tap, point), score, "held-out samples" if held else "training samples"
            )
        )
        bar.set_postfix_str(f"score {score:.4g}")
    # As adapt.select_route: among the candidates about as good as the best, the one that saves the most compute.
    good = min(c.score for c in candidates) + config.select_tolerance
    best = min((c for c in candidates if c.score <= good), key=lambda c: (c.route.cost.macs_ratio, c.score))
    seconds["total"] = time.perf_counter() - t_start
    return TaskAdaptResult(best.route, candidates, cka, seconds)
