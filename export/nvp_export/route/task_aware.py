"""Task-aware encoding: the INR and its routes fitted in one pass (the paper's joint objective, eq. 3).

    nvp encode video.mp4 -o clip.nvp --for efficientnet_lite0

When the tasks are known at encode time, the INR learns what their backbones need while it is
fitted, rather than having routes bolted onto a finished fit (``adapt``, ``joint``):

1. reconstruction alone for the first ``start`` of the fit (an untrained decoder's taps carry
   nothing to start an adapter from);
2. then each route's adapter starts at the ridge-regression map from its tap to the backbone's
   features at its injection point, and the INR and the adapters train on reconstruction +
   lambda_task * cross-entropy to the backbone's answers on the original frames + lambda_feat *
   a scale-free feature loss;
3. after quantisation, each adapter is trained once more on the stored INR's taps
   (``finetune_for_task``), so the route fits the bits a reader decodes.

The pair is fixed before the fit, with no CKA search (there is no fitted INR to rank yet): the
INR's first tap into the deepest injection point whose adapter stays within the size budgets. On
the 320x180 clips this is where the answers were learnt at all at CPU budgets (stem -> stage7 for
EfficientNet-Lite0: 41-54% agreement against 0-22% for block1 -> stage5/stage7, docs/encode.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone
from ..fidelity.agreement import fidelity
from ..inr import INR
from .adapt import Route, to_file_route
from .adapter import AdapterSpec, MicroAdapter, finetune_for_task, fit_linear, relative_feature_loss

__all__ = ["TaskAwareConfig", "TaskAwareObjective", "default_pair", "untrained_routes"]


@dataclass(frozen=True)
class TaskAwareConfig:
    start: float = 0.3  # fraction of the fit on reconstruction alone
    # Weights against HNeRV's MSE (about 1e-3 at 30 dB): the paper's 0.5 : 0.2 ratio, scaled so the
    # answers are learnt at 0.7-1.0 dB of the picture. At 0.1 bpp, 150 s fits (docs/encode.md, task levers), 10x
    # stop 18's 5e-4 / 2e-4 added 1.6 (bikes) and 14 (Big Buck Bunny) points of agreement; 5e-2 swamped
    # the reconstruction.
    task: float = 5e-3
    feat: float = 2e-3
    adapter_lr: float = 1e-3
    ramp_epochs: float = 3.0  # the task terms' weight grows linearly from 0 over this many epochs after they join
    # Adapter-only, on the stored INR's taps, keeping the state whose stored (8-bit) route agrees most.
    # Against stop 18's 1e-3 over 100 epochs (last state kept): +6 to +12.5 points at 0.1 bpp (same run).
    finetune_epochs: int = 300
    finetune_lr: float = 1e-2
    max_adapter_percent: float = 1.0
    # The injection point is chosen as if the tap had at least this many channels, so a narrow INR (a low
    # rate) does not reach for a wider point (EfficientNet-Lite0: head_conv, 1280 channels, 4x stage7's
    # adapter) than a wide one gets, and a route's size grows with the INR's width (inr.budget sizes both).
    pair_channels: int = 64
    ridge: float = 1e-3
    batch: int = 8

    def __post_init__(self):
        if not 0 <= self.start < 1:
            raise ValueError(f"start must be in [0, 1); got {self.start}")
        if min(self.task, self.feat, self.adapter_lr, self.finetune_epochs, self.ramp_epochs) < 0:
            raise ValueError("task-aware weights, rate and epochs must be >= 0")


def default_pair(inr: INR, backbone: Backbone, max_adapter_percent: float, min_channels: int = 1) -> tuple[str, str]:
    """The INR's first tap and the deepest injection point whose adapter fits ``max_adapter_percent``,
    from that tap or from one of ``min_channels`` if it is narrower."""
    tap = inr.tap_names[0]
    channels = max(inr.tap_shapes()[tap][0], min_channels)
    budget = max_adapter_percent / 100 * backbone.num_parameters()
    points = [
        p for p in backbone.point_names if channels * backbone.point(p).channels + backbone.point(p).channels <= budget
    ]
    if not points:
        raise ValueError(f"no injection point of {backbone.name} takes an adapter within {max_adapter_percent}%")
    return tap, points[-1]


def untrained_routes(inr: INR, backbones: Sequence[Backbone], config: TaskAwareConfig = TaskAwareConfig()) -> list:
    """The file routes task-aware encoding writes for ``inr``, untrained: what they add to the file
    (``inr.config_for_budget`` counts them in the budget)."""
    routes = []
    for backbone in backbones:
        tap, point = default_pair(inr, backbone, config.max_adapter_percent, config.pair_channels)
        shape = backbone.point(point)
        spec = AdapterSpec(inr.tap_shapes()[tap][0], shape.channels, shape.spatial_size)
        arrays = MicroAdapter(spec).to_arrays()
        route = Route(
            backbone.task, backbone.name, tap, point, spec.in_channels, spec.out_channels, spec.size, None, arrays, {}
        )
        routes.append(to_file_route(route))
    return routes


class _TaskRoute:
    """One backbone's route while it is fitted: teacher features and answers on the original frames."""

    def __init__(self, backbone: Backbone, frames: torch.Tensor, tap: str, point: str, batch: int):
        if backbone.task != "classification" or backbone.preprocess.num_frames != 1:
            raise ValueError(
                f"task-aware encoding trains image classification routes; {backbone.name} is a "
                f"{backbone.task} model (route it after encoding with nvp-export --task)"
            )
        self.backbone, self.tap, self.point = backbone, tap, point
        with torch.no_grad():
            self.target = torch.cat(
                [
                    backbone.prefix(backbone.preprocess(frames[s : s + batch]), point)
                    for s in range(0, len(frames), batch)
                ]
            )
            self.reference = torch.cat(
                [backbone.suffix(self.target[s : s + batch], point) for s in range(0, len(frames), batch)]
            )
        self.labels = self.reference.argmax(1)
        shape = backbone.point(point)
        self.spec_size, self.out_channels = shape.spatial_size, shape.channels
        self.adapter: MicroAdapter | None = None

    def to(self, device: torch.device) -> None:
        self.backbone.to(device)
        self.target, self.labels = self.target.to(device), self.labels.to(device)
        if self.adapter is not None:
            self.adapter.to(device)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.suffix(features, self.point)

    def stored_agreement(self, adapter: MicroAdapter, taps: torch.Tensor) -> float:
        """Top-1 agreement on these frames of ``adapter`` as a file stores it, from the INR's ``taps``."""
        with torch.no_grad():
            return float((self.head(adapter.stored()(taps)).argmax(1) == self.labels).double().mean())


