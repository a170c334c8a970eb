"""nvp-export: route an encoded video into a backbone and store the route in the .nvp.

    nvp-export --task efficientnet_lite0 clip.nvp --source video.mp4
    nvp-export --task det clip.nvp            # detr_r50; also act/action, seg, cap, slowfast, ... (TASK_KINDS)

selects the (INR tap, injection point) pair by CKA, trains its micro adapter
against the backbone's own features on the original frames, writes the
backbone's graphs into the model store and rewrites the file's routes section
in place (atomically, under a lock, with the routes other runs added meanwhile;
the video payload is copied verbatim). Without --source the teacher sees the
INR's own full decode; --source must be the video the file was encoded from
(checked against the fingerprint stored at encode time). Classifiers go through
``adapt.adapt``, the other task kinds through ``task_adapt.adapt_task``.
With --joint (classification) the INR is then optimised together with the
route's adapter and the video payload rewritten too (PSNR before/after
printed). With --source a classification route's fidelity is printed next to
full INR decode and H.264 at equal bpp.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from nvp_rt.cli import UserError, passive_openmp_waits, run_reporting_errors
from nvp_rt import fingerprint
from nvp_rt.arguments import Parser, integer, real
from nvp_rt.atomic import exclusive_lock
from nvp_rt.nvpfile import INR_SECTION, NvpFile, Route, update_routes
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video

# Task kinds and short model names users may type instead of a preset.
TASK_KINDS = {
    "cls": "efficientnet_lite0", "classification": "efficientnet_lite0",
    "det": "detr_r50", "detection": "detr_r50",
    "act": "slowfast_r50", "action": "slowfast_r50",
    "seg": "segformer_b0", "segmentation": "segformer_b0",
    "cap": "blip", "captioning": "blip",
    "slowfast": "slowfast_r50", "i3d": "i3d_r50", "detr": "detr_r50", "clip": "clip_rn50", "vit": "vit_b_16",
    "segformer": "segformer_b0", "efficientnet": "efficientnet_lite0", "resnet": "resnet50",
}


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
    difference = fingerprint.difference(video.get("fingerprint") or {}, frames)
    if difference is None:
        print("the .nvp holds no source fingerprint (encoded by an older nvp): --source is not verified",
              file=sys.stderr)
    elif difference > fingerprint.TOLERANCE:
        raise UserError(f"--source {source} is not the video {nvp.path.name} was encoded from (its frames differ "
                        f"from the stored fingerprint by {difference:.1f} levels on average)")
    return frames


def _storable(value) -> bool:
    """A metric the manifest can hold: JSON has no NaN or infinity (the reader refuses them)."""
    return isinstance(value, (int, str)) or (isinstance(value, float) and math.isfinite(value))


def to_file_route(route) -> Route:
    """A classification route (``adapt.Route``) as the .nvp container stores it."""
    metadata = {
        "kind": "classification", "in_channels": route.in_channels, "out_channels": route.out_channels,
        "hidden": route.hidden, "pathways": [{"size": list(route.size), "frames": None}],
        **{k: v for k, v in route.metrics.items() if _storable(v)},
    }
    return Route(route.task, route.backbone, route.inr_tap, route.injection_point, dict(route.adapter), metadata)


def task_file_route(task: str, kind: str, result) -> Route:
    """A task preset's route (``task_adapt.TaskAdaptResult``) as the .nvp container stores it."""
    route = result.route
    arrays, layout = route.adapter.to_route()
    metadata = {"kind": kind, "in_channels": route.adapter.adapters[0].spec.in_channels, **layout,
                **{k: v for k, v in result.metrics().items() if _storable(v)}}
    return Route(task, route.cost.backbone, route.tap, route.point, arrays, metadata)


