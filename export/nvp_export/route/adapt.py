"""Adapter-only training: route an encoded video into a frozen backbone.

Given an INR (frozen), the original frames it encodes and a backbone:

1. rank every (INR tap, injection point) pair by linear CKA (``cka.py``);
2. train a micro adapter for each pair in the CKA top-K against the backbone's
   own features on the original frames (feature-transfer loss, Adam, early
   stopping on the validation frames' loss);
3. pick the pair: among those whose validation top-1 agreement is within
   ``select_tolerance`` of the best, the one that saves the most compute, then
   the lowest relative validation loss (feature losses at different injection
   points have different scales, so they are compared relative to the loss of
   predicting the per-channel mean);
4. measure fidelity of the chosen route on all frames.

The result holds the route as plain numpy arrays and metadata; writing it into a
``.nvp`` is the file format's business.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nvp_rt.nvpfile import Route as FileRoute

from ..backbone import Backbone, to_unit_frames
from ..fidelity.agreement import Fidelity, fidelity
from .adapter import AdapterSpec, MicroAdapter, finetune_for_task, fit_linear, resize
from .cka import CKAConfig, CKAMatrix, cka_matrix
from .flops import macs
from .losses import FeatureLoss

__all__ = [
    "AdaptConfig",
    "Route",
    "Candidate",
    "AdaptResult",
    "adapt",
    "train_adapter",
    "select_route",
    "candidate_pairs",
    "to_file_route",
]


@dataclass(frozen=True)
class AdaptConfig:
    epochs: int = 30  # paper default, with early stopping
    lr: float = 1e-4  # paper default
    batch_size: int = 4  # paper default
    patience: int = 5  # epochs without a better validation loss before stopping
    min_improvement: float = 1e-3  # a validation loss counts as better only if lower by this fraction
    val_every: int = 5  # every val_every-th frame is held out for validation
    # Which pairs get an adapter trained: "per_point" = for each injection point, its highest-CKA tap;
    # "top" = the CKA top ``top_fraction`` of all pairs (the paper's pruning). per_point is the default:
    # on the 320x180 clips with EfficientNet-Lite0 the CKA top-10% held only early points (stem, stage1)
    # and reached 0-2% top-1 agreement, per_point 48% (astronaut) and 100% (coffee) (docs/adapt.md).
    candidates: str = "per_point"
    top_fraction: float = 0.1
    taps: tuple[str, ...] | None = None  # restrict the search to these INR taps (None: all)
    points: tuple[str, ...] | None = None  # ... and these injection points (None: all)
    hidden: int | None = None  # stacked adapter width; None = one 1x1 conv
    max_adapter_percent: float | None = 1.0  # pairs whose adapter would exceed this % of the backbone are skipped
    # "lstsq": start the single-conv adapter at the ridge-regression solution of the
    # MSE term (closed form, seconds), then fine-tune with the full loss. "random":
    # PyTorch's default init, as the paper is silent on initialisation.
    init: str = "lstsq"
    # Classifiers: epochs of adapter-only training of the chosen pair with the task term (cross-entropy
    # to the backbone's answers on the original frames) beside the feature term; 0: features only.
    # The state whose stored route agrees most is kept (route.task_aware measured these settings).
    task_epochs: int = 300
    task_lr: float = 1e-2
    ridge: float = 1e-3  # relative ridge for the lstsq start
    # top-1 agreement (classifiers) or relative feature error (task presets) within this of the best counts as
    # equally good
    select_tolerance: float = 0.02
    loss: FeatureLoss = field(default_factory=FeatureLoss)
    cka: CKAConfig = field(default_factory=CKAConfig)
    decode_batch: int = 8  # frames per INR decode / backbone pass when precomputing features
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.init not in ("lstsq", "random"):
            raise ValueError(f"init must be 'lstsq' or 'random'; got {self.init!r}")
        if self.epochs < 0 or self.task_epochs < 0 or self.batch_size < 1 or self.val_every < 2 or self.patience < 1:
            raise ValueError(
                "epochs >= 0, task_epochs >= 0, batch_size >= 1, val_every >= 2 and patience >= 1 are required"
            )
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1]; got {self.top_fraction}")
        if self.candidates not in ("top", "per_point"):
            raise ValueError(f"candidates must be 'top' or 'per_point'; got {self.candidates!r}")
        if not 0 <= self.min_improvement < 1:
            raise ValueError(f"min_improvement must be in [0, 1); got {self.min_improvement}")


@dataclass
class Route:
    """A task's path through the video: INR tap -> adapter -> backbone suffix from the injection point."""

    task: str
    backbone: str
    inr_tap: str
    injection_point: str
    in_channels: int
    out_channels: int
    size: tuple[int, ...]  # the injection point's spatial size (H, W) the adapter resizes to
    hidden: int | None
    adapter: dict[str, np.ndarray]  # MicroAdapter.to_arrays(): weight{i} (C_out, C_in), bias{i}
    metrics: dict[str, Any]

    def adapter_spec(self) -> AdapterSpec:
        return AdapterSpec(self.in_channels, self.out_channels, tuple(self.size), self.hidden)

    def build_adapter(self) -> MicroAdapter:
        return MicroAdapter.from_arrays(self.adapter_spec(), self.adapter)


