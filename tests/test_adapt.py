"""Feature-transfer loss, the lstsq start, and adapter-only training end to end on a stand-in INR."""

import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn

from inr_standin import TinyINR, fit, pan_clip
from nvp_export.backbone import Backbone, Preprocess
from nvp_export.fidelity.agreement import fidelity
from nvp_export.route.adapt import AdaptConfig, Candidate, adapt, select_route
from nvp_export.route.adapter import fit_linear, resize
from nvp_export.route.cka import CKAConfig
from nvp_export.route.losses import FeatureLoss, feature_transfer_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_feature_transfer_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 4, 6, generator=g) * 2, torch.randn(3, 5, 4, 6, generator=g) * 2
    p, t = pred.double(), target.double()
    mse = ((p - t) ** 2).mean()
    cos = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1))
    d = (p - t).abs()
    huber = torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    expected = 1.0 * mse + 0.2 * (1 - cos).mean() + 0.1 * huber
    assert FeatureLoss() == FeatureLoss(alpha=1.0, beta=0.2, gamma=0.1)
    assert float(feature_transfer_loss(pred, target)) == pytest.approx(float(expected), rel=1e-5)
    assert float(FeatureLoss(1, 0, 0)(pred, target)) == pytest.approx(float(mse), rel=1e-5)
    assert float(feature_transfer_loss(target, target)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        feature_transfer_loss(pred, target[:, :4])


def test_fit_linear_recovers_a_linear_map():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 7, 9, 13, generator=g)
    w, b = torch.randn(11, 7, generator=g), torch.randn(11, generator=g)
    y = torch.einsum("oc,nchw->nohw", w, resize(x, (5, 6))) + b[:, None, None]
    w_fit, b_fit = fit_linear(x, y, (5, 6), ridge=1e-9, batch=4)
    torch.testing.assert_close(w_fit, w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b_fit, b, rtol=1e-4, atol=1e-4)


def test_fidelity_top1_top5():
    ref = torch.tensor([[5.0, 4, 3, 2, 1, 0, -1], [0, 1, 2, 3, 4, 5, 6]])
    out = torch.tensor([[5.0, 4, 3, 2, 0, 1, -1], [6, 1, 2, 3, 4, 5, 0]])
    f = fidelity(out, ref)
    assert f.top1_agreement == 0.5 and f.top5_overlap == pytest.approx((4 / 5 + 4 / 5) / 2)
    assert fidelity(ref, ref).top1_agreement == 1.0 and fidelity(ref, ref).cosine == pytest.approx(1.0)
    assert fidelity(out, ref, task="embedding").top1_agreement is None


def _candidate(tap, point, top1, saved, rel):
    return Candidate(tap, point, 0.9, 1, rel, rel, top1, 0.9, [rel], 1, 0.1, int(1000 * (1 - saved)), 1000)


def test_selection_prefers_cheapest_among_equally_faithful():
    cands = [
        _candidate("a", "p1", 1.00, 0.2, 0.1),
        _candidate("b", "p2", 0.99, 0.6, 0.5),
        _candidate("c", "p3", 0.80, 0.9, 0.1),
    ]
    assert select_route(cands, tolerance=0.02).tap == "b"  # within 2 points of the best, saves most
    assert select_route(cands, tolerance=0.0).tap == "a"


def _tiny_backbone():
    torch.manual_seed(0)
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


@pytest.fixture(scope="module")
def fitted_clip():
    frames = pan_clip(skimage.data.coffee(), 10, size=(32, 32))
    inr = TinyINR(10, size=(32, 32), seed=0)
    psnr = fit(inr, frames, steps=250)
    assert psnr > 20
    return frames, inr


