"""Counting multiply-accumulates of a forward pass (the paper's convention: 1 MAC = 1 FLOP)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def macs(fn: Callable[..., Any], *args: Any) -> int:
    """MACs of ``fn(*args)``: matmuls, convolutions and attention as torch's FlopCounterMode counts
    them (2 FLOPs per MAC, halved here); resizes, norms and elementwise ops count 0."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2
