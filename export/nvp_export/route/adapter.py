"""The micro adapter: bilinear resize to the injection point's size, then 1x1 conv(s).

The single-conv form computes exactly what the runtime's fused kernel
``nvp_rt.ops.resize_conv1x1(x, weight, bias, size)`` computes; the stacked form
(1x1 conv, activation, 1x1 conv) is for pairs one linear map cannot bridge.
Video features (N, C, T, H, W) are resized frame by frame.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nvp_rt.codec import quantise_best
from nvp_rt.nvpfile import ROUTE_BITS

__all__ = ["AdapterSpec", "MicroAdapter", "resize", "fit_linear", "relative_feature_loss", "finetune_for_task"]


def resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear resize of the last two dims (half-pixel centres, no antialias), 4-D or 5-D input."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dim() == 5:
        n, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        out = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=False)
        return out.reshape(n, t, c, *size).permute(0, 2, 1, 3, 4)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


@dataclass(frozen=True)
class AdapterSpec:
    """Shape of an adapter: in/out channels, target spatial size, optional hidden width (stacked form)."""

    in_channels: int
    out_channels: int
    size: tuple[int, ...]
    hidden: int | None = None  # None: one 1x1 conv; else conv(in->hidden), GELU, conv(hidden->out)

    @property
    def stacked(self) -> bool:
        return self.hidden is not None

    @property
    def num_parameters(self) -> int:
        widths = [self.in_channels] + ([self.hidden] if self.hidden is not None else []) + [self.out_channels]
        return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


class MicroAdapter(nn.Module):
    def __init__(self, spec: AdapterSpec):
        super().__init__()
        self.spec = spec
        widths = [spec.in_channels] + ([spec.hidden] if spec.hidden is not None else []) + [spec.out_channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(resize(x, self.spec.size))

    def pointwise(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 conv part alone, on features already at the target size (training caches the resize)."""
        video = x.dim() == 5
        if video:  # 1x1 convs act per frame; fold T into the batch
            n, c, t, h, w = x.shape
            x = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        for i, conv in enumerate(self.conv_layers()):
            if i:
                x = self.activation(x)
            x = conv(x)
        if video:
            x = x.reshape(n, t, -1, h, w).permute(0, 2, 1, 3, 4)
        return x

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def percent_of(self, backbone: nn.Module) -> float:
        """Adapter parameters as % of the backbone's."""
        return 100.0 * self.num_parameters() / sum(p.numel() for p in backbone.parameters())

    def conv_layers(self) -> list[nn.Conv2d]:
        """The 1x1 convs in order (nn.ModuleList types its items as plain modules)."""
        return [cast(nn.Conv2d, conv) for conv in self.convs]

    def macs(self) -> int:
        """Multiply-accumulates of the 1x1 convs per sample and frame (the resize is not counted)."""
        h, w = self.spec.size
        return sum(conv.in_channels * conv.out_channels * h * w for conv in self.conv_layers())

    @torch.no_grad()
    def set_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the single-conv form's weight (C_out, C_in) and bias (C_out,)."""
        if self.spec.stacked:
            raise ValueError("set_linear applies to the single-conv adapter only")
        conv = self.conv_layers()[0]
        conv.weight.copy_(weight.reshape(conv.weight.shape))
        conv.bias.copy_(bias)

    @torch.no_grad()
    def round_to_storage(self) -> None:
        """Round the weights to what a .nvp file stores (``nvp_rt.nvpfile.ROUTE_BITS``-bit codes), so that
        figures measured afterwards are the file's, not the float adapter's."""
        for conv in self.conv_layers():
            w = conv.weight.reshape(conv.out_channels, conv.in_channels)
            for param, values in ((conv.weight, w), (conv.bias, conv.bias)):
                stored = quantise_best(values.detach().float().cpu().numpy(), ROUTE_BITS).dequantise()
                param.copy_(torch.from_numpy(stored).reshape(param.shape))

    def stored(self) -> MicroAdapter:
        """A copy rounded as a .nvp file stores it (``round_to_storage``): what a reader gets."""
        rounded = copy.deepcopy(self)
        rounded.round_to_storage()
        return rounded

    def to_arrays(self) -> dict[str, np.ndarray]:
        """float32 arrays: ``weight{i}`` (C_out, C_in) and ``bias{i}`` (C_out,) per conv, in order."""
        arrays = {}
        for i, conv in enumerate(self.conv_layers()):
            arrays[f"weight{i}"] = (
                conv.weight.detach().reshape(conv.out_channels, conv.in_channels).float().numpy().copy()
            )
            arrays[f"bias{i}"] = conv.bias.detach().float().numpy().copy()
        return arrays

    @classmethod
    def from_arrays(cls, spec: AdapterSpec, arrays: dict[str, np.ndarray]) -> MicroAdapter:
        adapter = cls(spec)
        expected = {f"{kind}{i}" for i in range(len(adapter.convs)) for kind in ("weight", "bias")}
        if set(arrays) != expected:
            raise ValueError(f"adapter arrays must be {sorted(expected)}; got {sorted(arrays)}")
        with torch.no_grad():
            for i, conv in enumerate(adapter.conv_layers()):
                w, b = np.asarray(arrays[f"weight{i}"]), np.asarray(arrays[f"bias{i}"])
                if w.shape != (conv.out_channels, conv.in_channels) or b.shape != (conv.out_channels,):
                    raise ValueError(f"adapter conv {i}: weight {w.shape} / bias {b.shape} do not fit {spec}")
                conv.weight.copy_(torch.from_numpy(w).reshape(conv.weight.shape))
                conv.bias.copy_(torch.from_numpy(b))
        return adapter


