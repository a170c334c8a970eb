"""The micro adapter: same semantics as the runtime's fused kernel, stacked form, serialisation."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvp_export.route.adapter import AdapterSpec, MicroAdapter
from nvp_rt import ops
from reference import rel_err, resize_conv1x1


@pytest.mark.parametrize(
    "shape,size",
    [
        ((2, 12, 20, 36), (14, 14)),  # downsample, non-square source
        ((3, 8, 7, 9), (28, 28)),  # upsample
        ((1, 16, 45, 80), (112, 112)),  # INR tap -> EfficientNet stem, mixed scale
        ((2, 5, 4, 11, 13), (8, 8)),  # video (N, C, T, H, W), resized per frame
    ],
)
def test_single_conv_matches_fused_kernel(shape, size, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal((24, shape[1])).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    spec = AdapterSpec(in_channels=shape[1], out_channels=24, size=size)
    adapter = MicroAdapter.from_arrays(spec, {"weight0": weight, "bias0": bias})
    with torch.no_grad():
        mine = adapter(torch.from_numpy(x)).numpy()
    kernel = ops.resize_conv1x1(x, weight, bias, size)
    assert mine.shape == kernel.shape == (shape[0], 24, *shape[2:-2], *size)
    assert rel_err(mine, kernel) < 1e-5
    assert rel_err(mine, resize_conv1x1(x, weight, bias, size)) < 1e-5  # float64 reference


def test_video_input_is_resized_frame_by_frame():
    x = torch.randn(2, 6, 3, 9, 10)
    adapter = MicroAdapter(AdapterSpec(6, 4, (5, 7)))
    with torch.no_grad():
        whole = adapter(x)
        per_frame = torch.stack([adapter(x[:, :, t]) for t in range(3)], dim=2)
    torch.testing.assert_close(whole, per_frame, rtol=0, atol=1e-6)


def test_stacked_form_is_conv_activation_conv_after_resize():
    x = torch.randn(2, 10, 13, 17, dtype=torch.float64)
    adapter = MicroAdapter(AdapterSpec(10, 32, (6, 8), hidden=20)).double()
    w0, b0 = adapter.convs[0].weight[:, :, 0, 0], adapter.convs[0].bias
    w1, b1 = adapter.convs[1].weight[:, :, 0, 0], adapter.convs[1].bias
    r = F.interpolate(x, size=(6, 8), mode="bilinear", align_corners=False)
    h = F.gelu(torch.einsum("oc,nchw->nohw", w0, r) + b0[:, None, None])
    expected = torch.einsum("oc,nchw->nohw", w1, h) + b1[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), expected, rtol=1e-12, atol=1e-12)


def test_parameter_count_and_percent():
    single = MicroAdapter(AdapterSpec(16, 40, (28, 28)))
    stacked = MicroAdapter(AdapterSpec(16, 40, (28, 28), hidden=24))
    assert single.num_parameters() == single.spec.num_parameters == 16 * 40 + 40
    assert stacked.num_parameters() == stacked.spec.num_parameters == 16 * 24 + 24 + 24 * 40 + 40
    backbone = torch.nn.Linear(100, 100)  # 10100 parameters
    assert single.percent_of(backbone) == pytest.approx(100 * 680 / 10100)
    assert single.macs() == 16 * 40 * 28 * 28


def test_arrays_round_trip_and_validation():
    spec = AdapterSpec(8, 6, (5, 5), hidden=4)
    adapter = MicroAdapter(spec)
    arrays = adapter.to_arrays()
    assert sorted(arrays) == ["bias0", "bias1", "weight0", "weight1"]
    assert arrays["weight0"].shape == (4, 8) and arrays["weight0"].dtype == np.float32
    clone = MicroAdapter.from_arrays(spec, arrays)
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), adapter(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="weight"):
        MicroAdapter.from_arrays(spec, {**arrays, "weight1": np.zeros((6, 5), np.float32)})
    with pytest.raises(ValueError, match="arrays must be"):
        MicroAdapter.from_arrays(spec, {"weight0": arrays["weight0"]})


def test_finetune_for_task_learns_the_answers_features_alone_miss():
    """Taps unrelated to the target features: a feature fit cannot recover the answers, the task term
    can (24 samples in 32 channels: any labelling is linearly separable), and the result is finite."""
    from nvp_export.route.adapter import finetune_for_task, fit_linear, relative_feature_loss

    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    taps, target = torch.randn(24, 32, 6, 6, generator=g), torch.randn(24, 16, 3, 3, generator=g)
    head = torch.nn.Sequential(torch.nn.Conv2d(16, 10, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    head.requires_grad_(False)
    labels = head(target).argmax(1)
    adapter = MicroAdapter(AdapterSpec(32, 16, (3, 3)))
    adapter.set_linear(*fit_linear(taps, target, (3, 3), ridge=1e-3))

    def agreement():
        with torch.no_grad():
            return float((head(adapter(taps)).argmax(1) == labels).double().mean())

    before = agreement()
    start = copy.deepcopy(adapter.state_dict())
    history = finetune_for_task(adapter, taps, target, labels, head, epochs=500, lr=1e-2, batch=8, feat_weight=0.0)
    assert agreement() == 1.0 > before  # the task term alone: a classifier of these samples
    assert history[-1] < history[0] and len(history) == 500
    adapter.load_state_dict(start)
    finetune_for_task(adapter, taps, target, labels, head, epochs=200, lr=1e-2, batch=8)
    assert agreement() > before  # with the feature term beside it (the defaults)
    with torch.no_grad():
        assert float(relative_feature_loss(target, target)) == 0.0
        assert (
            float(relative_feature_loss(adapter(taps), target))
            < float(relative_feature_loss(torch.zeros_like(target), target)) * 2
        )


def test_finetune_for_task_ends_in_the_state_select_scored_highest():
    """``select`` is asked every ``select_every`` epochs and at the end; the adapter ends in the state it
    scored highest, here the first one checked (a score that falls with every call), not the last."""
    from nvp_export.route.adapter import finetune_for_task

    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    taps, target = torch.randn(16, 8, 4, 4, generator=g), torch.randn(16, 6, 2, 2, generator=g)
    head = torch.nn.Sequential(torch.nn.Conv2d(6, 5, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    head.requires_grad_(False)
    labels = torch.randint(0, 5, (16,), generator=g)
    adapter = MicroAdapter(AdapterSpec(8, 6, (2, 2)))
    checked: list[dict[str, torch.Tensor]] = []

    def select(a: MicroAdapter) -> float:
        assert not a.training
        checked.append(copy.deepcopy(a.state_dict()))
        return -float(len(checked))

    finetune_for_task(adapter, taps, target, labels, head, epochs=23, lr=1e-2, select=select, select_every=5)
    assert len(checked) == 5  # epochs 5, 10, 15, 20 and the last, 23
    assert not torch.equal(checked[0]["convs.0.weight"], checked[-1]["convs.0.weight"])
    for name, value in adapter.state_dict().items():
        assert torch.equal(value, checked[0][name]), name
    assert not adapter.training
    calls = []

    def rising(a: MicroAdapter) -> float:
        calls.append(a)
        return float(len(calls))

    finetune_for_task(adapter, taps, target, labels, head, epochs=23, select=rising, select_every=5, select_stop=2.0)
    assert len(calls) == 2  # the second check scored select_stop: training stopped there
