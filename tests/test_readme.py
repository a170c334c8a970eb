"""The README's Python snippet runs as written on a file made as the README's commands make it."""

import re
from pathlib import Path

import pytest
import torch

from nvp_export.inr import from_config, make_config
from nvp_export.inr.store import quantise_inr, save_nvp
from nvp_export.onnx_export import export_inr_graphs, export_route_graphs
from nvp_export.route.multipathway import PathwayAdapter
from nvp_export.zoo import load_backbone
from nvp_rt.nvpfile import Route, replace_routes
from nvp_rt.store import ModelStore

README = Path(__file__).resolve().parents[1] / "README.md"
# The README's tasks, with what each becomes here: (preset, reduced for speed, tap, injection point).
PRESETS = {
    "efficientnet_lite0": ("efficientnet_lite0", False, "block2", "stage3"),
    "det": ("detr_r50", True, "block3", "stage2"),
}

pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_the_readme_snippet_runs_as_written(tmp_path, monkeypatch, one_torch_thread):
    snippet = next(b for b in _blocks("python") if "nvp_rt.Session(" in b)
    commands = next(b for b in _blocks("bash") if "nvp-export --task" in b)
    tasks = re.findall(r"nvp-export --task (\S+)", commands)
    assert set(tasks) == set(PRESETS), "a README command routes a task this test does not build"
    # clip.nvp as `nvp encode` and the nvp-export commands leave it: an INR (tiny, untrained here) and one
    # route per command, named as the command names it; their graphs in the default model store.
    torch.manual_seed(0)
    inr = from_config(make_config("hnerv", height=32, width=48, num_frames=24, fc_dim=16)).eval()
    arrays, meta, quantised = quantise_inr(inr)
    save_nvp(tmp_path / "clip.nvp", quantised, arrays, meta, {"video": {"frames": 24, "height": 32, "width": 48}})
    store = ModelStore()
    export_inr_graphs(quantised, store)
    routes = []
    for task in tasks:
        preset, reduced, tap, point = PRESETS[task]
        backbone = load_backbone(preset, reduced=reduced)
        adapter = PathwayAdapter(quantised.tap_shapes()[tap][0], backbone.point(point), None).eval()
        adapter_arrays, layout = adapter.to_route()
        key = export_route_graphs(quantised, backbone, point, store, stacked=False)
        routes.append(Route(task, key, tap, point, adapter_arrays, {"kind": backbone.task, **layout}))
    replace_routes(tmp_path / "clip.nvp", routes)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["s"].decode([0]).shape == (1, 32, 48, 3)
    assert len(scope["out"]["efficientnet_lite0"].top_k) == 3
