"""`nvp encode --for`: the INR and its classification routes fitted in one pass, the routes in the file."""

import numpy as np
import pytest
import torch

import nvp_rt
from nvp_export.benchmark.rate_accuracy import score_file
from nvp_export.clips import ClipSpec, write_clip
from nvp_export.fidelity.agreement import fidelity
from nvp_export.inr import load_nvp
from nvp_export.route.adapter import AdapterSpec, MicroAdapter
from nvp_export.route.task_aware import TaskAwareConfig, default_pair, untrained_routes
from nvp_export.zoo import load_backbone
from nvp_rt.cli import main as nvp_main
from nvp_rt.nvpfile import NvpFile
from nvp_rt.video import read_video


@pytest.fixture(scope="module")
def task_aware(tmp_path_factory):
    d = tmp_path_factory.mktemp("task_aware")
    clip = d / "clip.mp4"
    # A 64x64 clip gets a 5-stage HNeRV, the kind that can sit at the mean frame (which encode refuses to
    # write); this clip and seed leave it within 100 epochs (as in test_encode_cli).
    write_clip(clip, ClipSpec("coffee", width=64, height=64, frames=8, seed=3))
    out = d / "clip.nvp"
    argv = ["encode", str(clip), "-o", str(out), "--params", "60000", "--epochs", "100", "--threads", "1", "-q"]
    assert nvp_main([*argv, "--for", "cls"]) == 0
    return clip, out


def test_routes_are_written_in_the_same_pass_and_answer_as_torch(task_aware, capsys):
    clip, out = task_aware
    nvp = NvpFile.open(out)
    (route,) = nvp.routes()
    inr = load_nvp(out)
    backbone = load_backbone("efficientnet_lite0")
    assert route.task == "cls" and route.backbone.startswith("efficientnet_lite0-")
    c = TaskAwareConfig()
    assert (route.tap, route.injection_point) == default_pair(inr, backbone, c.max_adapter_percent, c.pair_channels)
    assert route.metadata["adapter_percent"] <= 1.0
    # The stored figures are the agreement of this very route on the source frames (recomputed in torch) ...
    frames, _ = read_video(clip)
    original = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    weight = route.arrays["weight0"]
    size = tuple(route.metadata["pathways"][0]["size"])
    adapter = MicroAdapter.from_arrays(AdapterSpec(weight.shape[1], weight.shape[0], size), route.arrays)
    with torch.no_grad():
        taps = inr.decode(torch.arange(8), until=route.tap)[route.tap]
        logits = backbone.suffix(adapter(taps), route.injection_point)
        reference = backbone(backbone.preprocess(original))
    assert route.metadata["top1_agreement"] == pytest.approx(fidelity(logits, reference).top1_agreement)
    labels = reference.argmax(1)
    assert route.metadata["constant_answer_agreement"] == pytest.approx(
        float(torch.bincount(labels).max()) / len(labels)
    )
    # ... and the torch-free runtime answers exactly as that torch path does.
    answers = nvp_rt.Session(out).run(["cls"], frames=range(8))["cls"].logits
    assert np.abs(answers - logits.numpy()).max() <= 1e-4 * np.abs(logits.numpy()).max()


