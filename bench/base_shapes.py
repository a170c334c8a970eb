"""The base's latent shape, side by side: each shape pretrained the same short way, then scored on real clips.

For each shape, ``nvp_export.base.pretrain`` with the same seed, steps and corpus; then on Big Buck Bunny and
bikes (64 frames at 320x180, never seen by the bases): PSNR of encoder -> decoder unquantised, and of
the encoder's latents coded at each rate (``nvp_export.base.encode`` with a 0.01 s fit: a step or two,
so the shape alone is compared). Shapes:

- ``f10c16``: the first base, a latent 10x smaller than the frame with 16 channels;
- ``f5c16``: 5x smaller, 16 channels (4x the values);
- ``f5c8``: 5x smaller, 8 channels (2x the values): the shipped base's shape since 2026-12-06.

    python bench/base_shapes.py [--shapes f10c16,f5c16,f5c8] [--steps 500] [--clips 120]
        [--bpp 0.1,0.25,0.5] [--out bench/results/base_shapes]

JSON and markdown in --out, rewritten after every shape.
"""

from __future__ import annotations

import time

import torch

from nvp_export.base.encode import BaseEncodeConfig, encode
from nvp_export.base.model import Base, BaseConfig, weights_hash
from nvp_export.base.pretrain import PretrainConfig, pretrain, to_tensor
from nvp_export.clips import RealClip
from report import Run, make_parser

SHAPES = {
    "f10c16": BaseConfig(latent_dim=16, strides=(5, 2), stem_dim=128),
    "f5c16": BaseConfig(latent_dim=16, strides=(5, 1), stem_dim=64),
    "f5c8": BaseConfig(latent_dim=8, strides=(5, 1), stem_dim=64),
}
VIDEOS = ("bbb", "bikes")


@torch.no_grad()
def unquantised_psnr(model: Base, frames) -> float:
    x = to_tensor(frames, torch.device("cpu"))
    out = torch.cat([model(chunk).clamp(0, 1) for chunk in x.split(8)])
    mse = (out - x).pow(2).flatten(1).mean(1)
    return float((-10 * torch.log10(mse)).mean())


def markdown(rows: list[dict], rates: list[float]) -> str:
    head = "| shape | latent values / frame | pretrain s | held-out corpus dB | video | unquantised dB | "
    head += " | ".join(f"{r:g} bpp dB" for r in rates) + " |"
    lines = [head, "|---" * (6 + len(rates)) + "|"]
    for row in rows:
        for video in VIDEOS:
            v = row["videos"][video]
            cells = [row["shape"], str(row["latent_values"]), f"{row['pretrain_seconds']:.0f}"]
            cells += [f"{row['held_out_psnr']:.2f}", video, f"{v['unquantised']:.2f}"]
            cells += [f"{v['coded'][str(r)]:.2f}" for r in rates]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = make_parser(__doc__, "base_shapes")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--clips", type=int, default=120)
    p.add_argument("--bpp", default="0.1,0.25,0.5")
    args = p.parse_args()
    rates = [float(r) for r in args.bpp.split(",")]
    run = Run(args.out, "base_shapes", threads=1)
    clips = {v: RealClip(v, 320, 180, 64).read() for v in VIDEOS}
    rows: list[dict] = []
    for shape in args.shapes.split(","):
        config = SHAPES[shape]
        started = time.perf_counter()
        cfg = PretrainConfig(steps=args.steps, clips=args.clips, base=config, eval_every=args.steps)
        model, records = pretrain(cfg)
        seconds = time.perf_counter() - started
        digest = weights_hash(model.state_dict())
        videos = {}
        for video, frames in clips.items():
            coded = {
                str(r): encode(frames, model, digest, BaseEncodeConfig(bpp=r, fit_seconds=0.01)).psnr for r in rates
            }
            videos[video] = {"unquantised": unquantised_psnr(model, frames), "coded": coded}
        c, h, w = config.latent_shape(180, 320)
        held = [r["held_out_psnr"] for r in records if "held_out_psnr" in r]
        rows.append(
            {
                "shape": shape,
                "config": config.to_dict(),
                "latent_values": c * h * w,
                "pretrain_seconds": seconds,
                "held_out_psnr": held[-1],
                "videos": videos,
            }
        )
        run.write({"rows": rows}, markdown(rows, rates))
        print(markdown(rows, rates), flush=True)


if __name__ == "__main__":
    main()
