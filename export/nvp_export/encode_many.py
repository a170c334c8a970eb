"""Encoding on Ray: every input cut into segments, every segment a task, resumable, one progress bar.

    jobs = plan_jobs(["a.mp4", "b.mp4"], Path("out"))            # out/a.nvp, out/b.nvp
    outcomes = encode_many(jobs, selection, config, store_root)   # local Ray, or address= a cluster

The driver plans each input (``plan_video``: its frame index, shot cuts, segments and one INR architecture) without
decoding more than one frame of it, or every frame once, a frame at a time, for ``cuts="scene"``. Each task reads
its segment's frames from the source itself, fits them and writes the segment's checkpoint
(``parts.Parts``: an ordinary single-segment .nvp, written atomically). A task whose worker dies is run again
(``max_retries``). When every segment of an input is there, the driver joins them into the output (atomically)
and removes the parts folder. Finished segments are kept when an input fails or the command is interrupted: the
same command resumes with the rest. A failing input (unreadable, a fit that collapses) is reported in its
outcome; the others still finish.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nvp_rt.atomic import install
from nvp_rt.cluster import ray_runtime
from nvp_rt.fingerprint import fingerprint_of_samples, sampled_positions
from nvp_rt.nvpfile import NvpFile
from nvp_rt.outputs import check_output
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, VideoError, VideoIndex, index_video, iter_video, read_video

from .encode import INFO_BYTES, EncodeConfig, EncodeReport, budget_of, encode_frames
from .inr import config_for_budget, load_nvp
from .parts import Parts, encode_settings, settings_digest
from .route.task_aware import untrained_routes
from .scenes import scene_cuts
from .segments import Segment, default_segment_frames, plan_segments
from .zoo import load_backbone


@dataclass(frozen=True)
class EncodeJob:
    source: str
    output: str


@dataclass(frozen=True)
class TaskResources:
    """What each segment's Ray task reserves, and how often a task whose worker died is run again."""

    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 3


@dataclass
class EncodeOutcome:
    job: EncodeJob
    report: EncodeReport | None = None
    error: str | None = None


@dataclass(frozen=True)
class VideoPlan:
    """One input's encode, decided before any fit: its segments, their shared architecture, its settings."""

    job: EncodeJob
    selection: FrameSelection  # the frames of the whole video
    config: EncodeConfig  # segment_frames resolved
    index: VideoIndex
    frames: int
    height: int
    width: int
    fps: float
    segments: tuple[Segment, ...]
    inr_config: Any  # the architecture (its num_frames: the segments' mean length, rounded up)
    settings: dict[str, str]  # parts.encode_settings
    warm_from: tuple[int | None, ...]  # the segment each one starts from (None: fresh weights)

    @property
    def parts(self) -> Parts:
        return Parts(self.job.output)

    def source_selection(self, segment: Segment) -> FrameSelection:
        s = self.selection
        first = s.start + segment.start * s.step
        return replace(s, start=first, stop=first + (segment.count - 1) * s.step + 1)

    def segment_config(self, k: int):
        return replace(self.inr_config, num_frames=self.segments[k].count)  # one architecture: only the length

    def segment_entry(self, k: int) -> dict[str, Any]:
        """The ``encoding.segment`` entry of part ``k``'s manifest."""
        segment = self.segments[k]
        digest = settings_digest(self.settings)
        return {"index": k, "first_frame": segment.start, "frames": segment.count, "settings": digest}

    def finished(self, k: int) -> bool:
        config = {"family": self.config.family, **asdict(self.segment_config(k))}
        return self.parts.finished(k, self.segment_entry(k), config)


