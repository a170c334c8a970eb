"""An INR's configuration: the families by name, a config from settings, an untrained INR from a
config, and the bits its quantised values take."""

from __future__ import annotations

from dataclasses import fields

from .base import INR
from .hnerv import HNeRV, HNeRVConfig
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
