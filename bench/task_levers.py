"""Task-aware encoding's levers, each on its own and combined, at equal fit time and file budget.

For each video and budget, two fits of the same INR (same seed, same --fit-seconds, 2 threads):

- ``weights``: the task terms at stop 18's weights (task 5e-4, feature 2e-4, joining at full weight)
  or at today's (``TaskAwareConfig()``: 10x stronger, ramped in over 3 epochs);

and on each fit's quantised INR two adapter finetunes:

- ``finetune``: stop 18's (Adam 1e-3, 100 epochs, last state kept) or today's (1e-2, 300 epochs, the
  state whose stored 8-bit route agrees most kept).

Each cell is the stored route's top-1 agreement with EfficientNet-Lite0 on the original frames, beside
the fit's PSNR, H.264's agreement at the budget's bpp and the constant answer.

    python bench/task_levers.py [--videos bikes,bbb] [--bpp 0.1] [--fit-seconds 150]
        [--out bench/results/task_levers]

JSON and markdown in --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from nvp_export.benchmark.rate_accuracy import constant_answer
from nvp_export.clips import RealClip
from nvp_export.encode import INFO_BYTES
from nvp_export.fidelity import h264
from nvp_export.fidelity.agreement import fidelity
from nvp_export.fidelity.pixel_paths import backbone_outputs
from nvp_export.inr import config_for_budget, from_config, quantise_inr
from nvp_export.inr.fit import FitConfig, clip_psnr, fit
from nvp_export.route.adapter import finetune_for_task
from nvp_export.route.task_aware import TaskAwareConfig, TaskAwareObjective, untrained_routes
from nvp_export.zoo import load_backbone
from nvp_rt.atomic import atomic_write

PRESET, SIZE, FRAMES = "efficientnet_lite0", (320, 180), 64
TODAY = TaskAwareConfig()
WEIGHTS = {"stop 18": replace(TODAY, task=5e-4, feat=2e-4, ramp_epochs=0), "today": TODAY}


def point(video: str, bpp: float, fit_seconds: float) -> list[dict]:
    frames = RealClip(video, *SIZE, FRAMES).read()
    target = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)
    backbone = load_backbone(PRESET).eval()
    reference = backbone_outputs(backbone, frames)
    coded = h264.at_bpp(frames, bpp)
    common = {
        "video": video,
        "bpp": bpp,
        "h264_bpp": coded.bpp,
        "h264_top1": fidelity(backbone_outputs(backbone, coded.frames), reference).top1_agreement,
        "constant_top1": constant_answer(reference),
    }
    rows = []
    for weights_name, config in WEIGHTS.items():
        routes = lambda inr, c=config: untrained_routes(inr, [backbone], c)  # noqa: E731
        inr_config = config_for_budget("hnerv", *SIZE[::-1], FRAMES, bpp=bpp, routes=routes, reserve_bytes=INFO_BYTES)
        torch.manual_seed(0)
        inr = from_config(inr_config)
        objective = TaskAwareObjective(inr, target, [backbone], config)
        result = fit(inr, target, FitConfig(time_limit_s=fit_seconds, threads=2, progress=False), objective)
        _, _, stored = quantise_inr(result.inr)
        rendered = torch.from_numpy(stored.render(range(FRAMES))).permute(0, 3, 1, 2).float().div(255)
        (fitted,) = objective.routes
        assert fitted.adapter is not None, "the task terms joined within the fit"
        start = copy.deepcopy(fitted.adapter)
        with torch.no_grad():
            taps = stored.decode(torch.arange(FRAMES), until=fitted.tap)[fitted.tap]
        for finetune_name in ("stop 18", "today"):
            started = time.perf_counter()
            if finetune_name == "today":  # what encode runs: TaskAwareObjective.finish
                fitted.adapter = copy.deepcopy(start)
                (route,) = objective.finish(stored, rendered)
                agreement = route.metrics["top1_agreement"]
            else:
                adapter = copy.deepcopy(start)
                finetune_for_task(adapter, taps, fitted.target, fitted.labels, fitted.head, epochs=100, lr=1e-3)
                agreement = fitted.stored_agreement(adapter, taps)
            rows.append(
                {
                    **common,
                    "weights": weights_name,
                    "finetune": finetune_name,
                    "nvp_top1": agreement,
                    "psnr_db": clip_psnr(rendered, target),
                    "epochs": result.epochs,
                    "finetune_seconds": time.perf_counter() - started,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| video | bpp | task weights | adapter finetune | NVP top-1 | PSNR (dB) | fit epochs | H.264 top-1 (bpp) "
        "| constant |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['video']} | {r['bpp']:g} | {r['weights']} | {r['finetune']} | {r['nvp_top1']:.1%} "
            f"| {r['psnr_db']:.2f} | {r['epochs']} | {r['h264_top1']:.1%} ({r['h264_bpp']:.3f}) "
            f"| {r['constant_top1']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", default="bikes,bbb")
    p.add_argument("--bpp", default="0.1")
    p.add_argument("--fit-seconds", type=float, default=150.0)
    p.add_argument("--out", type=Path, default=Path("bench/results/task_levers"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, fits on 2 threads"
    rows: list[dict] = []
    for video in args.videos.split(","):
        for bpp in (float(b) for b in args.bpp.split(",")):
            rows += point(video, bpp, args.fit_seconds)
            result = {"machine": machine, "command": "python bench/task_levers.py " + " ".join(sys.argv[1:])}
            atomic_write(args.out / "task_levers.json", json.dumps({**result, "rows": rows}, indent=1).encode())
            table = f"Machine: {machine}; fit budget {args.fit_seconds:g} s.\n\n" + markdown(rows)
            atomic_write(args.out / "task_levers.md", table.encode())
    print(table)


if __name__ == "__main__":
    main()