class TaskAwareObjective:
    """The ``inr.fit.FitObjective`` of task-aware encoding: one classification route per backbone."""

    def __init__(
        self,
        inr: INR,
        frames: torch.Tensor,
        backbones: Sequence[Backbone],
        config: TaskAwareConfig = TaskAwareConfig(),
    ):
        if not backbones:
            raise ValueError("task-aware encoding needs at least one backbone")
        self.config, self.start, self.lr = config, config.start, config.adapter_lr
        self.routes = []
        for backbone in backbones:
            tap, point = default_pair(inr, backbone, config.max_adapter_percent, config.pair_channels)
            self.routes.append(_TaskRoute(backbone, frames, tap, point, config.batch))
        self.in_channels = {t: shape[0] for t, shape in inr.tap_shapes().items()}
        self.num_frames, self.frames_seen = len(frames), 0

    def begin(self, decode_all: Callable[[str], torch.Tensor]) -> nn.Module:
        adapters: list[nn.Module] = [self._start_adapter(r, decode_all(r.tap)) for r in self.routes]
        return nn.ModuleList(adapters)

    def _start_adapter(self, r: _TaskRoute, taps: torch.Tensor) -> MicroAdapter:
        """The ridge-regression map from the tap to the teacher features: a start the answers can be trained from.

        The route's backbone and teacher move to the device the taps are on (the fit's)."""
        r.to(taps.device)
        r.adapter = MicroAdapter(AdapterSpec(self.in_channels[r.tap], r.out_channels, r.spec_size))
        r.adapter.set_linear(*fit_linear(taps, r.target, r.spec_size, self.config.ridge))
        return r.adapter

    def loss(self, taps: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        # The terms ramp in over ``ramp_epochs``: at full weight at once, their first gradients through a
        # decoder fitted for pixels alone knocked wide fits (bikes at 0.5 bpp) 5-9 dB down, which the fit
        # undid as collapses, halving its rate each time.
        self.frames_seen += len(idx)
        weight = min(1.0, self.frames_seen / (self.config.ramp_epochs * self.num_frames + 1e-9))
        total = taps[self.routes[0].tap].new_zeros(())
        for r in self.routes:
            assert r.adapter is not None, "begin() runs before loss()"
            adapted = r.adapter(taps[r.tap])
            total = total + self.config.task * F.cross_entropy(r.head(adapted), r.labels[idx])
            total = total + self.config.feat * relative_feature_loss(adapted, r.target[idx])
        return weight * total

    def finish(self, stored: INR, rendered: torch.Tensor) -> list[Route]:
        """The routes, their adapters trained once more on ``stored`` (the quantised INR a reader gets);
        ``rendered``: its full decode, float (N, 3, H, W), for the pixel path's agreement."""
        routes = []
        n = len(rendered)
        chunks = range(0, n, 8)
        for r in self.routes:
            r.to(torch.device("cpu"))  # ``stored`` is on the CPU, as ``fit`` returns it
            with torch.no_grad():
                taps = torch.cat([stored.decode(torch.arange(s, min(s + 8, n)), until=r.tap)[r.tap] for s in chunks])
            # A fit that ended before the terms joined has no adapter yet: start from the stored INR.
            adapter = (r.adapter or self._start_adapter(r, taps)).eval()
            r.adapter = adapter
            if self.config.finetune_epochs:
                finetune_for_task(
                    adapter,
                    taps,
                    r.target,
                    r.labels,
                    r.head,
                    epochs=self.config.finetune_epochs,
                    lr=self.config.finetune_lr,
                    select=partial(r.stored_agreement, taps=taps),
                    select_stop=1.0,
                )
            adapter.round_to_storage()  # the figures below are the stored route's
            with torch.no_grad():
                nvp_out = r.head(adapter(taps))
                pixel_out = r.backbone(r.backbone.preprocess(rendered))
            nvp, pixel = fidelity(nvp_out, r.reference), fidelity(pixel_out, r.reference)
            counts = torch.bincount(r.labels)
            metrics = {
                "top1_agreement": nvp.top1_agreement,
                "top5_overlap": nvp.top5_overlap,
                "cosine": nvp.cosine,
                "pixel_top1_agreement": pixel.top1_agreement,
                "constant_answer_agreement": float(counts.max()) / n,
                "adapter_params": adapter.num_parameters(),
                "adapter_percent": adapter.percent_of(r.backbone),
                "task_aware": 1,
                "backbone_pretrained": r.backbone.pretrained,
            }
            spec = adapter.spec
            routes.append(
                Route(
                    r.backbone.task,
                    r.backbone.name,
                    r.tap,
                    r.point,
                    spec.in_channels,
                    spec.out_channels,
                    tuple(spec.size),
                    spec.hidden,
                    adapter.to_arrays(),
                    metrics,  # to_file_route keeps what the manifest can hold
                )
            )
        return routes
