"""Fitting an INR to a clip: the reference recipes, made robust and observable.

HNeRV: L2, Adam lr 1e-3, 10% warm-up then cosine, batch 2. NeRV: 0.7 L1 +
0.3 (1 - SSIM), Adam betas (0.5, 0.999), lr 5e-4, 20% warm-up from 0.1 lr then
cosine. Warm-up and cosine are per iteration. The family is known to collapse
(NaN, sudden PSNR drop); when it does, training reloads the best state and
continues with half the rate.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from tqdm.auto import tqdm

from .base import INR
from .hnerv import HNeRV, HNeRVEncoder


@dataclass
class FitConfig:
    epochs: int = 300
    # Training time budget (s). The warm-up/cosine schedule runs over whichever budget, epochs or time,
    # is used up first, so a time-bound fit still anneals its rate to zero. The default keeps a 320x180
    # x 64 clip within 10 minutes of encoding on 2 CPU cores; None: epochs only (deterministic).
    time_limit_s: float | None = 540.0
    lr: float | None = None  # None: the family's reference rate, scaled to ``batch`` by ``lr_scaling``
    batch: int = 1  # the references use 2 (HNeRV) / 1 (NeRV); see FAMILY_RECIPE for why 1 here
    # How the family's reference rate (stated for one frame per step) follows ``batch``: "sqrt" (Adam's rule,
    # see batch_lr), "linear" (SGD's) or "none". An explicit ``lr`` is taken as the rate for ``batch``.
    lr_scaling: str = "sqrt"
    bf16: bool = False  # the forward pass under bfloat16 autocast (weights, optimiser and loss stay float32)
    # torch.compile the forward pass ("reduce-overhead": CUDA graphs on CUDA); the same fit, compiled once
    compile: bool = False
    warmup: float | None = None  # fraction of iterations; None: the family's reference
    target_psnr: float | None = None  # stop once the training PSNR (dB, before quantisation) reaches it
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    threads: int | None = None  # CPU threads; None: all cores
    collapse_drop_db: float = 4.0  # an epoch this far below the best counts as a collapse
    max_recoveries: int = 8
    progress: bool = True

    def __post_init__(self):
        if self.lr_scaling not in LR_SCALING:
            raise ValueError(f"lr_scaling must be one of {LR_SCALING}; got {self.lr_scaling!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1; got {self.batch}")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"unknown device {self.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but this torch has no usable CUDA")
        return device


LR_SCALING = ("sqrt", "linear", "none")


def batch_lr(lr: float, batch: int, rule: str) -> float:
    """The rate for ``batch`` frames per step, from ``lr`` at one frame per step.

    "sqrt" multiplies by sqrt(batch): the square-root scaling rule for adaptive optimisers, derived for
    Adam/RMSprop from their SDE approximation by Malladi, Lyu, Panigrahi and Arora, "On the SDEs and
    Scaling Rules for Adaptive Gradient Algorithms" (NeurIPS 2022, arXiv:2205.10287), and proposed
    earlier by Krizhevsky, "One weird trick for parallelizing convolutional neural networks" (2014).
    "linear" multiplies by batch: Goyal et al., "Accurate, Large Minibatch SGD" (2017), a rule for SGD;
    with Adam, whose steps are normalised by the gradient's scale, it overshoots. Both keep the warm-up.
    """
    if rule == "sqrt":
        return lr * math.sqrt(batch)
    if rule == "linear":
        return lr * batch
    return lr


# lr, warm-up fraction, Adam betas. HNeRV's reference is lr 1e-3 at batch 2 for 300 epochs; fits here
# are bound by a CPU time budget, where batch 1 at 3e-3 (twice the updates, each larger) went further:
# 22.4 vs 21.3 dB after 150 s on the 320x180 astronaut clip (2 shared cores). Collapses that a higher
# rate invites are caught and undone below.
FAMILY_RECIPE = {
    "hnerv": (3e-3, 0.1, (0.9, 0.999)),
    "nerv": (5e-4, 0.2, (0.5, 0.999)),
}


# A fit whose decoded clip varies across frames this little (relative to the source) renders about
# the mean frame for every frame: measured 0.000 for all four stalled fits, 0.67-0.94 for healthy ones.
PLATEAU_VARIANCE_RATIO = 0.1
PLATEAU_RESTARTS = 2  # fresh starts, each at a third of the rate, before the fit gives up on escaping
# Healthy fits leave the mean frame within two epochs of a 64-frame clip; judged no earlier than this.
PLATEAU_PATIENCE_STEPS = 150


def temporal_variance_ratio(decoded: torch.Tensor, source: torch.Tensor) -> float:
    """Per-pixel variance across frames of ``decoded`` over that of ``source`` (both (N, 3, H, W)), averaged.

    About 0 when a fit renders the mean frame for every frame; 1.0 for a static source, where the
    mean frame is the right answer.
    """
    reference = float(source.double().var(0).mean())
    return float(decoded.double().var(0).mean()) / reference if reference > 1e-6 else 1.0


class FitObjective(Protocol):
    """Loss terms trained beside the reconstruction (task-aware encoding: ``route.task_aware``)."""

    start: float  # fraction of the fit spent on reconstruction alone before the terms join
    lr: float  # peak rate of the modules ``begin`` returns (the INR's schedule scales it)

    def begin(self, decode_all: Callable[[str], torch.Tensor]) -> torch.nn.Module:
        """Called once, at ``start``, with the current decoder's features of every frame at a tap;
        returns the module whose parameters train from then on (e.g. the routes' adapters)."""
        ...

    def loss(self, taps: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """The terms for frames ``idx``, given the decoder's taps of those frames."""
        ...


class FitError(ValueError):
    """This clip could not be fitted with these settings (e.g. it collapsed more often than it may recover)."""


@dataclass
class FitResult:
    inr: INR  # float weights (HNeRV: embeddings filled in), eval mode, on CPU
    psnr: float  # training PSNR of the kept state, dB
    epochs: int
    seconds: float
    recoveries: int
    history: list[float] = field(default_factory=list)  # PSNR per epoch
    restarts: int = 0  # fresh starts after the fit sat at the mean frame
    steps: int = 0  # optimiser steps since the last (re)start
    # clip_psnr of the whole clip when an objective's terms joined: what reconstruction alone had reached
    psnr_reconstruction_only: float | None = None
    encoder: HNeRVEncoder | None = None  # HNeRV: the frame encoder the embeddings came from (a warm start's)


def clip_psnr(decoded: torch.Tensor, source: torch.Tensor) -> float:
    """Mean per-frame PSNR (dB) of ``decoded`` rounded to 8 bits against ``source``, both (N, 3, H, W) in
    [0, 1]: what ``nvp_rt.quality.psnr`` reports for a rendered clip."""
    diff = (decoded.clamp(0, 1) * 255).round() - (source * 255).round()
    mse = diff.double().pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(255.0**2 / mse.clamp_min(1e-12))).mean())


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up from 0.1 to 1, then cosine to 0; ``progress`` in [0, 1]."""
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / max(1 - warmup, 1e-9)))


def reconstruction_loss(family: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if family == "nerv":
        return 0.7 * F.l1_loss(out, target) + 0.3 * (1 - ssim(out, target, data_range=1.0, size_average=True))
    return F.mse_loss(out, target)


def batch_psnr(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mse = ((out.detach() - target) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def fit(
    inr: INR,
    frames: torch.Tensor,
    cfg: FitConfig,
    objective: FitObjective | None = None,
    encoder: HNeRVEncoder | None = None,
) -> FitResult:
    """Train ``inr`` on ``frames`` (N, 3, H, W) float in [0, 1], with ``objective``'s terms from its start on.
    HNeRV: ``encoder`` is the frame encoder to start from (a warm start: another fit's), default a fresh one.

    With an objective the state returned is the last one, not the one of the best PSNR: its terms
    may cost pixels on purpose."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = cfg.resolved_device()
    base_lr, default_warmup, betas = FAMILY_RECIPE[inr.family]
    base_lr = cfg.lr or batch_lr(base_lr, cfg.batch, cfg.lr_scaling)
    warmup = cfg.warmup if cfg.warmup is not None else default_warmup
    inr = inr.to(device).train()
    if isinstance(inr, HNeRV):
        encoder = (HNeRVEncoder(inr.config) if encoder is None else copy.deepcopy(encoder)).to(device).train()
    else:
        encoder = None
    modules = torch.nn.ModuleList([m for m in (inr, encoder) if m is not None])

    def new_optimiser() -> torch.optim.Adam:
        # "peak_lr": each group's rate before the schedule (the objective's adapters join with their own)
        return torch.optim.Adam([{"params": modules.parameters(), "peak_lr": base_lr}], lr=base_lr, betas=betas)

    optimiser = new_optimiser()
    joined = False  # the objective's terms are part of the loss
    psnr_reconstruction_only = None
    frames = frames.to(device)
    n = frames.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch)
    total_steps = cfg.epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(cfg.seed)

    best = (-math.inf, copy.deepcopy(modules.state_dict()), copy.deepcopy(optimiser.state_dict()))
    history, recoveries, lr_scale, step, restarts, started_at = [], 0, 1.0, 0, 0, 0
    # The plateau check compares the epoch's outputs with the frames at a quarter of the resolution.
    small_frames = F.avg_pool2d(frames, 4) if min(frames.shape[-2:]) >= 8 else frames
    epoch_outputs = torch.zeros_like(small_frames)
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"fit {inr.family}", unit="epoch", disable=not cfg.progress)

    def progress() -> float:
        done = step / total_steps
        if cfg.time_limit_s:
            done = max(done, (time.perf_counter() - start) / cfg.time_limit_s)
        return min(done, 1.0)

    def decode_all(tap: str) -> torch.Tensor:
        with torch.no_grad():
            parts = [
                inr.run_stages(encoder(frames[s : s + 8]), until=tap)[tap]
                if encoder is not None
                else inr.decode(torch.arange(s, min(s + 8, n), device=device), until=tap)[tap]
                for s in range(0, n, 8)
            ]
        return torch.cat(parts)

    def decode_step(target: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return inr.run_stages(encoder(target)) if encoder is not None else inr.decode(idx)

    # "reduce-overhead" replays CUDA graphs: a GPU fit of small frames is bound by kernel launches.
    forward = torch.compile(decode_step, mode="reduce-overhead") if cfg.compile else decode_step

    for epoch in bar:
        psnrs, collapsed = [], False
        for idx in torch.randperm(n, generator=generator).split(cfg.batch):
            if objective is not None and not joined and progress() >= objective.start:
                psnr_reconstruction_only = clip_psnr(decode_all(inr.tap_names[-1]), frames)
                bar.write(f"epoch {epoch}: reconstruction alone reached {psnr_reconstruction_only:.2f} dB; tasks join")
                extra = objective.begin(decode_all).to(device)
                modules.append(extra)
                optimiser.add_param_group({"params": extra.parameters(), "peak_lr": objective.lr})
                best = (best[0], copy.deepcopy(modules.state_dict()), copy.deepcopy(optimiser.state_dict()))
                joined = True
            for group in optimiser.param_groups:
                group["lr"] = group["peak_lr"] * lr_scale * lr_factor(progress(), warmup)
            step += 1
            target = frames[idx]
            if cfg.compile:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                taps = forward(target, idx.to(device))
                task_loss = objective.loss(taps, idx) if objective is not None and joined else None
            out = taps[inr.tap_names[-1]].float()  # the reconstruction loss in float32 (SSIM's sums)
            loss = reconstruction_loss(inr.family, out, target)
            if task_loss is not None:
                loss = loss + task_loss.float()
            if not torch.isfinite(loss):
                collapsed = True
                break
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            psnrs.append(batch_psnr(out, target))
            epoch_outputs[idx] = F.avg_pool2d(out.detach(), 4) if small_frames is not frames else out.detach()
        epoch_psnr = float(torch.cat(psnrs).mean()) if psnrs and not collapsed else -math.inf
        if collapsed or not math.isfinite(epoch_psnr) or epoch_psnr < best[0] - cfg.collapse_drop_db:
            recoveries += 1
            if recoveries > cfg.max_recoveries:
                raise FitError(f"training collapsed {recoveries} times; try a lower --lr or another --seed")
            modules.load_state_dict(best[1])
            optimiser.load_state_dict(best[2])
            lr_scale *= 0.5
            bar.write(
                f"epoch {epoch}: collapse detected (PSNR {epoch_psnr:.2f} dB, best {best[0]:.2f}); "
                f"reloaded the best state, learning rate x{lr_scale:g}"
            )
            history.append(epoch_psnr)
            if progress() >= 1.0:
                break
            continue
        history.append(epoch_psnr)
        if (
            not joined
            and step - started_at >= max(PLATEAU_PATIENCE_STEPS, 2 * steps_per_epoch)
            and restarts < PLATEAU_RESTARTS
            and progress() < 1.0  # with no time left, the stuck state is the result (encode refuses it)
            and temporal_variance_ratio(epoch_outputs, small_frames) < PLATEAU_VARIANCE_RATIO
        ):
            # Stuck at the mean frame: the rate is too high for the decoder's tiny frame-dependent signal.
            restarts, started_at = restarts + 1, step
            lr_scale /= 3
            seed = cfg.seed + restarts
            torch.manual_seed(seed)
            for module in modules:
                module.load_state_dict(type(module)(inr.config).to(device).state_dict())
            optimiser = torch.optim.Adam(
                [{"params": modules.parameters(), "peak_lr": base_lr}], lr=base_lr, betas=betas
            )
            best = (-math.inf, copy.deepcopy(modules.state_dict()), copy.deepcopy(optimiser.state_dict()))
            bar.write(
                f"epoch {epoch}: the fit renders about the mean frame (PSNR {epoch_psnr:.2f} dB); "
                f"starting afresh (seed {seed}) at learning rate x{lr_scale:.3g}"
            )
            continue
        if joined or epoch_psnr >= best[0]:
            best = (epoch_psnr, copy.deepcopy(modules.state_dict()), copy.deepcopy(optimiser.state_dict()))
        done, elapsed = progress(), time.perf_counter() - start
        bar.set_postfix(
            psnr=f"{epoch_psnr:.2f}",
            best=f"{best[0]:.2f}",
            lr=f"{optimiser.param_groups[0]['lr']:.1e}",
            left=f"{elapsed * (1 - done) / max(done, 1e-9):.0f}s",
        )  # ETA over the epoch or time budget
        if cfg.target_psnr is not None and epoch_psnr >= cfg.target_psnr:
            bar.write(f"epoch {epoch}: target PSNR {cfg.target_psnr} dB reached")
            break
        if progress() >= 1.0:
            if step < total_steps:
                bar.write(f"epoch {epoch}: time budget {cfg.time_limit_s:g} s used up")
            break
    bar.close()
    if not math.isfinite(best[0]):
        raise FitError("training never produced a finite loss")
    modules.load_state_dict(best[1])
    inr.eval()
    if encoder is not None:
        encoder.eval()
        with torch.no_grad():
            inr.embeddings.copy_(torch.cat([encoder(frames[i : i + 8]) for i in range(0, n, 8)]))
    return FitResult(
        inr.cpu(),
        best[0],
        len(history),
        time.perf_counter() - start,
        recoveries,
        history,
        restarts,
        step - started_at,
        psnr_reconstruction_only,
        encoder.cpu() if encoder is not None else None,
    )
