"""A fingerprint of a video's frames, stored at encode time, so that a later ``--source`` can be
checked to be the video the file was encoded from.

Eight frames spread over the clip, each averaged down to 8x8 RGB: cheap to store (2 KB of text),
and a different video, even of the same size and subject, differs from it by many levels, while
the same video decoded again (another FFmpeg build) differs by rounding at most.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

METHOD = "thumbs8x8-v1"
FRAMES = 8
SIDE = 8
TOLERANCE = 2.0  # mean absolute difference in 8-bit levels still taken for the same video


def _thumbs(frames: np.ndarray, indices: list[int]) -> np.ndarray:
    """(len(indices), SIDE, SIDE, 3) uint8 block means of uint8 (N, H, W, 3) frames."""
    out = np.empty((len(indices), SIDE, SIDE, 3), np.uint8)
    for k, i in enumerate(indices):
        f = frames[i].astype(np.float64)
        rows = [band.mean(axis=0) for band in np.array_split(f, SIDE, axis=0)]
        out[k] = np.stack([[cell.mean(axis=0) for cell in np.array_split(r, SIDE, axis=0)] for r in rows]).round()
    return out


def sampled_positions(frames: int) -> list[int]:
    """The positions of the frames a fingerprint of a clip of ``frames`` frames looks at."""
    return sorted({round(x) for x in np.linspace(0, frames - 1, min(FRAMES, frames))})


def fingerprint(frames: np.ndarray) -> dict[str, Any]:
    positions = sampled_positions(len(frames))
    return fingerprint_of_samples(frames[positions], positions)


def fingerprint_of_samples(samples: np.ndarray, positions: list[int]) -> dict[str, Any]:
    """The fingerprint from only the frames at ``sampled_positions`` (a long video need not be held whole)."""
    thumbs = _thumbs(samples, list(range(len(positions))))
    return {"method": METHOD, "frames": positions, "thumbs": base64.b64encode(thumbs.tobytes()).decode()}


def difference(stored: dict[str, Any], frames: np.ndarray) -> float | None:
    """Mean absolute difference (8-bit levels) between ``frames`` and the stored fingerprint; None
    when the fingerprint is of a kind this reader does not know or is malformed."""
    try:
        indices = [int(i) for i in stored["frames"]]
        thumbs = np.frombuffer(base64.b64decode(stored["thumbs"], validate=True), np.uint8)
        if stored["method"] != METHOD or thumbs.size != len(indices) * SIDE * SIDE * 3:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    if not indices or max(indices) >= len(frames) or min(indices) < 0:
        return float("inf")
    now = _thumbs(frames, indices).astype(np.float64)
    return float(np.abs(now - thumbs.reshape(now.shape)).mean())
