"""Video file -> fitted, quantised, entropy-coded INR in a .nvp file."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nvp_rt.fingerprint import fingerprint
from nvp_rt.outputs import check_output
from nvp_rt.quality import psnr
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video

from .fit import FitConfig, FitError, fit
from .inr import config_for_budget, from_config, quantise_inr, save_nvp
from .onnx_export import export_inr_graphs

DEFAULT_BPP = 0.5  # budget of quantised bits before entropy coding; the file lands below it


@dataclass
class EncodeConfig:
    family: str = "hnerv"
    params: int | None = None  # budget in stored values (weights + embeddings); overrides bpp
    bpp: float | None = None  # budget in bits per pixel; default DEFAULT_BPP
    fit: FitConfig = field(default_factory=FitConfig)


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


def encode_video(source: str | os.PathLike, output: str | os.PathLike, selection: FrameSelection = FrameSelection(),
                 cfg: EncodeConfig = EncodeConfig(), store: ModelStore | None = None,
                 overwrite: bool = False) -> EncodeReport:
    """Fit, quantise and write ``output`` (an existing one only with ``overwrite``, never ``source``);
    the architecture's decoder graphs go into ``store`` (default: the user's model store) so the
    runtime can decode and route the file at once."""
    started = time.perf_counter()
    output = check_output(output, [source], overwrite)  # before minutes of fitting
    cfg.fit.resolved_device()
    frames, fps = read_video(source, selection)
    n, h, w, _ = frames.shape
    budget = {"params": cfg.params} if cfg.params is not None else {"bpp": cfg.bpp or DEFAULT_BPP}
    inr_config = config_for_budget(cfg.family, h, w, n, **budget)
    target = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    result = fit(from_config(inr_config), target, cfg.fit)
    arrays, meta, quantised = quantise_inr(result.inr)
    psnr_float = psnr(frames, result.inr.render(range(n)))
    psnr_quantised = psnr(frames, quantised.render(range(n)))
    if not (math.isfinite(psnr_float) and math.isfinite(psnr_quantised)):
        raise FitError("the fitted model does not decode to finite pixels; nothing was written")
    info = {
        "video": {"frames": n, "height": h, "width": w, "fps": fps, "source": Path(source).name,
                  "selection": asdict(selection), "fingerprint": fingerprint(frames)},
        "metrics": {"psnr_float_db": round(psnr_float, 4), "psnr_quantised_db": round(psnr_quantised, 4),
                    "psnr_method": "mean per-frame PSNR of the 8-bit rendering against the source frames"},
        "encoding": {"epochs": result.epochs, "recoveries": result.recoveries,
                     "fit_seconds": round(result.seconds, 2), "budget": budget, "fit": asdict(cfg.fit)},
    }
    size = save_nvp(output, quantised, arrays, meta, info)
    export_inr_graphs(quantised, store or ModelStore())
    return EncodeReport(str(output), size, 8 * size / (n * h * w), psnr_float, psnr_quantised, result.epochs,
                        result.recoveries, result.seconds, time.perf_counter() - started, n, h, w)