def test_adapt_on_user_backbone(fitted_clip, tmp_path):
    frames, inr = fitted_clip
    uint8 = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3) as a decoder gives
    config = AdaptConfig(
        candidates="top",
        init="random",
        epochs=15,
        lr=3e-3,
        top_fraction=0.5,
        progress=False,
        cka=CKAConfig(frames=8, batch_size=4),
        max_adapter_percent=None,
    )
    res = adapt(inr, uint8, _tiny_backbone(), config)
    pairs = len(inr.tap_names) * 2
    assert len(res.candidates) == math.ceil(0.5 * pairs)
    assert {(c.tap, c.point) for c in res.candidates} == {(t, p) for t, p, _ in res.cka.top(0.5)}
    for c in res.candidates:  # training lowers the validation loss from a random start
        assert c.val_loss < 0.7 * c.val_loss_history[0], (c.tap, c.point, c.val_loss_history[:3])
        assert c.epochs <= 15 and 0 < c.compute_saved < 1
    r = res.route
    assert (r.task, r.backbone) == ("classification", "tiny")
    assert (r.inr_tap, r.injection_point) in {(c.tap, c.point) for c in res.candidates}
    assert r.adapter["weight0"].shape == (r.out_channels, r.in_channels)
    assert r.metrics["cka_rank"] == res.cka.rank_of(r.inr_tap, r.injection_point)
    # The stored arrays rebuild the adapter whose outputs were scored.
    adapter = r.build_adapter()
    with torch.no_grad():
        tap = inr.decode(torch.arange(10), until=r.inr_tap)[r.inr_tap]
        bb = _tiny_backbone()
        out = bb.suffix(adapter(tap), r.injection_point)
        ref = bb(bb.preprocess(frames))
    assert fidelity(out, ref).top1_agreement == pytest.approx(res.fidelity.top1_agreement)
    assert res.seconds["training"] > 0 and "RANDOM" not in res.summary()


def test_adapt_per_point_candidates(fitted_clip):
    frames, inr = fitted_clip
    config = AdaptConfig(
        candidates="per_point",
        epochs=2,
        progress=False,
        cka=CKAConfig(frames=8, batch_size=4),
        max_adapter_percent=None,
    )
    res = adapt(inr, frames, _tiny_backbone(), config)
    assert [(c.tap, c.point) for c in res.candidates] == [
        (t, p)
        for t, p, _ in sorted(
            res.cka.best_per_point(), key=lambda c: (inr.tap_names.index(c[0]), ["1", "3"].index(c[1]))
        )
    ]
    with pytest.raises(ValueError, match="candidates must be"):
        AdaptConfig(candidates="all")


def test_adapter_size_budget(fitted_clip):
    frames, inr = fitted_clip
    bb = _tiny_backbone()
    limit = 100 * (12 * 24 + 24) / bb.num_parameters()  # admits taps of <= 12 channels into point "3"
    config = AdaptConfig(
        candidates="top",
        top_fraction=1.0,
        epochs=1,
        progress=False,
        cka=CKAConfig(frames=8, batch_size=4),
        max_adapter_percent=limit,
    )
    res = adapt(inr, frames, bb, config)
    shapes = inr.tap_shapes()
    allowed = {(t, p) for t in inr.tap_names for p, c in (("1", 16), ("3", 24)) if shapes[t][0] * c + c <= 12 * 24 + 24}
    assert {(c.tap, c.point) for c in res.candidates} == allowed and ("block1", "3") not in allowed
    assert res.route.metrics["adapter_percent"] <= limit
    with pytest.raises(ValueError, match="no \\(tap, point\\) pair has an adapter within"):
        adapt(inr, frames, bb, AdaptConfig(progress=False, max_adapter_percent=0.01))


def test_adapt_with_stacked_adapter(fitted_clip):
    frames, inr = fitted_clip
    config = AdaptConfig(
        candidates="top",
        hidden=8,
        epochs=5,
        lr=3e-3,
        top_fraction=0.1,
        progress=False,
        cka=CKAConfig(frames=8, batch_size=4),
        max_adapter_percent=None,
    )
    res = adapt(inr, frames, _tiny_backbone(), config)
    r = res.route
    assert r.hidden == 8 and sorted(r.adapter) == ["bias0", "bias1", "weight0", "weight1"]
    assert r.adapter["weight0"].shape == (8, r.in_channels) and r.adapter["weight1"].shape == (r.out_channels, 8)
    c = res.candidates[0]
    assert c.val_loss < c.val_loss_history[0]  # a random start that training improves
    assert r.metrics["adapter_params"] == 8 * r.in_channels + 8 + r.out_channels * 8 + r.out_channels


