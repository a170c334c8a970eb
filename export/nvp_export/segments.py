"""A video as segments: consecutive frame ranges of at most N frames, each fitted as its own INR of one architecture.

    plan_segments(250, 64)                          # 4 segments of 63, 63, 62, 62 frames
    plan_segments(250, 64, [30, 76, 137, 187, 242]) # shots packed while they fit: starts 0, 30, 76, 137, 187

Positions count the frames a selection takes (``--frames START:STOP:STEP``), not the source's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# What a segment's fit holds per pixel of each of its frames, in bytes: the uint8 frames, their float copy on the
# training device, the renderings and comparisons after the fit, and the model with its gradients and Adam's
# moments, which grow with the budget (about 2 x bpp bytes). Measured: the peak RSS of encode_video (HNeRV, 0.5 bpp,
# one thread, one epoch) grows by 61 bytes per pixel of each frame from 8 to 64 frames at 320x180. What does not
# grow with the segment (the interpreter, torch, PyAV: about 0.5 GB; one frame's activations: about 620 bytes per
# pixel, 0.14 GB at 640x360) is left out of the bound.
FIT_BYTES_PER_PIXEL = 60
SEGMENT_MEMORY_BYTES = 4 << 30  # default bound on what grows with the segment: its frames and its fit
MIN_SEGMENT_FRAMES, MAX_SEGMENT_FRAMES = 8, 256


@dataclass(frozen=True)
class Segment:
    start: int  # first frame, among the selected frames
    count: int

    @property
    def stop(self) -> int:
        return self.start + self.count


def default_segment_frames(height: int, width: int, bpp: float, memory_bytes: int = SEGMENT_MEMORY_BYTES) -> int:
    """The longest segment whose frames and fit stay within ``memory_bytes``: at 0.5 bpp the most (256) up to
    640x360 (305 would fit), 76 frames at 1280x720, 33 at 1920x1080."""
    per_frame = (FIT_BYTES_PER_PIXEL + 2 * bpp) * height * width
    return int(np.clip(memory_bytes // per_frame, MIN_SEGMENT_FRAMES, MAX_SEGMENT_FRAMES))


def plan_segments(frames: int, max_frames: int, cuts: Sequence[int] = ()) -> list[Segment]:
    """Segments covering ``0 .. frames`` in order, none longer than ``max_frames``.

    Without cuts: as few segments as fit, of equal length (+-1). With cuts (positions where a shot begins):
    every segment starts at a cut (or 0), consecutive shots sharing one while they fit in ``max_frames``;
    a longer shot is split into equal parts. Short shots are packed rather than given segments of their own:
    each segment stores a whole decoder, so segments are not made more numerous than the cuts require."""
    if frames < 1 or max_frames < 1:
        raise ValueError(f"cannot plan {frames} frames in segments of at most {max_frames}")
    bounds = [0, *sorted({c for c in cuts if 0 < c < frames}), frames]
    segments: list[Segment] = []
    start = 0
    for shot_start, shot_stop in zip(bounds, bounds[1:]):
        if shot_stop - start <= max_frames:
            continue  # the shot joins the open segment
        if shot_start > start:
            segments.append(Segment(start, shot_start - start))
        start = shot_start
        if shot_stop - start > max_frames:  # the shot alone is too long: equal parts, the last left open
            parts = _equal_parts(start, shot_stop, max_frames)
            segments += parts[:-1]
            start = parts[-1].start
    segments.append(Segment(start, frames - start))
    return segments


def _equal_parts(start: int, stop: int, max_frames: int) -> list[Segment]:
    n = math.ceil((stop - start) / max_frames)
    sizes = [len(part) for part in np.array_split(np.arange(start, stop), n)]
    offsets = np.cumsum([start, *sizes[:-1]])
    return [Segment(int(o), s) for o, s in zip(offsets, sizes)]
