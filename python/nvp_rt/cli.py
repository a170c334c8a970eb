"""`nvp`: encode videos into .nvp files, inspect them, answer tasks on them, decode them for people.

A thin layer over the libraries: parsing, dispatch, and turning user errors into
one line on stderr with a non-zero exit. `run`, `query`, `view` and `info` are the torch-free
runtime; `encode`, `bench` and `base-graphs` are the export side's (torch), registered by it under the
entry-point group ``nvp.commands`` (see ``command``), so this module never imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .arguments import Parser, integer
from .atomic import check_writable
from .command import (
    AddCommand,
    UserError,
    add_overwrite_option,
    add_store_option,
    add_unavailable_command,
    parse_frame_range,
    passive_openmp_waits,
    registered_commands,
    run_reporting_errors,
    warn_unloadable,
)
from .nvpfile import ROUTES_SECTION, NvpFile
from .outputs import check_output
from .store import ModelStore

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi"}


# The export side's subcommands: named here only to say what to install when they are missing.
EXPORT_COMMANDS = {
    "encode": "fit a video into an INR and write a .nvp file",
    "bench": "H.264 (CPU, NVDEC), full INR decoding and NVP side by side: Table 1 and 2",
    "base-graphs": "write the decoder graphs of the pretrained bases into the model store",
}


def cmd_info(args) -> None:
    nvp = NvpFile.open(args.file)
    nvp.verify()  # an inspection reads every byte: damage anywhere is reported here, not at a later query
    m = nvp.manifest
    video, inr = m.get("video", {}), m.get("inr", {})
    frames, h, w = video.get("frames"), video.get("height"), video.get("width")
    bpp = 8 * nvp.size_bytes / (frames * h * w) if all(isinstance(v, int) and v > 0 for v in (frames, h, w)) else None
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(nvp.path),
                    "format_version": list(nvp.version),
                    "bytes": nvp.size_bytes,
                    "bpp": bpp,
                    "manifest": m,
                    "routes": [{**r.header(), "task_bytes": nvp.task_bytes(r.tap)} for r in nvp.routes()],
                },
                indent=1,
            )
        )
        return
    metrics = m.get("metrics", {})
    sections = nvp.sections
    inr_bytes = sum(n for name, n in sections.items() if name != ROUTES_SECTION)
    lengths = [s.frames for s in nvp.segments]
    lines = [
        f"file        {nvp.path} (.nvp format {nvp.version[0]}.{nvp.version[1]})",
        f"size        {nvp.size_bytes} bytes" + (f", {bpp:.4f} bpp" if bpp is not None else ""),
        f"video       {frames} frames, {w}x{h}, {video.get('fps', '?')} fps, from {video.get('source', '?')}",
        f"quality     PSNR {_db(metrics.get('psnr_quantised_db'))} after quantisation "
        f"({_db(metrics.get('psnr_float_db'))} before)",
        f"inr         {inr.get('family', '?')}: " + ", ".join(f"{k}={v}" for k, v in inr.items() if k != "family")
        if nvp.base is None
        else f"base        {nvp.base['sha256']}: {nvp.base['modulation']} modulation, "
        + ", ".join(f"{k}={v}" for k, v in nvp.base["config"].items()),
        f"segments    {len(lengths)} of {min(lengths)}-{max(lengths)} frames",
        f"sections    {len(sections)}: {'INR' if nvp.base is None else 'base payload'} {inr_bytes} bytes, "
        f"routes {sections.get(ROUTES_SECTION, 0)} bytes, "
        f"header and manifest {nvp.size_bytes - sum(sections.values())} bytes",
        "taps        "
        + ", ".join(
            f"{t.get('name')} {'x'.join(map(str, t.get('shape', [])))}"
            for t in m.get("taps", [])
            if isinstance(t, dict)
        ),
        f"routes      {len(nvp.routes())}",
    ]
    for r in nvp.routes():
        lines.append(
            f"  {r.task}: tap {r.tap} -> {r.backbone} @ {r.injection_point}; "
            f"a query on one segment reads {nvp.task_bytes(r.tap)} bytes"
        )
    print("\n".join(lines))


def _db(value) -> str:
    return f"{value:.2f} dB" if isinstance(value, (int, float)) else "?"


def cmd_view(args) -> None:
    from .video import png_name, write_pngs, write_video

    nvp = NvpFile.open(args.file)  # validated before any output is touched
    out = Path(args.output)
    is_video = out.suffix.lower() in VIDEO_SUFFIXES
    if is_video and out.is_dir():
        raise UserError(f"output {out} is a directory")
    if not is_video and out.exists() and not out.is_dir():
        raise UserError(f"output {out} is neither a video name ({', '.join(sorted(VIDEO_SUFFIXES))}) nor a folder")
    total = nvp.num_frames
    start, stop, step = args.frames
    stop = total if stop is None else stop
    if start >= total or stop > total:
        raise UserError(f"frames {start}:{stop} out of range: the video has {total} frames")
    indices = list(range(start, stop, step))
    outputs = [out] if is_video else [out / png_name(i) for i in indices] if out.is_dir() else []
    for path in outputs:
        check_output(path, [args.file], args.overwrite)
    if not outputs:  # a folder of PNGs to create: its parent must take it
        check_writable(out)
    frames = _session(args).decode(indices)
    if is_video:
        fps = float(nvp.manifest.get("video", {}).get("fps") or 30) / step
        write_video(out, frames, fps, options={"crf": str(args.crf)}, overwrite=args.overwrite)
        print(f"{out}: {len(indices)} frames")
    else:
        write_pngs(out, frames, start, step, overwrite=args.overwrite)
        print(f"{out}/: {len(indices)} PNG frames")


def _session(args):
    from .session import Session

    return Session(
        args.file,
        device=getattr(args, "device", "auto"),
        backend=getattr(args, "backend", "auto"),
        store=ModelStore(args.store),
    )


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
    print(
        json.dumps(
            {
                "file": args.file,
                "device": session.device,
                "backend": session.backend.name,
                "tasks": {t: a.to_dict() for t, a in answers.items()},
                "timings_ms": {k: round(v * 1e3, 3) for k, v in session.last_timings.items()},
                "query_ms": round(elapsed * 1e3, 3),
            },
            indent=1,
        )
    )


def cmd_query(args) -> None:
    from .cluster import ray_runtime
    from .library import query, write_parquet

    out = Path(args.output)
    if out.is_dir() or not out.parent.is_dir():
        raise UserError(f"output {out} must be a file name in an existing folder")
    check_writable(out)  # before the library is answered
    start, stop, step = args.frames
    with ray_runtime(args.address, num_cpus=None if args.address else args.num_actors):
        dataset = query(
            args.files,
            args.tasks,
            frames=slice(start, stop, step),
            num_actors=args.num_actors,
            store=ModelStore(args.store),
            device=args.device,
            top_k=args.top_k,
        )
        summary = write_parquet(dataset, out)
    print(summary.line())
    if summary.failed:
        raise UserError(f"{len(summary.failed)} of {summary.files} files were not fully answered: see the error column")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser(commands: dict[str, AddCommand] | None = None) -> argparse.ArgumentParser:
    """`nvp`'s parser; ``commands``: the subcommands other packages add (default: those registered)."""
    p = Parser(prog="nvp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    commands = registered_commands() if commands is None else commands
    for add in commands.values():
        add(sub)
    for name, summary in EXPORT_COMMANDS.items():
        if name not in sub.choices:
            needs = f"nvp {name} needs the export side: pip install 'nvp[export]'"
            add_unavailable_command(sub, name, f"{summary} (needs the export side)", needs)

    r = sub.add_parser("run", help="answer tasks on frames of a .nvp file; prints JSON")
    r.add_argument("file")
    r.add_argument("--tasks", required=True, help="comma-separated task names routed in the file, e.g. cls,det")
    r.add_argument("--frames", type=parse_frame_range, default=(0, None, 1), metavar="START:STOP:STEP")
    r.add_argument("--top-k", type=integer(1), default=5, help="classes per answer (at most the task's classes)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    r.add_argument("--backend", choices=["auto", "ort", "trt"], default="auto")
    add_store_option(r)
    r.set_defaults(run=cmd_run)

    q = sub.add_parser("query", help="answer tasks over a library of .nvp files on Ray; writes Parquet")
    q.add_argument("files", nargs="+", help="files or quoted globs, e.g. 'archive/*.nvp'")
    q.add_argument("--tasks", required=True, help="comma-separated task names, e.g. cls,det")
    q.add_argument(
        "--frames",
        type=parse_frame_range,
        default=(0, None, 1),
        metavar="START:STOP:STEP",
        help="frames of every file (clipped to each file's length; default: all)",
    )
    q.add_argument("-o", "--output", required=True, help="results.parquet: rows (file, frame, task, answer, error)")
    q.add_argument("--address", help="join this Ray cluster (HOST:PORT, ray://HOST:PORT, auto); default: local Ray")
    q.add_argument("--num-actors", type=_positive, help="query actors, one CPU each (default: the CPUs, or fewer)")
    q.add_argument("--top-k", type=_positive, default=5)
    q.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    add_store_option(q)
    q.set_defaults(run=cmd_query)

    i = sub.add_parser("info", help="describe a .nvp file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(run=cmd_info)

    v = sub.add_parser("view", help="decode a .nvp file to a video or a folder of PNGs")
    v.add_argument("file")
    v.add_argument("-o", "--output", required=True, help="out.mp4 (.mkv, .mov, .avi) or a folder for PNGs")
    v.add_argument("--frames", type=parse_frame_range, default=(0, None, 1), metavar="START:STOP:STEP")
    v.add_argument(
        "--crf", type=integer(0, 51), default=12, help="x264 quality for video output, 0..51 (lower is better)"
    )
    add_overwrite_option(v)
    add_store_option(v)
    v.set_defaults(run=cmd_view)

    return p


def main(argv: list[str] | None = None) -> int:
    passive_openmp_waits()  # the export side's commands import torch lazily, after this
    commands = registered_commands()
    args = build_parser(commands).parse_args(argv)
    warn_unloadable(commands, args.command)
    return run_reporting_errors(f"nvp {args.command}", args.run, args)


if __name__ == "__main__":
    sys.exit(main())
