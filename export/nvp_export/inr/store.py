"""INRs in .nvp files: quantise + entropy-code the state, write the container, load it back."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from nvp_rt.codec import decode_tensors, encode_tensors
from nvp_rt.nvpfile import NvpFile, NvpFormatError, write_nvp

from . import EMBEDDING_BITS, INR, WEIGHT_BITS, from_config, make_config


def quantise_inr(inr: INR) -> tuple[dict[str, np.ndarray], dict, INR]:
    """(payload arrays, payload meta, the INR with exactly the weights a reader will get)."""
    tensors = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in inr.state_dict().items()}
    bits = {k: EMBEDDING_BITS if k == "embeddings" else WEIGHT_BITS for k in tensors}
    arrays, meta = encode_tensors(tensors, bits)
    return arrays, meta, _build(inr.config_dict(), decode_tensors(arrays, meta))


def _build(config: dict, tensors: dict[str, np.ndarray]) -> INR:
    inr = from_config(config)
    inr.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, strict=True)
    return inr.eval()


def save_nvp(
    path: str | os.PathLike, inr: INR, arrays: dict[str, np.ndarray], meta: dict, info: dict, routes: Sequence = ()
) -> int:
    """Write the quantised INR (from :func:`quantise_inr`) with ``info`` (video, metrics, ...) in the manifest
    and ``routes`` (``nvp_rt.nvpfile.Route``)."""
    # A list, not an object: tap order (shallow to deep) is meaningful and JSON objects are unordered.
    taps = [{"name": k, "shape": list(v)} for k, v in inr.tap_shapes().items()]
    manifest = {"inr": inr.config_dict(), "taps": taps, **info}
    return write_nvp(path, manifest, arrays, meta, routes)


def load_nvp(path: str | os.PathLike) -> INR:
    """The INR stored in a .nvp file, dequantised, in eval mode; NvpFormatError if the file is not sound."""
    nvp = NvpFile.open(path)
    config = nvp.manifest.get("inr")
    if not isinstance(config, dict):
        raise NvpFormatError(f"{path}: manifest has no INR configuration")
    try:
        expected = sum(make_config(**config).stored_values())
    except (ValueError, TypeError) as e:
        raise NvpFormatError(f"{path}: invalid INR configuration ({e})") from None
    streams = nvp.inr.meta.get("streams")
    if not isinstance(streams, dict):
        raise NvpFormatError(f"{path}: INR payload has no stream index")
    stored = sum(v for v in streams.values() if isinstance(v, int))
    if stored != expected:  # before building a network a tampered config could make huge
        raise NvpFormatError(f"{path}: INR configuration needs {expected} values, the payload has {stored}")
    tensors = decode_tensors(nvp.inr.arrays, nvp.inr.meta)
    try:
        return _build(config, tensors)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise NvpFormatError(f"{path}: INR does not match its configuration ({str(e).splitlines()[0]})") from None
