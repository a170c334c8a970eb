"""The INR alone: how wide HNeRV's per-frame embeddings should be at a file budget.

For each video and embedding width, a plain HNeRV is sized to the budget with that width
(``config_for_budget(..., embed_dim=E)``: the decoder gets what is left), fitted for --fit-seconds on 2
threads (same seed), quantised, and its PSNR measured on the 8-bit rendering. This is what
``inr.budget.PREFERRED_FC_DIM`` was chosen from.

    python bench/embed_width.py [--videos bikes,bbb] [--bpp 0.1] [--embed 1,2,4] [--fit-seconds 150]
        [--out bench/results/embed_width]

JSON and markdown in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from nvp_export.clips import RealClip
from nvp_export.encode import INFO_BYTES
from nvp_export.inr import config_for_budget, from_config, quantise_inr
from nvp_export.inr.fit import FitConfig, clip_psnr, fit
from nvp_rt.atomic import atomic_write

SIZE, FRAMES = (320, 180), 64


def point(video: str, bpp: float, embed_dim: int, fit_seconds: float) -> dict:
    frames = RealClip(video, *SIZE, FRAMES).read()
    target = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)
    row = {"video": video, "bpp": bpp, "embed_dim": embed_dim}
    try:
        config = config_for_budget("hnerv", *SIZE[::-1], FRAMES, bpp=bpp, reserve_bytes=INFO_BYTES, embed_dim=embed_dim)
    except ValueError as e:  # this width leaves no decoder within the budget
        return {**row, "error": str(e).split(";")[0]}
    torch.manual_seed(0)
    result = fit(from_config(config), target, FitConfig(time_limit_s=fit_seconds, threads=2, progress=False))
    _, _, stored = quantise_inr(result.inr)
    rendered = torch.from_numpy(stored.render(range(FRAMES))).permute(0, 3, 1, 2).float().div(255)
    return {
        **row,
        "fc_dim": config.fc_dim,
        "lower_width": config.lower_width,
        "epochs": result.epochs,
        "psnr_db": clip_psnr(rendered, target),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", default="bikes,bbb")
    p.add_argument("--bpp", type=float, default=0.1)
    p.add_argument("--embed", default="1,2,4")
    p.add_argument("--fit-seconds", type=float, default=150.0)
    p.add_argument("--out", type=Path, default=Path("bench/results/embed_width"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, fits on 2 threads"
    rows = []
    lines = ["| video | bpp | embed_dim | fc_dim | lower_width | epochs | PSNR (dB) |", "|---" * 7 + "|"]
    for video in args.videos.split(","):
        for embed_dim in (int(e) for e in args.embed.split(",")):
            rows.append(point(video, args.bpp, embed_dim, args.fit_seconds))
            print(json.dumps(rows[-1]), flush=True)
            r = rows[-1]
            cells = (
                [r["error"], "-", "-", "-"]
                if "error" in r
                else [str(r["fc_dim"]), str(r["lower_width"]), str(r["epochs"]), f"{r['psnr_db']:.2f}"]
            )
            lines.append(f"| {video} | {args.bpp:g} | {embed_dim} | " + " | ".join(cells) + " |")
            result = {"machine": machine, "command": "python bench/embed_width.py " + " ".join(sys.argv[1:])}
            atomic_write(args.out / "embed_width.json", json.dumps({**result, "rows": rows}, indent=1).encode())
            atomic_write(args.out / "embed_width.md", (f"Machine: {machine}\n\n" + "\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
