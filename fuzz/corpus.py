"""The fuzzer's seed files: tiny valid .nvp files with routes of several kinds, and their graphs.

``build(folder)`` writes ``hnerv.nvp`` (8 frames of 32x48, routes: classification, stacked
classification, detection, action with two pathways, segmentation) and ``nerv.nvp`` (no route),
and their graphs into ``folder/store``. Deterministic for a given torch build; needs the export
side (torch), the fuzzing itself does not.
"""

from __future__ import annotations

import warnings
from pathlib import Path

FRAMES, HEIGHT, WIDTH = 8, 32, 48
# task -> (preset, reduced, INR tap, injection point, adapter hidden width)
ROUTES = {
    "cls": ("efficientnet_lite0", False, "block2", "stage3", None),
    "cls_stacked": ("efficientnet_lite0", False, "block3", "stage2", 8),
    "det": ("detr_r50", True, "block3", "stage2", None),
    "act": ("slowfast_r50", True, "block2", "res3", None),
    "seg": ("segformer_b0", True, "block1", "stage2", None),
}


def build(folder: Path, store: Path | None = None, tasks: tuple[str, ...] = tuple(ROUTES)) -> dict[str, Path]:
    """The seed files in ``folder``, their graphs in ``store`` (default ``folder/store``); ``tasks``: the
    routes of ``hnerv.nvp`` (a subset of ROUTES)."""
    import torch

    from nvp_export.inr import from_config, make_config
    from nvp_export.inr.store import quantise_inr, save_nvp
    from nvp_export.onnx_export import export_inr_graphs, export_route_graphs
    from nvp_export.route.multipathway import PathwayAdapter
    from nvp_export.zoo import load_backbone
    from nvp_rt.nvpfile import Route, replace_routes
    from nvp_rt.store import ModelStore

    folder.mkdir(parents=True, exist_ok=True)
    graphs = ModelStore(store or folder / "store")
    files = {}
    for family in ("hnerv", "nerv"):
        torch.manual_seed(0)
        inr = from_config(make_config(family, height=HEIGHT, width=WIDTH, num_frames=FRAMES, fc_dim=16)).eval()
        if family == "hnerv":
            with torch.no_grad():
                inr.embeddings.normal_()
        arrays, meta, quantised = quantise_inr(inr)
        path = files[family] = folder / f"{family}.nvp"
        video = {"frames": FRAMES, "height": HEIGHT, "width": WIDTH, "fps": 30.0}
        save_nvp(path, quantised, arrays, meta, {"video": video})
        export_inr_graphs(quantised, graphs)
        if family != "hnerv":
            continue
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
        replace_routes(path, routes)
    return files