def fit_linear(
    x: torch.Tensor, y: torch.Tensor, size: tuple[int, ...], ridge: float, batch: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge-regression 1x1 conv from resize(x, size) to y, per position, in float64.

    Returns weight (C_out, C_in) and bias (C_out,) minimising the mean squared error
    plus ridge * mean(diag(X'X)) * |W|^2.
    """
    c_in, c_out = x.shape[1], y.shape[1]
    gram = torch.zeros(c_in + 1, c_in + 1, dtype=torch.float64, device=x.device)
    cross = torch.zeros(c_in + 1, c_out, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch):
        xs = resize(x[start : start + batch], size).double()
        xs = xs.movedim(1, -1).reshape(-1, c_in)
        xs = torch.cat([xs, xs.new_ones(xs.shape[0], 1)], dim=1)
        ys = y[start : start + batch].double().movedim(1, -1).reshape(-1, c_out)
        gram += xs.T @ xs
        cross += xs.T @ ys
    reg = ridge * gram.diagonal()[:-1].mean().clamp_min(1e-12)
    gram[:-1, :-1] += reg * torch.eye(c_in, dtype=torch.float64, device=x.device)
    solution = torch.linalg.solve(gram, cross)
    return solution[:-1].T.float().contiguous(), solution[-1].float().contiguous()


def relative_feature_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over the target's mean square: scale-free, so one weight serves every injection point."""
    return F.mse_loss(pred, target) / target.square().mean().clamp_min(1e-12)


def finetune_for_task(
    adapter: MicroAdapter,
    taps: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    lr: float = 1e-3,
    task_weight: float = 0.5,
    feat_weight: float = 0.2,
    batch: int = 16,
    seed: int = 0,
    select: Callable[[MicroAdapter], float] | None = None,
    select_every: int = 25,
    select_stop: float | None = None,
) -> list[float]:
    """Adapter-only training on the answers as well as the features (the paper's L_task + L_feat, eq. 3).

    ``taps``: the stored INR's features at the route's tap, all frames; ``target``: the backbone's
    features at the injection point on the original frames; ``labels``: the backbone's top-1 on
    them (pseudo-labels); ``head(features)``: the backbone suffix from the injection point. A
    feature loss alone leaves the class to chance wherever the INR is far from the frames
    (docs/adapt.md); the cross-entropy term trains for the answer itself. The resize is done
    once. With ``select``, the adapter ends in the state it scored highest, checked every
    ``select_every`` epochs and at the end (Adam at a high rate wanders between states that agree on
    more or fewer frames); training stops once it scores ``select_stop`` (agreement: 1.0, all frames).
    Returns the mean loss per epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        resized = torch.cat([resize(taps[s : s + batch], adapter.spec.size) for s in range(0, len(taps), batch)])
    optimiser = torch.optim.Adam(adapter.parameters(), lr=lr)
    history = []
    best: tuple[float, dict[str, torch.Tensor] | None] = (-math.inf, None)
    adapter.train()
    for epoch in range(1, epochs + 1):
        total = 0.0
        for order in torch.randperm(len(taps), generator=generator).split(batch):
            adapted = adapter.pointwise(resized[order])
            loss = task_weight * F.cross_entropy(head(adapted), labels[order]) + feat_weight * relative_feature_loss(
                adapted, target[order]
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(order)
        history.append(total / len(taps))
        if select is not None and (epoch % select_every == 0 or epoch == epochs):
            adapter.eval()
            score = select(adapter)
            if score > best[0]:
                best = (score, copy.deepcopy(adapter.state_dict()))
            if select_stop is not None and score >= select_stop:
                break
            adapter.train()
    adapter.eval()
    if best[1] is not None:
        adapter.load_state_dict(best[1])
    return history
