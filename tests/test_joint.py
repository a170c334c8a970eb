"""Joint optimisation of the INR and route adapters, on a tiny fitted HNeRV and small backbones."""

import copy
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import nvp_rt
from nvp_export.backbone import Backbone, Preprocess
from nvp_export.cli import main as export_main
from nvp_export.clips import ClipSpec, make_clip, write_clip
from nvp_export.fidelity.agreement import fidelity
from nvp_export.inr import from_config, load_nvp, make_config, quantise_inr
from nvp_export.inr.fit import FitConfig, fit
from nvp_export.route.adapter import AdapterSpec, MicroAdapter
from nvp_export.route.joint import (
    TASK_LOSSES,
    JointConfig,
    JointTask,
    classification_loss,
    detection_loss,
    joint_optimise,
    save_joint,
)
from nvp_export.zoo import load_backbone
from nvp_rt.cli import main as nvp_main
from nvp_rt.nvpfile import NvpFile, Route, replace_routes
from nvp_rt.quality import psnr
from nvp_rt.video import read_video

pytestmark = [
    pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]
N, SIZE = 8, (32, 48)


@pytest.fixture(scope="module")
def encoded():
    """A tiny HNeRV fitted to a clip, as stored: quantised (the starting point joint optimisation gets)."""
    frames = make_clip(ClipSpec("coffee", width=SIZE[1], height=SIZE[0], frames=N, seed=2))
    target = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    inr = from_config(make_config("hnerv", height=SIZE[0], width=SIZE[1], num_frames=N, fc_dim=16))
    result = fit(inr, target, FitConfig(epochs=25, time_limit_s=None, progress=False))
    return frames, quantise_inr(result.inr)[2]


def tiny_classifier(seed=0):
    torch.manual_seed(seed)
    seq = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    )
    return Backbone.from_sequential(
        "tiny",
        seq,
        points=["1", "3"],
        preprocess=Preprocess((32, 32)),
        labels=[str(i) for i in range(10)],
        pretrained=True,
        weights_source="test",
    )


def task_for(inr, backbone, tap="block2", point="1", seed=0):
    torch.manual_seed(seed)
    spec = AdapterSpec(inr.tap_shapes()[tap][0], backbone.point(point).channels, backbone.point(point).spatial_size)
    return JointTask(backbone, tap, point, MicroAdapter(spec))


def unit(frames):
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


def test_classification_loss_is_cross_entropy_to_pseudo_labels(rng):
    n, k = int(rng.integers(2, 9)), int(rng.integers(3, 20))
    outputs, reference = rng.normal(size=(n, k)) * 3, rng.normal(size=(n, k))
    labels = reference.argmax(1)
    shifted = outputs - outputs.max(1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(n), labels].mean()
    got = classification_loss(None, torch.from_numpy(outputs).float(), torch.from_numpy(reference).float())
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert TASK_LOSSES["classification"] is classification_loss


