"""Encoding many videos at once on Ray: one task per input, retried when its worker dies, one progress bar.

    jobs = plan_jobs(["a.mp4", "b.mp4"], Path("out"))            # out/a.nvp, out/b.nvp
    outcomes = encode_many(jobs, selection, config, store_root)   # local Ray, or address= a cluster

Each task runs ``encode.encode_video`` on a worker; its output is written atomically there, so a task that
dies leaves nothing behind and its retry starts clean. A failing input (unreadable, a fit that collapses)
is reported in its outcome; the others still finish.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from nvp_rt.cluster import ray_runtime
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection

from .encode import EncodeConfig, EncodeReport, encode_video


@dataclass(frozen=True)
class EncodeJob:
    source: str
    output: str


@dataclass(frozen=True)
class TaskResources:
    """What each input's Ray task reserves, and how often a task whose worker died is run again."""

    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 3


@dataclass
class EncodeOutcome:
    job: EncodeJob
    report: EncodeReport | None = None
    error: str | None = None


def plan_jobs(sources: list[str], folder: Path, overwrite: bool = False) -> list[EncodeJob]:
    """``folder/<input name>.nvp`` for each input; two inputs that would write the same file are an error,
    and so is an existing output unless ``overwrite``. Checked here, once: a task run again after its
    worker died may then replace the output its first attempt finished."""
    outputs: dict[Path, str] = {}
    for source in sources:
        output = folder / f"{Path(source).stem}.nvp"
        if output in outputs:
            raise ValueError(f"inputs {outputs[output]} and {source} would both be written to {output}")
        if output.exists() and not overwrite:
            raise ValueError(f"output {output} exists; pass --overwrite (-y) to replace it")
        outputs[output] = source
    return [EncodeJob(source, str(output)) for output, source in outputs.items()]


def encode_many(
    jobs: list[EncodeJob],
    selection: FrameSelection,
    config: EncodeConfig,
    store_root: str | os.PathLike | None = None,
    resources: TaskResources = TaskResources(),
    address: str | None = None,
    progress: bool = True,
    encode: Callable[..., EncodeReport] = encode_video,
) -> list[EncodeOutcome]:
    """Run every job as a Ray task; outcomes in the order of ``jobs``. ``encode`` is the per-input step (the
    encoder; tests wrap it to kill workers)."""
    import ray
    from tqdm import tqdm

    # Each task trains with the CPUs it reserved, unless told otherwise; workers' bars would go nowhere.
    fit = replace(config.fit, threads=config.fit.threads or max(1, int(resources.cpus)), progress=False)
    config = replace(config, fit=fit)
    store = str(ModelStore(store_root).root)
    outcomes = {job: EncodeOutcome(job) for job in jobs}
    with ray_runtime(address):
        task = ray.remote(_encode_one).options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=resources.max_retries
        )
        pending = {task.remote(encode, job, selection, config, store): job for job in jobs}
        with tqdm(total=len(jobs), unit="video", desc="encode", disable=not progress) as bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ref)
                try:
                    outcomes[job].report = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the encoder raised: the input's own problem
                    outcomes[job].error = _first_line(e.cause) if e.cause is not None else _first_line(e)
                except ray.exceptions.RayError as e:  # the worker died more often than retries allow, ...
                    outcomes[job].error = _first_line(e)
                bar.update()
    return [outcomes[job] for job in jobs]


def _encode_one(encode, job: EncodeJob, selection: FrameSelection, config: EncodeConfig, store: str) -> EncodeReport:
    return encode(job.source, job.output, selection, config, store=ModelStore(store), overwrite=True)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
