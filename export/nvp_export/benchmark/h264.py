"""The H.264 baselines' files: libx264 through PyAV at a stated CRF and GOP, or at a target bpp.

A fixed GOP (keyint = min-keyint, no scene-cut keyframes) so random access costs what
the stated GOP says. bpp counts the coded stream (no container), as the encode
benchmark does; the .nvp side counts its whole file, so the comparison leans, if at
all, towards H.264.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nvp_rt.video import write_video

from ..fidelity.h264 import search_crf

__all__ = ["H264Settings", "H264File", "encode_h264", "encode_at_bpp"]


@dataclass(frozen=True)
class H264Settings:
    crf: int = 23  # libx264's default
    gop: int = 250  # libx264's default keyint
    preset: str = "medium"

    def options(self) -> dict[str, str]:
        return {
            "crf": str(self.crf),
            "preset": self.preset,
            "x264-params": f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0",
        }

    def describe(self) -> str:
        return f"libx264 CRF {self.crf}, GOP {self.gop}, preset {self.preset}, yuv420p"


@dataclass(frozen=True)
class H264File:
    path: Path
    settings: H264Settings
    payload_bytes: int
    bpp: float


def encode_h264(
    frames: np.ndarray, path: str | os.PathLike, settings: H264Settings = H264Settings(), fps: float = 30.0
) -> H264File:
    """Encode uint8 (N, H, W, 3) frames; the file is written atomically."""
    n, h, w, _ = frames.shape
    payload = write_video(path, frames, fps, options=settings.options())
    return H264File(Path(path), settings, payload, 8 * payload / (n * h * w))


def encode_at_bpp(
    frames: np.ndarray, path: str | os.PathLike, bpp: float, gop: int = 250, preset: str = "medium", fps: float = 30.0
) -> H264File:
    """The encode whose bpp is closest to ``bpp`` among whole-number CRFs (``h264.search_crf``)."""
    encodes: dict[float, H264File] = {}
    last: list[int] = []  # the file on disk is the last encode

    def bpp_at(crf: float) -> float:  # whole numbers: search_crf(..., integer=True)
        encodes[crf] = encode_h264(frames, path, H264Settings(int(crf), gop, preset), fps)
        last.append(int(crf))
        return encodes[crf].bpp

    best = encodes[search_crf(bpp_at, bpp, integer=True)]
    if last[-1] != best.settings.crf:
        best = encode_h264(frames, path, best.settings, fps)
    return best
