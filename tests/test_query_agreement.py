"""A query's agreement over a clip (what the demo prints) against the torch path, per task kind."""

import numpy as np
import pytest
import torch

import nvp_rt
from nvp_export.clips import ClipSpec, make_clip
from nvp_export.fidelity import query_agreement as query_agreement_module
from nvp_export.fidelity.h264 import at_bpp
from nvp_export.fidelity.query_agreement import query_agreement
from nvp_export.fidelity.task_agreement import box_agreement
from nvp_export.onnx_export import export_route_graphs
from nvp_export.route.multipathway import PathwayAdapter
from nvp_export.zoo import load_backbone
from nvp_rt.nvpfile import Route, replace_routes, stored_route
from nvp_rt.quality import psnr
from random_video import random_inr, write_video

pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")

FRAMES, HEIGHT, WIDTH = 6, 32, 48
ROUTES = {  # task -> (backbone, INR tap, injection point), as test_session routes them
    "cls": (lambda: load_backbone("efficientnet_lite0"), "block2", "stage3"),
    "det": (lambda: load_backbone("detr_r50", reduced=True), "block3", "stage2"),
}


@pytest.fixture(scope="module")
def routed(tmp_path_factory, shared_store):
    d = tmp_path_factory.mktemp("query_agreement")
    frames = make_clip(ClipSpec("astronaut", WIDTH, HEIGHT, FRAMES))
    inr = write_video(d / "clip.nvp", random_inr("hnerv", FRAMES, HEIGHT, WIDTH, 0))
    backbones, adapters, routes = {}, {}, []
    for task, (build, tap, point) in ROUTES.items():
        bb = backbones[task] = build()
        adapter = adapters[task] = PathwayAdapter(inr.tap_shapes()[tap][0], bb.point(point)).eval()
        key = export_route_graphs(inr, bb, point, shared_store)
        arrays, layout = adapter.to_route()
        route = stored_route(Route(task, key, tap, point, arrays, {"kind": bb.task, **layout}))
        adapter.load_route(route.arrays)
        routes.append(route)
    replace_routes(d / "clip.nvp", routes)
    return d / "clip.nvp", frames, inr, backbones, adapters, shared_store


def _torch_answers(task, backbone, outputs):
    if task == "cls":
        return outputs.argmax(1).tolist()
    return [det.boxes for det in backbone.postprocess(outputs, (HEIGHT, WIDTH))]


@pytest.mark.parametrize("task", list(ROUTES))
def test_agreement_over_the_clip_equals_the_torch_path(routed, task, monkeypatch):
    path, frames, inr, backbones, adapters, store = routed
    backbone, (_, tap, point) = backbones[task], ROUTES[task]
    session = nvp_rt.Session(path, store=store)
    coded = []  # libx264 is not bit-exact between encodes in a process: keep the one scored
    monkeypatch.setattr(
        query_agreement_module, "at_bpp", lambda f, bpp: coded.append((bpp, at_bpp(f, bpp))) or coded[-1][1]
    )
    score = query_agreement(path, session, task, backbone, frames)

    original = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = _torch_answers(task, backbone, backbone(backbone.preprocess(original)))
        through_route = backbone.suffix(adapters[task](inr.decode(torch.arange(FRAMES), until=tap)[tap]), point)
    got = _torch_answers(task, backbone, through_route)

    def agreement(a, b):
        return float(np.mean([x == y for x, y in zip(a, b)])) if task == "cls" else box_agreement(a, b)

    assert score.route == pytest.approx(agreement(got, want), abs=1e-9)
    # The constant answer is the best of every answer repeated over the clip (for classification, the mode).
    assert score.constant == pytest.approx(max(agreement([w] * FRAMES, want) for w in want), abs=1e-9)

    decoded = session.decode(range(FRAMES))
    assert score.pixels.psnr == pytest.approx(psnr(frames, decoded))
    bpp = 8 * path.stat().st_size / (FRAMES * HEIGHT * WIDTH)  # the whole file: routes counted
    assert score.pixels.bpp == pytest.approx(bpp)
    ((target, h264),) = coded
    assert target == pytest.approx(bpp)
    assert score.h264.bpp == h264.bpp and score.h264.psnr == pytest.approx(psnr(frames, h264.frames))
    assert len(score.reference) == FRAMES


def test_kinds_without_a_measure_are_refused(routed):
    path, frames, _, _, _, store = routed
    with pytest.raises(ValueError, match="classification and detection"):
        query_agreement(path, nvp_rt.Session(path, store=store), "cls", load_backbone("blip", reduced=True), frames)
