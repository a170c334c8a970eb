"""`nvp-export --task` for every task preset beyond classification, on reduced configurations.

A tiny random HNeRV video is written with ``save_nvp`` (no encoding: the route's plumbing is
under test, not the INR's quality); nvp-export runs in-process with ``--reduced`` (the
presets' ``build`` with small configs) and the route it stores is checked against the
runtime contract and against ``adapt_route`` retrained here with the same settings, and
``nvp_rt.Session`` answers it through the exported graphs as the torch path does.
"""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

import nvp_rt
from nvp_export.cli import TASK_KINDS
from nvp_export.cli import main as export_main
from nvp_export.inr import from_config, load_nvp, make_config
from nvp_export.inr.store import quantise_inr, save_nvp
from nvp_export.onnx_export import backbone_key
from nvp_export.route.multipathway import FitConfig, PathwayAdapter, decode_clips
from nvp_export.route.task_adapt import adapt_route
from nvp_export.zoo import REDUCED
from nvp_rt.nvpfile import NvpFile, stored_route

pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")

FRAMES, HEIGHT, WIDTH = 12, 32, 48
EPOCHS, STRIDE, SEED = 2, 2, 0
# One candidate pair each (the CKA top 5%) keeps the file quick; selection among several is adapt_task's business.
ARGS = ["--reduced", "--epochs", str(EPOCHS), "--clip-stride", str(STRIDE), "--top", "0.05", "--seed", str(SEED), "-q"]


def _write_video(path, frames: int):
    torch.manual_seed(0)
    inr = from_config(make_config("hnerv", height=HEIGHT, width=WIDTH, num_frames=frames, fc_dim=16)).eval()
    with torch.no_grad():
        inr.embeddings.normal_()
    arrays, meta, quantised = quantise_inr(inr)
    save_nvp(path, quantised, arrays, meta, {"video": {"frames": frames, "height": HEIGHT, "width": WIDTH}})


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("task_cli") / "clip.nvp"
    _write_video(path, FRAMES)
    return path


@pytest.mark.parametrize(
    "task,preset",
    [("det", "detr_r50"), ("act", "slowfast_r50"), ("i3d_r50", "i3d_r50"), ("seg", "segformer_b0"), ("cap", "blip")],
)
def test_export_stores_a_route_for_every_task_preset(video, tmp_path, capsys, rng, task, preset):
    path = tmp_path / "clip.nvp"
    shutil.copy(video, path)
    assert TASK_KINDS.get(task, task) == preset
    assert export_main(["--task", task, str(path), *ARGS]) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    assert "RANDOMLY INITIALISED" in out.err and "output agreement" in out.out  # random weights, said so
    assert "% of backbone" in out.out and "GFLOPs" in out.out

    (route,) = NvpFile.open(path).routes()
    torch.manual_seed(SEED)  # nvp-export builds the random preset under its --seed: the same weights
    backbone = REDUCED[preset]()
    inr = load_nvp(path)
    # Contract: task, backbone key, tap, point; kind, hidden, pathways; one adapter per pathway.
    assert route.task == task and route.backbone == backbone_key(backbone)
    assert route.tap in inr.tap_names and route.injection_point in backbone.point_names
    meta = route.metadata
    assert meta["kind"] == backbone.task and meta["hidden"] is None
    point = backbone.point(route.injection_point)
    shapes = point.pathway_shapes
    assert meta["pathways"] == [{"size": list(s[-2:]), "frames": s[1] if len(s) == 4 else None} for s in shapes]
    c_in = inr.tap_shapes()[route.tap][0]
    prefixes = [""] if len(shapes) == 1 else [f"pathway{i}/" for i in range(len(shapes))]
    assert sorted(route.arrays) == sorted(f"{p}{k}0" for p in prefixes for k in ("weight", "bias"))
    for p, s in zip(prefixes, shapes):
        assert route.arrays[p + "weight0"].shape == (s[0], c_in) and route.arrays[p + "bias0"].shape == (s[0],)
        assert route.arrays[p + "weight0"].dtype == np.float32
    params = sum(a.size for a in route.arrays.values())
    assert meta["adapter_params"] == params and meta["backbone_params"] == backbone.num_parameters()
    assert meta["adapter_percent"] == pytest.approx(100 * params / backbone.num_parameters())
    assert meta["macs_ratio"] == pytest.approx(meta["macs_nvp"] / meta["macs_full"])
    assert 1 <= meta["cka_rank"] <= meta["pairs"] == len(inr.tap_names) * len(backbone.point_names)
    assert all(isinstance(v, (int, float, str)) for k, v in meta.items() if k not in ("hidden", "pathways"))

    # The stored arrays are the adapter adapt_route trains with the same settings, pathway for pathway.
    frames = inr.render(range(inr.num_frames))
    fit = FitConfig(epochs=EPOCHS, seed=SEED, progress=False)
    reference = adapt_route(
        inr, frames, backbone, route.tap, route.injection_point, fit, clip_stride=STRIDE, holdout_every=5
    )
    trained, _ = reference.adapter.to_route()  # as the file stores it: the same 8-bit codes
    for name, value in stored_route(replace(route, arrays=trained)).arrays.items():
        np.testing.assert_array_equal(route.arrays[name], value)
    rebuilt = PathwayAdapter(c_in, point)
    rebuilt.load_route(route.arrays)
    video_point = len(shapes[0]) == 4
    h, w = inr.tap_shapes()[route.tap][1:]
    x = torch.from_numpy(
        rng.standard_normal(
            (2, c_in, *((backbone.preprocess.num_frames,) if video_point else ()), h, w), dtype=np.float32
        )
    )
    with torch.no_grad():
        expected, got = reference.adapter(x), rebuilt(x)
    for e, g in zip(expected if isinstance(expected, list) else [expected], got if isinstance(got, list) else [got]):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-3 * float(e.abs().max()))  # 8-bit codes of 8-bit codes
    assert meta["features_rel_error"] == pytest.approx(reference.fidelity["features_rel_error"], rel=1e-4)

    # The runtime answers the stored route through the exported graphs as the torch path does.
    clip = backbone.preprocess.num_frames
    frames = list(range(clip)) if clip > 1 else rng.choice(FRAMES, 3, replace=False).tolist()
    answer = nvp_rt.Session(path).run([task], frames=frames)[task]
    idx = torch.tensor(frames)
    with torch.no_grad():
        out = backbone.suffix(
            rebuilt(decode_clips(inr, idx.reshape(-1, clip) if clip > 1 else idx, route.tap)), route.injection_point
        )
    if backbone.task == "captioning":
        assert answer.token_ids == [[i for i in row if i not in backbone.special_ids] for row in out.tolist()]
    else:
        logits = (out[0] if backbone.task == "detection" else out).numpy()
        assert np.abs(answer.logits - logits).max() <= 1e-4 * np.abs(logits).max()


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--task", "pose"], ["unknown task", "det"]),
        (["--task", "cls", "--reduced"], ["efficientnet_lite0 has no reduced configuration"]),
    ],
)
def test_export_user_errors_are_one_line(video, capsys, argv, words):
    assert export_main([*argv, str(video), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_video_preset_on_a_clip_shorter_than_its_clip_length_is_refused(tmp_path, capsys):
    short = tmp_path / "short.nvp"
    _write_video(short, 6)
    before = short.read_bytes()
    assert export_main(["--task", "act", str(short), *ARGS]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clips of 8 frames" in err[0] and "encodes 6" in err[0], err
    assert short.read_bytes() == before  # nothing written