def storable(value) -> bool:
    """A metric the manifest can hold: JSON has no NaN or infinity (the reader refuses them)."""
    return isinstance(value, (int, str)) or (isinstance(value, float) and math.isfinite(value))


def to_file_route(route) -> FileRoute:
    """A classification route (``Route``) as the .nvp container stores it."""
    metadata = {
        "kind": "classification",
        "in_channels": route.in_channels,
        "out_channels": route.out_channels,
        "hidden": route.hidden,
        "pathways": [{"size": list(route.size), "frames": None}],
        **{k: v for k, v in route.metrics.items() if storable(v)},
    }
    return FileRoute(route.task, route.backbone, route.inr_tap, route.injection_point, dict(route.adapter), metadata)


@dataclass
class Candidate:
    """One trained pair of the CKA top-K."""

    tap: str
    point: str
    cka: float
    cka_rank: int
    val_loss: float
    val_loss_relative: float  # val_loss / loss of predicting the per-channel mean
    val_top1_agreement: float | None
    val_cosine: float
    val_loss_history: list[float]  # before training (after init), then after each epoch
    epochs: int
    seconds: float
    macs_nvp: int  # INR prefix + adapter + backbone suffix, per frame
    macs_full: int  # full INR decode + full backbone, per frame

    @property
    def compute_saved(self) -> float:
        return 1.0 - self.macs_nvp / self.macs_full


@dataclass
class AdaptResult:
    route: Route
    candidates: list[Candidate]
    cka: CKAMatrix
    fidelity: Fidelity  # NVP path vs the backbone on the original frames, all frames
    pixel_fidelity: Fidelity  # full INR decode to pixels -> backbone, vs the same reference
    seconds: dict[str, float]  # cka, features, training, evaluation, total

    def summary(self) -> str:
        r, m = self.route, self.route.metrics
        top1 = f"{m['top1_agreement']:.1%}" if m.get("top1_agreement") is not None else "n/a"
        return (
            f"{r.task}/{r.backbone}: INR tap {r.inr_tap} -> {r.injection_point} "
            f"(CKA {m['cka']:.3f}, rank {m['cka_rank']}/{m['pairs']}), adapter {m['adapter_params']} params "
            f"({m['adapter_percent']:.3f}% of backbone), compute saved {m['compute_saved']:.1%}, "
            f"top-1 agreement {top1}, trained in {self.seconds['training']:.1f}s"
        )


@torch.no_grad()
def _batched(fn, n: int, batch: int) -> torch.Tensor:
    return torch.cat([fn(slice(s, min(s + batch, n))) for s in range(0, n, batch)])


def _mean_loss(loss_fn, pred_fn, targets: torch.Tensor, batch: int) -> float:
    total = 0.0
    with torch.no_grad():
        for s in range(0, targets.shape[0], batch):
            sl = slice(s, min(s + batch, targets.shape[0]))
            total += float(loss_fn(pred_fn(sl), targets[sl])) * (sl.stop - sl.start)
    return total / targets.shape[0]


