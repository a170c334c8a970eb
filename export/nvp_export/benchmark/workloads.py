"""What the pipelines are asked: random single frames, contiguous clips, several tasks at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Workload"]


@dataclass(frozen=True)
class Workload:
    name: str
    tasks: tuple[str, ...]
    frames: int = 1  # frames per query: 1 for random frames, the clip length for action
    contiguous: bool = False  # one clip of consecutive frames (else distinct random frames)

    def queries(self, num_frames: int, count: int, rng: np.random.Generator) -> list[list[int]]:
        if self.frames > num_frames:
            raise ValueError(f"workload {self.name!r} needs {self.frames} frames; the video has {num_frames}")
        if self.contiguous:
            starts = rng.integers(0, num_frames - self.frames + 1, size=count)
            return [list(range(int(s), int(s) + self.frames)) for s in starts]
        return [sorted(rng.choice(num_frames, self.frames, replace=False).tolist()) for _ in range(count)]
