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


from .budget import SHRINK, config_for_budget, container_bytes  # noqa: E402  (budget writes probe files)
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
    "container_bytes",
    "SHRINK",
    "stored_bits",
    "load_nvp",
    "load_segments",
    "load_video",
    "save_nvp",
    "quantise_inr",
]