def test_adapt_efficientnet_lite0_on_fitted_inr(fitted_clip):
    """Real weights, a fitted stand-in INR, the search limited to the last stages."""
    from nvp_export.zoo import load_backbone

    frames, inr = fitted_clip
    lite0 = load_backbone("efficientnet_lite0")
    config = AdaptConfig(
        candidates="top", epochs=4, progress=False, top_fraction=0.25, points=("stage6", "stage7", "head_conv")
    )
    res = adapt(inr, frames, lite0, config)
    m = res.route.metrics
    assert res.cka.points == ["stage6", "stage7", "head_conv"] and m["pairs"] == 12
    assert len(res.candidates) == 3
    assert m["adapter_percent"] < 1.0 and m["adapter_params"] == res.route.build_adapter().num_parameters()
    assert m["compute_saved"] > 0.5
    assert 0 <= res.fidelity.top1_agreement <= 1 and res.fidelity.samples == 10
    for c in res.candidates:  # fine-tuning never ends worse than its start
        assert c.val_loss <= c.val_loss_history[0]


class MixedFeatures(torch.nn.Module):
    """An INR-interface stand-in whose tap "mixed" is a known orthogonal channel mix of
    EfficientNet-Lite0's stage4 features, at twice their resolution: an exact route exists
    (resize back + the inverse mix) and adapt has to find and fit it."""

    def __init__(self, backbone, frames, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            feats = backbone.prefix(backbone.preprocess(frames), "stage4")
            q, _ = torch.linalg.qr(torch.randn(feats.shape[1], feats.shape[1], generator=g))
            # Nearest 2x up: a half-pixel bilinear 2x down averages each copied pair, so it inverts exactly.
            up = F.interpolate(feats, scale_factor=2, mode="nearest")
            self.mixed = torch.einsum("oc,nchw->nohw", q, up)
        self.rgb = frames
        self.tap_names = ["mixed", "rgb"]
        self.num_frames = frames.shape[0]

    def tap_shapes(self):
        return {"mixed": tuple(self.mixed.shape[1:]), "rgb": tuple(self.rgb.shape[1:])}

    def decode(self, frame_idx, until=None):
        out = {"mixed": self.mixed[frame_idx]}
        if until != "mixed":
            out["rgb"] = self.rgb[frame_idx]
        return out


def test_adapt_finds_and_fits_a_linearly_related_pair():
    from nvp_export.zoo import load_backbone

    lite0 = load_backbone("efficientnet_lite0")
    photos = ["coffee", "chelsea", "astronaut", "rocket", "camera", "horse", "coffee", "chelsea", "astronaut", "rocket"]
    frames = torch.cat(
        [
            pan_clip(
                np.stack([getattr(skimage.data, p)()] * 3, -1)
                if p in ("camera", "horse")
                else getattr(skimage.data, p)(),
                1,
                size=(96, 96),
                zoom=z,
            )
            for p, z in zip(photos, [0.9] * 5 + [0.7] * 5)
        ]
    )
    inr = MixedFeatures(lite0, frames)
    res = adapt(inr, frames, lite0, AdaptConfig(epochs=3, progress=False))
    # two exact routes, ranked first: the mix of stage4 and the frames themselves into the "input" point
    assert {pair[:2] for pair in res.cka.ranked()[:2]} == {("mixed", "stage4"), ("rgb", "input")}
    with torch.no_grad():
        labels = lite0(lite0.preprocess(frames)).argmax(1)
    assert len(set(labels.tolist())) >= 4  # the frames' answers differ, so agreement means something
    assert res.route.inr_tap == "mixed"  # the cheaper of the two
    assert res.fidelity.top1_agreement == 1.0 and res.fidelity.top5_overlap >= 0.95


def test_adapt_rejects_bad_input(fitted_clip):
    frames, inr = fitted_clip
    with pytest.raises(ValueError, match="encodes 10 frames but 9"):
        adapt(inr, frames[:9], _tiny_backbone(), AdaptConfig(progress=False))
    with pytest.raises(ValueError, match="init must be"):
        AdaptConfig(init="zeros")
    video = Backbone(
        "v", [("a", nn.Conv3d(3, 4, 1)), ("b", nn.Flatten())], Preprocess((8, 8), num_frames=2), pretrained=True
    )
    with pytest.raises(ValueError, match="video model"):
        adapt(inr, frames, video, AdaptConfig(progress=False))
