"""The GPU figures of issue 25, one part per call: each part writes OUT/<part>.json and nothing else.

    python bench/gpu_check.py kernel|session|h264|fit|compile|clips [--cpu] [--out DIR] [--work DIR]
    python bench/gpu_check.py summary [--out DIR]      # the table of every part's figures and targets

bench/gpu_check.sh runs the parts one after another, each in its own process under its own time limit,
so one part failing or running out of time leaves the others' figures. ``--cpu`` runs the same code
on the CPU with tiny shapes (a dry run of the Python side, on any machine); its figures mean nothing.

- kernel: the fused resize + 1x1 kernel against torch's interpolate + conv (float32 and float16) on the
  adapter calls a 720p query makes (8 frames of the encoder's 720p HNeRV taps into the cls/det/act
  routes' injection points), and a device-to-device copy of the same bytes as the bandwidth reference.
- session: ``nvp_rt.Session(device="cuda")`` on a 720p video (bench/session.py's: random INR and
  adapter weights, which latency does not depend on): classification frames/s, each task alone and
  cls+det+act in one query, host copies of intermediate features during a query (0: they stay on the GPU),
  the adapters' synchronisation, and every task's logits against a CPU Session's.
- h264: classification of a random frame, NVP on CUDA against H.264 decoded by NVDEC (h264_cuvid) with
  the backbone on CUDA where that decoder opens, else against the CPU pipeline (nvp bench's pipelines).
- fit: frames/s of the 320x180x64 fit at batch 1 and 8 and in bf16; then the fastest setting from scratch
  to 33 dB within 120 s, PSNR after quantisation.
- compile: torch.compile (CUDA graphs) of the batch-8 bf16 fit against the same fit eager.
- clips: several fits sharing one GPU, as Ray tasks with fractional num_gpus share it (each its own
  process): aggregate frames/s of 1 and 4 concurrent fits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/session.py, bench/resize_conv.py

PARTS = ("kernel", "session", "h264", "fit", "compile", "clips")
TARGETS = {  # issue 25's, on the lent GPU
    "kernel_torch_ratio": 2.0,  # fused >= 2x torch's two ops
    "kernel_copy_share": 0.7,  # >= 70% of a copy of the same bytes
    "cls_frames_per_s": 1000.0,
    "sharing_ratio": 0.7,  # cls+det+act <= 0.7x the sum of the three alone
    "nvp_over_h264": 0.3,  # NVP total latency <= 0.3x the GPU-decoded H.264 pipeline's
    "fit_seconds_to_33db": 120.0,
}


class Scale:
    """Sizes of a real run (on CUDA) or a dry run (--cpu)."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.device = "cpu" if cpu else "cuda"
        self.video = (320, 180) if cpu else (1280, 720)  # width, height
        self.video_frames = 8 if cpu else 32
        self.query_frames = 8  # per query of each task: one SlowFast 8x8 clip
        self.cls_batch = 8 if cpu else 32  # frames per classification query for frames/s
        self.runs = 3 if cpu else 20
        self.fit_clip = (80, 48, 8) if cpu else (320, 180, 64)  # width, height, frames (tileable sizes)
        self.fit_bpp = 8.0 if cpu else 0.5  # the tiny clip needs more bits per pixel for any model
        self.fit_seconds = 8.0 if cpu else 120.0
        self.steps_epochs = (1, 3) if cpu else (2, 12)  # the difference times the steady epochs
        self.concurrent = (1, 2) if cpu else (1, 4)


