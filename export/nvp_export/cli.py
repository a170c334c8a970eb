"""The export side's command lines: `nvp-export`, and the `nvp encode` / `nvp bench` subcommands.

`nvp-export` routes an encoded video into a backbone and stores the route in the .nvp:

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

`nvp encode` and `nvp bench` need torch; this module adds them to the runtime's `nvp` through
the entry-point group ``nvp.commands`` (pyproject.toml: ``add_encode``, ``add_bench``), so the
runtime never imports the export side. Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from nvp_rt import fingerprint
from nvp_rt.arguments import Parser, integer, real
from nvp_rt.atomic import check_writable, exclusive_lock
from nvp_rt.command import (
    UserError,
    add_overwrite_option,
    add_store_option,
    parse_frame_range,
    parse_size,
    passive_openmp_waits,
    run_reporting_errors,
)
from nvp_rt.nvpfile import NvpFile, Route, update_routes
from nvp_rt.outputs import check_output
from nvp_rt.schema import MODULATIONS
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video

# Task kinds and short model names users may type instead of a preset.
TASK_KINDS = {
    "cls": "efficientnet_lite0",
    "classification": "efficientnet_lite0",
    "det": "detr_r50",
    "detection": "detr_r50",
    "act": "slowfast_r50",
    "action": "slowfast_r50",
    "seg": "segformer_b0",
    "segmentation": "segformer_b0",
    "cap": "blip",
    "captioning": "blip",
    "slowfast": "slowfast_r50",
    "i3d": "i3d_r50",
    "detr": "detr_r50",
    "clip": "clip_rn50",
    "vit": "vit_b_16",
    "segformer": "segformer_b0",
    "efficientnet": "efficientnet_lite0",
    "resnet": "resnet50",
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
        raise UserError(
            f"--source {source} gives frames {frames.shape[:3]} but the .nvp encodes "
            f"{(inr.num_frames, video.get('height'), video.get('width'))}: not the video it was encoded from"
        )
    difference = fingerprint.difference(video.get("fingerprint") or {}, frames)
    if difference is None:
        print(
            "the .nvp holds no source fingerprint (encoded by an older nvp): --source is not verified", file=sys.stderr
        )
    elif difference > fingerprint.TOLERANCE:
        raise UserError(
            f"--source {source} is not the video {Path(nvp.path).name} was encoded from (its frames differ "
            f"from the stored fingerprint by {difference:.1f} levels on average)"
        )
    return frames


def run(args) -> None:
    import torch

    from .inr import load_video
    from .onnx_export import export_route_graphs
    from .route.adapt import AdaptConfig, AdaptResult, adapt, to_file_route
    from .route.task_adapt import TaskAdaptResult, adapt_task, task_file_route
    from .zoo import PRESETS, load_backbone

    preset = TASK_KINDS.get(args.task, args.task)
    if preset not in PRESETS:
        raise UserError(
            f"unknown task {args.task!r}; presets: {', '.join(sorted(PRESETS))}; task kinds: {', '.join(TASK_KINDS)}"
        )
    nvp = NvpFile.open(args.file)  # validated before anything heavy runs
    check_writable(args.file)  # the route is written into it: its folder must take the rewritten file
    if nvp.base is not None:
        return run_shared(args, nvp, preset)
    if args.cka_out:
        Path(args.cka_out).mkdir(parents=True, exist_ok=True)
        check_writable(Path(args.cka_out) / f"cka_{preset}.json")
    joint_config = joint_config_of(args) if args.joint else None
    if joint_config and len(nvp.segments) > 1:
        raise UserError(f"--joint optimises a one-segment video; {args.file} has {len(nvp.segments)} segments")
    inr = load_video(args.file)
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
    config = AdaptConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch,
        top_fraction=args.top,
        candidates=args.candidates,
        seed=args.seed,
        progress=not args.quiet,
    )
    task = args.name or args.task
    classifier = backbone.task == "classification" and clip == 1
    if joint_config and not classifier:
        raise UserError(f"--joint trains classification routes so far; {preset} is a {backbone.task} preset")
    result: AdaptResult | TaskAdaptResult
    if classifier:
        result = adapt(inr, frames, backbone, config)
        result.route = replace(result.route, task=task)
        route = to_file_route(result.route)
    else:
        result = adapt_task(inr, frames, backbone, config, clip_stride=args.clip_stride, clip_scorer=clip_scorer)
        route = task_file_route(task, backbone.task, result)
    if args.cka_out:  # the folder was made, and found writable, before the training
        out = Path(args.cka_out)
        result.cka.save_json(out / f"cka_{preset}.json")
        result.cka.save_heatmap(out / f"cka_{preset}.png", top_fraction=args.top)
    joint = None
    if joint_config:
        joint = run_joint(joint_config, inr, frames, backbone, result)
        route = to_file_route(result.route)
    # The route's graphs (INR stages, backbone suffix from the point, full backbone) into the model store.
    route = replace(
        route,
        backbone=export_route_graphs(
            inr,
            backbone,
            route.injection_point,
            ModelStore(args.store),
            stacked=route.metadata.get("hidden") is not None,
        ),
    )
    kept: list[Route] = []

    def add_route(routes: list[Route]) -> list[Route]:
        kept[:] = [r for r in routes if r.task != route.task]
        return kept + [route]

    if joint is None:  # the routes as they are now: another export may have added one meanwhile
        size = update_routes(args.file, add_route, payload_checksum=nvp.payload_checksum)
    else:
        from .route.joint import save_joint

        joint_result, used_config = joint
        with exclusive_lock(args.file):
            routes = add_route(NvpFile.open(args.file).routes())
            size = save_joint(args.file, nvp.manifest, joint_result, used_config, routes)
        if kept:
            print(
                f"warning: route(s) {', '.join(r.task for r in kept)} were trained on the INR before joint "
                f"optimisation changed it; export them again to retrain their adapters",
                file=sys.stderr,
            )
    print(result.summary())
    if classifier and (args.compare_pixels if args.compare_pixels is not None else args.source is not None):
        print_pixel_fidelity(joint[0].inr if joint else inr, frames, backbone, nvp, result.route.metrics)
    print(f"{args.file}: {len(kept) + 1} route(s), {size} bytes")


def run_shared(args, nvp: NvpFile, preset: str) -> None:
    """A file against a base: its route is the base's shared route for the backbone (trained once on the
    corpus and kept in the model store; trained here when the store has none), or with --finetune N that
    route distilled N epochs on this file's own clip (trained on the clip it answers, and marked so)."""
    from nvp_rt.bases import known_bases

    from .base.video import BaseVideo
    from .base.weights import load_base

    if args.joint or args.cka_out:
        raise UserError("--joint and --cka-out are for files of their own INRs, not files against a base")
    if args.finetune and args.source is None:
        raise UserError("--finetune trains on this clip's own answers: give its original video with --source")
    base, digest = load_base(known_bases()[nvp.base["sha256"]])
    finetune = None
    if args.finetune:
        finetune = (original_frames(nvp, args.source, BaseVideo.open(args.file, (base, digest))), args.finetune)
    add_shared_route(args.file, base, digest, preset, args, args.name or args.task, finetune, nvp.payload_checksum)


