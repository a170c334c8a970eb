"""Encode benchmark: fit the 320x180 x 64-frame test clips and compare with x264 at the same bpp.

Reports per clip: PSNR after quantisation (decoded from the written file), bpp
from the file size on disk, encode wall time, full-frame decode FPS, and the
PSNR libx264 (through PyAV, preset medium, 4:2:0) reaches at the same bpp,
interpolated on its CRF sweep in (log bpp, PSNR). Writes JSON, a markdown table
and a rate-distortion chart to --out.

    python bench/encode.py                       # all clips, defaults (HNeRV, 0.5 bpp budget)
    python bench/encode.py --clips astronaut --time-limit 540
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from nvp_export.clips import PHOTOS, ClipSpec, write_clip
from nvp_export.encode import EncodeConfig, encode_video
from nvp_export.inr import load_nvp
from nvp_export.inr.fit import FitConfig
from nvp_rt.quality import psnr
from nvp_rt.video import read_video, write_video
from report import Run, make_parser

X264_CRFS = list(range(0, 52, 3))  # from lossless down; smooth pans need low CRFs to reach the INR's bpp


def x264_curve(frames: np.ndarray, folder: Path) -> list[dict]:
    n, h, w, _ = frames.shape
    points = []
    for crf in X264_CRFS:
        path = folder / f"x264_crf{crf}.mp4"
        payload = write_video(path, frames, 30, options={"crf": str(crf), "preset": "medium"})
        decoded, _ = read_video(path)
        points.append(
            {
                "crf": crf,
                "bpp": 8 * payload / (n * h * w),
                "bpp_with_container": 8 * path.stat().st_size / (n * h * w),
                "psnr": psnr(frames, decoded),
            }
        )
        path.unlink()
    return points


def psnr_at(points: list[dict], bpp: float) -> float | None:
    """x264 PSNR at ``bpp``, linear in log(bpp) between sweep points; None outside the sweep."""
    pts = sorted(points, key=lambda p: p["bpp"])
    xs, ys = np.log([p["bpp"] for p in pts]), [p["psnr"] for p in pts]
    if not xs[0] <= np.log(bpp) <= xs[-1]:
        return None
    return float(np.interp(np.log(bpp), xs, ys))


def decode_fps(path: Path, batch: int, repeats: int = 2) -> float:
    inr = load_nvp(path)
    idx = torch.arange(inr.num_frames)
    inr.render(idx[:batch], batch=batch)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        inr.render(idx, batch=batch)
    return repeats * inr.num_frames / (time.perf_counter() - start)


def chart(results: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(results):
        colour = f"C{i}"
        xs = [p["bpp"] for p in r["x264"]]
        ax.plot(xs, [p["psnr"] for p in r["x264"]], "-", color=colour, alpha=0.6, label=f"{r['clip']} x264")
        ax.plot(
            [r["bpp"]],
            [r["psnr_quantised"]],
            "*",
            color=colour,
            markersize=14,
            label=f"{r['clip']} {r['family']} ({r['psnr_quantised']:.1f} dB)",
        )
    ax.axhline(30, color="grey", ls=":", lw=1)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (INR: whole .nvp file; x264: coded stream, no container)")
    ax.set_ylabel("PSNR (dB, RGB)")
    ax.set_title("320x180 x 64 clips: INR after quantisation vs libx264")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def markdown(results: list[dict]) -> str:
    rows = [
        "| clip | family | params | PSNR quant (dB) | PSNR float (dB) | bpp | encode (s) | epochs | "
        "decode FPS b=1 | decode FPS b=8 | x264 PSNR @ same bpp (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        x = f"{r['x264_psnr_at_bpp']:.2f}" if r["x264_psnr_at_bpp"] is not None else "outside sweep"
        rows.append(
            f"| {r['clip']} | {r['family']} | {r['stored_values']} | {r['psnr_quantised']:.2f} | "
            f"{r['psnr_float']:.2f} | {r['bpp']:.4f} | {r['encode_seconds']:.0f} | {r['epochs']} | "
            f"{r['decode_fps_batch1']:.1f} | {r['decode_fps_batch8']:.1f} | {x} |"
        )
    return "# Encode benchmark\n\n" + "\n".join(rows) + "\n"


def main() -> None:
    p = make_parser(__doc__, "encode", threads=2)
    p.add_argument("--clips", nargs="+", default=list(PHOTOS), choices=PHOTOS)
    p.add_argument("--family", default="hnerv", choices=["hnerv", "nerv"])
    p.add_argument("--bpp", type=float, help="budget (default: nvp encode's)")
    p.add_argument("--epochs", type=int, default=FitConfig.epochs)
    p.add_argument(
        "--time-limit",
        type=float,
        default=FitConfig.time_limit_s,
        help="training time budget per clip (s); 0: epochs only",
    )
    p.add_argument("--size", default="320x180")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep .nvp files already in --out (encode time and epochs from the previous encode.json); "
        "everything else is measured again",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    run = Run(args.out, "encode", args.threads)
    previous = {}
    if args.reuse and (args.out / "encode.json").exists():
        previous = {r["clip"]: r for r in json.loads((args.out / "encode.json").read_text())["results"]}
    results = []
    for name in args.clips:
        spec = ClipSpec(name, width, height, args.frames)
        source = args.out / f"{spec.name}.mp4"
        frames = write_clip(source, spec)
        cfg = EncodeConfig(
            family=args.family,
            bpp=args.bpp,
            fit=FitConfig(epochs=args.epochs, time_limit_s=args.time_limit or None, threads=args.threads),
        )
        output = args.out / f"{spec.name}.{args.family}.nvp"
        if name in previous and output.exists():
            old = previous[name]
            encoded = {k: old[k] for k in ("psnr_float", "encode_seconds", "fit_seconds", "epochs", "recoveries")}
        else:
            report = encode_video(source, output, cfg=cfg, overwrite=True)  # this script's own output
            encoded = {
                "psnr_float": report.psnr_float,
                "encode_seconds": report.total_seconds,
                "fit_seconds": report.fit_seconds,
                "epochs": report.epochs,
                "recoveries": report.recoveries,
            }
        inr = load_nvp(output)
        decoded = inr.render(range(inr.num_frames))
        curve = x264_curve(frames, args.out)
        bpp = 8 * output.stat().st_size / (frames.shape[0] * height * width)
        results.append(
            {
                "clip": name,
                "family": args.family,
                "frames": args.frames,
                "size": args.size,
                "stored_values": sum(inr.config.stored_values()),
                "bytes": output.stat().st_size,
                "bpp": bpp,
                "psnr_quantised": psnr(frames, decoded),
                **encoded,
                "decode_fps_batch1": decode_fps(output, 1),
                "decode_fps_batch8": decode_fps(output, 8),
                "x264_psnr_at_bpp": psnr_at(curve, bpp),
                "x264": curve,
                "fit_config": asdict(cfg.fit),
            }
        )
        print(json.dumps({k: v for k, v in results[-1].items() if k not in ("x264", "fit_config")}), flush=True)
        # Written after every clip, so a long run that is stopped still leaves its finished clips.
        run.write({"results": results}, markdown(results), chart(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
