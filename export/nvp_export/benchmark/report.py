"""Benchmark output: the machine, JSON, markdown tables shaped like the paper's Tables 1 and 2, PNG charts."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from nvp_rt.atomic import atomic_write

from ..charts import save_png

__all__ = ["machine", "write_report", "table1_markdown", "table2_markdown", "targets"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict:
    import av
    import onnxruntime
    import torch

    return {
        "cpu": _cpu_model(),
        "cores_visible": os.cpu_count(),
        "threads": threads,
        "load_before": os.getloadavg(),
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "pyav": av.__version__,
        "ffmpeg": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _cls_accuracy(results: dict) -> tuple[dict[str, float], float | None]:
    """Top-1 agreement per pipeline on the first clip's highest-budget accuracy video (the H.264 row:
    bpp-matched), and the constant answer's there."""
    points = [p for p in results["accuracy"]["points"] if "cls" in p["accuracy"]]
    if not points:
        return {}, None
    points = [p for p in points if p["clip"] == points[0]["clip"]]
    top = max(p["bpp_budget"] for p in points)
    out, constant = {}, None
    for p in points:
        if p["bpp_budget"] == top and p.get("bpp_matched", True):
            out[p["pipeline"]] = p["accuracy"]["cls"]["top1_agreement"]
            constant = p.get("constant_answer", {}).get("cls", constant)
    return out, constant


