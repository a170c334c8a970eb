"""Rate-accuracy points: a .nvp file's classification route, its pixels and H.264 at the file's bpp.

Every figure is measured here from the file as written (its size on disk, routes included; the
route's adapter and the INR as a reader dequantises them) against the backbone's answers on the
original frames, beside the constant answer (the clip's most frequent label: what an input-blind
path scores) and PSNR. ``bench/rate_accuracy.py`` runs the encodes; this module scores, tabulates
and draws them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nvp_rt.nvpfile import NvpFile

from ..backbone import Backbone
from ..fidelity.agreement import fidelity
from ..fidelity.pixel_paths import backbone_outputs, compare_pixel_paths
from ..inr import load_nvp
from ..route.adapter import AdapterSpec, MicroAdapter

__all__ = ["constant_answer", "constant_top5", "route_outputs", "score_file", "markdown", "chart"]


def constant_answer(reference: torch.Tensor) -> float:
    """Top-1 agreement of always answering the most frequent of ``reference``'s labels."""
    labels = reference.argmax(1)
    return float(torch.bincount(labels).max()) / len(labels)


def constant_top5(reference: torch.Tensor) -> float:
    """Top-5 overlap of always answering the five classes most often among ``reference``'s top-5."""
    top5 = reference.topk(5, dim=1).indices
    fixed = torch.bincount(top5.flatten(), minlength=reference.shape[1]).topk(5).indices
    return float((top5[:, :, None] == fixed[None, None, :]).any(2).double().sum(1).mean()) / 5


def route_outputs(path: str | os.PathLike, backbone: Backbone, task: str, batch: int = 8) -> torch.Tensor:
    """The backbone's outputs through the file's route ``task``: INR to the tap, adapter, suffix (torch)."""
    with NvpFile.open(path) as nvp:
        (route,) = [r for r in nvp.routes() if r.task == task]
    meta = route.metadata
    spec = AdapterSpec(meta["in_channels"], meta["out_channels"], tuple(meta["pathways"][0]["size"]), meta["hidden"])
    adapter = MicroAdapter.from_arrays(spec, route.arrays).eval()
    inr = load_nvp(path)
    n = inr.num_frames
    with torch.no_grad():
        return torch.cat(
            [
                backbone.suffix(
                    adapter(inr.decode(torch.arange(s, min(s + batch, n)), until=route.tap)[route.tap]),
                    route.injection_point,
                )
                for s in range(0, n, batch)
            ]
        )


def score_file(path: str | os.PathLike, frames: np.ndarray, backbone: Backbone, task: str | None) -> dict:
    """One point: the file's total bpp, its route ``task``'s (None: no route) and its pixels' agreement,
    H.264 at that bpp, PSNR."""
    reference = backbone_outputs(backbone, frames)
    n, h, w, _ = frames.shape
    bpp = 8 * Path(path).stat().st_size / (n * h * w)
    inr = load_nvp(path)
    pixels, coded = compare_pixel_paths(inr, frames, backbone, bpp, reference=reference)
    with NvpFile.open(path) as nvp:
        metrics = nvp.manifest.get("metrics", {})
    return {
        "nvp_bpp_total": bpp,
        "nvp_psnr_db": pixels.psnr,
        "psnr_reconstruction_only_db": metrics.get("psnr_reconstruction_only_db"),
        "temporal_variance_ratio": metrics.get("temporal_variance_ratio"),
        "nvp_top1": None if task is None else fidelity(route_outputs(path, backbone, task), reference).top1_agreement,
        "inr_pixels_top1": pixels.fidelity.top1_agreement,
        "h264_bpp": coded.bpp,
        "h264": coded.detail,
        "h264_psnr_db": coded.psnr,
        "h264_top1": coded.fidelity.top1_agreement,
        "constant_top1": constant_answer(reference),
    }


