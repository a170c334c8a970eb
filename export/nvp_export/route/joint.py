"""Joint optimisation: the INR and its routes' adapters trained together (paper eq. 3).

    L = lambda_recon * L_recon + sum_i w_i * (lambda_task * L_task_i + lambda_feat * L_feat_i)

- L_recon: the INR family's own reconstruction loss (``fit.reconstruction_loss``)
  against the original frames, so the video stays watchable;
- L_feat: the feature-transfer loss between route i's adapted INR features and the
  backbone's features at the injection point on the original frames;
- L_task: the task's loss on route i's outputs against the backbone's answers on the
  original frames (pseudo-labels), looked up by task kind in ``TASK_LOSSES``.

Adam with separate rates for the INR (1e-5) and the adapters (1e-4). The file
stores the quantised INR, so the result is re-quantised and measured as stored:
PSNR of the whole clip's 8-bit rendering, before and after, and each route's
fidelity before and after. Routes not trained here were fitted to the old INR.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nvp_rt.quality import psnr

from ..backbone import Backbone, to_uint8_frames, to_unit_frames
from ..fidelity.agreement import fidelity
from ..inr import INR, quantise_inr, save_nvp
from ..inr.fit import reconstruction_loss
from .adapt import Route
from .losses import FeatureLoss

__all__ = [
    "JointConfig",
    "JointTask",
    "JointResult",
    "TASK_LOSSES",
    "classification_loss",
    "detection_loss",
    "joint_optimise",
    "joint_route",
    "save_joint",
]


@dataclass(frozen=True)
class JointConfig:
    # The paper runs 100 epochs after a 100-epoch INR warm-up (the encode); on 2 CPU cores an epoch of
    # a 320x180x64 clip through EfficientNet-Lite0 takes tens of seconds, hence fewer by default.
    epochs: int = 10
    inr_lr: float = 1e-5
    adapter_lr: float = 1e-4
    batch_size: int = 4
    recon: float = 1.0  # lambda_recon
    task: float = 0.5  # lambda_task
    feat: float = 0.2  # lambda_feat
    feature_loss: FeatureLoss = field(default_factory=FeatureLoss)
    eval_batch: int = 8
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or self.eval_batch < 1:
            raise ValueError("epochs >= 0, batch_size >= 1 and eval_batch >= 1 are required")
        if min(self.inr_lr, self.adapter_lr, self.recon, self.task, self.feat) < 0:
            raise ValueError("learning rates and loss weights must be >= 0")


Outputs = Any  # a tensor (N, ...) or a tuple of them (e.g. DETR's (logits, boxes))


def classification_loss(backbone: Backbone, outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the pseudo-labels: the backbone's top-1 class on the original frames."""
    return F.cross_entropy(outputs, reference.argmax(1))


def detection_loss(backbone: Backbone, outputs: Outputs, reference: Outputs) -> torch.Tensor:
    """DETR's set loss (Hungarian matching; class CE + L1 + GIoU) against the original frames' confident detections."""
    if not (hasattr(backbone, "task_loss") and hasattr(backbone, "pseudo_targets")):
        raise ValueError(f"{backbone.name} is a detection backbone without a set loss (task_loss, pseudo_targets)")
    return backbone.task_loss(outputs, backbone.pseudo_targets(reference))


# L_task per task kind (Backbone.task): (backbone, outputs, reference outputs on the original frames) -> scalar.
TASK_LOSSES: dict[str, Callable[[Backbone, Outputs, Outputs], torch.Tensor]] = {
    "classification": classification_loss,
    "detection": detection_loss,
}


@dataclass
class JointTask:
    """One route trained jointly: INR tap -> adapter -> backbone suffix from the injection point, weight w_i."""

    backbone: Backbone
    tap: str
    point: str
    adapter: nn.Module  # trained in place; start it from the adapter-only solution
    weight: float = 1.0