def test_rates_psnr_and_the_written_file(encoded, tmp_path):
    frames, inr = encoded
    task = task_for(inr, tiny_classifier())
    inr_before = copy.deepcopy(inr.state_dict())
    adapter_before = copy.deepcopy(task.adapter.state_dict())
    # One Adam step (one batch of all frames): each parameter moves by lr * g / (|g| + eps), i.e. ~lr.
    config = JointConfig(epochs=1, batch_size=N, inr_lr=3e-4, adapter_lr=2e-2, progress=False)
    result = joint_optimise(inr, frames, [task], config)
    for name, value in inr.state_dict().items():  # the INR given is left as it was
        torch.testing.assert_close(value, inr_before[name], rtol=0, atol=0)
    for params, before, lr in (
        (result.inr_float.state_dict(), inr_before, config.inr_lr),
        (task.adapter.state_dict(), adapter_before, config.adapter_lr),
    ):
        step = torch.cat([(params[k] - before[k]).abs().flatten() for k in before])
        assert float(step.max()) <= lr * (1 + 1e-3)
        assert float(step.median()) >= 0.5 * lr, (float(step.median()), lr)
    # PSNR as stored: the re-quantised INR's 8-bit rendering of the whole clip, before and after.
    assert result.psnr_before == pytest.approx(psnr(frames, inr.render(range(N))), abs=1e-9)
    assert result.psnr_after == pytest.approx(psnr(frames, result.inr.render(range(N))), abs=1e-9)
    assert result.psnr_after_float == pytest.approx(psnr(frames, result.inr_float.render(range(N))), abs=1e-9)
    requantised = quantise_inr(result.inr_float)[2].state_dict()
    for name, value in result.inr.state_dict().items():
        torch.testing.assert_close(value, requantised[name], rtol=0, atol=0)
    # Fidelity after is the stored INR's NVP path against the backbone on the original frames.
    bb = task.backbone
    with torch.no_grad():
        taps = result.inr.decode(torch.arange(N), until=task.tap)[task.tap]
        out = bb.suffix(task.adapter(taps), task.point)
        reference = bb(bb.preprocess(unit(frames)))
    assert result.fidelity_after[0] == pytest.approx(fidelity(out, reference).to_dict(), rel=1e-6)
    assert len(result.history) == 1 and all(np.isfinite(v) for v in result.history[0].values())
    # The file holds the jointly optimised INR and the routes given.
    path = tmp_path / "clip.nvp"
    route = Route(
        "cls",
        "tiny",
        task.tap,
        task.point,
        task.adapter.to_arrays(),
        {
            "kind": "classification",
            "hidden": None,
            "pathways": [{"size": list(task.adapter.spec.size), "frames": None}],
        },
    )
    save_joint(path, {"video": {"frames": N, "height": SIZE[0], "width": SIZE[1]}}, result, config, [route])
    stored = load_nvp(path)
    for name, value in stored.state_dict().items():
        torch.testing.assert_close(value, result.inr.state_dict()[name], rtol=0, atol=0)
    nvp = NvpFile.open(path)
    assert nvp.manifest["joint"]["psnr_after_db"] == pytest.approx(psnr(frames, stored.render(range(N))), abs=1e-4)
    assert [r.task for r in nvp.routes()] == ["cls"]


def test_joint_lowers_the_task_loss_below_adapter_only_on_the_same_budget(encoded):
    frames, inr = encoded
    bb = tiny_classifier(seed=1)
    with torch.no_grad():
        reference = bb(bb.preprocess(unit(frames)))

    def task_loss_after(inr_lr):
        task = task_for(inr, bb, tap="block3", seed=3)
        config = JointConfig(epochs=6, inr_lr=inr_lr, adapter_lr=1e-3, progress=False)
        result = joint_optimise(inr, frames, [task], config)
        with torch.no_grad():
            taps = result.inr_float.decode(torch.arange(N), until=task.tap)[task.tap]
            return float(classification_loss(bb, bb.suffix(task.adapter(taps), task.point), reference)), result

    adapter_only, frozen = task_loss_after(0.0)
    joint, result = task_loss_after(1e-3)
    for name, value in frozen.inr_float.state_dict().items():  # lr 0: the INR does not move
        torch.testing.assert_close(value, inr.state_dict()[name], rtol=0, atol=0)
    assert joint < adapter_only, (joint, adapter_only)
    assert result.history[-1]["task"] < result.history[0]["task"]


def test_detection_set_loss_against_pseudo_detections_and_a_joint_detr_route(encoded):
    from test_task_presets import tiny_detr

    frames, inr = encoded
    bb = tiny_detr()
    g = torch.Generator().manual_seed(0)
    queries, classes = bb.detr_config.num_queries, bb.detr_config.num_labels + 1
    logits = torch.randn(2, queries, classes, generator=g)
    logits[:, :3, 5] = 12.0  # three confident detections per frame: the pseudo-targets
    boxes = torch.rand(2, queries, 4, generator=g) * 0.5 + 0.25
    reference = (logits, boxes)
    own = detection_loss(bb, reference, reference)
    perm = torch.randperm(queries, generator=g)
    assert float(detection_loss(bb, (logits[:, perm], boxes[:, perm]), reference)) == pytest.approx(
        float(own), rel=1e-5
    )
    moved = boxes.clone()
    moved[:, :3] += 0.1
    assert detection_loss(bb, (logits, moved), reference) > own + 0.1
    assert TASK_LOSSES["detection"] is detection_loss
    # A DETR route trains jointly: gradients of the set loss reach the INR through the adapter.
    task = task_for(inr, bb, tap="block3", point="stage1")
    result = joint_optimise(inr, frames, [task], JointConfig(epochs=1, batch_size=4, inr_lr=1e-3, progress=False))
    assert all(np.isfinite(v) for v in result.history[0].values())
    changed = max(
        float((a - b).abs().max()) for a, b in zip(result.inr_float.state_dict().values(), inr.state_dict().values())
    )
    assert changed > 1e-4 and "box_iou_agreement" in result.fidelity_after[0]
    assert "box_iou_agreement" in result.summary()


