"""Implicit neural representations of videos: NeRV and HNeRV behind one INR interface.

    inr.decode(frame_idx, until="block2") -> {"stem": ..., "block1": ..., "block2": ...}
    inr.tap_shapes() -> {"stem": (C, H, W), ..., "rgb": (3, H, W)}

The families (``base``, ``nerv``, ``hnerv``), their configuration (``config``: ``FAMILIES``,
``make_config``, ``from_config``), sizing to a budget (``budget``), fitting to a video (``fit``),
and quantisation into the .nvp payload and back (``store``).
"""

from __future__ import annotations

from .base import INR, UntileableSizeError, tiling_strides
from .budget import SHRINK, config_for_budget, container_bytes
from .config import EMBEDDING_BITS, FAMILIES, WEIGHT_BITS, from_config, make_config, stored_bits
from .hnerv import HNeRV, HNeRVConfig, HNeRVEncoder
from .nerv import NeRV, NeRVConfig
from .store import load_nvp, load_segments, load_video, quantise_inr, save_nvp

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
    "FAMILIES",
    "WEIGHT_BITS",
    "EMBEDDING_BITS",
    "load_nvp",
    "load_segments",
    "load_video",
    "save_nvp",
    "quantise_inr",
]
