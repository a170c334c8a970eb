"""The fuzzer's seed files: tiny valid .nvp files with routes of several kinds, and their graphs.

``build(folder)`` writes, for one HNeRV architecture (32x48, 8 frames in all):

- ``hnerv.nvp``: one segment; routes: classification, stacked classification, detection, action
  with two pathways, segmentation;
- ``segments.nvp``: three segments (3, 2 and 3 frames, each its own INR, with its metrics) with the
  same routes;
- ``v1.nvp``: ``hnerv.nvp`` as format 1.0 wrote it (one ``inr`` section, float32 routes);
- ``nerv.nvp``: a one-segment NeRV without routes;

each with the video's description and metrics in its manifest, and their graphs into
``folder/store``. Deterministic for a given torch build; needs the export side (torch), the
fuzzing itself does not.
"""

from __future__ import annotations

import warnings
from pathlib import Path

FRAMES, HEIGHT, WIDTH = 8, 32, 48
SEGMENT_FRAMES = (3, 2, 3)
FILES = ("hnerv", "segments", "v1", "nerv")
METRICS = {"psnr_float_db": 12.5, "psnr_quantised_db": 12.25}
# task -> (preset, reduced, INR tap, injection point, adapter hidden width)
ROUTES = {
    "cls": ("efficientnet_lite0", False, "block2", "stage3", None),
    "cls_stacked": ("efficientnet_lite0", False, "block3", "stage2", 8),
    "det": ("detr_r50", True, "block3", "stage2", None),
    "act": ("slowfast_r50", True, "block2", "res3", None),
    "seg": ("segformer_b0", True, "block1", "stage2", None),
}


def _inr(family: str, frames: int, seed: int):
    import torch

    from nvp_export.inr import from_config, make_config

    torch.manual_seed(seed)
    inr = from_config(make_config(family, height=HEIGHT, width=WIDTH, num_frames=frames, fc_dim=16)).eval()
    if family == "hnerv":
        with torch.no_grad():
            inr.embeddings.normal_()
    return inr


def _format_1(path: Path, source: Path) -> None:
    """``source`` (one segment) as a format 1.0 writer stored it: one group in one ``inr`` section, its
    symbol counts beside its words, and the routes' adapters as float32 arrays."""
    from nvp_rt import nvpfile
    from nvp_rt.codec import encode_tensors

    with nvpfile.NvpFile.open(source) as nvp:
        tensors, routes = nvp.segment_tensors(0), nvp.routes()
        manifest = {k: v for k, v in nvp.manifest.items() if k != "segments"}
    arrays, meta = encode_tensors(tensors, {k: 6 if k == "embeddings" else 8 for k in tensors})
    inr_meta = {"codec": "quant-range-v1", "tensors": meta["groups"]["all"]["tensors"], "streams": meta["streams"]}
    adapters = {f"{i}/{k}": v for i, r in enumerate(routes) for k, v in r.arrays.items()}
    sections = {
        nvpfile.V1_INR_SECTION: (nvpfile._blob({k.split("/", 1)[1]: v for k, v in arrays.items()}), inr_meta),
        nvpfile.ROUTES_SECTION: (nvpfile._blob(adapters), {"routes": [r.header() for r in routes]}),
    }
    path.write_bytes(nvpfile._serialise(manifest, sections, (1, 0)))


def build(folder: Path, store: Path | None = None, tasks: tuple[str, ...] = tuple(ROUTES)) -> dict[str, Path]:
    """The seed files in ``folder`` (name -> path), their graphs in ``store`` (default ``folder/store``);
    ``tasks``: the routes of the HNeRV files (a subset of ROUTES)."""
    import torch

    from nvp_export.inr.store import quantise_inr, save_nvp, tap_list
    from nvp_export.onnx_export import export_inr_graphs, export_route_graphs
    from nvp_export.route.multipathway import PathwayAdapter
    from nvp_export.zoo import load_backbone
    from nvp_rt.nvpfile import Route, SegmentPayload, replace_routes, write_nvp
    from nvp_rt.store import ModelStore

    folder.mkdir(parents=True, exist_ok=True)
    graphs = ModelStore(store or folder / "store")
    files = {name: folder / f"{name}.nvp" for name in FILES}
    video = {"frames": FRAMES, "height": HEIGHT, "width": WIDTH, "fps": 30.0}
    info = {"video": video, "metrics": METRICS}  # what an encode writes beside the INR, for mutations to reach
    for family in ("nerv", "hnerv"):  # hnerv last: ``quantised`` is the architecture the routes read
        arrays, meta, quantised = quantise_inr(_inr(family, FRAMES, 0))
        save_nvp(files[family], quantised, arrays, meta, info)
        export_inr_graphs(quantised, graphs)
    parts = [quantise_inr(_inr("hnerv", n, 1 + i)) for i, n in enumerate(SEGMENT_FRAMES)]
    manifest = {"inr": parts[0][2].config_dict(), "taps": tap_list(parts[0][2]), **info}
    segments = [SegmentPayload(q.num_frames, a, m, {"metrics": METRICS}) for a, m, q in parts]
    write_nvp(files["segments"], manifest, segments)
    routes = []
    for i, task in enumerate(tasks):
        preset, reduced, tap, point, hidden = ROUTES[task]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone = load_backbone(preset, reduced=reduced)
        torch.manual_seed(i)
        adapter = PathwayAdapter(quantised.tap_shapes()[tap][0], backbone.point(point), hidden).eval()
        key = export_route_graphs(quantised, backbone, point, graphs, stacked=hidden is not None)
        adapter_arrays, layout = adapter.to_route()
        routes.append(Route(task, key, tap, point, adapter_arrays, {"kind": backbone.task, **layout}))
    for name in ("hnerv", "segments"):
        replace_routes(files[name], routes)
    _format_1(files["v1"], files["hnerv"])
    return files