class _Features:
    """INR taps and backbone features of the clip's frames, computed once and reused by every candidate."""

    def __init__(self, inr, backbone: Backbone, frames: torch.Tensor, batch: int):
        self.inr, self.backbone, self.frames, self.batch = inr, backbone, frames, batch
        self.n = frames.shape[0]
        self._taps: dict[str, torch.Tensor] = {}
        self._points: dict[str, torch.Tensor] = {}

    def tap(self, name: str) -> torch.Tensor:
        if name not in self._taps:
            idx = torch.arange(self.n)
            self._taps[name] = _batched(lambda sl: self.inr.decode(idx[sl], until=name)[name], self.n, self.batch)
        return self._taps[name]

    def point(self, name: str) -> torch.Tensor:
        if name not in self._points:
            bb = self.backbone
            self._points[name] = _batched(
                lambda sl: bb.prefix(bb.preprocess(self.frames[sl]), name), self.n, self.batch
            )
        return self._points[name]

    def reference_outputs(self) -> torch.Tensor:
        bb = self.backbone
        return _batched(lambda sl: bb(bb.preprocess(self.frames[sl])), self.n, self.batch)

    def release(self, keep_taps: set[str], keep_points: set[str]) -> None:
        self._taps = {k: v for k, v in self._taps.items() if k in keep_taps}
        self._points = {k: v for k, v in self._points.items() if k in keep_points}