def add_shared_route(path, base, digest: str, preset: str, args, task: str, finetune=None, checksum=None) -> None:
    """``route.shared.add_to_file`` for a command line: the preset loaded, what happened printed."""
    import torch

    from .route.shared import add_to_file
    from .zoo import load_backbone

    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the weights note is printed below instead
        weights, reduced = getattr(args, "weights", None), getattr(args, "reduced", False)  # nvp-export's options
        backbone = load_backbone(preset, weights=weights, reduced=reduced)
    if backbone.task != "classification" or backbone.preprocess.num_frames != 1:
        raise UserError(f"shared routes are built for image classifiers so far; {preset} is a {backbone.task} preset")
    print(backbone.weights_note, file=sys.stderr)
    route, trained, size = add_to_file(path, base, digest, backbone, ModelStore(args.store), task, finetune, checksum)
    if trained:
        print(f"trained the shared route of {preset} for base {digest[:16]} on the corpus", file=sys.stderr)
    m = route.metrics
    print(
        f"{task}/{backbone.name}: shared route {route.inr_tap} -> {route.injection_point}, trained on "
        f"{m['trained_on']} (held-out corpus clips: top-1 {m['held_out_top1_agreement']:.1%}, top-5 "
        f"{m['held_out_top5_overlap']:.1%})"
    )
    print(f"{path}: {size} bytes")


