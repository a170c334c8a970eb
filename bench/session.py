"""nvp_rt.Session: per-query latency, the shared-prefix gain, runtime overhead, cold vs warm.

One video with three routes (classification: EfficientNet-Lite0 with its real
weights; detection: DETR-R50; action: SlowFast-R50 8x8, both randomly
initialised offline) is queried task by task and all at once on the same
frames. Latency does not depend on weight values, so the INR is the
architecture the encoder picks for the size and bpp, with random weights, and
the adapters are untrained; the output says so. Each route goes from the
shallowest INR tap at least as large as its injection point, to the point
given below (deep points: most of each backbone is skipped, as NVP intends).

- single / shared: median ms of each task alone and of the three in one query;
  sharing ratio = shared / sum of singles (target <= 0.7);
- overhead: the share of a query's wall time spent outside ONNX Runtime and the
  adapter kernel (target <= 5% on CPU);
- cold: the first query on a freshly opened .nvp of an architecture the process
  has served before, against a warm query (target <= 2x); and the same in a
  new process, which finds ORT's optimised graphs on disk.

    python bench/session.py [--size 1280x720] [--runs 15] [--out bench/results]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import nvp_rt  # noqa: E402
from nvp_export.encode import DEFAULT_BPP  # noqa: E402
from nvp_export.inr import config_for_budget, from_config  # noqa: E402
from nvp_export.inr.store import quantise_inr, save_nvp  # noqa: E402
from nvp_export.onnx_export import export_route_graphs  # noqa: E402
from nvp_export.route.multipathway import PathwayAdapter  # noqa: E402
from nvp_export.zoo import load_backbone, slowfast_r50  # noqa: E402
from nvp_rt.nvpfile import Route, replace_routes  # noqa: E402
from nvp_rt.store import ModelStore  # noqa: E402
from report import Run, make_parser  # noqa: E402

CLIP = 8  # frames per query: one SlowFast 8x8 clip, and the frames classification and detection answer on
ROUTES = {  # task -> (backbone builder, injection point)
    "cls": (lambda: load_backbone("efficientnet_lite0"), "stage5"),
    "det": (lambda: load_backbone("detr_r50"), "stage3"),
    "act": (lambda: slowfast_r50.build(config=slowfast_r50.SlowFastConfig(frames=CLIP)), "res4"),
}


def random_video(path: Path, size: tuple[int, ...], frames: int, seed: int):
    """An INR of the architecture `nvp encode` picks for this size at the default bpp, random weights."""
    torch.manual_seed(seed)
    inr = from_config(config_for_budget("hnerv", size[1], size[0], frames, bpp=DEFAULT_BPP)).eval()
    with torch.no_grad():
        inr.embeddings.normal_()
    arrays, meta, quantised = quantise_inr(inr)
    save_nvp(path, quantised, arrays, meta, {"video": {"frames": frames, "height": size[1], "width": size[0]}})
    return quantised


def route_tap(inr, point_shape) -> str:
    """The shallowest tap whose frame is at least as large as the injection point's."""
    h, w = point_shape[-2:]
    return next(name for name, (_, th, tw) in inr.tap_shapes().items() if th >= h and tw >= w)


def add_routes(path: Path, inr, store: ModelStore, tasks: tuple[str, ...] = tuple(ROUTES)) -> list[dict]:
    routes, described = [], []
    for task in tasks:
        build, point = ROUTES[task]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone = build()
        shapes = backbone.point(point).shape
        tap = route_tap(inr, shapes[0] if isinstance(shapes[0], tuple) else shapes)
        adapter = PathwayAdapter(inr.tap_shapes()[tap][0], backbone.point(point))
        key = export_route_graphs(inr, backbone, point, store)
        arrays, meta = adapter.to_route()
        routes.append(Route(task, key, tap, point, arrays, {"kind": backbone.task, **meta}))
        described.append(
            {"task": task, "backbone": backbone.name, "tap": tap, "point": point, "pretrained": backbone.pretrained}
        )
    replace_routes(path, routes)
    return described


def timed(fn, runs: int) -> dict:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = np.percentile(times, [25, 75])
    return {"median_ms": statistics.median(times), "iqr_ms": [float(q[0]), float(q[1])], "runs": runs}


COLD_SCRIPT = """
import sys, time, json
t0 = time.perf_counter()
import nvp_rt
s = nvp_rt.Session(sys.argv[1], store=sys.argv[2])
t1 = time.perf_counter()
s.run(["cls"], frames=[0])
t2 = time.perf_counter()
s.run(["cls"], frames=[0])
t3 = time.perf_counter()
print(json.dumps({"import_open_ms": (t1 - t0) * 1e3, "first_ms": (t2 - t1) * 1e3, "warm_ms": (t3 - t2) * 1e3}))
"""


