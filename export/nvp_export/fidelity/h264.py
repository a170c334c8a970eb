"""H.264 at a target rate: libx264 through PyAV, its CRF found by bisection so the stream's bpp matches.

The conventional pixel path the fidelity comparison puts next to the NVP path:
the original frames coded at the bits per pixel the .nvp spends, decoded, and
run through the full backbone. Rate is the coded stream's payload (no
container) over frames x height x width, as bench/encode.py counts it. The GOP
is fixed (``gop`` frames, no scene-cut keyframes) so the comparison states it.

libx264 through PyAV (18.1) is not bit-exact between encodes in one process: the
first encode of a clip in a process is reproducible, later ones of the same frames
at the same CRF differ (0.1-0.5% in size on a 320x180x64 clip, up to ~10% on tiny
clips), with one thread too; the cause was not found. The search therefore reports
the rate and frames of the very encode it picked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

__all__ = ["H264Config", "H264Result", "code", "search_crf", "at_bpp"]

MAX_CRF = 51.0  # libx264's range for 8-bit video is [0, 51]


@dataclass(frozen=True)
class H264Config:
    preset: str = "medium"
    gop: int | None = None  # keyframe interval in frames; None: the whole clip is one GOP (one I-frame)
    tolerance: float = 0.03  # |bpp / target - 1| that counts as a match
    max_steps: int = 14  # bisection steps on the CRF after the two ends

    def __post_init__(self):
        if self.gop is not None and self.gop < 1:
            raise ValueError(f"gop must be >= 1 frame; got {self.gop}")
        if not 0 < self.tolerance < 1 or self.max_steps < 1:
            raise ValueError("tolerance must be in (0, 1) and max_steps >= 1")


@dataclass
class H264Result:
    frames: np.ndarray  # decoded, uint8 (N, H, W, 3)
    bpp: float  # of the coded stream
    crf: float
    target_bpp: float
    gop: int
    preset: str
    encodes: int  # encodes the search took
    tolerance: float

    @property
    def matched(self) -> bool:
        """False when the target lies outside what CRF 0..51 reaches (the nearest end is returned)."""
        return abs(self.bpp / self.target_bpp - 1) <= self.tolerance

    def describe(self) -> str:
        return f"H.264 {self.bpp:.3f} bpp (CRF {self.crf:.2f}, GOP {self.gop}, preset {self.preset}, 4:2:0)"


def code(frames: np.ndarray, crf: float, config: H264Config = H264Config()) -> tuple[np.ndarray, int]:
    """Encode uint8 (N, H, W, 3) frames at ``crf`` and decode them again: (decoded frames, stream bytes)."""
    n, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"{w}x{h}: 4:2:0 H.264 needs even width and height")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = w, h, "yuv420p"
    encoder.time_base, encoder.framerate = Fraction(1, 30), Fraction(30)
    encoder.gop_size = config.gop or n
    encoder.options = {"crf": f"{crf:.3f}", "preset": config.preset, "x264-params": "scenecut=0"}
    packets = []
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoder = av.CodecContext.create("h264", "r")
    decoded = [f for p in packets for f in decoder.decode(p)] + list(decoder.decode(None))
    if len(decoded) != n:
        raise RuntimeError(f"H.264 round trip returned {len(decoded)} frames for {n}")
    return np.stack([f.to_ndarray(format="rgb24") for f in decoded]), sum(p.size for p in packets)


def search_crf(
    bpp_at: Callable[[float], float],
    target_bpp: float,
    integer: bool = False,
    tolerance: float = 0.0,
    max_steps: int = 14,
) -> float:
    """The CRF in [0, 51] whose encode lands closest to ``target_bpp`` (in log ratio), by bisection.

    ``bpp_at(crf)`` encodes at that CRF and returns the rate; it is called once per CRF tried,
    both ends first (a target outside their range returns the nearest end). bpp falls as CRF
    rises. ``integer``: CRFs are whole numbers (both neighbours of the target are tried);
    otherwise the search stops at the first CRF within ``tolerance`` (relative) or after
    ``max_steps`` steps.
    """
    if not target_bpp > 0:
        raise ValueError(f"target bpp must be positive; got {target_bpp}")
    tried: dict[float, float] = {}

    def at(crf: float) -> float:
        if crf not in tried:
            tried[crf] = bpp_at(crf)
        return tried[crf]

    lo: float = 0  # bpp(lo) >= bpp(hi); whole numbers when ``integer``
    hi: float = int(MAX_CRF)
    if at(hi) < target_bpp and at(lo) > target_bpp:
        for _ in range(max_steps):
            if integer and hi - lo <= 1:
                break
            mid = (lo + hi) // 2 if integer else (lo + hi) / 2
            if abs(at(mid) / target_bpp - 1) <= tolerance:
                break
            lo, hi = (mid, hi) if tried[mid] > target_bpp else (lo, mid)
    return min(tried, key=lambda crf: abs(math.log(tried[crf] / target_bpp)))


def at_bpp(frames: np.ndarray, target_bpp: float, config: H264Config = H264Config()) -> H264Result:
    """Code ``frames`` at the CRF whose stream lands closest to ``target_bpp`` (``search_crf``)."""
    n, h, w, _ = frames.shape
    coded: dict[float, tuple[np.ndarray, float]] = {}

    def bpp_at(crf: float) -> float:
        decoded, size = code(frames, crf, config)
        coded[crf] = (decoded, 8 * size / (n * h * w))
        return coded[crf][1]

    best = search_crf(bpp_at, target_bpp, tolerance=config.tolerance, max_steps=config.max_steps)
    decoded, bpp = coded[best]
    return H264Result(decoded, bpp, best, target_bpp, config.gop or n, config.preset, len(coded), config.tolerance)