@dataclass
class JointResult:
    inr: INR  # re-quantised: exactly what a reader of the written file gets
    inr_float: INR  # the jointly optimised INR before re-quantisation
    arrays: dict[str, np.ndarray]  # its payload, for save_nvp
    meta: dict
    adapters: list[nn.Module]  # per task, trained, eval mode
    psnr_before: float  # dB, whole clip, 8-bit rendering of the INR given vs the original frames
    psnr_after: float  # ... of the re-quantised jointly optimised INR
    psnr_after_float: float  # ... before re-quantisation
    fidelity_before: list[dict[str, float]]  # per task, NVP path vs the backbone on the original frames
    fidelity_after: list[dict[str, float]]  # ... with the re-quantised INR and the trained adapter
    history: list[dict[str, float]]  # per epoch, mean of each loss term over the training steps
    seconds: float

    def summary(self) -> str:
        lines = [
            f"joint optimisation: {len(self.history)} epochs in {self.seconds:.1f}s; PSNR {self.psnr_before:.2f} -> "
            f"{self.psnr_after:.2f} dB (re-quantised; {self.psnr_after_float:.2f} dB before quantisation)"
        ]
        for i, (before, after) in enumerate(zip(self.fidelity_before, self.fidelity_after)):
            key = next(
                k
                for k in ("top1_agreement", "box_iou_agreement", "miou", "cosine", *before)
                if before.get(k) is not None
            )
            lines.append(f"  route {i}: {key} {before[key]:.1%} -> {after[key]:.1%}")
        return "\n".join(lines)


def _take(outputs: Outputs, idx) -> Outputs:
    return tuple(o[idx] for o in outputs) if isinstance(outputs, tuple) else outputs[idx]


def _cat(parts: Sequence[Outputs]) -> Outputs:
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat([cast(torch.Tensor, p) for p in parts])


def _agreement(backbone: Backbone, outputs: Outputs, reference: Outputs, image_size: tuple[int, int]) -> dict:
    if backbone.task == "classification":
        return fidelity(outputs, reference, backbone.task).to_dict()
    from .task_adapt import task_fidelity

    return task_fidelity(backbone, outputs, reference, image_size)


@torch.no_grad()
def _route_outputs(inr, task: JointTask, n: int, batch: int) -> Outputs:
    idx = torch.arange(n)
    return _cat(
        [
            task.backbone.suffix(task.adapter(inr.decode(idx[s : s + batch], until=task.tap)[task.tap]), task.point)
            for s in range(0, n, batch)
        ]
    )


