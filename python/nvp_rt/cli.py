"""`nvp`: encode videos into .nvp files, inspect them, answer tasks on them, decode them for people.

A thin layer over the libraries: parsing, dispatch, and turning user errors into
one line on stderr with a non-zero exit. `encode` and `bench` need the export side
(torch), imported only then; `run`, `view` and `info` are the torch-free runtime.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import json
import sys
from pathlib import Path

from .arguments import Parser, integer, real
from .backends import BackendUnavailableError
from .device import CudaUnavailableError
from .nvpfile import NvpFile
from .outputs import check_output
from .store import ModelStore

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi"}


class UserError(ValueError):
    """A mistake in how nvp was called; reported as one line."""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def _range(text: str) -> tuple[int, int | None, int]:
    """'a:b:s' with any part optional, like a Python slice over frame indices."""
    parts = text.split(":")
    try:
        if len(parts) > 3:
            raise ValueError
        values = [int(p) if p else None for p in parts] + [None] * (3 - len(parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:STEP, got {text!r}") from None
    start, stop, step = values[0] or 0, values[1], 1 if values[2] is None else values[2]
    if start < 0 or step < 1 or (stop is not None and stop <= start):
        raise argparse.ArgumentTypeError(f"bad frame range {text!r}")
    return start, stop, step


def _export():
    """The export side (torch), for the commands that fit or decode with it; the runtime never loads it otherwise."""
    if importlib.util.find_spec("torch") is None:
        raise UserError("this command needs the export side (torch); install it with: pip install 'nvp[export]'")
    import nvp_export.encode

    return nvp_export.encode


def cmd_encode(args) -> None:
    from .video import FrameSelection

    export = _export()
    from nvp_export.fit import FitConfig

    start, stop, step = args.frames
    selection = FrameSelection(start, stop, step, crop=args.crop, size=args.size)
    fit = FitConfig(epochs=args.epochs, lr=args.lr, batch=args.batch, target_psnr=args.target_psnr,
                    time_limit_s=args.time_limit or None, seed=args.seed, device=args.device, threads=args.threads,
                    progress=not args.quiet)
    cfg = export.EncodeConfig(family=args.family, params=args.params, bpp=args.bpp, fit=fit)
    report = export.encode_video(args.input, args.output, selection, cfg, store=ModelStore(args.store),
                                 overwrite=args.overwrite)
    print(f"{report.path}: {report.frames} frames {report.width}x{report.height}, {report.bytes} bytes, "
          f"{report.bpp:.4f} bpp, PSNR {report.psnr_quantised:.2f} dB after quantisation "
          f"({report.psnr_float:.2f} before), {report.epochs} epochs in {report.fit_seconds:.0f} s")


def cmd_info(args) -> None:
    nvp = NvpFile.open(args.file)
    m = nvp.manifest
    video, inr = m.get("video", {}), m.get("inr", {})
    frames, h, w = video.get("frames"), video.get("height"), video.get("width")
    bpp = 8 * nvp.size_bytes / (frames * h * w) if all(isinstance(v, int) and v > 0 for v in (frames, h, w)) else None
    if args.json:
        print(json.dumps({"path": str(nvp.path), "format_version": list(nvp.version), "bytes": nvp.size_bytes,
                          "bpp": bpp, "manifest": m, "routes": [r.header() for r in nvp.routes()]}, indent=1))
        return
    metrics = m.get("metrics", {})
    sizes = {name: (len(s.arrays), sum(a.nbytes for a in s.arrays.values())) for name, s in nvp.sections.items()}
    lines = [
        f"file        {nvp.path} (.nvp format {nvp.version[0]}.{nvp.version[1]})",
        f"size        {nvp.size_bytes} bytes" + (f", {bpp:.4f} bpp" if bpp is not None else ""),
        f"video       {frames} frames, {w}x{h}, {video.get('fps', '?')} fps, from {video.get('source', '?')}",
        f"quality     PSNR {_db(metrics.get('psnr_quantised_db'))} after quantisation "
        f"({_db(metrics.get('psnr_float_db'))} before)",
        f"inr         {inr.get('family', '?')}: " + ", ".join(f"{k}={v}" for k, v in inr.items() if k != "family"),
        "sections    " + ", ".join(f"{k} ({n} arrays, {b} bytes)" for k, (n, b) in sizes.items()),
        "taps        " + ", ".join(f"{t.get('name')} {'x'.join(map(str, t.get('shape', [])))}"
                                   for t in m.get("taps", []) if isinstance(t, dict)),
        f"routes      {len(nvp.routes())}",
    ]
    for r in nvp.routes():
        lines.append(f"  {r.task}: tap {r.tap} -> {r.backbone} @ {r.injection_point}")
    print("\n".join(lines))


def _db(value) -> str:
    return f"{value:.2f} dB" if isinstance(value, (int, float)) else "?"


def cmd_view(args) -> None:
    from .video import png_name, write_pngs, write_video

    nvp = NvpFile.open(args.file)  # validate before importing torch
    out = Path(args.output)
    is_video = out.suffix.lower() in VIDEO_SUFFIXES
    if is_video and out.is_dir():
        raise UserError(f"output {out} is a directory")
    if not is_video and out.exists() and not out.is_dir():
        raise UserError(f"output {out} is neither a video name ({', '.join(sorted(VIDEO_SUFFIXES))}) nor a folder")
    total = nvp.manifest["inr"]["num_frames"]
    start, stop, step = args.frames
    stop = total if stop is None else stop
    if start >= total or stop > total:
        raise UserError(f"frames {start}:{stop} out of range: the video has {total} frames")
    indices = list(range(start, stop, step))
    for path in [out] if is_video else [out / png_name(i) for i in indices] if out.is_dir() else []:
        check_output(path, [args.file], args.overwrite)
    frames = _session(args).decode(indices)
    if is_video:
        fps = float(nvp.manifest.get("video", {}).get("fps") or 30) / step
        write_video(out, frames, fps, options={"crf": str(args.crf)})
        print(f"{out}: {len(indices)} frames")
    else:
        write_pngs(out, frames, start, step)
        print(f"{out}/: {len(indices)} PNG frames")


def _session(args):
    from .session import Session

    return Session(args.file, device=getattr(args, "device", "auto"), backend=getattr(args, "backend", "auto"),
                   store=ModelStore(args.store))


def cmd_run(args) -> None:
    import time

    session = _session(args)
    total = session.inr.num_frames
    start, stop, step = args.frames
    stop = total if stop is None else stop
    if start >= total or stop > total:
        raise UserError(f"frames {start}:{stop} out of range: the video has {total} frames")
    tasks = [t for t in args.tasks.split(",") if t]
    for task in tasks:
        classes = session.classes(task)
        if classes is not None and args.top_k > classes:
            raise UserError(f"--top-k {args.top_k}: task {task!r} ranks {classes} classes")
    t0 = time.perf_counter()
    answers = session.run(tasks, frames=range(start, stop, step), top_k=args.top_k)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"file": args.file, "device": session.device, "backend": session.backend.name,
                      "tasks": {t: a.to_dict() for t, a in answers.items()},
                      "timings_ms": {k: round(v * 1e3, 3) for k, v in session.last_timings.items()},
                      "query_ms": round(elapsed * 1e3, 3)}, indent=1))


def cmd_bench(args) -> None:
    _export()
    from nvp_export.benchmark.run import BenchConfig, run_bench

    out = Path(args.out or f"bench/results/{'quick' if args.quick else 'table1'}")
    overrides = {"out": out, "threads": args.threads, "store": Path(args.store) if args.store else None}
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    config = (BenchConfig.quick if args.quick else BenchConfig.full)(**overrides)
    run_bench(config)
    print((out / "bench.md").read_text())
    print(f"results: {out}/bench.json, bench.md, latency.png, rate_accuracy.png")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nvp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("encode", help="fit a video into an INR and write a .nvp file")
    e.add_argument("input", help="any video FFmpeg reads")
    e.add_argument("-o", "--output", required=True, help="the .nvp file to write")
    e.add_argument("--family", choices=["hnerv", "nerv"], default="hnerv")
    budget = e.add_mutually_exclusive_group()
    budget.add_argument("--params", type=integer(1), help="size budget: stored values (weights + embeddings)")
    budget.add_argument("--bpp", type=real(0, 64, low_open=True), help="size budget in bits per pixel (default 0.5)")
    e.add_argument("--frames", type=_range, default=(0, None, 1), metavar="START:STOP:STEP")
    e.add_argument("--crop", type=_size, metavar="WxH", help="centre crop before resizing")
    e.add_argument("--size", type=_size, metavar="WxH", help="resize frames to this size")
    e.add_argument("--epochs", type=integer(1), default=300)
    e.add_argument("--target-psnr", type=real(0, 200), help="stop when the training PSNR reaches this (dB)")
    e.add_argument("--time-limit", type=real(0), default=540.0, metavar="SECONDS",
                   help="training time budget; the rate schedule anneals within it (default 540; 0: epochs only)")
    e.add_argument("--lr", type=real(0, 10, low_open=True), help="learning rate (default: the family's reference rate)")
    e.add_argument("--batch", type=integer(1), default=1, help="frames per step")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    e.add_argument("--threads", type=integer(1, 1024), help="CPU threads for training (default: all cores)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _overwrite_option(e)
    _store_option(e)
    e.set_defaults(run=cmd_encode)

    r = sub.add_parser("run", help="answer tasks on frames of a .nvp file; prints JSON")
    r.add_argument("file")
    r.add_argument("--tasks", required=True, help="comma-separated task names routed in the file, e.g. cls,det")
    r.add_argument("--frames", type=_range, default=(0, None, 1), metavar="START:STOP:STEP")
    r.add_argument("--top-k", type=integer(1), default=5, help="classes per answer (at most the task's classes)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    r.add_argument("--backend", choices=["auto", "ort", "trt"], default="auto")
    _store_option(r)
    r.set_defaults(run=cmd_run)

    i = sub.add_parser("info", help="describe a .nvp file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(run=cmd_info)

    v = sub.add_parser("view", help="decode a .nvp file to a video or a folder of PNGs")
    v.add_argument("file")
    v.add_argument("-o", "--output", required=True, help="out.mp4 (.mkv, .mov, .avi) or a folder for PNGs")
    v.add_argument("--frames", type=_range, default=(0, None, 1), metavar="START:STOP:STEP")
    v.add_argument("--crf", type=integer(0, 51), default=12, help="x264 quality for video output, 0..51 "
                   "(lower is better)")
    _overwrite_option(v)
    _store_option(v)
    v.set_defaults(run=cmd_view)

    b = sub.add_parser("bench", help="H.264 (CPU, NVDEC), full INR decoding and NVP side by side: Table 1 and 2")
    b.add_argument("--quick", action="store_true", help="tiny clips, few epochs, classification only (CI; < 2 min)")
    b.add_argument("--out", help="results folder (default bench/results/table1, or bench/results/quick)")
    b.add_argument("--threads", type=integer(1, 1024), default=2, help="CPU threads for every pipeline (default 2)")
    b.add_argument("--repeats", type=integer(1), help="warm queries per workload and pipeline")
    b.add_argument("--store", help="model store for the graphs (default: OUT/store)")
    b.set_defaults(run=cmd_bench)
    return p


def _overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-y", "--overwrite", action="store_true", help="replace an existing output")


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="model store folder (default: $NVP_STORE, else ~/.cache/nvp)")


def passive_openmp_waits() -> None:
    """Make idle OpenMP threads sleep rather than spin, for training commands; call before torch loads.

    Where other jobs share the cores, spinning threads starve the one holding a barrier (measured on 2
    shared cores: an HNeRV training step took 2.6-5x longer). A user's OMP_WAIT_POLICY wins. The
    library itself leaves the policy alone: spinning keeps the kernels' per-call latency low on
    dedicated cores (passive waits made a 0.06 ms adapter call 0.14 ms with 2 threads).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    passive_openmp_waits()  # encode and view import torch lazily, after this
    args = build_parser().parse_args(argv)
    return run_reporting_errors(f"nvp {args.command}", args.run, args)


def run_reporting_errors(prog: str, run, args) -> int:
    """Run a command; a user-facing failure becomes one line on stderr and exit code 1.

    User-facing failures (bad or tampered files, untileable sizes, paths, fits that collapse, missing
    model-store entries, a device or backend this machine lacks) are raised as ValueError / OSError
    subclasses or the two device errors, with a message meant for people; anything else is a bug and
    keeps its traceback.
    """
    try:
        run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, CudaUnavailableError, BackendUnavailableError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
