"""A video of several segments seen as one INR: frame ``f`` decodes with the INR of the segment holding it.

Route training and graph export take any INR-like object with ``decode``, ``render``, ``tap_names``,
``tap_shapes``, ``num_frames`` and the stage modules; this presents a segmented file that way, so one
adapter is trained on frames of every segment (a file stores one route per task for all segments).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .base import INR


class SegmentedVideo:
    def __init__(self, segments: Sequence[tuple[int, INR]]):
        if not segments:
            raise ValueError("a video has at least one segment")
        self.segments = [inr for _, inr in segments]
        self.starts = torch.tensor([start for start, _ in segments], dtype=torch.long)
        self.num_frames = int(self.starts[-1]) + self.segments[-1].num_frames
        first = self.segments[0]
        # The architecture is shared: graphs exported from the first segment's stages serve every segment.
        self.stages, self.stem_input, self.tap_names = first.stages, first.stem_input, first.tap_names
        self.config, self.family = first.config, first.family

    def tap_shapes(self) -> dict[str, tuple[int, int, int]]:
        return self.segments[0].tap_shapes()

    def config_dict(self) -> dict:
        return {**self.segments[0].config_dict(), "num_frames": self.num_frames}

    def decode(self, frame_idx: torch.Tensor, until: str | None = None) -> dict[str, torch.Tensor]:
        """As ``INR.decode``, for frames of the whole video, in the order asked."""
        frame_idx = torch.as_tensor(frame_idx, dtype=torch.long).reshape(-1)
        if frame_idx.numel() and (int(frame_idx.min()) < 0 or int(frame_idx.max()) >= self.num_frames):
            raise IndexError(f"frame index out of range 0..{self.num_frames - 1}")
        segment = torch.searchsorted(self.starts, frame_idx, right=True) - 1
        out: dict[str, torch.Tensor] = {}
        for k in torch.unique(segment).tolist():
            mine = (segment == k).nonzero().reshape(-1)
            taps = self.segments[k].decode(frame_idx[mine] - self.starts[k], until)
            for name, value in taps.items():
                if name not in out:
                    out[name] = value.new_empty((frame_idx.numel(), *value.shape[1:]))
                out[name][mine] = value
        return out

    def __call__(self, frame_idx: torch.Tensor) -> torch.Tensor:
        return self.decode(frame_idx)["rgb"]

    @torch.no_grad()
    def render(self, frame_idx, batch: int = 1) -> np.ndarray:
        frame_idx = torch.as_tensor(frame_idx, dtype=torch.long).reshape(-1)
        segment = torch.searchsorted(self.starts, frame_idx, right=True) - 1
        out = np.zeros((frame_idx.numel(), self.config.height, self.config.width, 3), np.uint8)
        for k in torch.unique(segment).tolist():
            mine = (segment == k).nonzero().reshape(-1)
            out[mine.numpy()] = self.segments[k].render(frame_idx[mine] - self.starts[k], batch)
        return out

    def eval(self) -> SegmentedVideo:
        for inr in self.segments:
            inr.eval()
        return self
