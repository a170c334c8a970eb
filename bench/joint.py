"""Issue #5's targets on an encoded 320x180 clip with EfficientNet-Lite0, and joint optimisation.

For an already encoded .nvp (``nvp encode``; encoding takes ~9 minutes, so it is an input here)
and its source clip (made again from the manifest's clip name, or --source):

- adapt with each candidate strategy (``top``: CKA top-10%, the paper's; ``per_point``: each
  injection point's best-CKA tap): NVP top-1 agreement / top-5 overlap with the backbone on the
  original frames, adapter size as % of the backbone, wall time (CKA + features + training);
- the pixel paths on the same frames: full INR decode, and H.264 at the INR payload's bpp;
- joint optimisation of the best strategy's route for --joint-epochs: PSNR and agreement before
  and after (re-quantised INR), the loss terms per epoch; and the same budget with the INR
  frozen (inr_lr 0: the adapter alone learns the task loss too), to see what the INR adds.

    python bench/joint.py --nvp astro.nvp [--source clip.mp4] [--joint-epochs 10] [--threads 2]

JSON + markdown + PNG in --out (default bench/results).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from nvp_export.clips import ClipSpec, make_clip
from nvp_export.fidelity.pixel_paths import compare_pixel_paths, payload_bpp
from nvp_export.inr import load_nvp
from nvp_export.route.adapt import AdaptConfig, adapt
from nvp_export.route.joint import JointConfig, joint_route
from nvp_export.zoo import load_backbone
from nvp_rt.nvpfile import NvpFile
from nvp_rt.video import read_video
from report import Run, make_parser


def source_frames(nvp: NvpFile, source: str | None):
    if source:
        return read_video(source)[0]
    name = nvp.manifest["video"]["source"]  # e.g. astronaut_320x180x64_s0.mp4, as clips.ClipSpec names it
    try:
        return make_clip(ClipSpec.from_name(Path(name).stem))
    except ValueError:
        raise SystemExit(f"{name} is not a clip made by nvp_export.clips; pass --source") from None


def chart(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    bars = [(f"NVP\n{s['candidates']}", s["fidelity"]["top1_agreement"]) for s in report["strategies"]]
    bars += [
        (p["name"].replace(" at equal bpp", "\n@ equal bpp").replace("INR ", "INR\n"), p["top1_agreement"])
        for p in report["pixel_paths"]
    ]
    j = report["joint"]
    bars.append(("NVP +CE\nINR frozen", report["frozen_inr"]["fidelity_after"]["top1_agreement"]))
    bars.append(("NVP joint", j["fidelity_after"]["top1_agreement"]))
    a.bar([n for n, _ in bars], [100 * v for _, v in bars], color="tab:blue")
    a.set_ylabel("top-1 agreement with original frames (%)")
    a.set_ylim(0, 105)
    a.axhline(95, color="tab:red", ls=":", lw=1)
    a.tick_params(axis="x", labelsize=8)
    a.set_title("fidelity (pseudo-label protocol)", fontsize=10)
    for key, style in (("recon", "-"), ("task", "--"), ("feat", ":")):
        b.plot(range(1, len(j["history"]) + 1), [h[key] for h in j["history"]], style, label=f"L_{key}")
    b.set_yscale("log")
    b.set_xlabel("joint epoch")
    b.set_title(f"joint: PSNR {j['psnr_before_db']:.2f} -> {j['psnr_after_db']:.2f} dB (re-quantised)", fontsize=10)
    b.legend()
    fig.suptitle(f"{report['clip']}, EfficientNet-Lite0, threads={report['threads']}", fontsize=10)
    fig.tight_layout()
    return fig


def markdown(report: dict) -> str:
    lines = ["| path | top-1 agreement | top-5 overlap | detail |", "|---|---|---|---|"]
    for s in report["strategies"]:
        r = s["route"]
        lines.append(
            f"| NVP, candidates={s['candidates']} | {s['fidelity']['top1_agreement']:.1%} | "
            f"{s['fidelity']['top5_overlap']:.1%} | {r['inr_tap']} -> {r['injection_point']}, adapter "
            f"{r['metrics']['adapter_percent']:.3f}% of backbone, adapt {s['seconds']:.1f} s "
            f"(training {s['stage_seconds']['training']:.1f} s) |"
        )
    for p in report["pixel_paths"]:
        lines.append(
            f"| {p['name']} | {p['top1_agreement']:.1%} | {p['top5_overlap']:.1%} | "
            f"{p['detail']}, {p['psnr_db']:.2f} dB |"
        )
    for key, name in (("joint", "NVP after joint"), ("frozen_inr", "NVP, same budget, INR frozen")):
        j = report[key]
        lines.append(
            f"| {name} ({len(j['history'])} epochs) | {j['fidelity_after']['top1_agreement']:.1%} | "
            f"{j['fidelity_after']['top5_overlap']:.1%} | PSNR {j['psnr_before_db']:.2f} -> "
            f"{j['psnr_after_db']:.2f} dB, {j['seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = make_parser(__doc__, threads=2)
    parser.add_argument("--nvp", required=True, help="an encoded 320x180 clip (nvp encode)")
    parser.add_argument("--source", help="its source video (default: made again from the manifest's clip name)")
    parser.add_argument("--joint-epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run(args.out, "joint", args.threads)

    nvp = NvpFile.open(args.nvp)
    inr = load_nvp(args.nvp)
    frames = source_frames(nvp, args.source)
    backbone = load_backbone("efficientnet_lite0")
    report = {
        "clip": nvp.manifest["video"]["source"],
        "nvp": str(args.nvp),
        "threads": args.threads,
        "inr_psnr_db": nvp.manifest.get("metrics", {}).get("psnr_quantised_db"),
        "payload_bpp": payload_bpp(nvp),
        "strategies": [],
    }
    results = {}
    for candidates in ("top", "per_point"):
        started = time.perf_counter()
        result = adapt(inr, frames, backbone, AdaptConfig(candidates=candidates))
        seconds = time.perf_counter() - started
        results[candidates] = result
        report["strategies"].append(
            {
                "candidates": candidates,
                "seconds": seconds,
                "stage_seconds": result.seconds,
                "route": {k: v for k, v in asdict(result.route).items() if k != "adapter"},
                "fidelity": result.fidelity.to_dict(),
                "candidates_trained": len(result.candidates),
            }
        )
        print(f"[{candidates}] {result.summary()} ({seconds:.1f} s)", flush=True)

    paths = compare_pixel_paths(inr, frames, backbone, report["payload_bpp"])
    report["pixel_paths"] = [p.to_dict() for p in paths]
    for p in paths:
        print(
            f"[{p.name}] top-1 {p.fidelity.top1_agreement:.1%}, top-5 {p.fidelity.top5_overlap:.1%}, {p.detail}, "
            f"{p.psnr:.2f} dB",
            flush=True,
        )

    best = max(results.values(), key=lambda r: r.fidelity.top1_agreement or 0.0)  # classifiers: never None
    # Joint as specified, and the same budget with the INR frozen (inr_lr 0): what the INR's freedom adds.
    for key, config in (
        ("joint", JointConfig(epochs=args.joint_epochs)),
        ("frozen_inr", JointConfig(epochs=args.joint_epochs, inr_lr=0.0)),
    ):
        route, joint = joint_route(inr, frames, backbone, best.route, config)
        report[key] = {
            "route": f"{route.inr_tap} -> {route.injection_point}",
            "config": {k: v for k, v in asdict(config).items() if k not in ("feature_loss", "progress")},
            "psnr_before_db": joint.psnr_before,
            "psnr_after_db": joint.psnr_after,
            "psnr_after_float_db": joint.psnr_after_float,
            "fidelity_before": joint.fidelity_before[0],
            "fidelity_after": joint.fidelity_after[0],
            "history": joint.history,
            "seconds": joint.seconds,
            "inr_max_abs_change": max(
                float((a - b).abs().max()) for a, b in zip(joint.inr.state_dict().values(), inr.state_dict().values())
            ),
        }
        print(f"[{key}] {joint.summary()}", flush=True)

    run.write(report, markdown(report), chart(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
