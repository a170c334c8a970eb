"""Archive-scale queries: `nvp query` files per second over a library, open cost per file, first query vs warm.

A library of 200 small .nvp files of one INR architecture (32x48, 8 frames, random weights: speed does not
depend on values), each with one classification route: EfficientNet-Lite0 (its real weights) from the
shallowest INR tap at least as large as injection point stage5. Every query is one frame, one task.

- open: ``Session(path)`` on a file whose architecture this process has served (its graphs are known);
- first / warm: that file's first one-frame query after opening, and the median of further ones;
  first_over_warm = (open + first query) / warm query (target <= 1.5);
- serial files/s: open + one-frame query per file in one process, one thread (what one core gives);
- nvp query files/s: ``nvp_rt.query`` over the library on a local Ray actor pool of 1 and 2 actors (one
  CPU, one ONNX Runtime thread each) streamed into Parquet, Ray already running: the whole query, and
  steady (the library three times over minus once: without the actors' start), per core = steady / actors
  (target >= 50); and the whole `nvp query` command (Ray start, actors, Parquet) timed as a user sees it.

    python bench/archive.py [--files 200] [--out bench/results] [--open-only]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import nvp_rt
from nvp_export.benchmark.library import LibrarySpec, RouteSpec, library_routes, write_library
from nvp_export.zoo import load_backbone
from nvp_rt.store import ModelStore
from report import Run, make_parser

POINT = "stage5"
TARGET_FILES_PER_S_PER_CORE = 50
TARGET_FIRST_OVER_WARM = 1.5


def route_tap(spec: LibrarySpec, backbone) -> str:
    """The shallowest tap whose frame is at least as large as the injection point's."""
    from nvp_export.benchmark.library import random_inr

    h, w = backbone.point(POINT).shape[-2:]
    shapes = random_inr(spec, 0).tap_shapes()
    return next(name for name, (_, th, tw) in shapes.items() if th >= h and tw >= w)


def build(work: Path, files: int, spec: LibrarySpec) -> tuple[ModelStore, list[Path], str]:
    store = ModelStore(work / "store")
    backbone = load_backbone("efficientnet_lite0")
    tap = route_tap(spec, backbone)
    routes = library_routes(spec, [RouteSpec("cls", lambda: backbone, tap, POINT)], store)
    return store, write_library(work / "lib", files, spec, routes), tap


def open_and_query(paths: list[Path], store: ModelStore, warm_runs: int = 5) -> dict:
    """Per file after the first: open, first one-frame query, warm one-frame query (median of ``warm_runs``)."""
    nvp_rt.Session(paths[0], store=store, threads=1).run(["cls"], frames=[0])  # the architecture becomes known
    opens, firsts, warms = [], [], []
    for i, path in enumerate(paths[1:]):
        frame = [i % 8]
        t0 = time.perf_counter()
        session = nvp_rt.Session(path, store=store, threads=1)
        t1 = time.perf_counter()
        session.run(["cls"], frames=frame)
        t2 = time.perf_counter()
        runs = []
        for _ in range(warm_runs):
            t = time.perf_counter()
            session.run(["cls"], frames=frame)
            runs.append(time.perf_counter() - t)
        opens.append(t1 - t0)
        firsts.append(t2 - t1)
        warms.append(statistics.median(runs))
    ms = {name: statistics.median(v) * 1e3 for name, v in (("open", opens), ("first", firsts), ("warm", warms))}
    return {
        "files": len(opens),
        "open_ms": ms["open"],
        "first_query_ms": ms["first"],
        "warm_query_ms": ms["warm"],
        "first_over_warm": (ms["open"] + ms["first"]) / ms["warm"],
        "first_query_only_over_warm": ms["first"] / ms["warm"],
        "serial_files_per_s": 1e3 / (ms["open"] + ms["first"]),
    }