def plan_video(job: EncodeJob, selection: FrameSelection, cfg: EncodeConfig) -> VideoPlan:
    """Index the source, find its cuts (``cfg.cuts``), plan its segments and choose their architecture: the widest
    whose ``len(segments)`` decoders and every frame's embedding fit the whole video's budget (chosen for a segment
    of the mean length with its share of the budget)."""
    index = index_video(job.source)
    frames = index.selected(selection)
    if frames == 0:
        raise VideoError(f"{job.source}: no frames in the selected range")
    first_frame = replace(selection, stop=selection.start + 1, step=1)
    height, width, _ = next(iter_video(job.source, first_frame, index)).shape
    budget = budget_of(cfg)
    bpp = budget["bpp"] if "bpp" in budget else 8 * budget["params"] / (frames * height * width)
    max_frames = cfg.segment_frames or default_segment_frames(height, width, bpp)
    # A video of one segment needs no cuts (finding them decodes it all).
    cuts = scene_cuts(job.source, selection, index=index) if cfg.cuts == "scene" and frames > max_frames else []
    segments = plan_segments(frames, max_frames, cuts)
    if cfg.tasks and len(segments) > 1:
        raise ValueError(
            f"--for fits routes into videos of one segment so far; {job.source} is planned as {len(segments)} "
            f"segments: pass --segment-frames {frames}"
        )
    mean = -(-frames // len(segments))
    share = {k: v / len(segments) for k, v in budget.items()}  # each segment's share of the video's budget
    if "bpp" in share:
        share["bpp"] *= frames / mean  # over the mean segment's frames: S decoders + every frame's embedding fit
    else:
        share["params"] = int(share["params"])
    routes_for = None
    if cfg.tasks:  # one segment (above): its routes are part of the file's budget
        backbones = [load_backbone(p) for p in cfg.tasks.values()]
        routes_for = lambda inr: untrained_routes(inr, backbones, cfg.task_aware)  # noqa: E731
    inr_config = config_for_budget(
        cfg.family, height, width, mean, **share, routes=routes_for, reserve_bytes=INFO_BYTES
    )
    cfg = replace(cfg, segment_frames=max_frames)
    settings = encode_settings(job.source, selection, cfg)
    warm = cfg.warm_start and cfg.cuts == "scene"  # only where the shots are known: see _warm_starts
    warm_from = _warm_starts(segments, cuts) if warm else [None] * len(segments)
    return VideoPlan(job, selection, cfg, index, frames, height, width, index.fps / selection.step,
                     tuple(segments), inr_config, settings, tuple(warm_from))  # fmt: skip


def _warm_starts(segments: list[Segment], cuts: list[int]) -> list[int | None]:
    """The first segment of each shot starts afresh; the shot's later segments start from its first's stored decoder:
    they run in parallel once it is done. Measured (bench/segments.py warm, equal epochs): +0.43 dB within a shot
    (Big Buck Bunny), -0.49 dB across cuts (bikes); so never across a cut, and not at all without cuts."""
    shot_starts = {0, *cuts}
    first: int | None = None
    warm: list[int | None] = []
    for k, segment in enumerate(segments):
        if segment.start in shot_starts:
            first = k
        warm.append(None if first == k else first)
    return warm


def encode_segment(plan: VideoPlan, k: int, store: str) -> None:
    """Fit segment ``k`` of ``plan`` and write its part: the frames are read here, from the source; a warm start's
    weights from the part of the segment it starts from."""
    started = time.perf_counter()
    selection = plan.source_selection(plan.segments[k])
    frames, fps = read_video(plan.job.source, selection, plan.index)
    source_k = plan.warm_from[k]
    warm = None
    if source_k is not None:
        state = load_nvp(plan.parts.path(source_k)).state_dict()
        warm = {name: weights for name, weights in state.items() if name != "embeddings"}  # per frame: not shared
    backbones = [load_backbone(p) for p in plan.config.tasks.values()]
    encode_frames(frames, fps, plan.segment_config(k), plan.parts.path(k), plan.config, ModelStore(store), started,
                  plan.job.source, selection, backbones, plan.segment_entry(k), warm)  # fmt: skip


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
    overwrite: bool = False,
    encode: Callable[[VideoPlan, int, str], None] = encode_segment,
    planned: dict[EncodeJob, VideoPlan] | None = None,
) -> list[EncodeOutcome]:
    """Encode every job's segments as Ray tasks; outcomes in the order of ``jobs``. Parts left by an earlier run
    with the same settings are kept; with other settings the job fails, naming the difference, unless
    ``overwrite``. ``encode`` is the per-segment step (tests wrap it to kill workers and count fits); ``planned``:
    jobs already planned with ``config`` (``plan_video``)."""
    import ray
    from tqdm import tqdm

    # Each task trains with the CPUs it reserved, unless told otherwise; workers' bars would go nowhere.
    fit = replace(config.fit, threads=config.fit.threads or max(1, int(resources.cpus)), progress=False)
    config = replace(config, fit=fit)
    store = str(ModelStore(store_root).root)
    outcomes = {job: EncodeOutcome(job) for job in jobs}
    with ray_runtime(address):  # first: an address that does not answer fails before anything is written
        _check_gpus(resources.gpus)
        plans: dict[EncodeJob, VideoPlan] = {}
        for job in jobs:
            try:
                check_output(job.output, [job.source], overwrite=True)  # existing outputs: refused by the caller
                # Absolute paths: a worker's working folder is not the driver's.
                absolute = EncodeJob(os.path.abspath(job.source), os.path.abspath(job.output))
                plan = (planned or {}).get(job) or plan_video(absolute, selection, config)
                plan = replace(plan, job=absolute)
                plan = replace(plan, config=replace(plan.config, fit=fit))
                plan.parts.prepare(plan.settings, list(plan.segments), overwrite)
                plans[job] = plan
            except (ValueError, OSError) as e:  # VideoError, ResumeRefused, a budget too small, ...
                outcomes[job].error = _first_line(e)
        todo = {job: [k for k in range(len(plan.segments)) if not plan.finished(k)] for job, plan in plans.items()}
        total = sum(len(plan.segments) for plan in plans.values())
        done = total - sum(map(len, todo.values()))
        with tqdm(total=total, initial=done, unit="segment", desc="encode", disable=not progress) as bar:
            task = ray.remote(_run).options(
                num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=resources.max_retries
            )
            pending: dict[Any, EncodeJob] = {}
            for job in todo:
                submitted = dict[int | None, Any]()
                for k in todo[job]:  # in order: a warm start's source is submitted before it
                    after = submitted.get(plans[job].warm_from[k])  # None: fresh weights, or a finished source
                    # The plan by value (a few kB: Ray inlines it in the task) rather than ray.put: a worker on
                    # another node then never fetches it (seen failing on a loaded two-node test cluster).
                    submitted[k] = task.remote(encode, plans[job], k, store, after)
                    pending[submitted[k]] = job
            for job, plan in plans.items():
                if not todo[job]:  # every part was there already
                    _finish(plan, outcomes[job], overwrite)
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ref)
                outcome = outcomes[job]
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the encoder raised: the input's own problem
                    outcome.error = outcome.error or _first_line(e.cause if e.cause is not None else e)
                except ray.exceptions.RayError as e:  # the worker died more often than retries allow, ...
                    outcome.error = outcome.error or _first_line(e)
                bar.update()
                if job not in pending.values() and outcome.error is None:
                    _finish(plans[job], outcome, overwrite)
    return [outcomes[job] for job in jobs]