def test_task_aware_encode_rejects_what_it_cannot_route(task_aware, tmp_path, capsys):
    clip, _ = task_aware
    out = tmp_path / "x.nvp"
    argv = ["encode", str(clip), "-o", str(out), "--params", "60000", "--epochs", "1", "-q"]
    assert nvp_main([*argv, "--for", "alexnet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'alexnet'" in err[0]
    assert nvp_main([*argv, "--for", "det"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classification" in err[0]
    assert not out.exists()


def test_the_rate_accuracy_scoring_recomputes_the_stored_figures(task_aware):
    """score_file's route path (torch, from the file) gives the agreement the encoder stored, its bpp is the
    file's size, and the untrained routes budgeting sized exactly what was written."""
    clip, out = task_aware
    frames, _ = read_video(clip)
    backbone = load_backbone("efficientnet_lite0")
    point = score_file(out, frames, backbone, "cls")
    (route,) = NvpFile.open(out).routes()
    assert point["nvp_top1"] == pytest.approx(route.metadata["top1_agreement"])
    assert point["constant_top1"] == pytest.approx(route.metadata["constant_answer_agreement"])
    assert point["inr_pixels_top1"] == pytest.approx(route.metadata["pixel_top1_agreement"])
    assert point["nvp_bpp_total"] == 8 * out.stat().st_size / frames[..., 0].size
    (planned,) = untrained_routes(load_nvp(out), [backbone])
    assert (planned.tap, planned.injection_point) == (route.tap, route.injection_point)
    assert {k: v.shape for k, v in planned.arrays.items()} == {k: v.shape for k, v in route.arrays.items()}
    metrics = NvpFile.open(out).manifest["metrics"]
    assert 0 < metrics["psnr_reconstruction_only_db"] < 100  # the fit ran past the task terms' start


def test_the_task_terms_ramp_in_linearly_over_ramp_epochs():
    """The objective's terms grow in proportion to the frames trained on since they joined, reaching full
    weight (that of an objective without a ramp) after ``ramp_epochs`` epochs, and stay there."""
    from nvp_export.inr import config_for_budget, from_config
    from nvp_export.route.task_aware import TaskAwareObjective

    seed = int(np.random.default_rng().integers(1 << 31))
    torch.manual_seed(seed)
    frames = torch.rand(4, 3, 64, 64)
    inr = from_config(config_for_budget("hnerv", 64, 64, 4, params=30000)).eval()
    backbones = [load_backbone("efficientnet_lite0").eval()]
    idx = torch.tensor([1, 3])
    with torch.no_grad():
        taps = inr.decode(idx)

        def terms(config: TaskAwareConfig) -> list[float]:
            objective = TaskAwareObjective(inr, frames, backbones, config)
            objective.begin(lambda tap: inr.decode(torch.arange(4), until=tap)[tap])
            return [float(objective.loss(taps, idx)) for _ in range(6)]

        full = terms(TaskAwareConfig(ramp_epochs=0))
        ramped = terms(TaskAwareConfig(ramp_epochs=2))  # 8 frames: full weight from the 4th call of 2 frames
    assert full[0] > 0 and max(full) == pytest.approx(min(full), rel=1e-6)
    expected = [full[0] * min(1.0, 2 * (k + 1) / 8) for k in range(6)]
    assert ramped == pytest.approx(expected, rel=1e-5), seed


def test_nvp_export_adds_a_task_to_a_task_aware_file(task_aware, tmp_path):
    """A task chosen later is added by nvp-export beside the route encode fitted: the payload and the
    first route stay as they were, and a session answers both, the new one as its torch path does."""
    import shutil

    from nvp_export.benchmark.rate_accuracy import route_outputs
    from nvp_export.cli import main as export_main

    clip, encoded = task_aware
    out = tmp_path / "clip.nvp"
    shutil.copy(encoded, out)
    before = NvpFile.open(out)
    (first,) = before.routes()
    argv = [str(out), "--task", "efficientnet_lite0", "--name", "later", "--source", str(clip), "--epochs", "2", "-q"]
    assert export_main(argv) == 0
    after = NvpFile.open(out)
    assert after.payload_checksum == before.payload_checksum
    assert [r.task for r in after.routes()] == ["cls", "later"]
    kept = after.routes()[0]
    assert (kept.tap, kept.injection_point, kept.metadata) == (first.tap, first.injection_point, first.metadata)
    for name, array in first.arrays.items():
        np.testing.assert_array_equal(kept.arrays[name], array)
    answers = nvp_rt.Session(out).run(["cls", "later"], frames=range(8))
    backbone = load_backbone("efficientnet_lite0")
    for task in ("cls", "later"):
        expected = route_outputs(out, backbone, task).numpy()
        assert np.abs(answers[task].logits - expected).max() <= 1e-4 * np.abs(expected).max(), task


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_task_aware_fit_trains_its_route_wherever_the_fit_runs(device):
    """Fit, ridge start and finetune on ``device`` (the ridge start once mixed CUDA taps with a CPU Gram
    matrix): the route it returns answers, recomputed from its arrays on the CPU, as its metrics say."""
    from nvp_export.inr import config_for_budget, from_config
    from nvp_export.inr.fit import FitConfig, fit
    from nvp_export.route.task_aware import TaskAwareObjective

    torch.manual_seed(int(np.random.default_rng().integers(1 << 31)))
    frames = torch.rand(4, 3, 64, 64)
    inr = from_config(config_for_budget("hnerv", 64, 64, 4, params=30000))
    backbone = load_backbone("efficientnet_lite0").eval()
    objective = TaskAwareObjective(inr, frames, [backbone], TaskAwareConfig(start=0.0, finetune_epochs=5))
    result = fit(inr, frames, FitConfig(epochs=3, time_limit_s=None, device=device, progress=False), objective)
    (route,) = objective.finish(result.inr, frames)

    adapter = MicroAdapter.from_arrays(route.adapter_spec(), route.adapter)
    with torch.no_grad():
        taps = result.inr.eval().decode(torch.arange(4), until=route.inr_tap)[route.inr_tap]
        answers = backbone.suffix(adapter(taps), route.injection_point).argmax(1)
        reference = backbone(backbone.preprocess(frames)).argmax(1)
    assert route.metrics["top1_agreement"] == pytest.approx(float((answers == reference).double().mean()))