def run(args) -> None:
    import torch

    from .adapt import AdaptConfig, adapt
    from .inr import load_nvp
    from .onnx_export import export_route_graphs
    from .task_adapt import adapt_task
    from .zoo import PRESETS, load_backbone

    preset = TASK_KINDS.get(args.task, args.task)
    if preset not in PRESETS:
        raise UserError(f"unknown task {args.task!r}; presets: {', '.join(sorted(PRESETS))}; "
                        f"task kinds: {', '.join(TASK_KINDS)}")
    nvp = NvpFile.open(args.file)  # validated before anything heavy runs
    joint_config = joint_config_of(args) if args.joint else None
    inr = load_nvp(args.file)
    torch.manual_seed(args.seed)  # a randomly initialised preset is the same for the same seed: its graphs are reused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the weights note is printed below instead
        backbone = load_backbone(preset, weights=args.weights, reduced=args.reduced)
    clip = backbone.preprocess.num_frames
    if clip > inr.num_frames:
        raise UserError(f"{preset} answers on clips of {clip} frames but {args.file} encodes {inr.num_frames}")
    print(backbone.weights_note, file=sys.stderr)
    clip_scorer = clip_scorer_of(args, backbone)
    frames = original_frames(nvp, args.source, inr)
    config = AdaptConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch, top_fraction=args.top,
                         candidates=args.candidates, seed=args.seed, progress=not args.quiet)
    task = args.name or args.task
    classifier = backbone.task == "classification" and clip == 1
    if joint_config and not classifier:
        raise UserError(f"--joint trains classification routes so far; {preset} is a {backbone.task} preset")
    if classifier:
        result = adapt(inr, frames, backbone, config)
        result.route = replace(result.route, task=task)
        route = to_file_route(result.route)
    else:
        result = adapt_task(inr, frames, backbone, config, clip_stride=args.clip_stride,
                            clip_scorer=clip_scorer)
        route = task_file_route(task, backbone.task, result)
    if args.cka_out:
        out = Path(args.cka_out)
        out.mkdir(parents=True, exist_ok=True)
        result.cka.save_json(out / f"cka_{preset}.json")
        result.cka.save_heatmap(out / f"cka_{preset}.png", top_fraction=args.top)
    joint = None
    if joint_config:
        joint = run_joint(joint_config, inr, frames, backbone, result)
        route = to_file_route(result.route)
    # The route's graphs (INR stages, backbone suffix from the point, full backbone) into the model store.
    route = replace(route, backbone=export_route_graphs(inr, backbone, route.injection_point, ModelStore(args.store),
                                                        stacked=route.metadata.get("hidden") is not None))
    kept: list[Route] = []

    def add_route(routes: list[Route]) -> list[Route]:
        kept[:] = [r for r in routes if r.task != route.task]
        return kept + [route]

    if joint is None:  # the routes as they are now: another export may have added one meanwhile
        size = update_routes(args.file, add_route, inr_checksum=nvp.checksums[INR_SECTION])
    else:
        from .joint import save_joint

        with exclusive_lock(args.file):
            size = save_joint(args.file, nvp.manifest, *joint, add_route(NvpFile.open(args.file).routes()))
        if kept:
            print(f"warning: route(s) {', '.join(r.task for r in kept)} were trained on the INR before joint "
                  f"optimisation changed it; export them again to retrain their adapters", file=sys.stderr)
    print(result.summary())
    if classifier and (args.compare_pixels if args.compare_pixels is not None else args.source is not None):
        print_pixel_fidelity(joint[0].inr if joint else inr, frames, backbone, nvp, result.route.metrics)
    print(f"{args.file}: {len(kept) + 1} route(s), {size} bytes")


def clip_scorer_of(args, backbone):
    """The CLIP model that scores a captioning preset's captions, where the user has one."""
    if not args.clip_weights:
        return None
    if backbone.task != "captioning":
        raise UserError(f"--clip-weights scores captions; {backbone.name} is a {backbone.task} preset")
    if getattr(backbone, "tokenizer", None) is None:
        raise UserError("--clip-weights needs text captions: pass --weights DIR of a BLIP checkpoint with its tokenizer")
    from .clip_score import ClipScorer

    return ClipScorer.load(args.clip_weights)


def joint_config_of(args):
    from .joint import JointConfig

    return JointConfig(epochs=args.joint_epochs, recon=args.lambda_recon, task=args.lambda_task,
                       feat=args.lambda_feat, seed=args.seed, progress=not args.quiet)


