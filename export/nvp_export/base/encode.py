"""A clip encoded against the base: latents from one encoder pass, a short fit of them and of a modulation,
both coded, counted in real bytes, and decoded back.

1. The encoder gives every frame's latent in one pass.
2. A first quantisation step is chosen so the latents fit the budget left after the modulation's
   estimated bytes (``latents.step_for_bytes``).
3. For ``fit_seconds``, Adam trains the modulation and (``fit_latents``) the latents on the clip (MSE), the
   latents seen through uniform noise of that step (what quantising them will add); without
   ``fit_latents`` the modulation is fitted to the latents as coded. Learning rates warm up, then anneal
   over the time budget.
4. The modulation is quantised and range-coded (``nvp_rt.codec``, 8 bits a value); the latents get every
   byte left (the step bisected again on their real coded size) and are coded closed-loop.
5. The result is a whole .nvp file (format 2.1): the manifest names the base (``base``: its hash and
   configuration), the coded arrays are its one section (``nvp_rt.nvpfile.BASE_SECTION``, their
   description in the section's meta); the file's length is the bytes counted in bpp. ``write`` puts it
   on disk, ``read`` decodes a file back to frames with the base it names.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nvp_rt.atomic import atomic_write
from nvp_rt.base_decoder import PAYLOAD_FORMAT
from nvp_rt.codec import decode_tensors, encode_tensors
from nvp_rt.nvpfile import base_nvp_bytes

from ..inr.fit import clip_psnr, lr_factor
from .latents import code_latents, coded_bytes, step_for_bytes
from .model import Base
from .modulate import Modulation
from .pretrain import noisy, resolve_device, to_tensor
from .video import BaseVideo

MODULATION_BITS = 8
LATENT_HEADER_BYTES = 256  # the latents' arrays and description in the payload's header
METRICS_BYTES = 96  # the manifest's metrics, measured once the payload is fixed: room kept for them


@dataclass(frozen=True)
class BaseEncodeConfig:
    bpp: float = 0.25
    modulation: str = "bias"
    rank: int = 2  # LoRA rank (modulation "lora")
    fit_seconds: float = 40.0
    max_steps: int = 100_000
    batch: int = 8
    # Fit the latents too (seen through the quantiser's noise), or only the modulation, to the latents as
    # coded. bias + latents had the best BD-PSNR against x264 on Big Buck Bunny and bikes (-6.58 and -8.62
    # dB over 0.1-0.5 bpp; bias alone -7.00 and -8.97), though on bikes at 0.1 bpp the fitted latents cost
    # more bits (-0.3 dB against bias alone; docs/base.md).
    fit_latents: bool = True
    lr_latents: float = 1e-2
    # With fit_latents: this times the mean absolute change of the latents between consecutive frames, in
    # quantisation steps (what inter prediction codes), joins the loss, so the fit does not make them dearer.
    # 0.05 gained 1.5 dB on bikes and 0.2 on Big Buck Bunny at 0.1 bpp but lost 2.1 dB on bikes at 0.5
    # bpp (docs/base.md): it wants a weight that follows the rate, which is not built; off by default.
    temporal_weight: float = 0.0
    lr_modulation: float = 1e-3
    warmup: float = 0.05
    seed: int = 0
    device: str = "auto"
    threads: int | None = 1
    progress: bool = False  # a bar over the fit's time (stderr)


@dataclass
class BaseEncoding:
    data: bytes  # the .nvp file
    frames: np.ndarray  # the file decoded, uint8 (N, H, W, 3)
    bpp: float
    psnr: float  # mean per-frame PSNR of the payload's 8-bit decode against the frames
    psnr_encoder_only: float  # the latents straight from the encoder, unquantised, no fit
    psnr_fitted: float  # after the fit, before quantisation
    steps: int
    fit_seconds: float
    seconds: float  # the encode, frames to file bytes (the diagnostic decodes behind the PSNRs above left out)
    decode_seconds: float  # coded arrays to frames, all of them
    step: float  # the latents' quantisation step
    bytes_latents: int
    bytes_modulation: int


def _decode_all(modulation: Modulation, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([modulation.decode(chunk)["rgb"] for chunk in latents.split(8)])


def _modulation_bytes_estimate(modulation: Modulation, manifest: dict[str, Any]) -> int:
    """The modulation's bytes in the payload (values, ranges, descriptions) before it is fitted: its
    values coded as if each differed from the base by a little noise, which codes at about the full
    8 bits (fitted ones code a little below)."""
    if not modulation.count():
        return len(base_nvp_bytes(manifest, {}, {"format": PAYLOAD_FORMAT})) + METRICS_BYTES
    generator = torch.Generator().manual_seed(0)
    stand_in = {
        k: (v + 0.01 * torch.randn(v.shape, generator=generator)).numpy() for k, v in modulation.stored().items()
    }
    arrays, meta = encode_tensors(stand_in, dict.fromkeys(stand_in, MODULATION_BITS))
    arrays = {f"modulation/{k}": v for k, v in arrays.items()}
    return len(base_nvp_bytes(manifest, arrays, {"format": PAYLOAD_FORMAT, "modulation_meta": meta})) + METRICS_BYTES


def _fit(
    modulation: Modulation, latents: torch.Tensor, target: torch.Tensor, noise: float | None, cfg: BaseEncodeConfig
) -> int:
    """Adam on the modulation's values and, when ``latents`` is a Parameter, on the latents (seen through
    uniform noise of width ``noise``) for ``cfg.fit_seconds``; returns the steps taken."""
    groups = []
    if isinstance(latents, torch.nn.Parameter):
        groups.append({"params": [latents], "peak_lr": cfg.lr_latents})
    if modulation.count():
        groups.append({"params": list(modulation.values.values()), "peak_lr": cfg.lr_modulation})
    if not groups:
        return 0
    optimiser = torch.optim.Adam([{**g, "lr": g["peak_lr"]} for g in groups])
    generator = torch.Generator().manual_seed(cfg.seed)
    n, started, steps = len(target), time.perf_counter(), 0
    bar = tqdm(total=100, desc=f"fit {cfg.modulation} modulation", unit="%", disable=not cfg.progress, leave=False)
    while steps < cfg.max_steps:
        progress = max(steps / cfg.max_steps, (time.perf_counter() - started) / max(cfg.fit_seconds, 1e-9))
        bar.update(min(int(progress * 100), 100) - bar.n)
        if progress >= 1:
            break
        for group in optimiser.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(progress, cfg.warmup)
        if cfg.temporal_weight and noise is not None:  # consecutive frames, whose differences the coder pays
            first = int(torch.randint(0, max(n - cfg.batch, 0) + 1, (1,), generator=generator))
            idx = torch.arange(first, min(first + cfg.batch, n), device=target.device)
        else:
            idx = torch.randperm(n, generator=generator)[: cfg.batch].to(target.device)
        seen = latents[idx] if noise is None else noisy(latents[idx], torch.full((len(idx),), noise, device=idx.device))
        loss = F.mse_loss(modulation.decode(seen)["rgb"], target[idx])
        if cfg.temporal_weight and noise is not None and len(idx) > 1:
            loss = loss + cfg.temporal_weight * (latents[idx[1:]] - latents[idx[:-1]]).abs().mean() / noise
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        steps += 1
    bar.close()
    return steps


def encode(
    frames: np.ndarray,
    base: Base,
    digest: str,
    cfg: BaseEncodeConfig = BaseEncodeConfig(),
    video: dict[str, Any] | None = None,
) -> BaseEncoding:
    """Encode uint8 frames (N, H, W, 3) against ``base`` (whose hash is ``digest``) into a .nvp file of at
    most ``cfg.bpp``; ``video``: what the manifest says of the source beyond its size (fps, source)."""
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    n, h, w, _ = frames.shape
    base.config.latent_shape(h, w)  # a frame size the base cannot take fails here, with its reason
    budget = int(cfg.bpp * n * h * w / 8)
    base = base.to(device).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    target = to_tensor(frames, device)
    with torch.no_grad():
        start = torch.cat([base.encoder(chunk) for chunk in target.split(8)])
    modulation = Modulation(base.decoder, cfg.modulation, cfg.rank).to(device)
    measuring = time.perf_counter()
    psnr_encoder_only = clip_psnr(_decode_all(modulation, start), target)
    measured = time.perf_counter() - measuring  # diagnostics: not part of the encode's time
    manifest: dict[str, Any] = {
        "base": {
            "sha256": digest,
            "config": base.config.to_dict(),
            "height": h,
            "width": w,
            "num_frames": n,
            "modulation": cfg.modulation,
            "rank": cfg.rank,
        },
        "video": {**(video or {}), "frames": n, "height": h, "width": w},
        "taps": [{"name": k, "shape": list(v)} for k, v in base.decoder.tap_shapes(h, w).items()],
        "encoding": {
            "bpp": cfg.bpp,
            "fit_seconds": cfg.fit_seconds,
            "fit_latents": cfg.fit_latents,
            "temporal_weight": cfg.temporal_weight,
            "seed": cfg.seed,
        },
    }
    estimate = _modulation_bytes_estimate(modulation, manifest)
    if estimate + LATENT_HEADER_BYTES >= budget:
        raise ValueError(f"{cfg.bpp} bpp is too small for the {cfg.modulation} modulation ({estimate} bytes)")
    step = step_for_bytes(start.cpu().numpy(), budget - estimate - LATENT_HEADER_BYTES)
    fit_started = time.perf_counter()
    if cfg.fit_latents:
        latents: torch.Tensor = torch.nn.Parameter(start.clone())
        steps = _fit(modulation, latents, target, step, cfg)
    else:  # the latents coded as the encoder gave them; the modulation fitted to what a reader will decode
        latents = torch.from_numpy(code_latents(start.cpu().numpy(), step)[2]).to(device)
        steps = _fit(modulation, latents, target, None, cfg)
    fit_seconds = time.perf_counter() - fit_started
    measuring = time.perf_counter()
    psnr_fitted = clip_psnr(_decode_all(modulation, latents.detach()), target)
    measured += time.perf_counter() - measuring
    fitted = latents.detach() if cfg.fit_latents else start

    stored = {k: v.numpy().astype(np.float32) for k, v in modulation.stored().items()}
    mod_arrays, mod_meta = encode_tensors(stored, dict.fromkeys(stored, MODULATION_BITS)) if stored else ({}, {})
    if stored:
        modulation.load_stored({k: torch.from_numpy(v) for k, v in decode_tensors(mod_arrays, mod_meta).items()})
    meta = {"format": PAYLOAD_FORMAT, "modulation_meta": mod_meta}
    arrays = {f"modulation/{k}": v for k, v in mod_arrays.items()}
    values = fitted.cpu().numpy()
    latent_budget = budget - len(base_nvp_bytes(manifest, arrays, meta)) - METRICS_BYTES - LATENT_HEADER_BYTES
    for _ in range(8):  # the header grows a little with the latents' description: shrink until it all fits
        if latent_budget <= 0:
            raise ValueError(f"{cfg.bpp} bpp leaves no bytes for the latents after the {cfg.modulation} modulation")
        step = step_for_bytes(values, latent_budget)
        lat_arrays, lat_meta, _ = code_latents(values, step)
        size = len(base_nvp_bytes(manifest, {**arrays, **lat_arrays}, {**meta, "latents": lat_meta})) + METRICS_BYTES
        if size <= budget:
            break
        latent_budget -= size - budget + 16
    else:
        raise ValueError(f"could not fit the payload in {budget} bytes")
    arrays, meta = {**arrays, **lat_arrays}, {**meta, "latents": lat_meta}
    decoding = time.perf_counter()
    frames_out = BaseVideo.from_payload(arrays, meta, manifest["base"], base).frames()
    decode_seconds = time.perf_counter() - decoding
    psnr = clip_psnr(to_tensor(frames_out, torch.device("cpu")), target.cpu())
    manifest["metrics"] = {"psnr_quantised_db": round(psnr, 3), "psnr_float_db": round(psnr_fitted, 3)}
    data = base_nvp_bytes(manifest, arrays, meta)
    seconds = time.perf_counter() - started - measured - decode_seconds
    return BaseEncoding(
        data=data,
        frames=frames_out,
        bpp=8 * len(data) / (n * h * w),
        psnr=psnr,
        psnr_encoder_only=psnr_encoder_only,
        psnr_fitted=psnr_fitted,
        steps=steps,
        fit_seconds=fit_seconds,
        seconds=seconds,
        decode_seconds=decode_seconds,
        step=step,
        bytes_latents=coded_bytes(lat_arrays),
        bytes_modulation=coded_bytes(mod_arrays),
    )


def write(path: str | os.PathLike, encoding: BaseEncoding, overwrite: bool = True) -> int:
    """The encoding's .nvp file, written atomically; its size in bytes (the one its bpp counts)."""
    atomic_write(path, encoding.data, overwrite)
    return len(encoding.data)


def read(path: str | os.PathLike, base: tuple[Base, str] | None = None) -> np.ndarray:
    """Frames uint8 (N, H, W, 3) of a .nvp file encoded against a base (``BaseVideo.open``)."""
    return BaseVideo.open(path, base).frames()
