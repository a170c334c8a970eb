"""GFLOPs of each pipeline per sample (a frame, or a clip of the backbone's frames), counted from the graphs it runs.

- NVP: the INR stage graphs up to the route's tap, the adapter (its resize + 1x1 conv
  per pathway, as a graph) and the backbone suffix graph;
- INR full decode: every INR stage graph, the preprocessing resize to the backbone's
  input (bilinear, as a graph), the full backbone graph;
- H.264: the full backbone graph (decoding is not a neural network: "-" in Table 1).

``graph_flops`` counts them: 1 MAC = 1 FLOP, bilinear resizes at 4 per output element.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from nvp_rt.nvpfile import NvpFile
from nvp_rt.prefix import STAGE_INPUT, VideoINR
from nvp_rt.store import ModelStore

from .graph_flops import graph_macs, resize_conv_graph

__all__ = ["RouteFlops", "route_flops", "query_flops"]

GIGA = 1e9


@dataclass
class RouteFlops:
    """GFLOPs of one route's pieces per sample (a frame, or a clip of ``frames_per_sample``)."""

    task: str
    frames_per_sample: int
    tap: str
    prefix: float  # INR stage graphs up to the tap
    adapter: float  # resize + 1x1 conv, every pathway
    suffix: float  # backbone suffix graph
    full_decode: float  # every INR stage graph
    resize: float  # the pixel paths' resize to the backbone's input
    backbone: float  # full backbone graph

    def as_dict(self) -> dict:
        return asdict(self)


def query_flops(
    routes: list[RouteFlops], tap_order: list[str], samples: int = 1
) -> dict[str, tuple[float | None, float]]:
    """(input process, inference) GFLOPs per pipeline family ("nvp", "inr", "h264") of a query asking every
    route in ``routes`` for ``samples`` samples: the pixel paths decode once, NVP decodes to the deepest tap once."""
    deepest = max(routes, key=lambda r: tap_order.index(r.tap))
    backbones = sum(r.backbone for r in routes)
    return {
        "nvp": (samples * (deepest.prefix + sum(r.adapter for r in routes)), samples * sum(r.suffix for r in routes)),
        "inr": (samples * (routes[0].full_decode + sum(r.resize for r in routes)), samples * backbones),
        "h264": (None, samples * backbones),
    }


def _stage_macs(store: ModelStore, inr: VideoINR, until: str) -> int:
    """MACs of decoding one frame up to ``until`` through the stage graphs."""
    stem = inr.stem_input(0, np.zeros(1, dtype=np.int64))
    shape, total = tuple(stem.shape), 0
    for name in inr.stages_until(until):
        weights = {k: v.shape for k, v in inr.stage_weights(0, name).items()}
        total += graph_macs(store.get("inr", f"{inr.key}.{name}"), {STAGE_INPUT: shape, **weights}).total
        shape = (1, *inr.tap(name).shape)
    return total


def route_flops(nvp_path, task: str, store: ModelStore) -> RouteFlops:
    nvp = NvpFile.open(nvp_path)
    inr = VideoINR(nvp)
    route = next(r for r in nvp.routes() if r.task == task)
    description = json.loads(store.get("backbone", route.backbone, suffix=".json").read_text())
    pre = description["preprocess"]
    clip = int(pre.get("num_frames") or 1)
    h, w = pre["input_size"]
    pixel_input = (1, 3, h, w) if clip == 1 else (1, 3, clip, h, w)
    backbone = graph_macs(store.get("backbone", route.backbone), {"input": pixel_input}).total

    tap = inr.tap(route.tap)
    # The runtime adapts every requested frame for each pathway (a slower pathway's frames are picked inside the
    # suffix graph), so each pathway's adapter runs ``clip`` times per sample.
    adapter = sum(
        clip * graph_macs(resize_conv_graph(tap.shape[0], tap.shape[1:], shape[-2:], shape[0])).total
        for shape in description["points"][route.injection_point]
    )
    suffix = graph_macs(store.get("suffix", f"{route.backbone}@{route.injection_point}"), batch=1).total
    prefix = clip * _stage_macs(store, inr, route.tap)
    full_decode = clip * _stage_macs(store, inr, "rgb")
    resize = clip * graph_macs(resize_conv_graph(3, inr.tap("rgb").shape[1:], (h, w))).total
    return RouteFlops(
        task,
        clip,
        route.tap,
        prefix / GIGA,
        adapter / GIGA,
        suffix / GIGA,
        full_decode / GIGA,
        resize / GIGA,
        backbone / GIGA,
    )