def run_joint(config, inr, frames, backbone, result):
    """Joint optimisation of the chosen route; updates ``result.route``, returns (JointResult, JointConfig)."""
    from .joint import joint_route

    result.route, joint = joint_route(inr, frames, backbone, result.route, config)
    print(joint.summary())
    return joint, config


def print_pixel_fidelity(inr, frames, backbone, nvp, metrics) -> None:
    """The NVP path's fidelity next to the pixel paths' (full INR decode; H.264 at the INR payload's bpp)."""
    from .fidelity import Fidelity
    from .pixel_paths import compare_pixel_paths, format_table, payload_bpp

    paths = compare_pixel_paths(inr, frames, backbone, payload_bpp(nvp))
    nvp_fid = Fidelity(len(frames), metrics["top1_agreement"], metrics["top5_overlap"], metrics["cosine"])
    rows = [("NVP path", nvp_fid, f"{metrics.get('compute_saved', 0):.1%} of the MACs saved")]
    rows += [(p.name, p.fidelity, f"{p.detail}, {p.psnr:.2f} dB") for p in paths]
    print(f"fidelity vs {backbone.name} on the original frames ({len(frames)} frames):")
    print(format_table(rows))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nvp-export", description=__doc__.splitlines()[0])
    p.add_argument("file", help="the .nvp file to add the route to (rewritten in place, atomically)")
    p.add_argument("--task", required=True,
                   help="a backbone preset (e.g. efficientnet_lite0, detr_r50, slowfast_r50, i3d_r50, segformer_b0, "
                        "blip), a short name (slowfast, i3d, detr, clip, vit, segformer) or a task kind: "
                        "cls, det, act, seg, cap")
    p.add_argument("--name", help="the task name queries use (default: the --task value)")
    p.add_argument("--source", help="the original video, for the teacher features (default: the INR's decode)")
    p.add_argument("--weights", help="a checkpoint for the backbone (default: weights found locally)")
    p.add_argument("--clip-weights", metavar="DIR",
                   help="captioning: a local CLIP save_pretrained directory; captions are then CLIP-scored too")
    p.add_argument("--epochs", type=integer(1), default=30)
    p.add_argument("--lr", type=real(0, 10, low_open=True), default=1e-4)
    p.add_argument("--batch", type=integer(1), default=4)
    p.add_argument("--candidates", choices=["top", "per_point"], default="per_point",
                   help="pairs trained: each injection point's best-CKA tap (default; see docs/adapt.md), "
                        "or the CKA top --top fraction (the paper's)")
    p.add_argument("--top", type=real(0, 1, low_open=True), default=0.1,
                   help="with --candidates top: fraction of pairs trained, by CKA rank")
    p.add_argument("--clip-stride", type=integer(1),
                   help="video presets: frames between the starts of training clips (default: the clip length)")
    p.add_argument("--reduced", action="store_true",
                   help="the preset's reduced configuration (few layers, narrow, small input; see nvp_export.zoo.reduced): "
                        "for tests and machines with little memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cka-out", help="folder for the CKA matrix (JSON) and heatmap (PNG)")
    p.add_argument("--store", help="model store for the task's graphs (default: $NVP_STORE, else ~/.cache/nvp)")
    p.add_argument("--joint", action="store_true",
                   help="then optimise the INR and the adapter together (rewrites the video payload; PSNR reported)")
    p.add_argument("--joint-epochs", type=integer(1), default=10, help="epochs of joint optimisation (paper: 100)")
    p.add_argument("--lambda-recon", type=real(0, 1e3), default=1.0,
                   help="joint loss weight of the reconstruction term")
    p.add_argument("--lambda-task", type=real(0, 1e3), default=0.5, help="joint loss weight of the task term")
    p.add_argument("--lambda-feat", type=real(0, 1e3), default=0.2,
                   help="joint loss weight of the feature-transfer term")
    p.add_argument("--compare-pixels", action=argparse.BooleanOptionalAction, default=None,
                   help="also score full INR decode and H.264 at equal bpp (default: on when --source is given)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    passive_openmp_waits()  # torch is imported lazily, in run()
    return run_reporting_errors("nvp-export", run, build_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