def clip_scorer_of(args, backbone):
    """The CLIP model that scores a captioning preset's captions, where the user has one."""
    if not args.clip_weights:
        return None
    if backbone.task != "captioning":
        raise UserError(f"--clip-weights scores captions; {backbone.name} is a {backbone.task} preset")
    if getattr(backbone, "tokenizer", None) is None:
        raise UserError(
            "--clip-weights needs text captions: pass --weights DIR of a BLIP checkpoint with its tokenizer"
        )
    from .fidelity.clip_score import ClipScorer

    return ClipScorer.load(args.clip_weights)


def joint_config_of(args):
    from .route.joint import JointConfig

    return JointConfig(
        epochs=args.joint_epochs,
        recon=args.lambda_recon,
        task=args.lambda_task,
        feat=args.lambda_feat,
        seed=args.seed,
        progress=not args.quiet,
    )


def run_joint(config, inr, frames, backbone, result):
    """Joint optimisation of the chosen route; updates ``result.route``, returns (JointResult, JointConfig)."""
    from .route.joint import joint_route

    result.route, joint = joint_route(inr, frames, backbone, result.route, config)
    print(joint.summary())
    return joint, config


def print_pixel_fidelity(inr, frames, backbone, nvp, metrics) -> None:
    """The NVP path's fidelity next to the pixel paths' (full INR decode; H.264 at the INR payload's bpp)."""
    from .fidelity.agreement import Fidelity
    from .fidelity.pixel_paths import compare_pixel_paths, format_table, payload_bpp

    paths = compare_pixel_paths(inr, frames, backbone, payload_bpp(nvp))
    nvp_fid = Fidelity(len(frames), metrics["top1_agreement"], metrics["top5_overlap"], metrics["cosine"])
    rows = [("NVP path", nvp_fid, f"{metrics.get('compute_saved', 0):.1%} of the MACs saved")]
    rows += [(p.name, p.fidelity, f"{p.detail}, {p.psnr:.2f} dB") for p in paths]
    print(f"fidelity vs {backbone.name} on the original frames ({len(frames)} frames):")
    print(format_table(rows))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nvp-export", description=__doc__.splitlines()[0])
    p.add_argument("file", help="the .nvp file to add the route to (rewritten in place, atomically)")
    p.add_argument(
        "--task",
        required=True,
        help="a backbone preset (e.g. efficientnet_lite0, detr_r50, slowfast_r50, i3d_r50, segformer_b0, "
        "blip), a short name (slowfast, i3d, detr, clip, vit, segformer) or a task kind: "
        "cls, det, act, seg, cap",
    )
    p.add_argument("--name", help="the task name queries use (default: the --task value)")
    p.add_argument("--source", help="the original video, for the teacher features (default: the INR's decode)")
    p.add_argument("--weights", help="a checkpoint for the backbone (default: weights found locally)")
    p.add_argument(
        "--clip-weights",
        metavar="DIR",
        help="captioning: a local CLIP save_pretrained directory; captions are then CLIP-scored too",
    )
    p.add_argument("--epochs", type=integer(1), default=30)
    p.add_argument("--lr", type=real(0, 10, low_open=True), default=1e-4)
    p.add_argument("--batch", type=integer(1), default=4)
    p.add_argument(
        "--candidates",
        choices=["top", "per_point"],
        default="per_point",
        help="pairs trained: each injection point's best-CKA tap (default; see docs/adapt.md), "
        "or the CKA top --top fraction (the paper's)",
    )
    p.add_argument(
        "--top",
        type=real(0, 1, low_open=True),
        default=0.1,
        help="with --candidates top: fraction of pairs trained, by CKA rank",
    )
    p.add_argument(
        "--clip-stride",
        type=integer(1),
        help="video presets: frames between the starts of training clips (default: the clip length)",
    )
    p.add_argument(
        "--reduced",
        action="store_true",
        help="the preset's reduced configuration (few layers, narrow, small input; see nvp_export.zoo.reduced): "
        "for tests and machines with little memory",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cka-out", help="folder for the CKA matrix (JSON) and heatmap (PNG)")
    p.add_argument("--store", help="model store for the task's graphs (default: $NVP_STORE, else ~/.cache/nvp)")
    p.add_argument(
        "--joint",
        action="store_true",
        help="then optimise the INR and the adapter together (rewrites the video payload; PSNR reported)",
    )
    p.add_argument("--joint-epochs", type=integer(1), default=10, help="epochs of joint optimisation (paper: 100)")
    p.add_argument(
        "--lambda-recon", type=real(0, 1e3), default=1.0, help="joint loss weight of the reconstruction term"
    )
    p.add_argument("--lambda-task", type=real(0, 1e3), default=0.5, help="joint loss weight of the task term")
    p.add_argument(
        "--lambda-feat", type=real(0, 1e3), default=0.2, help="joint loss weight of the feature-transfer term"
    )
    p.add_argument(
        "--compare-pixels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also score full INR decode and H.264 at equal bpp (default: on when --source is given)",
    )
    p.add_argument(
        "--finetune",
        type=integer(1),
        metavar="EPOCHS",
        help="files against a base: distil the shared route on this clip's answers (needs --source)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    passive_openmp_waits()  # torch is imported lazily, in run()
    return run_reporting_errors("nvp-export", run, build_parser().parse_args(argv))


def _needs_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise UserError("this command needs the export side (torch); install it with: pip install 'nvp[export]'")


def cmd_encode(args) -> None:
    _needs_torch()
    if args.base:
        cmd_encode_base(args)
        return
    given = [flag for key, flag in BASE_ONLY.items() if getattr(args, key) is not None]
    if given:
        raise UserError(f"{', '.join(given)}: an option of --base (encoding against the pretrained base)")
    from nvp_rt.library import library_files

    from .encode import EncodeConfig, encode_video
    from .encode_many import EncodeJob, TaskResources, encode_many, plan_jobs, plan_video
    from .inr.fit import FitConfig
    from .parts import Parts

    start, stop, step = args.frames
    selection = FrameSelection(start, stop, step, crop=args.crop, size=args.size)
    fit = FitConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch=args.batch,
        lr_scaling=args.lr_scaling,
        bf16=args.bf16,
        compile=args.compile,
        target_psnr=args.target_psnr,
        time_limit_s=args.time_limit or None,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
    )
    cfg = EncodeConfig(
        family=args.family,
        params=args.params,
        bpp=args.bpp,
        fit=fit,
        tasks=task_presets(args.tasks),
        segment_frames=args.segment_frames,
        cuts=args.cuts,
        warm_start=args.warm_start,
    )
    resources = TaskResources(cpus=args.cpus_per_segment, gpus=args.gpus_per_segment, max_retries=args.retries)
    sources = library_files(args.input)
    if len(sources) == 1:  # into the file -o names
        job = EncodeJob(sources[0], args.output)
        check_output(job.output, [job.source], args.overwrite)
        cfg.fit.resolved_device()
        plan = plan_video(job, selection, cfg)
        if len(plan.segments) == 1 and args.address is None and not Parts(job.output).folder.exists():
            # One segment: fitted in this process, with its progress bar, without starting Ray.
            report = encode_video(job.source, job.output, selection, cfg, ModelStore(args.store), args.overwrite)
            print(_report_line(report))
            return
        jobs, planned = [job], {job: plan}
    else:
        output = Path(args.output)
        if output.exists() and not output.is_dir():
            raise UserError(f"output {output} is a file; several inputs need a folder (-o OUTDIR/)")
        output.mkdir(exist_ok=True)
        jobs, planned = plan_jobs(sources, output, overwrite=args.overwrite), {}
    outcomes = encode_many(
        jobs, selection, cfg, args.store, resources, args.address, not args.quiet, args.overwrite, planned=planned
    )
    failed = [o for o in outcomes if o.error is not None]
    if len(jobs) == 1 and failed:
        raise UserError(str(failed[0].error))
    for o in outcomes:
        print(_report_line(o.report) if o.report is not None else f"{o.job.source}: failed ({o.error})")
    if failed:
        source, error = failed[0].job.source, str(failed[0].error)
        first = error if source in error else f"{source}: {error}"
        raise UserError(f"{len(failed)} of {len(jobs)} inputs failed (first: {first})")


# `nvp encode` options that shape a from-scratch INR, which --base does not fit.
FROM_SCRATCH_ONLY = {
    "params": "--params",
    "segment_frames": "--segment-frames",
    "address": "--address",
    "target_psnr": "--target-psnr",
    "lr": "--lr",
}
BASE_ONLY = {"modulation": "--modulation", "fit_seconds": "--fit-seconds"}


def cmd_encode_base(args) -> None:
    """`nvp encode --base`: one video against the shipped base (docs/base.md), its graphs into the store."""
    from dataclasses import asdict

    from .base import load_base
    from .base.encode import BaseEncodeConfig, encode, write
    from .onnx_export import export_base_graphs

    given = [flag for key, flag in FROM_SCRATCH_ONLY.items() if getattr(args, key) is not None]
    if given:
        raise UserError(f"{', '.join(given)}: an option of the from-scratch fit, not of --base")
    if len(args.input) != 1:
        raise UserError(f"--base encodes one video at a time; got {len(args.input)} inputs")
    tasks = task_presets(args.tasks)  # unknown names fail before the encode
    source = args.input[0]
    output = check_output(args.output, [source], args.overwrite)  # before the video is read and fitted
    start, stop, step = args.frames
    selection = FrameSelection(start, stop, step, crop=args.crop, size=args.size)
    frames, fps = read_video(source, selection)
    base, digest = load_base()
    n, h, w, _ = frames.shape
    side = base.config.factor
    if h % side or w % side:
        raise UserError(
            f"frames of {w}x{h} do not suit the base: both sides must be multiples of {side} "
            f"(resize them, e.g. --size {max(side, w // side * side)}x{max(side, h // side * side)})"
        )
    chosen = {"bpp": args.bpp, "modulation": args.modulation, "fit_seconds": args.fit_seconds}
    cfg = BaseEncodeConfig(
        **{k: v for k, v in chosen.items() if v is not None},
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(
            f"{source}: {n} frames {w}x{h} against base {digest[:16]}: {cfg.modulation} modulation and latents "
            f"fitted for {cfg.fit_seconds:g} s, coded to {cfg.bpp:g} bpp",
            file=sys.stderr,
        )
    video = {"fps": fps, "source": Path(source).name, "selection": asdict(selection)}
    video["fingerprint"] = fingerprint.fingerprint(frames)  # what `nvp-export --source` checks a source against
    result = encode(frames, base, digest, cfg, video=video)
    size = write(output, result, overwrite=args.overwrite)
    store = ModelStore(args.store)
    key = export_base_graphs(base.decoder, digest, store)
    if not args.quiet:
        print(f"decoder graphs of base {key} in {store.root}", file=sys.stderr)
    print(
        f"{output}: {n} frames {w}x{h}, {size} bytes, {result.bpp:.4f} bpp, PSNR {result.psnr:.2f} dB after "
        f"quantisation ({result.psnr_fitted:.2f} before, {result.psnr_encoder_only:.2f} from the base's encoder "
        f"alone), {result.steps} fit steps in {result.fit_seconds:.0f} s, encoded in {result.seconds:.0f} s"
    )
    # --for with a base: each task's shared route, named by the file (no training on this clip, no adapter
    # bytes in the file): the pixels keep the whole budget but the route's manifest entry.
    for task, preset in tasks.items():
        add_shared_route(output, base, digest, preset, args, task)


def cmd_base_graphs(args) -> None:
    """`nvp base-graphs`: the decoder graphs of every base this machine has, into the model store."""
    _needs_torch()
    from nvp_rt.bases import known_bases

    from .base import load_base
    from .onnx_export import export_base_graphs

    store = ModelStore(args.store)
    found = known_bases()
    if not found:
        raise UserError("no base weights found (nvp_export/base/weights, or the folders of NVP_BASES)")
    for path in found.values():
        base, digest = load_base(path)
        key = export_base_graphs(base.decoder, digest, store)
        print(f"{store.root}: decoder graphs of base {key} ({path})")


def add_base_graphs(sub) -> None:
    """`nvp base-graphs`, for the entry-point group ``nvp.commands``."""
    g = sub.add_parser(
        "base-graphs",
        help="write the decoder graphs of the pretrained bases into the model store (files against a base need them)",
    )
    add_store_option(g)
    g.set_defaults(run=cmd_base_graphs)


def _report_line(report) -> str:
    return (
        f"{report.path}: {report.frames} frames {report.width}x{report.height}, {report.bytes} bytes, "
        f"{report.bpp:.4f} bpp, PSNR {report.psnr_quantised:.2f} dB after quantisation "
        f"({report.psnr_float:.2f} before), {report.epochs} epochs in {report.fit_seconds:.0f} s"
        + (
            f"; {report.psnr_reconstruction_only:.2f} dB when the task terms joined (reconstruction alone)"
            if report.psnr_reconstruction_only is not None
            else ""
        )
        + (f" over {report.segments} segments" if report.segments > 1 else "")
    ) + "".join(
        f"\n  route {r['task']} ({r['tap']} -> {r['injection_point']}): top-1 agreement with the backbone on the "
        f"source frames {r['top1_agreement']:.1%} (full decode to pixels {r['pixel_top1_agreement']:.1%}, "
        f"constant answer {r['constant_answer_agreement']:.1%})"
        for r in report.routes
    )


def task_presets(names: str | None) -> dict[str, str]:
    """``--for`` (comma-separated task kinds or presets) -> route name -> preset."""
    from .zoo import PRESETS

    tasks = {}
    for name in filter(None, (n.strip() for n in (names or "").split(","))):
        tasks[name] = TASK_KINDS.get(name, name)
        if tasks[name] not in PRESETS:
            raise UserError(f"--for: unknown task {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return tasks


def add_encode(sub) -> None:
    """`nvp encode`, for the entry-point group ``nvp.commands``."""
    e = sub.add_parser("encode", help="fit a video into an INR and write a .nvp file")
    e.add_argument("input", nargs="+", help="videos FFmpeg reads, or quoted globs")
    e.add_argument("-o", "--output", required=True, help="the .nvp file to write; several inputs: a folder")
    e.add_argument("--family", choices=["hnerv", "nerv"], default="hnerv")
    e.add_argument(
        "--base",
        action="store_true",
        help="encode against the shipped pretrained base instead of fitting an INR from scratch: an encoder pass "
        "and a short fit of the latents and a small modulation (docs/base.md); frame sides multiples of 10",
    )
    # --base's defaults are nvp_export.base.encode.BaseEncodeConfig's (not imported here: it needs torch)
    e.add_argument(
        "--modulation",
        choices=MODULATIONS,
        help="with --base: the video's own change to the base's decoder (default: bias; docs/base.md)",
    )
    e.add_argument(
        "--fit-seconds",
        type=real(0),
        metavar="SECONDS",
        help="with --base: time fitting the latents and the modulation (default: 40)",
    )
    e.add_argument(
        "--for",
        dest="tasks",
        metavar="TASKS",
        help="fit the INR for these image classifiers too and write their routes in the same pass "
        "(comma-separated presets or task kinds, e.g. efficientnet_lite0 or cls; see docs/encode.md); with "
        "--base: name each one's shared route in the file (no training on the clip)",
    )
    budget = e.add_mutually_exclusive_group()
    budget.add_argument("--params", type=integer(1), help="size budget: stored values (weights + embeddings)")
    budget.add_argument(
        "--bpp",
        type=real(0, 64, low_open=True),
        help="size budget in bits per pixel (default 0.5; with --base 0.25)",
    )
    e.add_argument("--frames", type=parse_frame_range, default=(0, None, 1), metavar="START:STOP:STEP")
    e.add_argument("--crop", type=parse_size, metavar="WxH", help="centre crop before resizing")
    e.add_argument("--size", type=parse_size, metavar="WxH", help="resize frames to this size")
    e.add_argument("--epochs", type=integer(1), default=300)
    e.add_argument("--target-psnr", type=real(0, 200), help="stop when the training PSNR reaches this (dB)")
    e.add_argument(
        "--time-limit",
        type=real(0),
        default=540.0,
        metavar="SECONDS",
        help="training time budget; the rate schedule anneals within it (default 540; 0: epochs only)",
    )
    e.add_argument("--lr", type=real(0, 10, low_open=True), help="learning rate (default: the family's reference rate)")
    e.add_argument("--batch", type=integer(1), default=1, help="frames per step")
    e.add_argument(
        "--lr-scaling",
        choices=["sqrt", "linear", "none"],
        default="sqrt",
        help="how the default rate follows --batch (default sqrt: Adam's rule; docs/encode.md)",
    )
    e.add_argument("--bf16", action="store_true", help="decode in bfloat16 autocast while fitting (for GPUs)")
    e.add_argument("--compile", action="store_true", help="torch.compile the fit's decoder (CUDA graphs on CUDA)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    e.add_argument("--threads", type=integer(1, 1024), help="CPU threads for training (default: all cores)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.add_argument(
        "--segment-frames",
        type=integer(1),
        metavar="N",
        help="encode the video as segments of at most N frames, each its own INR, fitted as Ray tasks "
        "(default: the longest within the memory bound, see docs/encode.md)",
    )
    e.add_argument(
        "--cuts",
        choices=["scene", "none"],
        default="scene",
        help="scene (default): segments start at shot cuts (FFmpeg's scene score), never longer than N; "
        "none: segments of equal length",
    )
    e.add_argument(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --cuts scene, a shot's later segments start from its first segment's decoder (default: on)",
    )
    e.add_argument("--address", help="join this Ray cluster (HOST:PORT, auto); default: a local Ray, embedded")
    e.add_argument(
        "--cpus-per-segment", type=real(0, 1024, low_open=True), default=1.0, help="CPUs (training threads) per task"
    )
    e.add_argument("--gpus-per-segment", type=real(0, 64), default=0.0, help="GPUs per segment's task")
    e.add_argument("--retries", type=integer(0, 100), default=3, help="reruns of a task whose worker died")
    add_overwrite_option(e)
    add_store_option(e)
    e.set_defaults(run=cmd_encode)


def cmd_bench(args) -> None:
    _needs_torch()
    from .benchmark.run import BenchConfig, run_bench

    out = Path(args.out or f"bench/results/{'quick' if args.quick else 'table1'}")
    overrides = {"out": out, "threads": args.threads, "store": Path(args.store) if args.store else None}
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    config = (BenchConfig.quick if args.quick else BenchConfig.full)(**overrides)
    run_bench(config)
    print((out / "bench.md").read_text())
    print(f"results: {out}/bench.json, bench.md, latency.png, rate_accuracy.png")


def add_bench(sub) -> None:
    """`nvp bench`, for the entry-point group ``nvp.commands``."""
    b = sub.add_parser("bench", help="H.264 (CPU, NVDEC), full INR decoding and NVP side by side: Table 1 and 2")
    b.add_argument("--quick", action="store_true", help="tiny clips, few epochs, classification only (CI; < 2 min)")
    b.add_argument("--out", help="results folder (default bench/results/table1, or bench/results/quick)")
    b.add_argument("--threads", type=integer(1, 1024), default=2, help="CPU threads for every pipeline (default 2)")
    b.add_argument("--repeats", type=integer(1), help="warm queries per workload and pipeline")
    b.add_argument("--store", help="model store for the graphs (default: OUT/store)")
    b.set_defaults(run=cmd_bench)


if __name__ == "__main__":
    sys.exit(main())
