"""The README's main job, end to end on one machine: generate a clip, encode it, route two tasks, query, view, bench.

    python bench/demo.py [--out demo]

1. a 320x180 clip from a photograph (``clips``), encoded into an HNeRV .nvp (``encode``);
2. classification routed into EfficientNet-Lite0 (ImageNet weights) by CKA + adapter
   training, detection into DETR-R50 (pretrained weights where the user has them, else
   random: said in the output); graphs exported into the model store;
3. one multi-task query through ``nvp_rt.Session`` (no torch on that path);
4. one frame decoded for people, written as PNG;
5. the quick benchmark table (``nvp bench --quick``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import nvp_rt
from nvp_rt.store import ModelStore
from nvp_rt.video import write_pngs

from .benchmark.assets import TaskSpec, VideoSpec, prepare_video
from .benchmark.run import BenchConfig, run_bench
from .clips import ClipSpec
from .fidelity.query_agreement import MEASURES, query_agreement
from .inr.fit import FitConfig

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo")
    clip: ClipSpec = ClipSpec("astronaut", 320, 180, 16)
    bpp: float = 0.5
    fit_seconds: float = 60.0
    threads: int = 2
    bench: bool = True


def run_demo(config: DemoConfig = DemoConfig(), say=print) -> None:
    started = time.perf_counter()
    store = ModelStore(config.out / "store")
    spec = VideoSpec(
        config.clip,
        config.bpp,
        (TaskSpec("cls", "efficientnet_lite0"), TaskSpec("det", "detr_r50", point="stage1")),
        fit=FitConfig(epochs=300, time_limit_s=config.fit_seconds, threads=config.threads, progress=False),
        adapter_epochs=10,
    )
    say(f"1-2. generate {config.clip.name}, encode it ({config.fit_seconds:.0f} s fit), route cls and det")
    video = prepare_video(spec, config.out, store, lambda m: say(f"   {m}"))
    say(f"   {video.nvp}: {video.bpp:.3f} bpp, PSNR {video.psnr:.1f} dB after quantisation")
    for task, route in video.routes.items():
        weights = "ImageNet weights" if route["pretrained"] else route["weights_note"]
        say(f"   route {task}: INR {route['tap']} -> {route['preset']} @ {route['point']} ({weights})")

    session = nvp_rt.Session(video.nvp, store=store, threads=config.threads)
    frames = [0, config.clip.frames // 2]
    answers = session.run(["cls", "det"], frames=frames)
    t = session.last_timings
    say(
        f"3. Session.run(['cls', 'det'], frames={frames}) in {1e3 * t['total']:.1f} ms "
        f"(prefix {1e3 * t['prefix']:.1f}, adapters {1e3 * t['adapters']:.1f}, heads {1e3 * t['heads']:.1f})"
    )
    scores = {
        task: query_agreement(video.nvp, session, task, TaskSpec(task, route["preset"]).backbone(), video.frames)
        for task, route in video.routes.items()
    }
    for i, f in enumerate(frames):
        say(f"   frame {f} cls, route:          " + _top(answers["cls"].top_k[i]))
        say(f"   frame {f} cls, original frame: " + _top(scores["cls"].reference[f]))
    for i, f in enumerate(frames):
        det = answers["det"].detections[i]
        say(f"   frame {f} det, route:          " + _boxes(det.boxes, det.scores, det.labels))
        ref = scores["det"].reference[f]
        say(f"   frame {f} det, original frame: " + _boxes(ref.boxes.numpy(), ref.scores.numpy(), ref.labels.numpy()))
    say(
        f"   over all {config.clip.frames} frames, against each backbone on the original frames (both routes were "
        f"trained on this clip's own answers; the file is {scores['cls'].pixels.bpp:.3f} bpp with its routes):"
    )
    for task, s in scores.items():
        weights = "" if video.routes[task]["pretrained"] else " (random weights: fidelity, not accuracy)"
        score = "{:.1%}".format if s.measure == MEASURES["classification"] else "{:.2f}".format
        say(
            f"   {task} {s.measure}{weights}: route {score(s.route)} | the file's pixels {score(s.pixels.agreement)} "
            f"at {s.pixels.psnr:.1f} dB | H.264 at {s.h264.bpp:.3f} bpp {score(s.h264.agreement)} at "
            f"{s.h264.psnr:.1f} dB | constant answer {score(s.constant)}"
        )
    png = write_pngs(config.out / "frames", session.decode([frames[1]]), first_index=frames[1])[0]
    say(f"4. decoded frame {frames[1]} for people: {png}")
    if config.bench:
        say("5. quick benchmark (nvp bench --quick):")
        bench = BenchConfig.quick(out=config.out / "bench", threads=config.threads, store=config.out / "store")
        run_bench(bench)
        say((bench.out / "bench.md").read_text())
    say(f"demo done in {time.perf_counter() - started:.0f} s")


def _top(rows) -> str:
    return ", ".join(f"{label} {p:.1%}" for _, label, p in rows[:3])


def _boxes(boxes, scores, labels) -> str:
    shown = "".join(
        f"; class {int(c)} {s:.2f} at {[round(float(v)) for v in b]}"
        for b, s, c in list(zip(boxes, scores, labels))[:2]
    )
    return f"{len(boxes)} boxes above the head's threshold{shown}"
