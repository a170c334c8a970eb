"""Counting multiply-accumulates of a forward pass (the paper's convention: 1 MAC = 1 FLOP)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def _bilinear_flops(*args, out_shape, **kwargs) -> int:
    return 2 * 4 * math.prod(out_shape)  # 4 MACs per output element, in the counter's 2-FLOPs-per-MAC unit


def macs(fn: Callable[..., Any], *args: Any) -> int:
    """MACs of ``fn(*args)``: matmuls, convolutions and attention as torch's FlopCounterMode counts
    them (2 FLOPs per MAC, halved here), plus bilinear resizes at 4 MACs per output element
    (fvcore's rule; torch counts them 0). Norms and elementwise ops count 0."""
    mapping = {torch.ops.aten.upsample_bilinear2d: _bilinear_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn(*args)
    return counter.get_total_flops() // 2
