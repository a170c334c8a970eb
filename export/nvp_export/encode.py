"""Video file -> fitted, quantised, entropy-coded INR in a .nvp file."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvp_rt.fingerprint import fingerprint
from nvp_rt.outputs import check_output
from nvp_rt.quality import psnr
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video

from .inr import config_for_budget, from_config, quantise_inr, save_nvp
from .inr.fit import PLATEAU_PATIENCE_STEPS, PLATEAU_VARIANCE_RATIO, FitConfig, FitError, fit, temporal_variance_ratio
from .onnx_export import backbone_key, export_inr_graphs, export_route_graphs
from .route.adapt import to_file_route
from .route.task_aware import TaskAwareConfig, TaskAwareObjective, untrained_routes
from .zoo import load_backbone

DEFAULT_BPP = 0.5  # budget of the whole file (quantised bits before entropy coding + container + routes)
# Manifest entries written after the fit: measured 3.7 KB on a task-aware encode (video, metrics and
# settings 3.3 KB, the route's figures 0.5 KB).
INFO_BYTES = 4096


@dataclass
class EncodeConfig:
    family: str = "hnerv"
    params: int | None = None  # budget in stored values (weights + embeddings); overrides bpp
    bpp: float | None = None  # budget in bits per pixel; default DEFAULT_BPP
    fit: FitConfig = field(default_factory=FitConfig)
    # Task-aware encoding: route name (what queries ask for) -> backbone preset, fitted with the INR.
    tasks: dict[str, str] = field(default_factory=dict)
    task_aware: TaskAwareConfig = field(default_factory=TaskAwareConfig)
    # Segments (nvp_export.segments): at most this many frames each (None: the memory bound's default),
    # starting at shot cuts with cuts="scene" (measured on bikes: better PSNR at fewer bits than fixed segments).
    segment_frames: int | None = None
    cuts: str = "scene"
    # With cuts="scene", each segment after a shot's first starts from that one's stored decoder (docs/encode.md).
    warm_start: bool = True
    graphs: bool = True  # export the decoder's and routes' ONNX graphs into the store (what the runtime runs)


@dataclass
class EncodeReport:
    path: str
    bytes: int
    bpp: float
    psnr_float: float
    psnr_quantised: float
    epochs: int
    recoveries: int
    fit_seconds: float
    total_seconds: float
    frames: int
    height: int
    width: int
    routes: list[dict] = field(default_factory=list)  # task-aware routes: name, pair, agreement figures
    psnr_reconstruction_only: float | None = None  # task-aware: when the task terms joined (fit.FitResult)
    segments: int = 1


def budget_of(cfg: EncodeConfig) -> dict[str, Any]:
    return {"params": cfg.params} if cfg.params is not None else {"bpp": cfg.bpp or DEFAULT_BPP}


def encode_video(
    source: str | os.PathLike,
    output: str | os.PathLike,
    selection: FrameSelection = FrameSelection(),
    cfg: EncodeConfig | None = None,
    store: ModelStore | None = None,
    overwrite: bool = False,
) -> EncodeReport:
    """Fit, quantise and write ``output`` (an existing one only with ``overwrite``, never ``source``);
    the architecture's decoder graphs go into ``store`` (default: the user's model store) so the
    runtime can decode and route the file at once."""
    started = time.perf_counter()
    cfg = EncodeConfig() if cfg is None else cfg
    output = check_output(output, [source], overwrite)  # before minutes of fitting
    cfg.fit.resolved_device()
    frames, fps = read_video(source, selection)
    n, h, w, _ = frames.shape
    backbones = [load_backbone(p) for p in cfg.tasks.values()]
    routes_for = (lambda inr: untrained_routes(inr, backbones, cfg.task_aware)) if backbones else None
    inr_config = config_for_budget(cfg.family, h, w, n, **budget_of(cfg), routes=routes_for, reserve_bytes=INFO_BYTES)
    return encode_frames(
        frames, fps, inr_config, output, cfg, store, started, source, selection, backbones, overwrite=overwrite
    )


def encode_frames(
    frames: np.ndarray,
    fps: float,
    inr_config,
    output: str | os.PathLike,
    cfg: EncodeConfig,
    store: ModelStore | None,
    started: float,
    source: str | os.PathLike,
    selection: FrameSelection,
    backbones: Sequence = (),
    segment: dict | None = None,
    warm_start: dict[str, torch.Tensor] | None = None,
    overwrite: bool = True,
) -> EncodeReport:
    """Fit an INR of ``inr_config`` to ``frames`` (what ``selection`` took from ``source``), with routes into
    ``backbones`` (the presets of ``cfg.tasks``) when given, and write it to ``output``; ``segment``: which segment
    of a longer encode this is (the manifest's ``encoding.segment``). ``warm_start``: weights to start from
    (another segment's decoder), instead of fresh ones. Without ``overwrite``, ``output`` is created exclusively
    (OutputExistsError when another process wrote it during the fit)."""
    n, h, w, _ = frames.shape
    target = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    torch.manual_seed(cfg.fit.seed)  # the initial weights too: the same command encodes the same file
    inr = from_config(inr_config)
    if warm_start is not None:
        inr.load_state_dict(warm_start, strict=False)
    objective = TaskAwareObjective(inr, target, list(backbones), cfg.task_aware) if backbones else None
    result = fit(inr, target, cfg.fit, objective)
    arrays, meta, quantised = quantise_inr(result.inr)
    psnr_float = psnr(frames, result.inr.render(range(n)))
    rendered = quantised.render(range(n))
    psnr_quantised = psnr(frames, rendered)
    if not (math.isfinite(psnr_float) and math.isfinite(psnr_quantised)):
        raise FitError("the fitted model does not decode to finite pixels; nothing was written")
    variation = temporal_variance_ratio(torch.from_numpy(rendered).permute(0, 3, 1, 2).float().div_(255), target)
    if variation < PLATEAU_VARIANCE_RATIO and result.steps >= PLATEAU_PATIENCE_STEPS:
        raise FitError(
            f"the fit renders about the mean frame for every frame ({psnr_quantised:.2f} dB, frame-to-frame "
            f"variation {variation:.1%} of the source's) even after fresh starts at lower rates; nothing was "
            f"written: try --lr 1e-3, a longer --time-limit or a larger budget"
        )
    info = {
        "video": {
            "frames": n,
            "height": h,
            "width": w,
            "fps": fps,
            "source": Path(source).name,
            "selection": asdict(selection),
            "fingerprint": fingerprint(frames),
        },
        "metrics": {
            "psnr_float_db": round(psnr_float, 4),
            "psnr_quantised_db": round(psnr_quantised, 4),
            "temporal_variance_ratio": round(variation, 4),
            **(
                {"psnr_reconstruction_only_db": round(result.psnr_reconstruction_only, 4)}
                if result.psnr_reconstruction_only is not None
                else {}
            ),
            "psnr_method": "mean per-frame PSNR of the 8-bit rendering against the source frames",
        },
        "encoding": {
            "epochs": result.epochs,
            "recoveries": result.recoveries,
            "fit_seconds": round(result.seconds, 2),
            "budget": budget_of(cfg),
            "fit": asdict(cfg.fit),
            **({"segment": segment} if segment is not None else {}),
        },
    }
    store = store or ModelStore()
    routes = []
    if objective is not None:
        rendered_float = torch.from_numpy(rendered).permute(0, 3, 1, 2).float().div_(255)
        for name, route, task in zip(cfg.tasks, objective.finish(quantised, rendered_float), objective.routes):
            file_route = to_file_route(replace(route, task=name))
            key = (
                export_route_graphs(quantised, task.backbone, route.injection_point, store)
                if cfg.graphs
                else backbone_key(task.backbone)
            )
            routes.append(replace(file_route, backbone=key))
        info["encoding"]["task_aware"] = {**asdict(cfg.task_aware), "tasks": cfg.tasks}
    size = save_nvp(output, quantised, arrays, meta, info, routes=routes, overwrite=overwrite)
    if cfg.graphs:
        export_inr_graphs(quantised, store)
    return EncodeReport(
        str(output),
        size,
        8 * size / (n * h * w),
        psnr_float,
        psnr_quantised,
        result.epochs,
        result.recoveries,
        result.seconds,
        time.perf_counter() - started,
        n,
        h,
        w,
        [{"task": r.task, "tap": r.tap, "injection_point": r.injection_point, **r.metadata} for r in routes],
        result.psnr_reconstruction_only,
    )
