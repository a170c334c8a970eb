"""nvp-export: route an encoded video into a backbone and store the route in the .nvp.

    nvp-export --task efficientnet_lite0 clip.nvp --source video.mp4

selects the (INR tap, injection point) pair by CKA, trains its micro adapter
against the backbone's own features on the original frames, and rewrites the
file's routes section in place (atomically; the video payload is copied
verbatim). Without --source the teacher sees the INR's own full decode.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from nvp_rt.cli import UserError, passive_openmp_waits, run_reporting_errors
from nvp_rt.nvpfile import NvpFile, Route, replace_routes
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video

# Task kinds users may name instead of a preset.
TASK_KINDS = {"cls": "efficientnet_lite0", "classification": "efficientnet_lite0"}


def original_frames(nvp: NvpFile, source: str | None, inr):
    """The frames the adapter learns to imitate: the source video, re-read as encode read it."""
    video = nvp.manifest.get("video", {})
    if source is None:
        print("no --source given: the teacher sees the INR's own decoded frames", file=sys.stderr)
        return inr.render(range(inr.num_frames))
    selection = dict(video.get("selection") or {})
    for key in ("crop", "size"):
        if selection.get(key) is not None:
            selection[key] = tuple(selection[key])
    frames, _ = read_video(source, FrameSelection(**selection))
    if frames.shape[:3] != (inr.num_frames, video.get("height"), video.get("width")):
        raise UserError(f"--source {source} gives frames {frames.shape[:3]} but the .nvp encodes "
                        f"{(inr.num_frames, video.get('height'), video.get('width'))}: not the video it was encoded from")
    return frames


def to_file_route(route) -> Route:
    """The adapt result's route as the .nvp container stores it."""
    metadata = {
        "kind": "classification", "in_channels": route.in_channels, "out_channels": route.out_channels,
        "hidden": route.hidden, "pathways": [{"size": list(route.size), "frames": None}],
        **{k: v for k, v in route.metrics.items() if isinstance(v, (int, float, str))},
    }
    return Route(route.task, route.backbone, route.inr_tap, route.injection_point, dict(route.adapter), metadata)


def run(args) -> None:
    from .adapt import AdaptConfig, adapt
    from .inr import load_nvp
    from .onnx_export import export_route_graphs
    from .zoo import PRESETS, load_backbone

    preset = TASK_KINDS.get(args.task, args.task)
    if preset not in PRESETS:
        raise UserError(f"unknown task {args.task!r}; presets: {', '.join(sorted(PRESETS))}")
    nvp = NvpFile.open(args.file)  # validated before anything heavy runs
    inr = load_nvp(args.file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the weights note is printed below instead
        backbone = load_backbone(preset, weights=args.weights)
    if backbone.preprocess.num_frames > 1 or backbone.task != "classification":
        raise UserError(f"{preset} is a {backbone.task} preset; nvp-export trains classification routes so far")
    print(backbone.weights_note, file=sys.stderr)
    frames = original_frames(nvp, args.source, inr)
    config = AdaptConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch, top_fraction=args.top,
                         candidates=args.candidates, seed=args.seed, progress=not args.quiet)
    result = adapt(inr, frames, backbone, config)
    result.route = replace(result.route, task=args.name or args.task)
    if args.cka_out:
        out = Path(args.cka_out)
        out.mkdir(parents=True, exist_ok=True)
        result.cka.save_json(out / f"cka_{preset}.json")
        result.cka.save_heatmap(out / f"cka_{preset}.png", top_fraction=args.top)
    store = ModelStore(args.store)
    route = to_file_route(result.route)
    route = replace(route, backbone=export_route_graphs(inr, backbone, route.injection_point, store,
                                                        stacked=route.metadata.get("hidden") is not None))
    kept = [r for r in nvp.routes() if r.task != route.task]
    size = replace_routes(args.file, kept + [route])
    print(result.summary())
    print(f"{args.file}: {len(kept) + 1} route(s), {size} bytes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvp-export", description=__doc__.splitlines()[0])
    p.add_argument("file", help="the .nvp file to add the route to (rewritten in place, atomically)")
    p.add_argument("--task", required=True, help="a backbone preset (e.g. efficientnet_lite0) or 'cls'")
    p.add_argument("--name", help="the task name queries use (default: the --task value)")
    p.add_argument("--source", help="the original video, for the teacher features (default: the INR's decode)")
    p.add_argument("--weights", help="a checkpoint for the backbone (default: weights found locally)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--candidates", choices=["top", "per_point"], default="top",
                   help="pairs trained: the CKA top --top fraction (the paper's), or each injection point's best-CKA tap")
    p.add_argument("--top", type=float, default=0.1, help="fraction of (tap, point) pairs trained, by CKA rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cka-out", help="folder for the CKA matrix (JSON) and heatmap (PNG)")
    p.add_argument("--store", help="model store for the task's graphs (default: $NVP_STORE, else ~/.cache/nvp)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    passive_openmp_waits()  # torch is imported lazily, in run()
    return run_reporting_errors("nvp-export", run, build_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
