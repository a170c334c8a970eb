"""INRs in .nvp files: quantise + entropy-code the state, write the container, load it back."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from nvp_rt.codec import decode_tensors, encode_tensors
from nvp_rt.nvpfile import NvpFile, NvpFormatError, SegmentPayload, write_nvp
from nvp_rt.prefix import payload_group

from .base import INR
from .config import EMBEDDING_BITS, WEIGHT_BITS, from_config, make_config
from .segmented import SegmentedVideo


def quantise_inr(inr: INR) -> tuple[dict[str, np.ndarray], dict, INR]:
    """(payload arrays, payload meta, the INR with exactly the weights a reader will get).

    The payload is grouped by decoder stage (``nvp_rt.prefix.payload_group``), so a reader decodes
    only the stages a query runs."""
    tensors = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in inr.state_dict().items()}
    bits = {k: EMBEDDING_BITS if k == "embeddings" else WEIGHT_BITS for k in tensors}
    arrays, meta = encode_tensors(tensors, bits, payload_group)
    return arrays, meta, _build(inr.config_dict(), decode_tensors(arrays, meta))


def _build(config: dict, tensors: dict[str, np.ndarray]) -> INR:
    inr = from_config(config)
    inr.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, strict=True)
    return inr.eval()


def save_nvp(
    path: str | os.PathLike,
    inr: INR,
    arrays: dict[str, np.ndarray],
    meta: dict,
    info: dict,
    routes: Sequence = (),
    overwrite: bool = True,
) -> int:
    """Write the quantised INR (from :func:`quantise_inr`) as a one-segment file, with ``info`` (video,
    metrics, ...) in the manifest and ``routes`` (``nvp_rt.nvpfile.Route``); a new file only, without
    ``overwrite``."""
    manifest = {"inr": inr.config_dict(), "taps": tap_list(inr), **info}
    return write_nvp(path, manifest, [SegmentPayload(inr.num_frames, arrays, meta)], routes, overwrite)


def tap_list(inr: INR) -> list[dict]:
    # A list, not an object: tap order (shallow to deep) is meaningful and JSON objects are unordered.
    return [{"name": k, "shape": list(v)} for k, v in inr.tap_shapes().items()]


def load_segments(path: str | os.PathLike) -> list[tuple[int, INR]]:
    """Every segment of a .nvp file as (first frame, its INR dequantised, in eval mode); NvpFormatError
    if the file is not sound."""
    with NvpFile.open(path) as nvp:
        if nvp.base is not None:
            raise NvpFormatError(
                f"{path}: encoded against base {nvp.base['sha256'][:16]}, not an INR of its own "
                "(`nvp view` and `nvp run` decode it)"
            )
        config = nvp.manifest["inr"]
        out = []
        for i, segment in enumerate(nvp.segments):
            own = {**config, "num_frames": segment.frames}
            try:
                expected = sum(make_config(**own).stored_values())
            except (ValueError, TypeError) as e:
                raise NvpFormatError(f"{path}: invalid INR configuration ({e})") from None
            stored = nvp.declared_symbols(i)
            if stored != expected:  # before building a network a tampered config could make huge
                raise NvpFormatError(
                    f"{path}: segment {i}'s INR configuration needs {expected} values, the payload has {stored}"
                )
            try:
                out.append((segment.start, _build(own, nvp.segment_tensors(i))))
            except (ValueError, TypeError, KeyError, RuntimeError) as e:
                raise NvpFormatError(
                    f"{path}: INR does not match its configuration ({str(e).splitlines()[0]})"
                ) from None
        return out


def load_video(path: str | os.PathLike) -> INR | SegmentedVideo:
    """The INR of a .nvp file; a file of several segments as one ``SegmentedVideo``."""
    segments = load_segments(path)
    return segments[0][1] if len(segments) == 1 else SegmentedVideo(segments)


def load_nvp(path: str | os.PathLike) -> INR:
    """The INR of a one-segment .nvp file (see :func:`load_segments` for longer ones)."""
    segments = load_segments(path)
    if len(segments) != 1:
        raise NvpFormatError(f"{path}: holds {len(segments)} segments; load them with load_segments")
    return segments[0][1]
