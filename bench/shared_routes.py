"""A task added after encoding: shared routes on files against the base, beside H.264 at equal bytes.

For each real video (never seen by the base or its routes) and rate, one .nvp file encoded against the
shipped base (``nvp_export.base.encode``, ``--fit-seconds`` of fitting); then for each backbone:

- ``shared route``: the route trained once on the corpus for (base, backbone) (``nvp_export.route.shared``;
  trained here and put in ``--store`` when missing), NOT trained on the video it answers;
- ``fine-tuned`` (with ``--finetune N``): that route distilled N epochs on this clip's own answers
  (trained on the clip it is scored on, marked so);
- ``pixels``: the backbone on the file's full decode;
- ``H.264``: libx264 (medium, one GOP, CRF searched) at the file's total bytes once the task is added
  (``nvp-export --task`` names the shared route in the file's manifest; the adapter stays in the model
  store, trained once for every file, its size reported beside);
- ``constant``: the best input-blind answer (top-1: the clip's most frequent label; top-5: the five
  classes most often among its top-5).

Agreement is with the backbone on the original frames: top-1 agreement and top-5 overlap (shared
classes among the five best / 5). PSNR of the file and of H.264 stand beside them.

    python bench/shared_routes.py [--videos bbb,bikes] [--bpp 0.1,0.25,0.5]
        [--backbones efficientnet_lite0,efficientnet_lite2] [--fit-seconds 40] [--finetune 0]
        [--store DIR] [--out bench/results/shared_routes]

JSON, markdown and PNG in --out, rewritten after every point.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nvp_export.base import SHIPPED, load_base
from nvp_export.base.encode import BaseEncodeConfig, encode, write
from nvp_export.base.video import BaseVideo
from nvp_export.benchmark.rate_accuracy import constant_answer, constant_top5
from nvp_export.clips import RealClip
from nvp_export.fidelity.agreement import fidelity
from nvp_export.fidelity.h264 import at_bpp
from nvp_export.fidelity.pixel_paths import backbone_outputs
from nvp_export.onnx_export import backbone_key
from nvp_export.route.shared import (
    SharedRouteConfig,
    finetune_on_clip,
    load_shared_route,
    naming_file_route,
    shared_route_name,
    store_shared_route,
    train_shared_route,
)
from nvp_export.zoo import load_backbone
from nvp_rt.nvpfile import update_routes
from nvp_rt.quality import psnr
from nvp_rt.store import ModelStore
from report import Run, make_parser

PATHS = ("shared route", "fine-tuned", "pixels", "H.264", "constant")


@torch.no_grad()
def route_outputs(route, video: BaseVideo, backbone, batch: int = 8) -> torch.Tensor:
    adapter = route.build_adapter().eval()
    idx = torch.arange(video.num_frames)
    return torch.cat(
        [
            backbone.suffix(adapter(video.decode(i, until=route.inr_tap)[route.inr_tap]), route.injection_point)
            for i in idx.split(batch)
        ]
    )


def scores(outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    f = fidelity(outputs, reference)
    return {"top1": float(f.top1_agreement or 0.0), "top5": float(f.top5_overlap or 0.0)}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| video | backbone | budget bpp | file bpp | file PSNR | H.264 bpp | H.264 PSNR | "
        + " | ".join(f"{p} top-1 / top-5" for p in PATHS if any(p in r for r in rows))
        + " |",
    ]
    shown = [p for p in PATHS if any(p in r for r in rows)]
    lines.append("|---" * (7 + len(shown)) + "|")
    for r in rows:
        cells = [
            r["video"],
            r["backbone"],
            f"{r['bpp']:g}",
            f"{r['file_bpp']:.4f}",
            f"{r['file_psnr']:.2f}",
            f"{r['h264_bpp']:.4f}",
            f"{r['h264_psnr']:.2f}",
        ]
        cells += [f"{r[p]['top1']:.1%} / {r[p]['top5']:.1%}" if p in r else "-" for p in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        "\n\nshared route: trained once on the corpus, never on the video scored; fine-tuned: trained on the "
        "clip it is scored on. Agreement with the backbone on the original frames (top-1 agreement / top-5 "
        "overlap); H.264 at the file's total bytes."
    )


def chart(rows: list[dict]):
    import matplotlib.pyplot as plt

    panels = sorted({(r["video"], r["backbone"]) for r in rows})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    styles = {"shared route": "C0", "fine-tuned": "C4", "pixels": "C2", "H.264": "C3", "constant": "0.5"}
    for col, (video, backbone) in enumerate(panels):
        mine = sorted((r for r in rows if (r["video"], r["backbone"]) == (video, backbone)), key=lambda r: r["bpp"])
        for row, measure in enumerate(("top1", "top5")):
            ax = axes[row][col]
            for path, colour in styles.items():
                points = [
                    (r["file_bpp"] if path != "H.264" else r["h264_bpp"], r[path][measure]) for r in mine if path in r
                ]
                if points:
                    ax.plot(*zip(*points), "o-", color=colour, label=path)
            ax.set_title(f"{video}, {backbone}", fontsize=9)
            ax.set_xlabel("bpp (file total)")
            ax.set_ylabel("top-1 agreement" if measure == "top1" else "top-5 overlap")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("A task added after encoding: shared route (no training on the clip) vs H.264 at equal bytes")
    fig.tight_layout()
    return fig


def main() -> None:
    p = make_parser(__doc__, "shared_routes")
    p.add_argument("--videos", default="bbb,bikes")
    p.add_argument("--bpp", default="0.1,0.25,0.5")
    p.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite2")
    p.add_argument("--fit-seconds", type=float, default=40.0)
    p.add_argument("--finetune", type=int, default=0, help="also score the route fine-tuned N epochs on each clip")
    p.add_argument("--store", type=Path, default=None, help="model store (default: $NVP_STORE or ~/.cache/nvp)")
    args = p.parse_args()
    torch.set_num_threads(1)
    run = Run(args.out, "shared_routes", threads=1)
    store = ModelStore(args.store)
    base, digest = load_base(SHIPPED)
    backbones, routes_of, names_of, route_facts = {}, {}, {}, {}
    for name in args.backbones.split(","):
        backbone = load_backbone(name)
        route = load_shared_route(store, digest, backbone)
        if route is None:
            shared = train_shared_route(base, digest, backbone, SharedRouteConfig())
            print(shared.summary())
            store_shared_route(shared, store)
            route = shared.route
        backbones[name], routes_of[name] = backbone, replace(route, task="cls")
        names_of[name] = shared_route_name(digest, backbone_key(backbone))
        route_facts[name] = {
            "tap": route.inr_tap,
            "point": route.injection_point,
            "adapter_params": int(sum(a.size for a in route.adapter.values())),
            **{k: v for k, v in route.metrics.items() if k.startswith(("held_out", "compute", "trained"))},
        }
    rows: list[dict] = []
    points = [(v, float(b)) for v in args.videos.split(",") for b in args.bpp.split(",")]
    with tempfile.TemporaryDirectory() as work:
        clips = {}
        for video, bpp in tqdm(points, desc="videos x rates", unit="point"):
            if video not in clips:
                frames = RealClip(video, 320, 180, 64).read()
                clips[video] = (frames, {n: backbone_outputs(b, frames) for n, b in backbones.items()})
            frames, references = clips[video]
            encoding = encode(frames, base, digest, BaseEncodeConfig(bpp=bpp, fit_seconds=args.fit_seconds))
            path = Path(work) / f"{video}_{bpp:g}.nvp"
            size = write(path, encoding)
            n, h, w, _ = frames.shape
            video_bpp = 8 * size / (n * h * w)
            nvp = BaseVideo.open(path, (base, digest))
            for name, backbone in backbones.items():
                reference = references[name]
                # the file as a reader gets it once the task is added (nvp-export --task): it names the route
                routed = Path(work) / f"{video}_{bpp:g}_{name}.nvp"
                shutil.copyfile(path, routed)
                entry = naming_file_route(routes_of[name], names_of[name])
                total = update_routes(routed, lambda routes: [entry])  # noqa: B023
                total_bpp = 8 * total / (n * h * w)
                coded = at_bpp(frames, total_bpp)
                row = {
                    "video": video,
                    "backbone": name,
                    "bpp": bpp,
                    "file_bpp": total_bpp,
                    "video_bpp": video_bpp,
                    "route_bytes": total - size,
                    "file_psnr": psnr(frames, encoding.frames),
                    "encode_seconds": encoding.seconds,
                    "h264_bpp": coded.bpp,
                    "h264_psnr": psnr(frames, coded.frames),
                    "h264": coded.describe(),
                    "shared route": scores(route_outputs(routes_of[name], nvp, backbone), reference),
                    "pixels": scores(backbone_outputs(backbone, encoding.frames), reference),
                    "H.264": scores(backbone_outputs(backbone, coded.frames), reference),
                    "constant": {"top1": constant_answer(reference), "top5": constant_top5(reference)},
                }
                if args.finetune:
                    tuned = finetune_on_clip(routes_of[name], nvp, frames, backbone, epochs=args.finetune)
                    row["fine-tuned"] = scores(route_outputs(tuned, nvp, backbone), reference)
                rows.append(row)
                run.write({"routes": route_facts, "rows": rows}, markdown(rows))
    run.write({"routes": route_facts, "rows": rows}, markdown(rows), chart(rows))
    print(markdown(rows))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
