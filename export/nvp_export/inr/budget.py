"""Sizing an INR to a budget: the widest model whose file fits, the container and routes counted.

At low rates the container is a large share of the file: a 64-frame 320x180 clip at 0.05 bpp is
23 KB in all, of which the manifest, the array headers, the quantisation ranges and the symbol
counts take about 7 KB, and a route's adapter at the INR's first tap several more. A budget in
bits per pixel therefore counts them, measured by writing a file of the candidate's shape with
the writer itself, so that whatever the format adds is counted as the format stands.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .base import INR
from .config import from_config, make_config, stored_bits
from .store import quantise_inr, save_nvp

# Ever smaller variants of each family's defaults, tried in turn while a budget leaves fc_dim < PREFERRED_FC_DIM.
# HNeRV's per-frame embeddings dominate at low rates (embed_dim 16 on a 9x16 grid is 0.24 bpp at
# 6 bits a value before anything else), so they are thinned first, then the narrowest blocks. Below 8
# channels the encoder projects them from a normalised stage (hnerv.MIN_NORMALISED_EMBED_DIM): 1 and 2
# channels then leave the mean frame (Big Buck Bunny, 45 s: 18.3 and 20.8 dB, variance ratio 0.46, 0.50).
SHRINK = {
    "nerv": [{"mlp_hidden": h} for h in (512, 256, 128, 64, 32)],
    "hnerv": [
        {},
        {"embed_dim": 8},
        {"embed_dim": 8, "lower_width": 8},
        {"embed_dim": 4, "lower_width": 6},
        {"embed_dim": 2, "lower_width": 4},
        {"embed_dim": 1, "lower_width": 4},
    ],
}

# Narrower stems are not models: a budget that leaves less than this is refused.
MIN_FC_DIM = 4
# The first SHRINK variant leaving at least this stem width is taken: per-frame embeddings are worth more than
# decoder width down to here. At 0.1 bpp (64 frames of 320x180, 150 s fits on 2 threads), embed 4 with fc 12
# reached 25.65 dB on bikes and 23.51 on Big Buck Bunny, against 23.95 and 22.74 for embed 2 with fc 19 and
# 21.18 (bikes) for embed 1 with fc 22; the threshold of 16 this replaces picked embed 2.
PREFERRED_FC_DIM = 8

# Routes the file will carry, given the INR whose taps they read (their size depends on its widths).
RoutesFor = Callable[[INR], Sequence]


def container_bytes(cfg, routes: RoutesFor | None = None) -> int:
    """Bytes a file of ``cfg``'s shape holds beside its coded values: manifest, array headers,
    quantisation ranges, symbol counts, and ``routes`` whole (sized by an untrained model)."""
    inr = from_config(cfg)
    arrays, meta, _ = quantise_inr(inr)
    with tempfile.TemporaryDirectory() as folder:
        size = save_nvp(Path(folder) / "probe.nvp", inr, arrays, meta, {}, routes=routes(inr) if routes else ())
    coded = sum(v.nbytes for name, v in arrays.items() if name.endswith(":words"))  # the range-coded streams
    return size - coded


def _widest(build: Callable[[int], Any], cost: Callable[[Any], float], budget: float) -> int:
    """The largest fc_dim whose cost is within budget (0 if none); cost grows with fc_dim."""
    lo, hi = 0, 4096
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(build(mid)) <= budget else (lo, mid - 1)
    return lo


def config_for_budget(
    family: str,
    height: int,
    width: int,
    num_frames: int,
    *,
    params: int | None = None,
    bpp: float | None = None,
    routes: RoutesFor | None = None,
    reserve_bytes: int = 0,
    **overrides,
):
    """The widest INR (largest fc_dim) that fits the budget.

    ``params`` counts decoder weights plus embeddings. ``bpp`` counts the whole file over frames x
    height x width: the quantised values at 8 bits per weight and 6 per embedding value (the
    entropy coder then lands a little below), the container around them and ``routes`` (both by
    ``container_bytes``), and ``reserve_bytes`` for manifest entries the caller adds after the fit.
    When the budget leaves fc_dim < PREFERRED_FC_DIM at the default sizes, smaller variants are tried in turn
    (SHRINK), so short clips and low rates still get a model.
    """
    if (params is None) == (bpp is None):
        raise ValueError("give exactly one budget: params or bpp")
    budget = float(params) if params is not None else bpp * num_frames * height * width
    variants = [{k: v for k, v in extra.items() if k not in overrides} for extra in SHRINK[family]]
    best = None
    for extra in variants:

        def build(fc_dim: int, extra=extra):
            return make_config(
                family, height=height, width=width, num_frames=num_frames, fc_dim=fc_dim, **extra, **overrides
            )

        if params is not None:
            fc_dim = _widest(build, lambda c: sum(c.stored_values()), budget)
        else:
            # The container is not monotone in fc_dim (a route's injection point can change with the
            # tap's width), so down from the widest model the values alone allow, the first that fits.
            values_budget = budget - 8 * reserve_bytes
            fc_dim = _widest(build, stored_bits, values_budget)
            while fc_dim and stored_bits(build(fc_dim)) + 8 * container_bytes(build(fc_dim), routes) > values_budget:
                fc_dim -= 1
        if fc_dim >= MIN_FC_DIM:
            best = build(fc_dim)
            if fc_dim >= PREFERRED_FC_DIM:
                break
    if best is None:
        raise ValueError(
            f"a budget of {params if params is not None else f'{bpp} bpp'} is too small for any {family} "
            f"model of {width}x{height} x {num_frames} frames"
            + (" with its container and routes" if bpp is not None else "")
            + "; raise --bpp or --params"
        )
    return best
