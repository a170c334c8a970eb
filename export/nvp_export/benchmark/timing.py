"""Timing a pipeline on a workload: cold (open the video, answer one query) and warm (queries on the open video).

Cold keeps the model graphs' ONNX Runtime sessions already built (a serving process
that has seen the model before); it counts opening the video (``av.open`` and its
packet index, or a new ``nvp_rt.Session``) as input process. Warm queries follow
warm-up queries that are not counted. Medians with the quartiles as spread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .pipelines import Answers, Timing

__all__ = ["Stats", "Measurement", "measure"]


@dataclass
class Stats:
    """Milliseconds over ``n`` runs."""

    median: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = np.asarray(seconds, np.float64) * 1e3
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        return cls(float(med), float(q1), float(q3), len(ms))

    def __str__(self) -> str:
        return f"{self.median:.2f} [{self.q1:.2f}-{self.q3:.2f}]"


@dataclass
class Measurement:
    process: Stats
    inference: Stats
    total: Stats
    cold_process: Stats
    cold_total: Stats
    answers: list[Answers]  # of the warm queries, in order

    def as_dict(self) -> dict:
        return {k: asdict(v) for k, v in vars(self).items() if isinstance(v, Stats)}


def measure(
    pipeline, tasks: Sequence[str], queries: list[list[int]], warmup: int = 2, cold: int = 1, on_query=lambda: None
) -> Measurement:
    """``cold`` fresh opens answering ``queries[0]``, then ``warmup`` uncounted and all ``queries`` counted."""
    cold_process, cold_total = [], []
    for _ in range(cold):
        pipeline.close()
        t0 = time.perf_counter()
        pipeline.open()
        opened = time.perf_counter() - t0
        _, timing = pipeline.query(tasks, queries[0])
        cold_process.append(opened + timing.process)
        cold_total.append(opened + timing.total)
        on_query()
    if not cold:
        pipeline.open()
    for q in queries[:warmup]:
        pipeline.query(tasks, q)
        on_query()
    timings: list[Timing] = []
    answers = []
    for q in queries:
        a, t = pipeline.query(tasks, q)
        timings.append(t)
        answers.append(a)
        on_query()
    return Measurement(
        Stats.of([t.process for t in timings]),
        Stats.of([t.inference for t in timings]),
        Stats.of([t.total for t in timings]),
        Stats.of(cold_process or [np.nan]),
        Stats.of(cold_total or [np.nan]),
        answers,
    )