def train_adapter(
    spec: AdapterSpec,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: AdaptConfig = AdaptConfig(),
    bar=None,
    on_epoch: Callable[[int, MicroAdapter, float], None] | None = None,
) -> tuple[MicroAdapter, list[float]]:
    """Adam on the feature-transfer loss with early stopping on the validation loss.

    x: INR tap features (N, C_in, h, w); y: the backbone's features at the injection point.
    Returns the adapter with the best validation loss and the loss history (index 0: after
    initialisation). ``on_epoch(epoch, adapter, val_loss)`` is called after init (epoch 0)
    and after every epoch, e.g. to track task agreement while training.
    """
    torch.manual_seed(config.seed)
    adapter = MicroAdapter(spec)
    # The resize has no parameters: do it once, then train the 1x1 convs on cached inputs.
    with torch.no_grad():
        r_tr = _batched(lambda sl: resize(x_tr[sl], spec.size), x_tr.shape[0], config.decode_batch)
        r_val = _batched(lambda sl: resize(x_val[sl], spec.size), x_val.shape[0], config.decode_batch)
    if config.init == "lstsq" and not spec.stacked:
        adapter.set_linear(*fit_linear(r_tr, y_tr, spec.size, config.ridge, config.decode_batch))
    loss_fn = config.loss
    eval_batch = max(config.batch_size, config.decode_batch)
    best_loss = _mean_loss(loss_fn, lambda sl: adapter.pointwise(r_val[sl]), y_val, eval_batch)
    best_state, stale, history = copy.deepcopy(adapter.state_dict()), 0, [best_loss]
    if on_epoch:
        on_epoch(0, adapter, best_loss)
    opt = torch.optim.Adam(adapter.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        adapter.train()
        for order in torch.randperm(r_tr.shape[0], generator=gen).split(config.batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(adapter.pointwise(r_tr[order]), y_tr[order]).backward()
            opt.step()
        adapter.eval()
        val = _mean_loss(loss_fn, lambda sl: adapter.pointwise(r_val[sl]), y_val, eval_batch)
        history.append(val)
        if on_epoch:
            on_epoch(epoch + 1, adapter, val)
        if bar is not None:
            bar.set_postfix_str(f"epoch {epoch + 1} val {val:.4g}")
        if val < best_loss * (1 - config.min_improvement):
            best_loss, best_state, stale = val, copy.deepcopy(adapter.state_dict()), 0
        else:
            if val < best_loss:  # keep the better weights, but it does not reset the patience
                best_loss, best_state = val, copy.deepcopy(adapter.state_dict())
            stale += 1
            if stale >= config.patience:
                break
    adapter.load_state_dict(best_state)
    return adapter.eval(), history


def _check_inr(inr, frames: torch.Tensor) -> None:
    for attr in ("tap_names", "num_frames", "decode", "tap_shapes"):
        if not hasattr(inr, attr):
            raise ValueError(f"the INR must provide {attr} (see the INR interface)")
    if inr.num_frames != frames.shape[0]:
        raise ValueError(f"the INR encodes {inr.num_frames} frames but {frames.shape[0]} original frames were given")


def adapt(inr, frames: Any, backbone: Backbone, config: AdaptConfig = AdaptConfig()) -> AdaptResult:
    """Select an (INR tap, injection point) pair, train its micro adapter, measure fidelity.

    ``frames``: the clip the INR encodes, uint8 (T, H, W, 3) / (T, 3, H, W) or float in [0, 1].
    """
    frames = to_unit_frames(frames)
    _check_inr(inr, frames)
    if backbone.preprocess.num_frames != 1:
        raise ValueError(f"{backbone.name} is a video model; clip sampling for video backbones is not implemented yet")
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    cka = cka_matrix(inr, backbone, frames, config.cka, taps=config.taps, points=config.points)
    seconds["cka"] = time.perf_counter() - t_start
    top = candidate_pairs(cka, inr, backbone, config)

    feats = _Features(inr, backbone, frames, config.decode_batch)
    val_mask = torch.zeros(frames.shape[0], dtype=torch.bool)
    val_mask[config.val_every - 1 :: config.val_every] = True
    tr_idx, val_idx = (~val_mask).nonzero().squeeze(1), val_mask.nonzero().squeeze(1)
    if len(val_idx) == 0 or len(tr_idx) == 0:
        raise ValueError(f"the clip is too short ({frames.shape[0]} frames) for a train/validation split")
    t0 = time.perf_counter()
    reference = feats.reference_outputs()
    seconds["features"] = time.perf_counter() - t0

    one = torch.zeros(1, dtype=torch.long)
    full_macs = macs(lambda: backbone(backbone.preprocess(inr.decode(one)[inr.tap_names[-1]])))
    candidates: list[Candidate] = []
    adapters: dict[tuple[str, str], MicroAdapter] = {}
    seconds["training"] = 0.0
    # Grouped by tap so each tap's decoded features are held only while needed.
    order = sorted(top, key=lambda c: (inr.tap_names.index(c[0]), backbone.point_names.index(c[1])))
    bar = tqdm(order, desc=f"adapters for {backbone.name}", unit="pair", disable=not config.progress)
    for tap, point, value in bar:
        bar.set_description_str(f"{tap} -> {point}")
        t0 = time.perf_counter()
        x, y = feats.tap(tap), feats.point(point)
        seconds["features"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        spec = AdapterSpec(x.shape[1], y.shape[1], tuple(y.shape[-2:]), config.hidden)
        adapter, history = train_adapter(spec, x[tr_idx], y[tr_idx], x[val_idx], y[val_idx], config, bar)
        train_s = time.perf_counter() - t0
        seconds["training"] += train_s
        y_val = y[val_idx]
        mean_target = y[tr_idx].mean(dim=(0, *range(2, y.dim())), keepdim=True)
        baseline = _mean_loss(config.loss, lambda sl: mean_target.expand_as(y_val[sl]), y_val, config.decode_batch)  # noqa: B023 (called here)
        with torch.no_grad():
            val_out = backbone.suffix(adapter(x[val_idx]), point)
        val_fid = fidelity(val_out, reference[val_idx], backbone.task)
        nvp_macs = macs(lambda: backbone.suffix(adapter(inr.decode(one, until=tap)[tap]), point))  # noqa: B023 (called here)
        val_loss = min(history)
        candidates.append(
            Candidate(
                tap,
                point,
                value,
                cka.rank_of(tap, point),
                val_loss,
                val_loss / baseline if baseline > 0 else math.inf,
                val_fid.top1_agreement,
                val_fid.cosine,
                history,
                len(history) - 1,
                train_s,
                nvp_macs,
                full_macs,
            )
        )
        adapters[(tap, point)] = adapter
        upcoming = {c[0] for c in order[len(candidates) :]}
        feats.release(keep_taps=upcoming, keep_points={c[1] for c in order[len(candidates) :]})

    best = select_route(candidates, config.select_tolerance)
    adapter = adapters[(best.tap, best.point)]
    t0 = time.perf_counter()
    if backbone.task == "classification" and config.task_epochs:
        adapter = _learn_answers(adapter, feats, best, reference, backbone, config)
        seconds["training"] += time.perf_counter() - t0
    adapter.round_to_storage()  # the figures below are the stored route's
    with torch.no_grad():
        x = feats.tap(best.tap)
        nvp_out = _batched(lambda sl: backbone.suffix(adapter(x[sl]), best.point), frames.shape[0], config.decode_batch)
        idx = torch.arange(frames.shape[0])
        last = inr.tap_names[-1]
        pixel_out = _batched(
            lambda sl: backbone(backbone.preprocess(inr.decode(idx[sl])[last].clamp(0, 1))),
            frames.shape[0],
            config.decode_batch,
        )
    fid, pixel_fid = fidelity(nvp_out, reference, backbone.task), fidelity(pixel_out, reference, backbone.task)
    seconds["evaluation"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start

    metrics = {
        "cka": best.cka,
        "cka_rank": best.cka_rank,
        "pairs": len(cka.taps) * len(cka.points),
        "candidates_trained": len(candidates),
        "val_loss": best.val_loss,
        "epochs": best.epochs,
        "adapter_params": adapter.num_parameters(),
        "adapter_percent": adapter.percent_of(backbone),
        "macs_nvp": best.macs_nvp,
        "macs_full": best.macs_full,
        "compute_saved": best.compute_saved,
        "top1_agreement": fid.top1_agreement,
        "top5_overlap": fid.top5_overlap,
        "cosine": fid.cosine,
        "val_top1_agreement": best.val_top1_agreement,
        "pixel_top1_agreement": pixel_fid.top1_agreement,
        "train_seconds": seconds["training"],
        "backbone_pretrained": backbone.pretrained,
    }
    route = Route(
        backbone.task,
        backbone.name,
        best.tap,
        best.point,
        adapter.spec.in_channels,
        adapter.spec.out_channels,
        adapter.spec.size,
        adapter.spec.hidden,
        adapter.to_arrays(),
        metrics,
    )
    return AdaptResult(route, candidates, cka, fid, pixel_fid, seconds)


def _learn_answers(
    adapter: MicroAdapter,
    feats: _Features,
    best: Candidate,
    reference: torch.Tensor,
    backbone: Backbone,
    config: AdaptConfig,
) -> MicroAdapter:
    """The chosen adapter trained on the answers too (``finetune_for_task``), on all frames: the
    route serves exactly these frames. Kept only where it agrees on more of them than before, so
    an adapter that already reproduces the features (and with them the top-5) is left as it is."""
    taps, labels = feats.tap(best.tap), reference.argmax(1)

    def agreement(a: MicroAdapter) -> float:
        with torch.no_grad():
            out = _batched(lambda sl: backbone.suffix(a(taps[sl]), best.point), len(taps), config.decode_batch)
        return float((out.argmax(1) == labels).double().mean())

    def stored_agreement(a: MicroAdapter) -> float:
        return agreement(a.stored())

    before = stored_agreement(adapter)
    if before == 1.0:  # nothing left to learn
        return adapter
    tuned = copy.deepcopy(adapter)
    finetune_for_task(
        tuned,
        taps,
        feats.point(best.point),
        labels,
        lambda f: backbone.suffix(f, best.point),
        epochs=config.task_epochs,
        lr=config.task_lr,
        seed=config.seed,
        select=stored_agreement,
        select_stop=1.0,
    )
    return tuned if stored_agreement(tuned) > before else adapter


def candidate_pairs(cka: CKAMatrix, inr, backbone: Backbone, config: AdaptConfig) -> list[tuple[str, str, float]]:
    """The pairs to train: CKA top-K or best tap per point, among pairs within the adapter size budget."""
    tap_channels = {t: shape[0] for t, shape in inr.tap_shapes().items()}
    budget = (
        None if config.max_adapter_percent is None else config.max_adapter_percent / 100 * backbone.num_parameters()
    )

    def fits(tap: str, point: str) -> bool:
        size = sum(
            AdapterSpec(tap_channels[tap], s[0], (1, 1), config.hidden).num_parameters  # one per pathway
            for s in backbone.point(point).pathway_shapes
        )
        return budget is None or size <= budget

    allowed = CKAMatrix(
        cka.taps,
        cka.points,
        np.where([[fits(t, p) for p in cka.points] for t in cka.taps], cka.values, -np.inf),
        cka.backbone,
    )
    if not np.isfinite(allowed.values).any():
        raise ValueError(f"no (tap, point) pair has an adapter within {config.max_adapter_percent}% of {backbone.name}")
    if config.candidates == "per_point":
        return [c for c in allowed.best_per_point() if math.isfinite(c[2])]
    k = math.ceil(config.top_fraction * cka.values.size)
    return [c for c in allowed.ranked() if math.isfinite(c[2])][: max(1, k)]


def select_route(candidates: list[Candidate], tolerance: float) -> Candidate:
    """The cheapest candidate whose validation agreement is within ``tolerance`` of the best
    (ties: lowest relative validation loss); see the module docstring."""
    top1 = {id(c): c.val_top1_agreement for c in candidates if c.val_top1_agreement is not None}
    if top1:
        best_top1 = max(top1.values())
        pool = [c for c in candidates if id(c) in top1 and top1[id(c)] >= best_top1 - tolerance]
    else:  # embedding tasks: agreement by cosine
        best_cos = max(c.val_cosine for c in candidates)
        pool = [c for c in candidates if c.val_cosine >= best_cos - tolerance]
    return max(pool, key=lambda c: (c.compute_saved, -c.val_loss_relative))