def timed_ms(fn, runs: int, warmup: int = 2, cuda: bool = False) -> dict:
    """Median milliseconds of ``fn``: on the host clock, or (``cuda``) between CUDA events around each call,
    which times the device's work and its launch gaps, not the host's wait for it."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q1, q3 = np.percentile(times, [25, 75])
    return {"median_ms": statistics.median(times), "iqr_ms": [float(q1), float(q3)], "runs": runs}


def device_name(scale: Scale) -> str:
    import torch

    return torch.cuda.get_device_name() if not scale.cpu else "cpu (dry run)"


# -- kernel --------------------------------------------------------------------------------------------------


def adapter_shapes(scale: Scale) -> list[tuple[str, tuple[int, ...], int, tuple[int, int]]]:
    """(name, x shape, C_out, (Ho, Wo)) of each adapter call of a query on the video: the route's tap, as
    bench/session.py picks it, into each pathway of its injection point."""
    import warnings

    from nvp_export.encode import DEFAULT_BPP
    from nvp_export.inr import config_for_budget, from_config
    from session import ROUTES, route_tap

    width, height = scale.video
    inr = from_config(config_for_budget("hnerv", height, width, scale.video_frames, bpp=DEFAULT_BPP))
    taps = inr.tap_shapes()
    shapes: list[tuple[str, tuple[int, ...], int, tuple[int, int]]] = []
    for task, (build, point) in ROUTES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pathways = build().point(point).pathway_shapes
        tap = route_tap(inr, pathways[0])
        for i, shape in enumerate(pathways):
            name = f"{task}:{tap}->{point}" + (f"/{i}" if len(pathways) > 1 else "")
            shapes.append((name, (scale.query_frames, *taps[tap]), shape[0], (shape[-2], shape[-1])))
    return shapes


class Rotation:
    """Inputs cycled through so that timed calls read device memory, not the L2 (on CUDA: 256 MiB in all)."""

    def __init__(self, make, nbytes: int, total: int):
        self.items = [make() for _ in range(max(1, min(32, math.ceil(total / max(nbytes, 1)))))]
        self.turn = 0

    def next(self) -> int:
        self.turn = (self.turn + 1) % len(self.items)
        return self.turn


def kernel_row(scale: Scale, shape: tuple, dtype, ceiling_gbs: float) -> dict:
    """One adapter call: the fused kernel, torch's two ops and a copy of the same bytes, each timed alone."""
    import torch

    from nvp_rt import ops
    from resize_conv import torch_two_op

    name, xs, c_out, size = shape
    dev, total = torch.device(scale.device), 0 if scale.cpu else 256 << 20
    c_in, y_shape = xs[1], (xs[0], c_out, *size)
    item = torch.finfo(dtype).bits // 8
    moved = (math.prod(xs) + math.prod(y_shape)) * item
    x = Rotation(lambda: torch.randn(xs, device=dev, dtype=dtype), math.prod(xs) * item, total)
    ys = [torch.empty(y_shape, device=dev, dtype=dtype) for _ in x.items]
    w = (torch.randn(c_out, c_in, device=dev) / c_in**0.5).to(dtype)
    b = torch.randn(c_out, device=dev, dtype=dtype)
    src = Rotation(lambda: torch.randn(moved // 8, device=dev, dtype=torch.float32), moved, total)  # moved/2 bytes
    dst = [torch.empty_like(t) for t in src.items]
    if scale.cpu:  # the CPU kernel takes numpy arrays
        x_np, y_np, w_np, b_np = [t.numpy() for t in x.items], [t.numpy() for t in ys], w.numpy(), b.numpy()

        def fused():
            i = x.next()
            ops.resize_conv1x1(x_np[i], w_np, b_np, size, out=y_np[i], num_threads=1)
    else:
        stream = torch.cuda.current_stream().cuda_stream

        def fused():
            i = x.next()
            ops.resize_conv1x1(x.items[i], w, b, size, out=ys[i], stream=stream)

    def copy():
        i = src.next()
        dst[i].copy_(src.items[i])

    with torch.inference_mode():
        cuda = not scale.cpu
        f = timed_ms(fused, scale.runs * 5, cuda=cuda)
        t = timed_ms(lambda: torch_two_op(x.items[x.next()], w, b, size), scale.runs * 5, cuda=cuda)
        c = timed_ms(copy, scale.runs * 5, cuda=cuda)
        fused()
        if cuda:
            torch.cuda.synchronize()
        ref = torch_two_op(x.items[x.turn].double(), w.double(), b.double(), size)
        err = float((ys[x.turn].double() - ref).abs().max() / ref.abs().max())
    # The 1x1 conv's multiply-adds at the resolution the chosen order convolves at (METHOD.md's "two numbers":
    # against the copy's bytes, this says whether a shape can be bandwidth-bound at all).
    order = ops.chosen_order(xs, (c_out, c_in), size)
    pixels = xs[0] * (math.prod(size) if order == "resize_first" else xs[-2] * xs[-1])
    gflop = 2 * c_in * c_out * pixels / 1e9
    return {
        "name": name,
        "dtype": str(dtype).removeprefix("torch."),
        "x": list(xs),
        "y": list(y_shape),
        "order": order,
        "gflop": gflop,
        "achieved_tflops": gflop / f["median_ms"],
        "fused_ms": f["median_ms"],
        "torch_ms": t["median_ms"],
        "copy_same_bytes_ms": c["median_ms"],
        "torch_ratio": t["median_ms"] / f["median_ms"],
        "copy_share": c["median_ms"] / f["median_ms"],  # of a copy moving the same bytes
        "achieved_gbs": moved / f["median_ms"] / 1e6,
        "ceiling_share": moved / f["median_ms"] / 1e6 / ceiling_gbs,
        "max_rel_err": err,
    }


def part_kernel(scale: Scale) -> dict:
    import torch

    big = torch.empty((16 if scale.cpu else 256) << 20, dtype=torch.uint8, device=scale.device)
    big_copy = torch.empty_like(big)
    ceiling = timed_ms(lambda: big_copy.copy_(big), scale.runs * 5, cuda=not scale.cpu)
    ceiling_gbs = 2 * big.numel() / ceiling["median_ms"] / 1e6  # read + write
    rows = []
    for dtype in (torch.float32,) if scale.cpu else (torch.float32, torch.float16):
        for shape in adapter_shapes(scale):
            rows.append(kernel_row(scale, shape, dtype, ceiling_gbs))
            print(json.dumps(rows[-1]), flush=True)
    return {"copy_ceiling_gbs": ceiling_gbs, "rows": rows}


# -- session -------------------------------------------------------------------------------------------------


def session_video(scale: Scale, work: Path, tasks: tuple[str, ...]):
    """bench/session.py's video at the scale's size with routes for ``tasks``, built once per work folder (the
    parts share its model store: one architecture, its graphs exported once)."""
    from nvp_rt.store import ModelStore
    from session import add_routes, random_video

    folder, store = work / "+".join(tasks), ModelStore(work / "store")
    path = folder / "video.nvp"
    if not (folder / "routes.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        inr = random_video(path, scale.video, scale.video_frames, seed=0)
        (folder / "routes.json").write_text(json.dumps(add_routes(path, inr, store, tasks)))
    return path, store, json.loads((folder / "routes.json").read_text())


def part_session(scale: Scale, work: Path) -> dict:
    import nvp_rt
    from nvp_rt import session as session_module

    t0 = time.perf_counter()
    path, store, routes = session_video(scale, work, ("cls", "det", "act"))
    prepared = time.perf_counter() - t0
    s = nvp_rt.Session(path, device=scale.device, store=store)
    tasks = [r["task"] for r in routes]
    frames = list(range(scale.query_frames))
    for task in tasks:  # warm every route's sessions
        s.run([task], frames=frames)
    batch = list(range(scale.cls_batch))
    s.run(["cls"], frames=batch)
    cls = timed_ms(lambda: s.run(["cls"], frames=batch), scale.runs)
    single = {t: timed_ms(lambda t=t: s.run([t], frames=frames), scale.runs) for t in tasks}
    shared = timed_ms(lambda: s.run(tasks, frames=frames), scale.runs)
    steps: list[dict[str, float]] = []
    sync_seconds: list[float] = []
    kernel_done = session_module._Device.kernel_done

    def timed_sync(device):  # the wait after each adapter kernel: what one shared stream would save at most
        t0 = time.perf_counter()
        kernel_done(device)
        sync_seconds[-1] += time.perf_counter() - t0

    with patch.object(session_module._Device, "kernel_done", timed_sync):
        for _ in range(scale.runs):
            sync_seconds.append(0.0)
            s.run(tasks, frames=frames)
            steps.append(s.last_timings)
    # Features between stages: count what comes back to the host during one query besides the heads' outputs.
    host_copies = {"n": 0}

    def counting(original):
        def wrapper(*args, **kwargs):
            host_copies["n"] += 1
            return original(*args, **kwargs)

        return wrapper

    with (
        patch.object(session_module._Device, "to_host", counting(session_module._Device.to_host)),
        patch.object(session_module._OrtCudaArray, "numpy", counting(session_module._OrtCudaArray.numpy)),
    ):
        s.run(tasks, frames=frames)
    # The same answers as the CPU's (ONNX Runtime's CUDA convolutions may use TF32: ~1e-3 relative).
    agreement = None
    if not scale.cpu:
        got = s.run(tasks, frames=frames)
        want = nvp_rt.Session(path, device="cpu", store=store).run(tasks, frames=frames)
        agreement = {
            t: float(np.abs(got[t].logits - want[t].logits).max() / np.abs(want[t].logits).max()) for t in tasks
        }
    sum_single = sum(v["median_ms"] for v in single.values())
    providers = sorted({p for g in s._graphs.values() for p in g.get_providers()[:1]})
    return {
        "video": {"size": list(scale.video), "frames": scale.video_frames},
        "routes": routes,
        "prepare_seconds": prepared,
        "providers": providers,
        "cls_batch": scale.cls_batch,
        "cls": cls,
        "cls_frames_per_s": scale.cls_batch / cls["median_ms"] * 1e3,
        "query_frames": scale.query_frames,
        "single": single,
        "shared": shared,
        "sum_of_singles_ms": sum_single,
        "sharing_ratio": shared["median_ms"] / sum_single,
        "shared_steps_median_ms": {k: statistics.median(t[k] for t in steps) * 1e3 for k in steps[0]},
        "host_copies_of_features_per_query": host_copies["n"],
        "kernel_sync_ms": statistics.median(sync_seconds) * 1e3,
        "max_rel_err_vs_cpu": agreement,
    }


# -- h264 ----------------------------------------------------------------------------------------------------


def part_h264(scale: Scale, work: Path) -> dict:
    from nvp_export.benchmark.h264 import H264Settings, encode_h264
    from nvp_export.benchmark.pipelines import H264Pipeline, NVPPipeline, nvdec_unavailable_reason
    from nvp_export.benchmark.timing import measure
    from nvp_export.benchmark.workloads import Workload
    from nvp_export.clips import ClipSpec, make_clip
    from nvp_export.onnx_export import export_backbone_graphs
    from nvp_export.zoo import load_backbone

    path, store, _ = session_video(scale, work, ("cls",))  # the pixel paths run every route's full backbone
    export_backbone_graphs(load_backbone("efficientnet_lite0"), [], store, full=True)  # the pixel path's graph
    width, height = scale.video
    frames = make_clip(ClipSpec("astronaut", width, height, scale.video_frames))
    h264 = encode_h264(frames, work / "astronaut.mp4", H264Settings())
    reason = "not tried: a dry run on the CPU" if scale.cpu else nvdec_unavailable_reason()
    decoder = "cuvid" if reason is None else "cpu"
    threads = 1 if scale.cpu else os.cpu_count() or 1
    pipes: dict[str, H264Pipeline | NVPPipeline] = {
        "h264": H264Pipeline(h264.path, path, store, decoder, threads),
        "nvp": NVPPipeline(path, store, scale.device, threads),
    }
    workload = Workload("classification, random frame", ("cls",))
    queries = workload.queries(scale.video_frames, scale.runs, np.random.default_rng(0))
    rows = {}
    for key, pipe in pipes.items():
        m = measure(pipe, workload.tasks, queries, warmup=3, cold=1)
        pipe.close()
        rows[key] = {"pipeline": pipe.name, **m.as_dict()}
    return {
        "workload": workload.name,
        "h264": {"settings": h264.settings.describe(), "bpp": h264.bpp},
        "h264_decoder": decoder,
        "nvdec_unavailable_reason": reason,
        "pipelines": rows,
        "nvp_over_h264": rows["nvp"]["total"]["median"] / rows["h264"]["total"]["median"],
    }


# -- fit -----------------------------------------------------------------------------------------------------


def fit_clip(scale: Scale):
    import torch

    from nvp_export.clips import ClipSpec, make_clip

    width, height, frames = scale.fit_clip
    clip = make_clip(ClipSpec("astronaut", width, height, frames))
    return torch.from_numpy(clip).permute(0, 3, 1, 2).float().div(255)


def fresh_inr(frames, bpp: float):
    import torch

    from nvp_export.inr import config_for_budget, from_config

    torch.manual_seed(0)
    n, _, h, w = frames.shape
    return from_config(config_for_budget("hnerv", h, w, n, bpp=bpp))


def seconds_per_epoch(scale: Scale, frames, **settings) -> float:
    """Steady-state seconds per epoch: after a warm-up fit (CUDA start-up, torch.compile's compilation), two fits
    of different lengths, their difference (each fit's first-epoch allocations cancel)."""
    from nvp_export.inr.fit import FitConfig, fit

    short, long = scale.steps_epochs
    seconds = []
    for epochs in (1, short, long):
        cfg = FitConfig(epochs=epochs, time_limit_s=None, device=scale.device, progress=False, **settings)
        seconds.append(fit(fresh_inr(frames, scale.fit_bpp), frames, cfg).seconds)
    per_epoch = (seconds[2] - seconds[1]) / (long - short)
    if per_epoch <= 0:
        raise RuntimeError(f"fits of {short} and {long} epochs took {seconds[1]:.2f} and {seconds[2]:.2f} s")
    return per_epoch


def fit_speeds(scale: Scale, frames, settings: dict[str, dict]) -> dict[str, dict]:
    n, speed = frames.shape[0], {}
    for name, setting in settings.items():
        per_epoch = seconds_per_epoch(scale, frames, **setting)
        speed[name] = {**setting, "seconds_per_epoch": per_epoch, "frames_per_s": n / per_epoch}
        print(json.dumps({name: speed[name]}), flush=True)
    return speed


def part_compile(scale: Scale) -> dict:
    """torch.compile of the fit's forward ("reduce-overhead": CUDA graphs), against the same setting eager, in
    one process; its own part because compiling takes longer than the rest of a fit's timing."""
    frames = fit_clip(scale)
    eager: dict[str, Any] = {"batch": 8, "bf16": True}
    speed = fit_speeds(scale, frames, {"batch8_bf16": eager, "batch8_bf16_compile": {**eager, "compile": True}})
    per_epoch = {k: v["seconds_per_epoch"] for k, v in speed.items()}
    return {"speed": speed, "compiled_speedup": per_epoch["batch8_bf16"] / per_epoch["batch8_bf16_compile"]}


def part_fit(scale: Scale) -> dict:
    import torch

    from nvp_export.inr import quantise_inr
    from nvp_export.inr.fit import FitConfig, clip_psnr, fit

    frames = fit_clip(scale)
    n = frames.shape[0]
    settings: dict[str, dict[str, Any]] = {
        "batch1": {"batch": 1},
        "batch8": {"batch": 8},
        "batch8_bf16": {"batch": 8, "bf16": True},
    }
    speed = fit_speeds(scale, frames, settings)
    fastest = min(speed, key=lambda k: speed[k]["seconds_per_epoch"])
    cfg = FitConfig(
        epochs=100_000,  # the time budget ends it, or the target
        time_limit_s=scale.fit_seconds,
        target_psnr=33.0,
        device=scale.device,
        progress=False,
        **settings[fastest],
    )
    started = time.perf_counter()
    result = fit(fresh_inr(frames, scale.fit_bpp), frames, cfg)
    seconds = time.perf_counter() - started
    _, _, quantised = quantise_inr(result.inr)
    with torch.no_grad():
        decoded = torch.cat([quantised.decode(torch.arange(i, min(i + 8, n)))["rgb"] for i in range(0, n, 8)])
    reached = result.psnr >= 33.0
    return {
        "clip": {"photo": "astronaut", "size": list(scale.fit_clip)},
        "speed": speed,
        "to_33db": {
            "setting": fastest,
            "seconds": seconds,
            "reached": reached,
            "fit_psnr_db": result.psnr,
            "quantised_psnr_db": clip_psnr(decoded, frames),
            "epochs": result.epochs,
            "recoveries": result.recoveries,
        },
        "fit_seconds_to_33db": seconds if reached else None,
    }


# -- clips ---------------------------------------------------------------------------------------------------


def _concurrent_fit(cpu: bool, epochs: int, barrier) -> float:
    """One worker: the clip's fit for ``epochs`` at batch 8 once every worker is ready; its seconds."""
    import torch

    from nvp_export.inr.fit import FitConfig, fit

    torch.set_num_threads(1)
    scale = Scale(cpu)
    frames = fit_clip(scale)
    cfg = FitConfig(epochs=1, time_limit_s=None, batch=8, device=scale.device, progress=False)
    fit(fresh_inr(frames, scale.fit_bpp), frames, cfg)  # CUDA context, allocator and kernels warm
    barrier.wait()
    cfg = FitConfig(epochs=epochs, time_limit_s=None, batch=8, device=scale.device, progress=False)
    return fit(fresh_inr(frames, scale.fit_bpp), frames, cfg).seconds


def part_clips(scale: Scale) -> dict:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    epochs = 2 if scale.cpu else 30
    frames = scale.fit_clip[2]
    rows = []
    context = mp.get_context("spawn")
    for k in scale.concurrent:
        with context.Manager() as manager, ProcessPoolExecutor(k, mp_context=context) as pool:
            barrier = manager.Barrier(k)
            seconds = list(pool.map(_concurrent_fit, [scale.cpu] * k, [epochs] * k, [barrier] * k))
        rows.append(
            {
                "concurrent_fits": k,
                "seconds_each": seconds,
                "aggregate_frames_per_s": k * epochs * frames / max(seconds),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "batch": 8,
        "epochs": epochs,
        "rows": rows,
        "speedup": rows[-1]["aggregate_frames_per_s"] / rows[0]["aggregate_frames_per_s"],
    }


# -- summary -------------------------------------------------------------------------------------------------


def summary(out: Path) -> str:
    def load(part: str) -> dict | None:
        try:
            return json.loads((out / f"{part}.json").read_text())
        except (OSError, ValueError):
            return None

    lines = ["| figure | measured | target |", "|---|---|---|"]

    def add(figure: str, value: str, target: str = "") -> None:
        lines.append(f"| {figure} | {value} | {target} |")

    for part in PARTS:
        r = load(part)
        if r is None or "error" in r:
            add(part, "not measured: " + ("no result" if r is None else r["error"]))
            continue
        add(f"{part}: device", f"{r['device']}, {r['seconds']:.0f} s")
        if part == "kernel":
            for row in r["rows"]:
                add(
                    f"kernel {row['name']} {row['dtype']}",
                    f"{row['fused_ms']:.4f} ms, torch {row['torch_ratio']:.2f}x, {row['copy_share']:.0%} of a copy "
                    f"of its bytes ({row['achieved_gbs']:.0f} GB/s, {row['achieved_tflops']:.1f} TFLOP/s)",
                    f">= {TARGETS['kernel_torch_ratio']}x, >= {TARGETS['kernel_copy_share']:.0%}",
                )
        elif part == "session":
            add("Session cls frames/s", f"{r['cls_frames_per_s']:.0f} ({r['cls_batch']} a query)", ">= 1000")
            add("cls+det+act / sum alone", f"{r['sharing_ratio']:.2f}", "<= 0.7")
            add("host copies of features a query", str(r["host_copies_of_features_per_query"]), "0")
            add("kernel syncs a shared query", f"{r['kernel_sync_ms']:.2f} ms")
            if r["max_rel_err_vs_cpu"]:
                errors = ", ".join(f"{t} {e:.1e}" for t, e in r["max_rel_err_vs_cpu"].items())
                add("CUDA logits against the CPU's (max rel err)", errors, "~1e-3 (TF32)")
        elif part == "h264":
            p = r["pipelines"]
            nvp, h264 = p["nvp"]["total"]["median"], p["h264"]["total"]["median"]
            add(
                f"NVP / H.264 ({r['h264_decoder']}) total",
                f"{r['nvp_over_h264']:.2f} ({nvp:.2f} vs {h264:.2f} ms)",
                "<= 0.3 (against NVDEC)",
            )
        elif part == "fit":
            for name, s in r["speed"].items():
                add(f"fit {name}", f"{s['frames_per_s']:.0f} frames/s" if "error" not in s else s["error"])
            t = r["to_33db"]
            add(
                f"fit to 33 dB ({t['setting']})",
                f"{t['fit_psnr_db']:.2f} dB ({t['quantised_psnr_db']:.2f} quantised) in {t['seconds']:.0f} s",
                "33 dB in <= 120 s",
            )
        elif part == "compile":
            add("torch.compile speed-up (batch 8, bf16)", f"{r['compiled_speedup']:.2f}x")
        elif part == "clips":
            add(
                "concurrent fits per GPU",
                ", ".join(f"{x['concurrent_fits']}: {x['aggregate_frames_per_s']:.0f} frames/s" for x in r["rows"]),
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=[*PARTS, "summary"])
    parser.add_argument("--cpu", action="store_true", help="a dry run on the CPU with tiny shapes")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench/results/gpu"))
    parser.add_argument("--work", type=Path, help="scratch shared by the parts (default: a temporary folder)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "summary":
        print(summary(args.out))
        return 0
    import torch

    torch.set_num_threads(1 if args.cpu else min(8, os.cpu_count() or 1))
    scale = Scale(args.cpu)
    work = args.work or Path(tempfile.mkdtemp(prefix="nvp-gpu-check-"))
    started = time.perf_counter()
    try:
        if args.part == "kernel":
            result = part_kernel(scale)
        elif args.part == "session":
            result = part_session(scale, work)
        elif args.part == "h264":
            result = part_h264(scale, work)
        elif args.part == "fit":
            result = part_fit(scale)
        elif args.part == "compile":
            result = part_compile(scale)
        else:
            result = part_clips(scale)
        code = 0
    except Exception as e:
        traceback.print_exc()
        result, code = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"}, 1
    result = {"part": args.part, "device": device_name(scale), "seconds": time.perf_counter() - started, **result}
    tmp = args.out / f".{args.part}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, args.out / f"{args.part}.json")
    print(f"gpu_check {args.part}: {'failed' if code else 'done'} in {result['seconds']:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