def table1_markdown(results: dict) -> str:
    lat = results["latency"]
    acc, constant = _cls_accuracy(results)
    beside = "" if constant is None else f" (constant {constant:.1%})"
    head = (
        "| Workload | Runtime path | Input process (ms) | Inference (ms) | Total (ms) | Cold total (ms) | "
        "Input process (GFLOPs) | Inference (GFLOPs) | Total (GFLOPs) | NVP total vs this | Top-1 agreement |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    nvp_rows = {r["workload"]: r for r in lat["rows"] if r["pipeline"] == "NVP"}
    for r in lat["rows"]:
        g = r["gflops"]
        ratio = nvp_rows[r["workload"]].get("ratios", {}).get(r["pipeline"], {})
        vs = (
            ""
            if r["pipeline"] == "NVP"
            else (f"{ratio['total']:.2f}x ({100 * (1 - ratio['total']):.1f}% less)" if ratio else "")
        )
        a = acc.get(r["pipeline"]) if r["tasks"] == ["cls"] else None
        lines.append(
            f"| {r['workload']} | {r['pipeline']} | {r['process']['median']:.2f} ± {_iqr(r['process'])} | "
            f"{r['inference']['median']:.2f} | {r['total']['median']:.2f} | {r['cold_total']['median']:.1f} | "
            f"{_fmt(g['process'], 3)} | {_fmt(g['inference'], 3)} | "
            f"{_fmt(g['total'], 3) if g['process'] is not None else '-'} | "
            f"{vs} | {'-' if a is None else f'{a:.1%}{beside}'} |"
        )
    v = lat["video"]
    notes = [
        f"Latency and GFLOPs: {v['width']}x{v['height']} x {v['frames']} frames, {v['family']} briefly fitted "
        f"({v['fit_epochs']} epoch(s), {v['fit_seconds']:.0f} s, PSNR {v['psnr_db']:.1f} dB: latency and FLOPs do "
        f"not depend on convergence), H.264 {lat['h264']['settings']} ({lat['h264']['bpp']:.3f} bpp).",
        "Times: median ± half the interquartile range over warm queries; cold = open the video + first query "
        "(model graphs already loaded). GFLOPs per sample, 1 MAC = 1 FLOP, counted from the ONNX graphs "
        "(bilinear resizes 4 per output); H.264 decoding is not counted ('-').",
        "Top-1 agreement: classification, with the backbone on the original frames, on Table 2's first "
        "clip at its highest budget (320x180; H.264 bpp-matched), beside the constant answer's (the "
        "clip's most frequent label).",
    ]
    for name, reason in lat["skipped"].items():
        notes.append(f"{name} skipped: {reason}.")
    for task, route in v["routes"].items():
        notes.append(
            f"Route {task}: {route['preset']} ({'pretrained' if route['pretrained'] else 'random weights'}), "
            f"INR {route['tap']} -> {route['point']} ({route['selected_by']})."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _iqr(stats: dict) -> str:
    return f"{(stats['q3'] - stats['q1']) / 2:.2f}"


def table2_markdown(results: dict) -> str:
    """One table per clip."""
    points = [p for p in results["accuracy"]["points"] if "cls" in p["accuracy"]]
    clips = list(dict.fromkeys(p["clip"] for p in points))
    return "\n".join(f"### {c}\n\n" + _table2_of_clip([p for p in points if p["clip"] == c]) for c in clips)


def _table2_of_clip(points: list[dict]) -> str:
    matched = [p for p in points if p.get("bpp_matched", True)]
    budgets = sorted({p["bpp_budget"] for p in matched})
    rows: dict[str, dict] = {}
    for p in matched:
        rows.setdefault(p["pipeline"], {})[p["bpp_budget"]] = p
    family = {p["bpp_budget"]: p.get("family", "") for p in matched}
    head = (
        "| Path | "
        + " | ".join(f"{family[b]} budget {b:g} bpp" for b in budgets)
        + " |\n|---"
        + "|---" * len(budgets)
        + "|"
    )
    lines = [head]
    for name, by_budget in rows.items():
        cells = [
            f"{by_budget[b]['accuracy']['cls']['top1_agreement']:.1%} @ {by_budget[b]['bpp']:.3f}"
            if b in by_budget
            else "-"
            for b in budgets
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    constant = {p["bpp_budget"]: p["constant_answer"]["cls"] for p in matched if "cls" in p.get("constant_answer", {})}
    if constant:
        lines.append(
            "| constant answer (the clip's most frequent label) | "
            + " | ".join(f"{constant[b]:.1%}" if b in constant else "-" for b in budgets)
            + " |"
        )
    sweep = sorted((p for p in points if not p.get("bpp_matched", True)), key=lambda p: p["bpp"])
    if sweep:
        lines.append(
            "| H.264 CRF sweep | "
            + ", ".join(f"{p['accuracy']['cls']['top1_agreement']:.1%} @ {p['bpp']:.3f}" for p in sweep)
            + " |"
            + " |" * (len(budgets) - 1)
        )
    psnrs = ", ".join(f"{b:g}: {next(p['psnr_db'] for p in matched if p['bpp_budget'] == b):.1f} dB" for b in budgets)
    nvp_bytes = (
        "the whole file, its route fitted with the INR and counted"
        if all(p.get("routes_in_bpp") for p in matched)
        else "the encoded file before routes were added"
    )
    return (
        "\n".join(lines) + "\n\n- Top-1 agreement of EfficientNet-Lite0 (ImageNet weights) with itself on the "
        f"original frames, every frame of the clip; cells: agreement @ measured bpp (.nvp: {nvp_bytes}; "
        "H.264: coded stream, CRF bisected to the .nvp's bpp); a path ignoring its input scores "
        "the constant answer's agreement.\n"
        f"- INR PSNR per budget: {psnrs}.\n"
    )


# The workloads the classification targets are stated for (run.BenchConfig names them so).
CLS_WORKLOAD = "classification, random frame"
CLS_EARLY_WORKLOAD = "classification, random frame, early injection (stage3)"


def targets(results: dict) -> list[dict]:
    """The issue's targets, where this run lands."""
    out = []
    rows = {(r["workload"], r["pipeline"]): r for r in results["latency"]["rows"]}
    for key in (CLS_WORKLOAD, CLS_EARLY_WORKLOAD):
        nvp = rows.get((key, "NVP"))
        where = "" if key == CLS_WORKLOAD else " (early injection)"
        if nvp and (key, "H.264 CPU") in rows:
            r = nvp["ratios"]["H.264 CPU"]
            out.append(
                {
                    "target": f"NVP{where} input process <= 0.1x H.264 CPU",
                    "value": r["process"],
                    "met": r["process"] <= 0.1,
                }
            )
            out.append({"target": f"NVP{where} total <= 0.3x H.264 CPU", "value": r["total"], "met": r["total"] <= 0.3})
        g = nvp["ratios"].get("INR full decode", {}).get("gflops") if nvp else None
        if g is not None:
            out.append({"target": f"NVP{where} GFLOPs <= 0.25x full INR", "value": g, "met": g <= 0.25})
    for p in results["accuracy"]["points"]:
        if p["pipeline"] != "NVP" or p["bpp"] > 0.1 or "cls" not in p["accuracy"]:
            continue
        h = next(
            (
                q
                for q in results["accuracy"]["points"]
                if q["pipeline"] == "H.264 CPU"
                and q.get("bpp_matched")
                and q["bpp_budget"] == p["bpp_budget"]
                and q["clip"] == p["clip"]
            ),
            None,
        )
        if h:
            a, b = p["accuracy"]["cls"]["top1_agreement"], h["accuracy"]["cls"]["top1_agreement"]
            target = f"NVP accuracy >= H.264 at {p['bpp']:.3f} bpp on {p['clip']}"
            out.append({"target": target, "value": a - b, "met": a >= b})
    return out


def _charts(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = results["latency"]["rows"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    pipelines = list(dict.fromkeys(r["pipeline"] for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(3.2 * len(workloads) + 1, 4), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        mine = [next(r for r in rows if r["workload"] == w and r["pipeline"] == p) for p in pipelines]
        x = np.arange(len(mine))
        proc = [r["process"]["median"] for r in mine]
        inf = [r["inference"]["median"] for r in mine]
        # Side by side, not stacked: on a log axis a stacked segment's height says nothing about its share.
        ax.bar(x - 0.27, proc, width=0.27, color="C1", label="input process")
        ax.bar(x, inf, width=0.27, color="C0", label="inference")
        ax.bar(x + 0.27, [r["total"]["median"] for r in mine], width=0.27, color="0.45", label="total")
        ax.errorbar(
            x + 0.27,
            [r["total"]["median"] for r in mine],
            yerr=[
                [r["total"]["median"] - r["total"]["q1"] for r in mine],
                [r["total"]["q3"] - r["total"]["median"] for r in mine],
            ],
            fmt="none",
            color="k",
            capsize=2,
        )
        ax.set_xticks(x, [p.replace(" ", "\n", 1) for p in pipelines], fontsize=7)
        ax.set_title(w, fontsize=8)
        ax.set_ylabel("ms per query (median, IQR)")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    v = results["latency"]["video"]
    fig.suptitle(
        f"Latency, {v['width']}x{v['height']}, {results['machine']['threads']} threads of {results['machine']['cpu']}",
        fontsize=9,
    )
    fig.tight_layout()
    save_png(fig, out / "latency.png")

    points = [p for p in results["accuracy"]["points"] if "cls" in p["accuracy"]]
    if not points:
        return
    clips = list(dict.fromkeys(p["clip"] for p in points))
    fig, axes = plt.subplots(1, len(clips), figsize=(6 * len(clips), 4.8), squeeze=False)
    for ax, clip in zip(axes[0], clips):
        _rate_accuracy_axes(ax, [p for p in points if p["clip"] == clip], clip)
    fig.tight_layout()
    save_png(fig, out / "rate_accuracy.png")


def _rate_accuracy_axes(ax, points: list[dict], clip: str) -> None:
    import matplotlib.ticker

    styles = {"NVP": ("C2", "o-"), "INR full decode": ("C0", "s--"), "H.264 CPU": ("C3", "^-")}
    for name, (colour, style) in styles.items():
        mine = sorted((p for p in points if p["pipeline"] == name), key=lambda p: p["bpp"])
        if mine:
            ax.plot(
                [p["bpp"] for p in mine],
                [100 * p["accuracy"]["cls"]["top1_agreement"] for p in mine],
                style,
                color=colour,
                label=name + (" (CRF sweep + bpp-matched)" if name.startswith("H.264") else ""),
            )
    constant = [p["constant_answer"]["cls"] for p in points if "cls" in p.get("constant_answer", {})]
    if constant:
        ax.axhline(100 * max(constant), color="grey", linestyle=":", label="constant answer (most frequent label)")
    ax.set_xscale("log")
    # Log-axis minor labels overlap over a decade or two: label a fixed set of rates instead.
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("top-1 agreement with original frames (%)")
    ax.set_title(f"Rate vs accuracy, EfficientNet-Lite0, {clip}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: the curves fill the axes


def write_report(results: dict, out: Path) -> str:
    """bench.json, bench.md, latency.png, rate_accuracy.png in ``out``; returns the markdown."""
    results["targets"] = targets(results)
    m = results["machine"]
    md = (
        f"# nvp bench ({results['config']['label']})\n\nMachine: {m['cpu']}, {m['cores_visible']} cores visible, "
        f"{m['threads']} threads used, load average {m['load_before'][0]:.1f} before / {m['load_after'][0]:.1f} "
        f"after (cores shared with other jobs); ONNX Runtime {m['onnxruntime']}, PyAV {m['pyav']}, "
        f"torch {m['torch']}.\n\n"
        "## Table 1: decoding-inference pipelines\n\n"
        + table1_markdown(results)
        + "\n## Table 2: bpp vs task accuracy (classification)\n\n"
        + table2_markdown(results)
        + "\n## Targets\n\n"
        + "\n".join(
            f"- {t['target']}: {t['value']:.3f} ({'met' if t['met'] else 'missed'})" for t in results["targets"]
        )
        + "\n"
    )
    atomic_write(out / "bench.json", json.dumps(results, indent=1, default=str).encode())
    atomic_write(out / "bench.md", md.encode())
    _charts(results, out)
    return md