def main() -> None:
    p = make_parser(__doc__)
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the video")
    p.add_argument("--frames", type=int, default=32, help="frames in the video")
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args()
    run = Run(args.out, "session")
    size = tuple(int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="nvp-bench-session-"))
    store = ModelStore(work / "store")
    steps = tqdm(total=6, desc="session bench", unit="step")

    inr = random_video(work / "a.nvp", size, args.frames, seed=0)
    routes = add_routes(work / "a.nvp", inr, store)
    steps.update()
    session = nvp_rt.Session(work / "a.nvp", store=store)
    frames = list(range(CLIP))
    for task in ROUTES:  # warm every session once
        session.run([task], frames=frames)
    single = {task: timed(lambda t=task: session.run([t], frames=frames), args.runs) for task in ROUTES}
    steps.update()
    shared = timed(lambda: session.run(list(ROUTES), frames=frames), args.runs)
    overheads, shared_steps = [], []
    for _ in range(args.runs):
        session.run(list(ROUTES), frames=frames)
        t = session.last_timings
        overheads.append(1 - t["engine"] / t["total"])
        shared_steps.append(t)
    steps.update()

    # Cold: a second video of the same architecture, opened and queried for the first time in this process.
    random_video(work / "b.nvp", size, args.frames, seed=1)
    replace_routes(work / "b.nvp", nvp_rt.nvpfile.NvpFile.open(work / "a.nvp").routes())
    t0 = time.perf_counter()
    fresh = nvp_rt.Session(work / "b.nvp", store=store)
    opened = time.perf_counter()
    fresh.run(["cls"], frames=[0])
    first = time.perf_counter()
    warm = timed(lambda: fresh.run(["cls"], frames=[0]), args.runs)
    steps.update()
    process = json.loads(
        subprocess.run(
            [sys.executable, "-c", COLD_SCRIPT, str(work / "b.nvp"), str(store.root)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    steps.update()
    steps.close()

    sum_single = sum(s["median_ms"] for s in single.values())
    report = {
        "video": {"size": list(size), "frames": args.frames, "inr": inr.config_dict()},
        "note": "INR and adapters have random weights (latency does not depend on values); detection and action "
        "backbones are randomly initialised offline",
        "routes": routes,
        "query_frames": frames,
        "single": single,
        "shared": shared,
        "sum_of_singles_ms": sum_single,
        "sharing_ratio": shared["median_ms"] / sum_single,
        "overhead_fraction_median": statistics.median(overheads),
        # Where a shared query's time goes: the ratio above is (prefix + heads) / (3 prefix + heads) at best.
        "shared_steps_median_ms": {k: statistics.median(t[k] for t in shared_steps) * 1e3 for k in shared_steps[0]},
        "cold_in_process": {
            "open_ms": (opened - t0) * 1e3,
            "first_query_ms": (first - opened) * 1e3,
            "warm_query_ms": warm["median_ms"],
            "first_over_warm": (first - opened) * 1e3 / warm["median_ms"],
        },
        "cold_new_process": {**process, "first_over_warm": process["first_ms"] / process["warm_ms"]},
    }
    lines = [
        f"Session latency, {size[0]}x{size[1]}, {CLIP} frames per query; ONNX Runtime's default threads. "
        f"{report['note']}.",
        "",
        "| query | median ms | IQR ms |",
        "|---|---|---|",
    ]
    for name, s in [*single.items(), ("cls+det+act (shared prefix)", shared)]:
        lines.append(f"| {name} | {s['median_ms']:.1f} | {s['iqr_ms'][0]:.1f}-{s['iqr_ms'][1]:.1f} |")
    steps_ms = report["shared_steps_median_ms"]
    lines += [
        "",
        "shared query, median ms per step: " + ", ".join(f"{k} {v:.1f}" for k, v in steps_ms.items()),
        f"sharing ratio shared / sum of singles: {report['sharing_ratio']:.2f} (target <= 0.7; the INR prefix "
        f"is {100 * steps_ms['prefix'] / steps_ms['total']:.0f}% of the shared query, and only it is shared)",
        f"runtime overhead outside engines and kernel: {100 * report['overhead_fraction_median']:.2f}% (target <= 5%)",
        f"first query on a fresh .nvp of a known architecture / warm: in process "
        f"{report['cold_in_process']['first_over_warm']:.2f}x, new process "
        f"{report['cold_new_process']['first_over_warm']:.2f}x (target <= 2x)",
    ]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [*single, "shared"]
    values = [*(s["median_ms"] for s in single.values()), shared["median_ms"]]
    ax.barh(names, values, color=["#8da0cb"] * len(single) + ["#fc8d62"])
    ax.barh(["sum of singles"], [sum_single], color="#cccccc")
    ax.set_xlabel("median ms per query")
    ax.set_title(f"nvp_rt.Session, {size[0]}x{size[1]}, {CLIP} frames")
    fig.tight_layout()
    run.write(report, "\n".join(lines), fig)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