def test_bad_requests_are_refused(encoded):
    frames, inr = encoded
    with pytest.raises(ValueError, match="at least one route"):
        joint_optimise(inr, frames, [])
    with pytest.raises(ValueError, match="frames"):
        joint_optimise(inr, frames[:4], [task_for(inr, tiny_classifier())])
    with pytest.raises(ValueError, match="no tap"):
        joint_optimise(inr, frames, [JointTask(tiny_classifier(), "block9", "1", nn.Identity())])
    with pytest.raises(ValueError, match=">= 0"):
        JointConfig(inr_lr=-1)


@pytest.fixture(scope="module")
def encoded_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("joint_cli")
    clip, out = d / "clip.mp4", d / "clip.nvp"
    write_clip(clip, ClipSpec("astronaut", width=64, height=64, frames=8, seed=4))
    assert (
        nvp_main(["encode", str(clip), "-o", str(out), "--params", "60000", "--epochs", "20", "--threads", "1", "-q"])
        == 0
    )
    return clip, out


def test_export_joint_rewrites_the_video_and_compares_pixel_paths(encoded_file, tmp_path, capsys):
    clip, out = encoded_file
    channels = next(t["shape"][0] for t in NvpFile.open(out).manifest["taps"] if t["name"] == "block1")
    earlier = Route(
        "efficientnet_lite0",
        "efficientnet_lite0-0",
        "block1",
        "stage7",
        {"weight0": np.zeros((320, channels), np.float32), "bias0": np.zeros(320, np.float32)},
        {"kind": "classification", "hidden": None, "pathways": [{"size": [7, 7], "frames": None}]},
    )
    replace_routes(out, [earlier])
    assert (
        export_main(
            [
                "--task",
                "efficientnet_lite0",
                "--name",
                "cls",
                str(out),
                "--source",
                str(clip),
                "--top",
                "0.02",
                "--epochs",
                "2",
                "--joint",
                "--joint-epochs",
                "1",
                "--lambda-task",
                "1.0",
                "-q",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "joint optimisation: 1 epochs" in captured.out
    for path in ("NVP path", "full INR decode", "H.264"):
        assert path in captured.out, captured.out
    assert "efficientnet_lite0 were trained on the INR before joint" in captured.err  # the route kept from before
    nvp = NvpFile.open(out)
    assert sorted(r.task for r in nvp.routes()) == ["cls", "efficientnet_lite0"]
    joint = nvp.manifest["joint"]
    assert joint["epochs"] == 1 and joint["config"]["task"] == 1.0 and joint["config"]["inr_lr"] == 1e-5
    source, _ = read_video(clip)
    stored = load_nvp(out)
    assert joint["psnr_after_db"] == pytest.approx(psnr(source, stored.render(range(8))), abs=1e-4)
    assert nvp.manifest["metrics"]["psnr_quantised_db"] == joint["psnr_after_db"]
    route = next(r for r in nvp.routes() if r.task == "cls")
    assert route.metadata["joint_psnr_after_db"] == pytest.approx(joint["psnr_after_db"], abs=1e-4)
    # The runtime answers the rewritten file as the torch path does with the stored INR (the stand-in
    # route kept from before has no graphs in the store, so the session gets a copy without it).
    alone = tmp_path / "alone.nvp"
    shutil.copy(out, alone)
    replace_routes(alone, [route])
    logits = nvp_rt.Session(alone).run(["cls"], frames=range(8))["cls"].logits
    backbone = load_backbone("efficientnet_lite0")
    size = tuple(route.metadata["pathways"][0]["size"])
    weight = route.arrays["weight0"]
    adapter = MicroAdapter.from_arrays(AdapterSpec(weight.shape[1], weight.shape[0], size), route.arrays)
    with torch.no_grad():
        reference = backbone.suffix(
            adapter(stored.decode(torch.arange(8), until=route.tap)[route.tap]), route.injection_point
        ).numpy()
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()


def test_export_joint_user_errors_are_one_line(encoded_file, capsys):
    _, out = encoded_file
    before = out.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # refused while parsing, as every bad option value is
        export_main(["--task", "efficientnet_lite0", str(out), "--joint", "--joint-epochs", "-1", "-q"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--joint-epochs" in err[0], err
    assert out.read_bytes() == before
