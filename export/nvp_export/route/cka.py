"""Representation selection: linear CKA between every INR tap and every injection point.

Minibatch CKA with the unbiased HSIC estimator (Nguyen et al. 2021, eq. 3), in
float64: for each minibatch of n > 3 samples, with K = XX^T and L = YY^T their
linear Gram matrices with zeroed diagonals,

    HSIC1(K, L) = [tr(KL) + (1'K1)(1'L1) / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))

and CKA = mean HSIC1(K, L) / sqrt(mean HSIC1(K, K) * mean HSIC1(L, L)) over the
minibatches. The unbiased estimator keeps small-batch averages honest (the biased
one inflates CKA badly at batch 16); values can be slightly negative.

Features are average-pooled to at most ``grid`` x ``grid`` positions before
flattening (a 112x112 stem map would otherwise be ~400k dims per sample). Pooling
keeps the coarse spatial layout -- which the adapter, a per-position map after a
resize, must preserve -- bounds memory for early high-resolution layers, and
smooths the sub-pixel misalignment between the INR's grid and the backbone's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nvp_rt.atomic import atomic_write

from ..backbone import temporal_indices
from ..charts import save_png

__all__ = [
    "CKAConfig",
    "CKAMatrix",
    "MinibatchCKA",
    "unbiased_hsic",
    "linear_cka",
    "cka_matrix",
    "pooled",
    "positions",
    "sample_indices",
    "sample_clips",
]


def unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """HSIC1 of two (n, n) Gram matrices (their diagonals are ignored); float64 scalar."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples per batch; got {n}")
    k = k.double().clone().fill_diagonal_(0)
    l = l.double().clone().fill_diagonal_(0)
    trace_kl = (k * l).sum()  # tr(KL) for symmetric K, L
    sums = k.sum() * l.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (k.sum(0) @ l.sum(1))  # 1'KL1
    return (trace_kl + sums - cross) / (n * (n - 3))


def pooled(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, [T,] H, W) -> (N, p) float64, spatially average-pooled to at most grid x grid."""
    if features.dim() == 4:
        h, w = features.shape[-2:]
        features = F.adaptive_avg_pool2d(features, (min(grid, h), min(grid, w)))
    elif features.dim() == 5:
        t, h, w = features.shape[-3:]
        features = F.adaptive_avg_pool3d(features, (t, min(grid, h), min(grid, w)))
    return features.reshape(features.shape[0], -1).double()


def positions(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, [T,] H, W) -> (N * [T *] grid * grid, C) float64: one sample per position of a common grid.

    Larger maps are average-pooled, smaller ones bilinearly upsampled, so every tap and
    every injection point lands on the same grid and position i means the same place.
    """
    if features.dim() == 5:
        features = features.movedim(2, 1).flatten(0, 1)
    h, w = features.shape[-2:]
    if h >= grid and w >= grid:
        features = F.adaptive_avg_pool2d(features, (grid, grid))
    else:
        features = F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)
    return features.movedim(1, -1).reshape(-1, features.shape[1]).double()