def ray_query(paths: list[Path], store: ModelStore, actors: int, out: Path) -> dict:
    """After a warm-up query, the library once and three times over: the difference is the time of twice
    ``len(paths)`` more files, without what every query pays once (actors starting, first graphs compiling)."""
    from nvp_rt.library import write_parquet

    seconds = []
    for files in (paths[:actors], paths, paths * 3):
        t0 = time.perf_counter()
        dataset = nvp_rt.query(files, ["cls"], frames=slice(0, 1), store=store, num_actors=actors)
        summary = write_parquet(dataset, out)
        seconds.append(time.perf_counter() - t0)
        assert summary.rows == len(files) and not summary.failed, summary.line()
    steady = 2 * len(paths) / (seconds[2] - seconds[1])
    return {
        "actors": actors,
        "seconds": seconds[1],
        "files_per_s": len(paths) / seconds[1],
        "seconds_three_times_over": seconds[2],
        "steady_files_per_s": steady,
        "steady_files_per_s_per_core": steady / actors,
    }


def cli_query(work: Path, store: ModelStore, actors: int) -> dict:
    cmd = [sys.executable, "-m", "nvp_rt.cli", "query", str(work / "lib" / "*.nvp"), "--tasks", "cls"]
    cmd += ["--frames", "0:1", "-o", str(work / "cli.parquet"), "--store", str(store.root)]
    cmd += ["--num-actors", str(actors)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return {"actors": actors, "seconds": time.perf_counter() - t0}


def markdown(report: dict) -> str:
    o = report["open_and_query"]
    lines = [
        f"1 thread per actor. Library: {report['files']} files {report['video']}, route {report['route']}.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| open, known architecture (median ms) | {o['open_ms']:.2f} | |",
        f"| first one-frame query after open (median ms) | {o['first_query_ms']:.2f} | |",
        f"| warm one-frame query (median ms) | {o['warm_query_ms']:.2f} | |",
        f"| (open + first query) / warm query | {o['first_over_warm']:.2f} | <= {TARGET_FIRST_OVER_WARM} |",
        f"| serial open + query, one process, files/s | {o['serial_files_per_s']:.1f} | |",
    ]
    for q in report["ray_query"]:
        lines.append(f"| nvp_rt.query, {q['actors']} actor(s): files/s, whole query | {q['files_per_s']:.1f} | |")
        lines.append(
            f"| nvp_rt.query, {q['actors']} actor(s): files/s steady (per core) | {q['steady_files_per_s']:.1f} "
            f"({q['steady_files_per_s_per_core']:.1f}) | >= {TARGET_FILES_PER_S_PER_CORE} per core |"
        )
    for c in report["cli_query"]:
        lines.append(f"| `nvp query` command end to end, {c['actors']} actor(s) (s) | {c['seconds']:.1f} | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = make_parser(__doc__)
    p.add_argument("--files", type=int, default=200)
    p.add_argument(
        "--open-only",
        action="store_true",
        help="open cost and first/warm only: runs against an older nvp_rt too (PYTHONPATH), for before/after",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    run = Run(args.out, "archive_open" if args.open_only else "archive", threads=1)
    work = Path(tempfile.mkdtemp(prefix="nvp-bench-archive-"))
    spec = LibrarySpec()
    print(f"building {args.files} files in {work} ...", file=sys.stderr)
    store, paths, tap = build(work, args.files, spec)
    report = {
        "files": len(paths),
        "video": f"{spec.width}x{spec.height}, {spec.frames} frames, HNeRV fc_dim {spec.fc_dim}, random weights",
        "route": f"cls: INR {tap} -> efficientnet_lite0 @ {POINT}",
        "file_bytes": paths[0].stat().st_size,
        "open_and_query": open_and_query(paths, store),
    }
    report["ray_query"], report["cli_query"] = [], []
    if not args.open_only:
        from nvp_rt.cluster import ray_runtime

        with ray_runtime(num_cpus=2):
            report["ray_query"] = [ray_query(paths, store, n, work / f"q{n}.parquet") for n in (1, 2)]
        report["cli_query"] = [cli_query(work, store, n) for n in (1, 2)]
    table = markdown(report)
    run.write(report, table)
    print(table)


if __name__ == "__main__":
    main()
