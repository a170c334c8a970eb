"""Adapters for injection points whose features are several tensors, and their fitting.

Some backbones carry more than one tensor across a stage boundary: SlowFast's slow
and fast pathways (different frame rates and channel widths), or a segmentation
encoder whose decode head needs every earlier scale. The interface for them,
``MultiPathwayPoint`` and ``MultiPathwayBackbone``, is ``nvp_export.backbone``'s.

A ``PathwayAdapter`` maps one INR tap to every pathway of a point with a micro
adapter each (bilinear resize + 1x1 conv, as ``MicroAdapter``). Video pathways
that run at a lower frame rate take the clip's frames a pathway of that rate
sees (pytorchvideo's PackPathway rule), so the INR decodes each frame once for
all pathways.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..backbone import Features, InjectionPoint, MultiPathwayPoint, as_pathways, temporal_indices
from .adapter import AdapterSpec, MicroAdapter, fit_linear
from .losses import FeatureLoss

__all__ = [
    "PathwayAdapter",
    "decode_clips",
    "FitConfig",
    "pathway_loss",
    "fit_adapter",
]


class PathwayAdapter(nn.Module):
    """One INR tap -> every pathway of an injection point (a ``MicroAdapter`` per pathway).

    Input: (N, C, h, w) for image backbones, (N, C, T, h, w) for a clip of T frames.
    Output: a tensor for a single-pathway point, else a list in pathway order.
    """

    def __init__(self, in_channels: int, point: InjectionPoint, hidden: int | None = None):
        super().__init__()
        self.point = point
        self.single = not isinstance(point, MultiPathwayPoint)
        shapes = point.pathway_shapes
        self.frames = list(point.pathway_frames)
        self.adapters = nn.ModuleList(
            MicroAdapter(AdapterSpec(in_channels, s[0], tuple(s[-2:]), hidden)) for s in shapes
        )

    def pathway_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The INR features each pathway's adapter sees: the whole clip, or the frames of its lower rate."""
        inputs = []
        for frames in self.frames:
            xp = x
            if frames is not None:
                if x.dim() != 5:
                    raise ValueError(
                        f"a video injection point needs (N, C, T, H, W) clip features; got {tuple(x.shape)}"
                    )
                if x.shape[2] != frames:
                    xp = x.index_select(2, temporal_indices(x.shape[2], frames, x.device))
            inputs.append(xp)
        return inputs

    def forward(self, x: torch.Tensor) -> Features:
        outs = [adapter(xp) for adapter, xp in zip(self.adapters, self.pathway_inputs(x))]
        return outs[0] if self.single else outs

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def percent_of(self, backbone: nn.Module) -> float:
        return 100.0 * self.num_parameters() / sum(p.numel() for p in backbone.parameters())

    def round_to_storage(self) -> None:
        """Every pathway's weights rounded as a .nvp file stores them (``MicroAdapter.round_to_storage``)."""
        for adapter in self.adapters:
            cast(MicroAdapter, adapter).round_to_storage()

    def load_route(self, arrays: dict[str, np.ndarray]) -> None:
        """The inverse of :meth:`to_route`'s arrays: set every pathway's weights from a route's."""
        for p, adapter in enumerate(self.adapters):
            prefix = "" if len(self.adapters) == 1 else f"pathway{p}/"
            own = {
                k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix) and "/" not in k[len(prefix) :]
            }
            loaded = MicroAdapter.from_arrays(cast(MicroAdapter, adapter).spec, own)
            adapter.load_state_dict(loaded.state_dict())

    def to_route(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, metadata) as a .nvp route stores them: ``weight{i}``/``bias{i}`` for one pathway,
        ``pathway{p}/weight{i}`` for several; metadata "hidden" and per pathway its "size" and "frames"."""
        arrays = {}
        for p, adapter in enumerate(self.adapters):
            prefix = "" if len(self.adapters) == 1 else f"pathway{p}/"
            arrays.update({prefix + k: v for k, v in adapter.to_arrays().items()})
        pathways = [
            {"size": list(cast(MicroAdapter, a).spec.size), "frames": f} for a, f in zip(self.adapters, self.frames)
        ]
        return arrays, {"hidden": self.adapters[0].spec.hidden, "pathways": pathways}


def decode_clips(inr, clips: torch.Tensor, tap: str) -> torch.Tensor:
    """INR features at ``tap`` for (N, T) frame indices -> (N, C, T, h, w); (N,) indices -> (N, C, h, w)."""
    if clips.dim() == 1:
        return inr.decode(clips, until=tap)[tap]
    n, t = clips.shape
    f = inr.decode(clips.reshape(-1), until=tap)[tap]
    return f.reshape(n, t, *f.shape[1:]).transpose(1, 2)


@dataclass(frozen=True)
class FitConfig:
    """Adapter-only training (paper defaults: 30 epochs, lr 1e-4, batch 4; tests use fewer epochs)."""

    epochs: int = 30
    lr: float = 1e-4
    batch_size: int = 4
    patience: int = 5
    loss: FeatureLoss = FeatureLoss()
    # "lstsq": start each pathway's 1x1 conv at the ridge solution of its MSE term (as adapt.AdaptConfig);
    # "random": PyTorch's default init.
    init: str = "lstsq"
    ridge: float = 1e-3
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.init not in ("lstsq", "random"):
            raise ValueError(f"init must be 'lstsq' or 'random'; got {self.init!r}")


def pathway_loss(pred: Features, target: Features, loss: FeatureLoss) -> torch.Tensor:
    """The feature-transfer loss summed over pathways."""
    return cast(torch.Tensor, sum(loss(p, t) for p, t in zip(as_pathways(pred), as_pathways(target))))


def fit_adapter(
    adapter: PathwayAdapter, taps: torch.Tensor, targets: Features, config: FitConfig = FitConfig()
) -> list[float]:
    """Train ``adapter`` (INR and backbone frozen) so adapter(taps) matches the backbone's features ``targets``.

    ``taps``: INR features of N samples (clips or frames); ``targets``: the backbone's
    features at the adapter's point on the original frames (a tensor or per-pathway list).
    Early stopping watches the mean loss over these same samples (a clip has few; ``adapt.py``
    holds frames out instead). Keeps the weights of the epoch with the lowest mean loss and
    returns the mean loss per epoch (index 0: before training).
    """
    targets = as_pathways(targets)
    torch.manual_seed(config.seed)
    n = taps.shape[0]
    if config.init == "lstsq":
        for adapter_p, x_p, y_p in zip(adapter.adapters, adapter.pathway_inputs(taps), targets):
            spec = cast(MicroAdapter, adapter_p).spec
            if not spec.stacked:
                adapter_p.set_linear(*fit_linear(x_p, y_p, spec.size, config.ridge))

    def mean_loss() -> float:
        with torch.no_grad():
            total = 0.0
            for batch in torch.arange(n).split(config.batch_size):
                total += float(pathway_loss(adapter(taps[batch]), [t[batch] for t in targets], config.loss)) * len(
                    batch
                )
        return total / n

    history = [mean_loss()]
    best, best_state, stale = history[0], copy.deepcopy(adapter.state_dict()), 0
    opt = torch.optim.Adam(adapter.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    for _ in tqdm(range(config.epochs), desc="adapter", unit="epoch", disable=not config.progress):
        for order in torch.randperm(n, generator=gen).split(config.batch_size):
            opt.zero_grad(set_to_none=True)
            pathway_loss(adapter(taps[order]), [t[order] for t in targets], config.loss).backward()
            opt.step()
        history.append(mean_loss())
        if history[-1] < best:
            best, best_state, stale = history[-1], copy.deepcopy(adapter.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    adapter.load_state_dict(best_state)
    return history