class MinibatchCKA:
    """Accumulates HSIC1 over minibatches for every (x, y) pair of named feature sets."""

    def __init__(self, x_names: Sequence[Any], y_names: Sequence[Any]):  # any hashable names
        self.x_names, self.y_names = list(x_names), list(y_names)
        self._xy = np.zeros((len(self.x_names), len(self.y_names)))
        self._xx = np.zeros(len(self.x_names))
        self._yy = np.zeros(len(self.y_names))
        self.batches = 0

    def update(self, xs: dict[Any, torch.Tensor], ys: dict[Any, torch.Tensor]) -> None:
        """xs, ys: name -> (n, p) features of the same n samples."""
        kx = [self._gram(xs[name]) for name in self.x_names]
        ly = [self._gram(ys[name]) for name in self.y_names]
        for i, k in enumerate(kx):
            self._xx[i] += float(unbiased_hsic(k, k))
            for j, l in enumerate(ly):
                self._xy[i, j] += float(unbiased_hsic(k, l))
        for j, l in enumerate(ly):
            self._yy[j] += float(unbiased_hsic(l, l))
        self.batches += 1

    @staticmethod
    def _gram(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).double()
        return x @ x.T

    def values(self) -> np.ndarray:
        if not self.batches:
            raise ValueError("no minibatches accumulated")
        denom = np.sqrt(np.clip(np.outer(self._xx, self._yy), 0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, self._xy / denom, 0.0)


def linear_cka(x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> float:
    """Minibatch linear CKA of (n, ...) features x and y (one batch of all n when batch_size is None)."""
    n = x.shape[0]
    batch_size = batch_size or n
    acc = MinibatchCKA(["x"], ["y"])
    for start in range(0, n - batch_size + 1, batch_size):
        sl = slice(start, start + batch_size)
        acc.update({"x": x[sl]}, {"y": y[sl]})
    return float(acc.values()[0, 0])


@dataclass(frozen=True)
class CKAConfig:
    frames: int = 32  # frames sampled evenly over the clip
    batch_size: int = 8  # minibatch for HSIC (> 3)
    # "positions": every position of a common grid x grid map is a sample and its channel
    # vector the feature -- what a per-position adapter (resize + 1x1 conv) can map.
    # "frames": every frame is a sample, its pooled map flattened (p = C * grid^2).
    samples: str = "positions"
    grid: int = 8
    top_fraction: float = 0.1  # share of pairs kept for adapter training
    seed: int = 0  # the order frames are grouped into minibatches

    def __post_init__(self):
        if self.samples not in ("positions", "frames"):
            raise ValueError(f"CKA samples must be 'positions' or 'frames'; got {self.samples!r}")
        if self.batch_size < 4 or self.grid < 1:
            raise ValueError("CKA batch_size must be >= 4 and grid >= 1")

    def flatten(self, features: torch.Tensor) -> torch.Tensor:
        """Features of a batch of frames -> the (samples, dims) matrix CKA compares."""
        return positions(features, self.grid) if self.samples == "positions" else pooled(features, self.grid)


@dataclass
class CKAMatrix:
    """CKA values, rows = INR taps (shallow -> deep), columns = injection points."""

    taps: list[str]
    points: list[str]
    values: np.ndarray
    backbone: str = ""
    meta: dict = field(default_factory=dict)

    def ranked(self) -> list[tuple[str, str, float]]:
        """All (tap, point, cka), highest CKA first."""
        order = np.argsort(-self.values, axis=None, kind="stable")
        return [
            (self.taps[i // len(self.points)], self.points[i % len(self.points)], float(self.values.flat[i]))
            for i in order
        ]

    def top(self, fraction: float) -> list[tuple[str, str, float]]:
        """The best ceil(fraction * pairs) pairs (at least one)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"top fraction must be in (0, 1]; got {fraction}")
        ranked = self.ranked()
        return ranked[: max(1, math.ceil(fraction * len(ranked)))]

    def best_per_point(self) -> list[tuple[str, str, float]]:
        """For each injection point, the tap with the highest CKA; highest first."""
        best = [
            (self.taps[int(self.values[:, j].argmax())], p, float(self.values[:, j].max()))
            for j, p in enumerate(self.points)
        ]
        return sorted(best, key=lambda c: -c[2])

    def rank_of(self, tap: str, point: str) -> int:
        """1-based rank of a pair."""
        for r, (t, p, _) in enumerate(self.ranked(), start=1):
            if (t, p) == (tap, point):
                return r
        raise ValueError(f"no pair ({tap!r}, {point!r})")

    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone,
            "taps": self.taps,
            "points": self.points,
            "cka": self.values.tolist(),
            "meta": self.meta,
        }

    def save_json(self, path: str | os.PathLike) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=1).encode())

    def save_heatmap(self, path: str | os.PathLike, top_fraction: float | None = None) -> None:
        """PNG heatmap; pairs in the top ``top_fraction`` are outlined."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(self.points), 1.2 + 0.5 * len(self.taps)), dpi=120)
        im = ax.imshow(self.values, cmap="viridis", vmin=min(0.0, float(self.values.min())), vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(self.points)), self.points, rotation=45, ha="right")
        ax.set_yticks(range(len(self.taps)), self.taps)
        ax.set_xlabel(f"{self.backbone} injection point".strip())
        ax.set_ylabel("INR tap")
        for i in range(len(self.taps)):
            for j in range(len(self.points)):
                v = self.values[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
        if top_fraction:
            for tap, point, _ in self.top(top_fraction):
                i, j = self.taps.index(tap), self.points.index(point)
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        title = "linear CKA (unbiased, minibatch)" + (f"; red: top {top_fraction:.0%}" if top_fraction else "")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        save_png(fig, path)


def sample_indices(num_frames: int, count: int, seed: int) -> torch.Tensor:
    """``count`` frame indices spread evenly over the clip, in a seeded random order."""
    idx = torch.linspace(0, num_frames - 1, min(count, num_frames)).round().long().unique()
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]


def sample_clips(num_frames: int, clip: int, count: int, seed: int) -> torch.Tensor:
    """(n, clip) frame indices of ``count`` clips of ``clip`` consecutive frames spread evenly over the video."""
    if num_frames < clip:
        raise ValueError(f"clips of {clip} frames need a video of at least {clip} frames; it has {num_frames}")
    starts = sample_indices(num_frames - clip + 1, count, seed)
    return starts[:, None] + torch.arange(clip)


def _frames_first(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> (N * T, C, H, W): each frame of a clip is a sample; image features unchanged."""
    return x.movedim(2, 1).flatten(0, 1) if x.dim() == 5 else x


def _pathway_frames(x: torch.Tensor, clip: int, frames: int | None) -> torch.Tensor:
    """An INR tap's features (clips x ``clip`` frames first) at the frames a pathway of ``frames`` per clip sees."""
    if frames is None:
        return x
    x = x.reshape(-1, clip, *x.shape[1:])
    return x.index_select(1, temporal_indices(clip, frames)).flatten(0, 1)


@torch.no_grad()
def cka_matrix(
    inr,
    backbone,
    frames: torch.Tensor,
    config: CKAConfig = CKAConfig(),
    taps: Sequence[str] | None = None,
    points: Sequence[str] | None = None,
) -> CKAMatrix:
    """CKA between the INR's taps and the backbone's injection points on sampled frames.

    ``frames``: (T, 3, H, W) float in [0, 1], the original frames the INR encodes.

    Video backbones (``preprocess.num_frames`` > 1) see clips of that many consecutive frames,
    about ``config.frames`` frames in all (at least one clip); every frame of a pathway is a
    sample, compared with the INR's features of the frames that pathway sees (the adapter's
    ``temporal_indices`` rule). A point carrying several pathways scores the mean of its
    pathways' CKA: the adapter maps each pathway on its own, so the route is as mappable as
    its pathways are on average.
    """
    taps = list(inr.tap_names if taps is None else taps)
    unknown = [t for t in taps if t not in inr.tap_names]
    if unknown:
        raise ValueError(f"INR has no taps {unknown}; it has {inr.tap_names}")
    deepest = max(taps, key=inr.tap_names.index)
    points = list(backbone.point_names if points is None else points)
    unknown = [p for p in points if p not in backbone.point_names]
    if unknown:
        raise ValueError(f"{backbone.name} has no injection points {unknown}; it has {backbone.point_names}")
    clip = backbone.preprocess.num_frames
    if clip == 1:
        idx = sample_indices(frames.shape[0], config.frames, config.seed)
        if len(idx) < 4:
            raise ValueError(f"CKA needs at least 4 frames; the clip has {frames.shape[0]}")
        batch = max(4, min(config.batch_size, len(idx)))
    else:
        idx = sample_clips(frames.shape[0], clip, max(1, config.frames // clip), config.seed)
        batch = max(1, min(config.batch_size // clip, len(idx)))
    # One accumulator per pathway frame count: its samples are the frames of that rate.
    columns = {(p, i): f for p in points for i, f in enumerate(backbone.point(p).pathway_frames)}
    groups = {f: MinibatchCKA(taps, [c for c, g in columns.items() if g == f]) for f in set(columns.values())}
    for start in range(0, len(idx) - batch + 1, batch):
        sel = idx[start : start + batch]
        inr_feats = inr.decode(sel.reshape(-1), until=deepest)
        pixels = frames[sel] if clip == 1 else frames[sel].transpose(1, 2)
        bb_feats = backbone.features(backbone.preprocess(pixels), points)
        for f, acc in groups.items():
            ys = {}
            for point, i in acc.y_names:
                feats = bb_feats[point]
                ys[(point, i)] = config.flatten(_frames_first(feats if isinstance(feats, torch.Tensor) else feats[i]))
            acc.update({t: config.flatten(_pathway_frames(inr_feats[t], clip, f)) for t in taps}, ys)
    per_column = {c: groups[f].values()[:, groups[f].y_names.index(c)] for c, f in columns.items()}
    values = np.stack([np.mean([per_column[c] for c in columns if c[0] == p], axis=0) for p in points], axis=1)
    first = next(iter(groups.values()))
    return CKAMatrix(
        taps,
        points,
        values,
        backbone=backbone.name,
        meta={
            "frames": int(idx.numel()),
            "clip": clip,
            "batch_size": batch,
            "batches": first.batches,
            "samples": config.samples,
            "grid": config.grid,
            "pathways": "mean of the pathways' CKA",
            "estimator": "minibatch linear CKA, unbiased HSIC (Nguyen et al. 2021), float64",
        },
    )
