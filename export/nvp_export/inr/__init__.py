"""Implicit neural representations of videos: NeRV and HNeRV behind one INR interface.

    inr.decode(frame_idx, until="block2") -> {"stem": ..., "block1": ..., "block2": ...}
    inr.tap_shapes() -> {"stem": (C, H, W), ..., "rgb": (3, H, W)}

The families (``base``, ``nerv``, ``hnerv``; ``FAMILIES``), sizing to a budget
(``config_for_budget``), fitting to a video (``fit``), and quantisation into the .nvp
payload and back (``store``).
"""

from __future__ import annotations

from dataclasses import fields

from .base import INR, UntileableSizeError, tiling_strides
from .hnerv import HNeRV, HNeRVConfig, HNeRVEncoder
from .nerv import NeRV, NeRVConfig

FAMILIES: dict[str, tuple[type[INR], type[HNeRVConfig] | type[NeRVConfig]]] = {
    "hnerv": (HNeRV, HNeRVConfig),
    "nerv": (NeRV, NeRVConfig),
}
WEIGHT_BITS, EMBEDDING_BITS = 8, 6


def make_config(family: str, **values) -> HNeRVConfig | NeRVConfig:
    if family not in FAMILIES:
        raise ValueError(f"unknown INR family {family!r}; choose one of {sorted(FAMILIES)}")
    config_type = FAMILIES[family][1]
    known = {f.name for f in fields(config_type)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {family} settings: {sorted(unknown)}")
    return config_type(**values)


def from_config(cfg) -> INR:
    """An untrained INR from a config dataclass or its dict form ({"family": ..., **fields})."""
    if isinstance(cfg, dict):
        cfg = make_config(**cfg)
    family = next(f for f, (_, t) in FAMILIES.items() if isinstance(cfg, t))
    return FAMILIES[family][0](cfg)


def stored_bits(cfg) -> int:
    """Bits the quantised values take before entropy coding (8 per weight, 6 per embedding value)."""
    params, embedding = cfg.stored_values()
    return WEIGHT_BITS * params + EMBEDDING_BITS * embedding


# Ever smaller variants of each family's defaults, tried in turn when a budget leaves fc_dim < 16.
SHRINK = {
    "nerv": [{"mlp_hidden": h} for h in (512, 256, 128, 64, 32)],
    "hnerv": [
        {},
        {"embed_dim": 8},
        {"embed_dim": 8, "lower_width": 8},
        {"embed_dim": 4, "lower_width": 6},
        {"embed_dim": 2, "lower_width": 4},
    ],
}


def config_for_budget(
    family: str,
    height: int,
    width: int,
    num_frames: int,
    *,
    params: int | None = None,
    bpp: float | None = None,
    **overrides,
):
    """The widest INR (largest fc_dim) whose stored values fit the budget.

    ``params`` counts decoder weights plus embeddings; ``bpp`` counts their
    quantised bits over frames x height x width (the entropy coder then lands
    below it). When the budget is too small for a useful fc_dim at the default
    sizes, smaller variants are tried in turn (SHRINK): NeRV's stem MLP is
    narrowed from 512; HNeRV's embeddings and narrowest blocks are thinned, so
    short clips at low rates still get a model.
    """
    if (params is None) == (bpp is None):
        raise ValueError("give exactly one budget: params or bpp")
    budget: float
    if params is not None:
        cost, budget = (lambda c: sum(c.stored_values())), params
    else:
        cost, budget = stored_bits, bpp * num_frames * height * width
    variants = [{k: v for k, v in extra.items() if k not in overrides} for extra in SHRINK[family]]
    best = None
    for extra in variants:
        lo, hi = 0, 4096
        while lo < hi:  # largest fc_dim within budget; cost grows with fc_dim
            mid = (lo + hi + 1) // 2
            cfg = make_config(
                family, height=height, width=width, num_frames=num_frames, fc_dim=mid, **extra, **overrides
            )
            lo, hi = (mid, hi) if cost(cfg) <= budget else (lo, mid - 1)
        if lo:
            best = make_config(
                family, height=height, width=width, num_frames=num_frames, fc_dim=lo, **extra, **overrides
            )
            if lo >= 16:
                break
    if best is None:
        raise ValueError(
            f"a budget of {params if params is not None else f'{bpp} bpp'} is too small for any {family} "
            f"model of {width}x{height} x {num_frames} frames; raise --bpp or --params"
        )
    return best


from .store import load_nvp, load_segments, load_video, quantise_inr, save_nvp  # noqa: E402  (store needs the names above)

__all__ = [
    "INR",
    "NeRV",
    "NeRVConfig",
    "HNeRV",
    "HNeRVConfig",
    "HNeRVEncoder",
    "UntileableSizeError",
    "tiling_strides",
    "from_config",
    "make_config",
    "config_for_budget",
    "stored_bits",
    "load_nvp",
    "load_segments",
    "load_video",
    "save_nvp",
    "quantise_inr",
]