def _check_gpus(gpus: float) -> None:
    """Refuse GPU requests Ray could never meet (a task would wait forever): more per task than the cluster has,
    or a fraction above one. Fractions below one share a GPU: 0.25 fits four segments on each card at once."""
    if gpus <= 0:
        return
    import ray

    if gpus > 1 and not float(gpus).is_integer():
        raise ValueError(f"--gpus-per-segment {gpus:g}: above 1 it must be a whole number of GPUs")
    available = ray.cluster_resources().get("GPU", 0.0)
    if available < gpus:
        raise ValueError(f"each segment asks for {gpus:g} GPU(s) but the Ray cluster has {available:g}")


def _run(encode: Callable[[VideoPlan, int, str], None], plan: VideoPlan, k: int, store: str, after=None) -> None:
    """``after``: the task of the segment this one warm-starts from; Ray runs this task once that one is done."""
    encode(plan, k, store)


def _finish(plan: VideoPlan, outcome: EncodeOutcome, overwrite: bool) -> None:
    """Join the parts into the output, atomically (a new file only, without ``overwrite``), then remove them;
    the outcome's report sums the segments'."""
    try:
        parts = [plan.parts.path(k) for k in range(len(plan.segments))]
        manifests = []
        for part in parts:
            with NvpFile.open(part) as nvp:
                manifests.append(nvp.manifest)
        if len(parts) == 1:  # a single-segment part is the file itself
            install(parts[0], plan.job.output, overwrite)
            size = os.path.getsize(plan.job.output)
        else:
            from nvp_rt.nvpfile import join_segments

            size = join_segments(plan.job.output, parts, _video_entry(plan), overwrite=overwrite)
        plan.parts.remove()
    except (ValueError, OSError) as e:
        outcome.error = _first_line(e)
        return
    outcome.report = replace(_report(plan, size, manifests), path=outcome.job.output)  # the path as given


def _video_entry(plan: VideoPlan) -> dict[str, Any]:
    """The manifest's ``video`` entry for the whole video; its fingerprint from the few frames it samples."""
    positions = sampled_positions(plan.frames)
    one = [plan.source_selection(Segment(p, 1)) for p in positions]
    samples = np.stack([next(iter_video(plan.job.source, s, plan.index)) for s in one])
    return {
        "frames": plan.frames,
        "height": plan.height,
        "width": plan.width,
        "fps": plan.fps,
        "source": Path(plan.job.source).name,
        "selection": asdict(plan.selection),
        "fingerprint": fingerprint_of_samples(samples, positions),
    }


def _report(plan: VideoPlan, size: int, manifests: list[dict]) -> EncodeReport:
    weights = np.array([m["video"]["frames"] for m in manifests], np.float64) / plan.frames

    def mean(metric: str) -> float:  # per-frame PSNR averaged over every frame of the video
        return float(weights @ [m["metrics"][metric] for m in manifests])

    def total(entry: str) -> float:
        return float(sum(m["encoding"][entry] for m in manifests))

    fit_seconds = total("fit_seconds")
    return EncodeReport(
        plan.job.output,
        size,
        8 * size / (plan.frames * plan.height * plan.width),
        mean("psnr_float_db"),
        mean("psnr_quantised_db"),
        int(total("epochs")),
        int(total("recoveries")),
        fit_seconds,
        fit_seconds,
        plan.frames,
        plan.height,
        plan.width,
        segments=len(manifests),
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
