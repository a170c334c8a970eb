"""Pretraining the base on the corpus: one seeded command, CPU or CUDA.

    python -m nvp_export.base.pretrain --out base.safetensors [--steps 6000] [--clips 400] [--seed 0]
        [--device auto|cpu|cuda] [--threads 1] [--log pretrain.jsonl]

Loss: MSE of the decoded frame, with the latent seen through additive uniform noise of a random width
(log-uniform in [noise_min, noise_max]; the usual stand-in for quantisation in learned codecs, so the
decoder learns to read latents coded at any step), plus ``rate_weight`` times the latent's mean absolute
value (a Laplace prior's rate, which keeps the encoder from outgrowing the noise). Adam, linear warm-up
then cosine over ``steps``. The schedule counts steps, not seconds, so the same command on the same
machine gives the same weights; ``time_limit_s`` is only a guard (a run it cuts short says so in its log).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..inr.fit import lr_factor
from .corpus import CorpusConfig, corpus_frames
from .model import Base, BaseConfig
from .weights import save_base

HELD_OUT_SEED_OFFSET = 1000  # held-out clips: the corpus drawn from seed + this, never trained on


@dataclass
class PretrainConfig:
    steps: int = 6000
    batch: int = 8
    lr: float = 2e-3
    warmup: float = 0.02
    clips: int = 400  # corpus clips in the training pool (each CorpusConfig.frames frames)
    held_out_clips: int = 4
    noise_min: float = 0.02
    noise_max: float = 1.0
    rate_weight: float = 1e-4
    seed: int = 0
    device: str = "auto"
    threads: int | None = 1
    time_limit_s: float | None = None  # a guard: when it runs out first, the schedule anneals by time
    log_every: int = 50
    eval_every: int = 500
    base: BaseConfig = field(default_factory=BaseConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but this torch has no usable CUDA")
    return device


def to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div_(255)


def noisy(latent: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """``latent`` plus uniform noise of width ``widths`` (one per frame): what quantising at that step adds."""
    return latent + (torch.rand_like(latent) - 0.5) * widths.view(-1, 1, 1, 1)


@torch.no_grad()
def held_out_psnr(model: Base, frames: torch.Tensor) -> float:
    """Mean per-frame PSNR (dB) of encoder -> decoder on ``frames``, no noise, 8 frames at a time."""
    model.eval()
    psnrs = []
    for chunk in frames.split(8):
        mse = (model(chunk).clamp(0, 1) - chunk).pow(2).flatten(1).mean(1)
        psnrs.append(-10 * torch.log10(mse.clamp_min(1e-12)))
    model.train()
    return float(torch.cat(psnrs).mean())


def pretrain(cfg: PretrainConfig, log=None, checkpoint: Path | None = None) -> tuple[Base, list[dict]]:
    """Train a base from ``cfg.seed``; returns it (on CPU, eval mode) and the log's records. ``checkpoint``:
    where to save the weights at every held-out evaluation (to look at a long run while it trains)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pool = corpus_frames(range(cfg.clips), cfg.corpus)
    held = CorpusConfig(**{**asdict(cfg.corpus), "seed": cfg.corpus.seed + HELD_OUT_SEED_OFFSET})
    held_out = to_tensor(corpus_frames(range(cfg.held_out_clips), held), device)
    model = Base(cfg.base).to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    records: list[dict] = []
    started = time.perf_counter()
    low, high = math.log(cfg.noise_min), math.log(cfg.noise_max)

    def record(**values) -> None:
        records.append(values)
        if log is not None:
            log.write(json.dumps(values) + "\n")
            log.flush()

    record(event="start", pool_frames=len(pool), seconds=round(time.perf_counter() - started, 1))
    recent: list[tuple[float, float]] = []
    timed = False  # the time limit, not the step count, set the schedule at some step (not reproducible)
    for step in range(1, cfg.steps + 1):
        progress = (step - 1) / cfg.steps
        if cfg.time_limit_s:
            elapsed = time.perf_counter() - started
            if elapsed >= cfg.time_limit_s:
                record(event="time limit", step=step, seconds=round(elapsed, 1))
                break
            if elapsed / cfg.time_limit_s > progress:  # the schedule anneals by whichever runs out first
                progress = elapsed / cfg.time_limit_s
                timed = True
        for group in optimiser.param_groups:
            group["lr"] = cfg.lr * lr_factor(progress, cfg.warmup)
        idx = rng.integers(0, len(pool), cfg.batch)
        batch = to_tensor(pool[idx], device)
        flip = torch.from_numpy(rng.random(cfg.batch) < 0.5).to(device)
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        widths = torch.exp(torch.empty(cfg.batch, device=device).uniform_(low, high))
        latent = model.encoder(batch)
        out = model.decoder(noisy(latent, widths))["rgb"]
        mse = F.mse_loss(out, batch)
        loss = mse + cfg.rate_weight * latent.abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        recent.append((mse.item(), latent.detach().abs().mean().item()))
        if step % cfg.log_every == 0 or step == cfg.steps:
            mses, scales = zip(*recent)
            recent = []
            values = dict(
                event="train",
                step=step,
                seconds=round(time.perf_counter() - started, 1),
                lr=optimiser.param_groups[0]["lr"],
                psnr_noisy=round(-10 * math.log10(max(float(np.mean(mses)), 1e-12)), 3),
                latent_abs=round(float(np.mean(scales)), 4),
            )
            if step % cfg.eval_every == 0 or step == cfg.steps:
                values["held_out_psnr"] = round(held_out_psnr(model, held_out), 3)
                if checkpoint is not None:
                    save_base(checkpoint, model, {"step": str(step)})
            record(**values)
    if timed:
        record(event="time-bound", note="the time limit set the schedule: another run may differ")
    return model.cpu().eval(), records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nvp_export.base.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the base's weights (.safetensors)")
    p.add_argument("--steps", type=int, default=PretrainConfig.steps)
    p.add_argument("--clips", type=int, default=PretrainConfig.clips)
    p.add_argument("--batch", type=int, default=PretrainConfig.batch)
    p.add_argument("--lr", type=float, default=PretrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--time-limit", type=float, help="seconds; the schedule anneals by whichever runs out first")
    p.add_argument("--log", type=Path, help="JSON lines: the loss curve and held-out PSNR")
    args = p.parse_args(argv)
    if args.steps < 1 or args.clips < 1 or args.batch < 1 or not args.lr > 0:
        print("error: --steps, --clips, --batch and --lr must be positive", file=sys.stderr)
        return 2
    cfg = PretrainConfig(
        steps=args.steps,
        clips=args.clips,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        time_limit_s=args.time_limit,
    )
    try:
        resolve_device(cfg.device)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = "python -m nvp_export.base.pretrain " + " ".join(sys.argv[1:] if argv is None else argv)
    checkpoint = args.out.with_name(args.out.stem + ".partial.safetensors")
    if args.log:
        with open(args.log, "w") as log:
            model, records = pretrain(cfg, log, checkpoint)
    else:
        model, records = pretrain(cfg, checkpoint=checkpoint)
    checkpoint.unlink(missing_ok=True)
    digest = save_base(args.out, model, {"command": command, "pretrain": json.dumps(asdict(cfg), default=str)})
    last = [r for r in records if "held_out_psnr" in r]
    print(f"wrote {args.out} (base {digest[:16]}), held-out PSNR {last[-1]['held_out_psnr'] if last else '-'} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
