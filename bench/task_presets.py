"""Task presets beyond classification: adapter size, MACs of the NVP path vs the pixel path, fidelity.

Costs (full-size presets, per sample: a frame, or a 32-frame clip for SlowFast / I3D)
for every (INR tap, injection point) pair, counted by running both paths under
torch's FLOP counter (``nvp_export.route.task_cost``: 1 MAC = 1 FLOP, bilinear resizes
at 4 MACs per output element). Shapes only: models run on the meta device; BLIP's
greedy decoding stops on values, so its text decoder (the same on both paths) is
counted once on real values and added to both.

The INR is a stand-in with HNeRV's decoder shape (REFERENCE.md): a 16 x 9 x 16
embedding per frame, a 1x1 conv to 68 channels, blocks of conv(k_i) -> PixelShuffle
-> GELU with kernels 1, 3, 5, 5 and channels shrinking by 1.2, then a 3x3 head:
strides 5, 2, 2 for 320x180 and 5, 4, 2, 2 for 1280x720.

Fidelity (``--fidelity``): each preset at full size, randomly initialised unless
weights are given, adapts one route on a short clip the stand-in INR (180p) decodes
itself (so the INR is lossless by construction and the figure measures adapter +
suffix alone), then compares its outputs with those of the original frames.

    python bench/task_presets.py [--resolution 720p 180p] [--fidelity] [--out bench/results]
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nvp_export.route.multipathway import FitConfig
from nvp_export.route.task_adapt import adapt_route
from nvp_export.route.task_cost import macs, route_cost
from nvp_export.zoo import PRESETS
from report import Run, make_parser

TASK_PRESETS = ["slowfast_r50", "i3d_r50", "detr_r50", "segformer_b0", "blip"]
RESOLUTIONS = {"180p": ((180, 320), (5, 2, 2)), "720p": ((720, 1280), (5, 4, 2, 2))}
# The route each preset adapts in the fidelity run: an early tap into an early point (cheap and CKA-plausible).
FIDELITY_ROUTES = {
    "slowfast_r50": ("block2", "res2"),
    "i3d_r50": ("block2", "res2"),
    "detr_r50": ("block3", "stage1"),
    "segformer_b0": ("block3", "stage1"),
    "blip": ("block2", "patch_embed"),
}


class HNeRVStandin(nn.Module):
    """HNeRV-shaped decoder with the INR interface (random weights: for costs and self-consistent clips)."""

    def __init__(self, num_frames: int, resolution: str, fc_dim: int = 68, seed: int = 0):
        super().__init__()
        (h, w), strides = RESOLUTIONS[resolution]
        self.num_frames = num_frames
        meta = torch.get_default_device().type == "meta"
        base = torch.randn(2, 16, 9, 16, generator=None if meta else torch.Generator().manual_seed(seed))
        t = torch.linspace(0, 1, num_frames).view(-1, 1, 1, 1)
        self.embeddings = nn.Parameter((1 - t) * base[0] + t * base[1])  # smooth in time, like a video's
        self.stem = nn.Conv2d(16, fc_dim, 1)
        blocks, c = [], fc_dim
        for i, s in enumerate(strides):
            k, c_out = min(1 + 2 * i, 5), max(round(c / 1.2), 12)
            blocks.append(nn.Sequential(nn.Conv2d(c, c_out * s * s, k, padding=k // 2), nn.PixelShuffle(s), nn.GELU()))
            c = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c, 3, 3, padding=1)
        self.tap_names = [f"block{i + 1}" for i in range(len(strides))] + ["rgb"]
        assert (9 * math.prod(strides), 16 * math.prod(strides)) == (h, w)
        self.requires_grad_(False)

    def decode(self, frame_idx, until=None):
        until = until or "rgb"
        out, x = {}, F.gelu(self.stem(self.embeddings[frame_idx]))
        for name, block in zip(self.tap_names, self.blocks):
            x = out[name] = block(x)
            if name == until:
                return out
        out["rgb"] = torch.tanh(self.head(x)) * 0.5 + 0.5
        return out

    def tap_shapes(self):
        shapes, c = {}, self.stem.out_channels
        h, w = 9, 16
        for name, block in zip(self.tap_names, self.blocks):
            s = block[1].upscale_factor
            c, h, w = block[0].out_channels // (s * s), h * s, w * s
            shapes[name] = (c, h, w)
        shapes["rgb"] = (3, h, w)
        return shapes


def caption_macs() -> int:
    """MACs of BLIP's greedy 20-token caption from one image's vision tokens (the same on both paths)."""
    torch.manual_seed(0)
    caption: Any = PRESETS["blip"]().stages["caption"]  # BLIP's caption stage
    tokens = (caption.model.config.vision_config.image_size // caption.model.config.vision_config.patch_size) ** 2 + 1
    return macs(caption.generate, torch.randn(1, tokens, caption.model.config.vision_config.hidden_size))


def cost_table(resolution: str, text_macs: int) -> list[dict]:
    rows = []
    for name in tqdm(TASK_PRESETS, desc=f"costs at {resolution}", unit="preset"):
        with torch.device("meta"):  # shapes only: counting needs no values
            backbone = PRESETS[name]()
            inr = HNeRVStandin(max(backbone.preprocess.num_frames, 1), resolution)
            # BLIP's generation stops on values; count its vision tower here and its text decoder apart.
            suffix: Any = backbone.vision_embeds if name == "blip" else None  # BlipBackbone's
            for tap in inr.tap_names[:-1]:
                for point in backbone.point_names:
                    cost = route_cost(inr, backbone, tap, point, suffix)
                    if name == "blip":
                        cost.macs_nvp += text_macs
                        cost.macs_full += text_macs
                    rows.append({"resolution": resolution, **cost.as_dict()})
        del backbone, inr
    return rows


def fidelity_rows(frames_per_preset: dict[str, int], epochs: int) -> list[dict]:
    rows = []
    for name in TASK_PRESETS:
        torch.manual_seed(0)
        backbone = PRESETS[name]()
        t = backbone.preprocess.num_frames
        inr = HNeRVStandin(frames_per_preset[name], "180p")
        tap, point = FIDELITY_ROUTES[name]
        t0 = time.perf_counter()
        route = adapt_route(
            inr,
            inr.decode(torch.arange(inr.num_frames))["rgb"],
            backbone,
            tap,
            point,
            FitConfig(epochs=epochs),
            clip_stride=max(t // 4, 1),
        )
        rows.append(
            {
                "backbone": name,
                "tap": tap,
                "point": point,
                "pretrained": route.pretrained,
                "samples_frames": inr.num_frames,
                "epochs_run": len(route.history) - 1,
                "loss_start": route.history[0],
                "loss_best": min(route.history),
                **route.fidelity,
                "adapter_percent": route.cost.adapter_percent,
                "macs_ratio_180p": route.cost.macs_ratio,
                "train_seconds": route.train_seconds,
                "total_seconds": time.perf_counter() - t0,
            }
        )
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
        del backbone, inr, route
    return rows


def markdown(costs: list[dict], fidelity: list[dict]) -> str:
    lines = [
        "# Task presets: adapter size, MACs, fidelity\n\nMACs per sample "
        "(frame, or 32-frame clip for SlowFast/I3D), 1 MAC = 1 FLOP, resizes included.\n"
    ]
    for res in sorted({r["resolution"] for r in costs}):
        lines += [
            f"\n## Costs with an HNeRV-shaped INR at {res}\n",
            "| backbone | INR tap | point | adapter params | adapter % | GMACs NVP | GMACs full | NVP / full |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in (r for r in costs if r["resolution"] == res):
            lines.append(
                f"| {r['backbone']} | {r['tap']} | {r['point']} | {r['adapter_params']:,} | "
                f"{r['adapter_percent']:.3f} | {r['macs_nvp'] / 1e9:.2f} | {r['macs_full'] / 1e9:.2f} | "
                f"{r['macs_ratio']:.3f} |"
            )
    if fidelity:
        lines += [
            "\n## Fidelity (random weights unless pretrained: output agreement, not accuracy)\n",
            "| backbone | route | agreement |",
            "|---|---|---|",
        ]
        skip = {"backbone", "tap", "point"}
        for r in fidelity:
            vals = ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k not in skip
            )
            lines.append(f"| {r['backbone']} | {r['tap']} -> {r['point']} | {vals} |")
    return "\n".join(lines) + "\n"


def chart(costs: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    resolutions = sorted({r["resolution"] for r in costs})
    fig, axes = plt.subplots(1, len(resolutions), figsize=(6 * len(resolutions), 4), squeeze=False)
    for ax, res in zip(axes[0], resolutions):
        for name in TASK_PRESETS:
            rows = [r for r in costs if r["resolution"] == res and r["backbone"] == name]
            if not rows:
                continue
            points = list(dict.fromkeys(r["point"] for r in rows))
            best = [min(r["macs_ratio"] for r in rows if r["point"] == p) for p in points]
            ax.plot(range(len(points)), best, marker="o", label=name)
        ax.axhline(0.3, color="grey", ls="--", lw=1, label="target 0.3 (video)")
        ax.set_title(f"NVP / full-pipeline MACs, INR at {res}")
        ax.set_xlabel("injection point (shallow -> deep)")
        ax.set_ylabel("MACs ratio (cheapest INR tap)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    ap = make_parser(__doc__)
    ap.add_argument("--resolution", nargs="+", default=["720p", "180p"], choices=sorted(RESOLUTIONS))
    ap.add_argument("--fidelity", action="store_true", help="also adapt one route per preset and measure agreement")
    ap.add_argument("--epochs", type=int, default=30, help="adapter epochs in the fidelity run (paper: 30)")
    args = ap.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    run = Run(args.out, "task_presets", torch.get_num_threads())
    text_macs = caption_macs()
    costs = [row for res in args.resolution for row in cost_table(res, text_macs)]
    # SlowFast/I3D: 64-frame clip of the reference workload -> 9 clips at stride 8 is too slow here;
    # 40 frames -> 3 clips.
    fidelity = (
        fidelity_rows({"slowfast_r50": 40, "i3d_r50": 40, "detr_r50": 8, "segformer_b0": 16, "blip": 8}, args.epochs)
        if args.fidelity
        else []
    )
    run.write({"costs": costs, "fidelity": fidelity}, markdown(costs, fidelity), chart(costs))
    print(markdown(costs, fidelity))


if __name__ == "__main__":
    main()