COLUMNS = (
    "| video | budget (bpp) | path | file bpp | NVP top-1 | INR pixels top-1 | H.264 bpp | H.264 top-1 | constant "
    "| PSNR nvp / H.264 (dB) | PSNR reconstruction only (dB) | fit (variance ratio: over frames, vs the source) |\n"
    + "|---" * 12
    + "|"
)


def _cells(r: dict) -> list[str]:
    if "error" in r:
        return [r["video"], f"{r['target_bpp']:g}", r["path"], r["error"], *["-"] * 8]
    before, nvp = r.get("psnr_reconstruction_only_db"), r["nvp_top1"]
    return [
        r["video"],
        f"{r['target_bpp']:g}",
        r["path"],
        f"{r['nvp_bpp_total']:.3f}",
        "-" if nvp is None else f"{nvp:.1%}",
        f"{r['inr_pixels_top1']:.1%}",
        f"{r['h264_bpp']:.3f}",
        f"{r['h264_top1']:.1%}",
        f"{r['constant_top1']:.1%}",
        f"{r['nvp_psnr_db']:.2f} / {r['h264_psnr_db']:.2f}",
        "-" if before is None else f"{before:.2f}",
        f"{r['fit_seconds']:.0f} s, {r['epochs']} epochs, {r['inr']}, "
        f"variance ratio {r['temporal_variance_ratio']:.2f}",
    ]


def markdown(rows: Sequence[dict]) -> str:
    """One line per point, in the order given; a point without a file says why, one without a route has no
    NVP figure ("-")."""
    return "\n".join([COLUMNS, *("| " + " | ".join(_cells(r)) + " |" for r in rows)]) + "\n"


COLOURS = {"task-aware": "C2", "plain": "C0"}  # H.264 is C3


def chart(rows: Sequence[dict], path: str | os.PathLike, title: str) -> None:
    """Per video: top-1 agreement (top) and PSNR (bottom) against the file's total bpp, each path and H.264."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from ..charts import save_png

    done = [r for r in rows if "error" not in r]
    videos = list(dict.fromkeys(r["video"] for r in done))
    fig, axes = plt.subplots(2, max(len(videos), 1), figsize=(4.4 * max(len(videos), 1), 7), squeeze=False)
    for col, video in enumerate(videos):
        top, bottom = axes[0][col], axes[1][col]
        for name, colour in COLOURS.items():
            mine = sorted(
                (r for r in done if r["video"] == video and r["path"] == name), key=lambda r: r["nvp_bpp_total"]
            )
            if not mine:  # a path the run left out gets no empty legend entries
                continue
            routed = [r for r in mine if r["nvp_top1"] is not None]
            top.plot(
                [r["nvp_bpp_total"] for r in routed],
                [100 * r["nvp_top1"] for r in routed],
                "o-",
                color=colour,
                label=f"NVP ({name})",
            )
            top.plot(
                [r["nvp_bpp_total"] for r in mine],
                [100 * r["inr_pixels_top1"] for r in mine],
                "s--",
                color=colour,
                alpha=0.5,
                label=f"INR pixels ({name})",
            )
            bottom.plot(
                [r["nvp_bpp_total"] for r in mine], [r["nvp_psnr_db"] for r in mine], "o-", color=colour, label=name
            )
        h = sorted((r for r in done if r["video"] == video), key=lambda r: r["h264_bpp"])
        top.plot([r["h264_bpp"] for r in h], [100 * r["h264_top1"] for r in h], "^-", color="C3", label="H.264")
        top.axhline(100 * h[0]["constant_top1"], color="grey", ls=":", label="constant answer")
        bottom.plot([r["h264_bpp"] for r in h], [r["h264_psnr_db"] for r in h], "^-", color="C3", label="H.264")
        top.set(title=video, ylabel="top-1 agreement (%)", ylim=(0, 102))
        bottom.set(xlabel="bits per pixel (whole file, routes included)", ylabel="PSNR (dB)")
        for ax in (top, bottom):
            ax.set_xscale("log")
            # Log-axis minor labels overlap within a decade: label a fixed set of rates instead.
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks([0.05, 0.1, 0.2, 0.5])
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
