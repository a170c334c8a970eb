"""A library of .nvp files of one INR architecture, with routes, for timing and testing queries over many files.

Every file holds its own random INR weights (seeded per file) and the same routes; the graphs go into the
model store once, as ``nvp encode`` and ``nvp-export`` would put them there. Query speed does not depend on
weight values, so no fitting is needed; answers differ from file to file because the weights do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nvp_rt.nvpfile import Route
from nvp_rt.store import ModelStore

from ..inr import from_config, make_config
from ..inr.store import quantise_inr, save_nvp
from ..onnx_export import export_route_graphs
from ..route.multipathway import PathwayAdapter


@dataclass(frozen=True)
class RouteSpec:
    """A task routed from INR ``tap`` into the backbone ``build()`` returns, at ``point``."""

    task: str
    build: Callable
    tap: str
    point: str


@dataclass(frozen=True)
class LibrarySpec:
    height: int = 32
    width: int = 48
    frames: int = 8
    fc_dim: int = 16  # HNeRV width: small files, quick to decode
    seed: int = 0


def random_inr(spec: LibrarySpec, seed: int):
    torch.manual_seed(seed)
    config = make_config("hnerv", height=spec.height, width=spec.width, num_frames=spec.frames, fc_dim=spec.fc_dim)
    inr = from_config(config).eval()
    with torch.no_grad():
        inr.embeddings.normal_()
    return inr


def library_routes(spec: LibrarySpec, routes: list[RouteSpec], store: ModelStore) -> list[Route]:
    """Routes with random adapters (seeded), their graphs and the architecture's INR graphs in ``store``."""
    inr = random_inr(spec, spec.seed)
    out = []
    for i, r in enumerate(routes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # randomly initialised presets warn; equality, not accuracy, matters
            backbone = r.build()
        torch.manual_seed(spec.seed + i)
        adapter = PathwayAdapter(inr.tap_shapes()[r.tap][0], backbone.point(r.point)).eval()
        key = export_route_graphs(inr, backbone, r.point, store)
        arrays, meta = adapter.to_route()
        out.append(Route(r.task, key, r.tap, r.point, arrays, {"kind": backbone.task, **meta}))
    return out


def write_library(folder: Path, count: int, spec: LibrarySpec, routes: list[Route]) -> list[Path]:
    """``count`` files ``folder/video_0000.nvp`` ... of ``spec``'s architecture, each with ``routes``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    video = {"frames": spec.frames, "height": spec.height, "width": spec.width}
    for i in range(count):
        arrays, meta, quantised = quantise_inr(random_inr(spec, spec.seed + 1 + i))
        path = folder / f"video_{i:04d}.nvp"
        save_nvp(path, quantised, arrays, meta, {"video": video}, routes)
        paths.append(path)
    return paths