def joint_optimise(
    inr: INR, frames: Any, tasks: Sequence[JointTask], config: JointConfig = JointConfig()
) -> JointResult:
    """Train ``inr`` (a copy; the argument is left as it is) and the tasks' adapters (in place) together.

    ``frames``: the clip the INR encodes, uint8 (T, H, W, 3) / (T, 3, H, W) or float in [0, 1].
    """
    started = time.perf_counter()
    frames = to_unit_frames(frames)
    if not tasks:
        raise ValueError("joint optimisation needs at least one route")
    if inr.num_frames != frames.shape[0]:
        raise ValueError(f"the INR encodes {inr.num_frames} frames but {frames.shape[0]} original frames were given")
    for t in tasks:
        if t.backbone.task not in TASK_LOSSES:
            raise ValueError(
                f"no joint task loss for {t.backbone.task} ({t.backbone.name}); known: {', '.join(sorted(TASK_LOSSES))}"
            )
        if t.backbone.preprocess.num_frames != 1:
            raise ValueError(f"{t.backbone.name} is a video model; joint optimisation handles image backbones")
        if t.tap not in inr.tap_names:
            raise ValueError(f"the INR has no tap {t.tap!r}; it has {inr.tap_names}")
    n, image_size = frames.shape[0], tuple(frames.shape[-2:])
    original = to_uint8_frames(frames)

    # The teacher: each backbone's features at its injection point and its answers, on the original frames.
    targets, references = [], []
    with torch.no_grad():
        for t in tasks:
            feats = [
                t.backbone.prefix(t.backbone.preprocess(frames[s : s + config.eval_batch]), t.point)
                for s in range(0, n, config.eval_batch)
            ]
            targets.append(torch.cat(feats))
            references.append(_cat([t.backbone.suffix(f, t.point) for f in feats]))  # = the full forward pass
    for t in tasks:
        t.adapter.eval()
    fidelity_before = [
        _agreement(t.backbone, _route_outputs(inr, t, n, config.eval_batch), ref, image_size)
        for t, ref in zip(tasks, references)
    ]
    psnr_before = psnr(original, inr.render(range(n)))

    trained = copy.deepcopy(inr).train().requires_grad_(True)
    last = trained.tap_names[-1]
    until = last if config.recon else max((t.tap for t in tasks), key=trained.tap_names.index)
    optimiser = torch.optim.Adam(
        [
            {"params": trained.parameters(), "lr": config.inr_lr},
            {"params": [p for t in tasks for p in t.adapter.parameters()], "lr": config.adapter_lr},
        ]
    )
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    bar = tqdm(range(config.epochs), desc="joint", unit="epoch", disable=not config.progress)
    for _ in bar:
        for t in tasks:
            t.adapter.train()
        sums, steps = {"total": 0.0, "recon": 0.0, "task": 0.0, "feat": 0.0}, 0
        for order in torch.randperm(n, generator=generator).split(config.batch_size):
            taps = trained.decode(order, until=until)
            recon = (
                reconstruction_loss(trained.family, taps[last], frames[order])
                if config.recon
                else taps[until].new_zeros(())
            )
            loss, task_sum, feat_sum = config.recon * recon, 0.0, 0.0
            for t, target, reference in zip(tasks, targets, references):
                adapted = t.adapter(taps[t.tap])
                l_feat = config.feature_loss(adapted, target[order])
                l_task = TASK_LOSSES[t.backbone.task](
                    t.backbone, t.backbone.suffix(adapted, t.point), _take(reference, order)
                )
                loss = loss + t.weight * (config.task * l_task + config.feat * l_feat)
                task_sum, feat_sum = task_sum + l_task.item(), feat_sum + l_feat.item()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            steps += 1
            for key, value in (("total", loss.item()), ("recon", recon.item()), ("task", task_sum), ("feat", feat_sum)):
                sums[key] += value
        history.append({k: v / steps for k, v in sums.items()})
        bar.set_postfix(loss=f"{history[-1]['total']:.4g}", task=f"{history[-1]['task']:.4g}")
    bar.close()

    trained.eval().requires_grad_(False)
    for t in tasks:
        t.adapter.eval()
    psnr_after_float = psnr(original, trained.render(range(n)))
    arrays, meta, stored = quantise_inr(trained)
    fidelity_after = [
        _agreement(t.backbone, _route_outputs(stored, t, n, config.eval_batch), ref, image_size)
        for t, ref in zip(tasks, references)
    ]
    return JointResult(
        stored,
        trained,
        arrays,
        meta,
        [t.adapter for t in tasks],
        psnr_before,
        psnr(original, stored.render(range(n))),
        psnr_after_float,
        fidelity_before,
        fidelity_after,
        history,
        time.perf_counter() - started,
    )


def joint_route(
    inr: INR, frames: Any, backbone: Backbone, route: Route, config: JointConfig = JointConfig()
) -> tuple[Route, JointResult]:
    """Joint optimisation of one route from ``adapt`` (its adapter the starting point); the route with
    the trained adapter and its metrics measured again on the re-quantised INR."""
    result = joint_optimise(
        inr, frames, [JointTask(backbone, route.inr_tap, route.injection_point, route.build_adapter())], config
    )
    before, after = result.fidelity_before[0], result.fidelity_after[0]
    metrics = {
        **route.metrics,
        **after,
        "adapter_only_top1_agreement": before.get("top1_agreement"),
        "joint_epochs": len(result.history),
        "joint_psnr_before_db": result.psnr_before,
        "joint_psnr_after_db": result.psnr_after,
    }
    return replace(route, adapter=result.adapters[0].to_arrays(), metrics=metrics), result


def save_joint(path: str | os.PathLike, manifest: dict, result: JointResult, config: JointConfig, routes: list) -> int:
    """Rewrite ``path`` (atomically) with the re-quantised INR, ``manifest``'s video information and ``routes``."""
    info = {k: v for k, v in manifest.items() if k not in ("inr", "taps")}
    info["metrics"] = {
        **info.get("metrics", {}),
        "psnr_quantised_db": round(result.psnr_after, 4),
        "psnr_float_db": round(result.psnr_after_float, 4),
    }
    info["joint"] = {
        "epochs": len(result.history),
        "psnr_before_db": round(result.psnr_before, 4),
        "psnr_after_db": round(result.psnr_after, 4),
        "seconds": round(result.seconds, 2),
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "feature_loss")},
    }
    return save_nvp(path, result.inr, result.arrays, result.meta, info, routes=routes)
