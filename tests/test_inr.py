"""INR contracts: taps and shapes, partial decoding, frame independence, sizing, storage, fitting."""

import math

import numpy as np
import pytest
import torch

from nvp_export.inr import (
    UntileableSizeError,
    config_for_budget,
    container_bytes,
    from_config,
    load_nvp,
    make_config,
    quantise_inr,
    save_nvp,
    stored_bits,
    tiling_strides,
)
from nvp_export.inr import fit as fit_module
from nvp_export.inr.budget import PREFERRED_FC_DIM
from nvp_export.inr.fit import FitConfig, fit, lr_factor, temporal_variance_ratio
from nvp_export.inr.nerv import PositionalEncoding
from nvp_rt.nvpfile import NvpFormatError


def _tiny(family, frames=6):
    cfg = make_config(
        family,
        height=32,
        width=48,
        num_frames=frames,
        fc_dim=20,
        **({"mlp_hidden": 16, "pe_levels": 8} if family == "nerv" else {"ks_max": 3}),
    )
    torch.manual_seed(0)
    inr = from_config(cfg)
    if family == "hnerv":
        inr.embeddings.normal_()
    return inr.eval()


def test_tiling_strides_match_the_references():
    assert tiling_strides(720, 1280) == [5, 2, 2, 2, 2]  # NeRV's 720p strides
    assert tiling_strides(1080, 1920) == [5, 3, 2, 2, 2]  # NeRV's 1080p strides
    assert tiling_strides(180, 320) == [5, 2, 2]
    for h, w in [(97, 101), (30, 46), (64, 6)]:
        with pytest.raises(UntileableSizeError):
            tiling_strides(h, w)


@pytest.mark.parametrize("family", ["hnerv", "nerv"])
def test_taps_shapes_and_partial_decoding(family):
    inr = _tiny(family)
    shapes = inr.tap_shapes()
    names = inr.tap_names
    assert names[0] == "stem" and names[-1] == "rgb" and list(shapes) == names
    assert shapes["rgb"] == (3, 32, 48)
    with torch.no_grad():
        full = inr.decode(torch.tensor([1, 4]))
    assert list(full) == names
    for name, t in full.items():
        assert tuple(t.shape) == (2, *shapes[name])
    assert float(full["rgb"].min()) >= 0 and float(full["rgb"].max()) <= 1
    calls = {}
    for name, stage in inr.stages.items():
        stage.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    for k, until in enumerate(names):
        calls.clear()
        with torch.no_grad():
            part = inr.decode(torch.tensor([1, 4]), until=until)
        assert list(part) == names[: k + 1]
        assert set(calls) == set(names[: k + 1])  # nothing deeper ran
        torch.testing.assert_close(part[until], full[until])
    with pytest.raises(KeyError):
        inr.decode(torch.tensor([0]), until="nope")
    with pytest.raises(IndexError):
        inr.decode(torch.tensor([inr.num_frames]))


@pytest.mark.parametrize("family", ["hnerv", "nerv"])
def test_one_frame_alone_equals_the_same_frame_in_a_batch(family):
    inr = _tiny(family)
    batch = inr.decode(torch.arange(inr.num_frames))
    for i in torch.randperm(inr.num_frames)[:3].tolist():
        alone = inr.decode(torch.tensor([i]))
        for name in inr.tap_names:
            torch.testing.assert_close(alone[name][0], batch[name][i], rtol=1e-5, atol=1e-6)


def test_positional_encoding_matches_float64_formula():
    # l = 40 (NeRV's Bunny recipe): angles up to 1.25^39 pi ~ 1.6e4, where float32 still resolves ~1e-3.
    pe = PositionalEncoding(40, 1.25)
    t = torch.rand(5)
    angles = t.double().numpy()[:, None] * 1.25 ** np.arange(40) * np.pi
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    np.testing.assert_allclose(pe(t).numpy(), expected, atol=5e-3)


@pytest.mark.parametrize("family", ["hnerv", "nerv"])
def test_budget_sizing_is_the_widest_that_fits(family):
    def file_bits(c):  # the values before entropy coding and the container around them
        return stored_bits(c) + 8 * container_bytes(c)

    cfg = config_for_budget(family, 180, 320, 64, bpp=0.4)
    assert file_bits(cfg) <= 0.4 * 64 * 180 * 320
    wider = make_config(family, **{**cfg.__dict__, "fc_dim": cfg.fc_dim + 1})
    assert file_bits(wider) > 0.4 * 64 * 180 * 320
    inr = from_config(cfg)
    params, embedding = cfg.stored_values()
    assert params == sum(p.numel() for p in inr.parameters())
    assert embedding == (inr.embeddings.numel() if family == "hnerv" else 0)
    hn = config_for_budget("hnerv", 180, 320, 64, params=250_000)
    assert sum(hn.stored_values()) <= 250_000


@pytest.mark.parametrize("family", ["hnerv", "nerv"])
def test_store_round_trip_gives_the_quantised_model(family, tmp_path):
    inr = _tiny(family)
    arrays, meta, quantised = quantise_inr(inr)
    path = tmp_path / "v.nvp"
    save_nvp(path, quantised, arrays, meta, {"video": {"frames": inr.num_frames, "height": 32, "width": 48}})
    loaded = load_nvp(path)
    assert type(loaded) is type(inr) and loaded.tap_shapes() == inr.tap_shapes()
    idx = torch.arange(inr.num_frames)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), quantised(idx), rtol=0, atol=0)
        # 8-bit weights / 6-bit embeddings keep the picture close to the float model's.
        assert float((loaded(idx) - inr(idx)).abs().mean()) < 0.02


def test_load_rejects_a_config_that_does_not_match_the_weights(tmp_path):
    inr = _tiny("hnerv")
    arrays, meta, quantised = quantise_inr(inr)
    path = tmp_path / "v.nvp"
    save_nvp(path, quantised, arrays, meta, {})
    from nvp_rt.nvpfile import NvpFile, SegmentPayload, write_nvp

    nvp = NvpFile.open(path)
    manifest = {k: v for k, v in nvp.manifest.items() if k != "segments"}
    for bad in (
        {**nvp.manifest["inr"], "fc_dim": 21},
        {**nvp.manifest["inr"], "fc_dim": 1 << 20},
        {**nvp.manifest["inr"], "height": -4},
        {**nvp.manifest["inr"], "family": "other"},
        {**nvp.manifest["inr"], "bogus": 1},
    ):
        write_nvp(path, {**manifest, "inr": bad}, [SegmentPayload(inr.num_frames, arrays, meta)])
        with pytest.raises(NvpFormatError):
            load_nvp(path)


def test_learning_rate_schedule():
    assert lr_factor(0.0, 0.1) == pytest.approx(0.1)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)


def _clip(frames=6):
    g = torch.Generator().manual_seed(1)
    base = torch.rand(3, 8, 12, generator=g)
    big = torch.nn.functional.interpolate(base[None], size=(40, 56), mode="bicubic", align_corners=False)[0]
    return torch.stack([big[:, 2 + i // 2 : 34 + i // 2, 2 + i : 50 + i] for i in range(frames)]).clamp(0, 1)


@pytest.mark.parametrize("family", ["hnerv", "nerv"])
def test_fit_learns_the_clip(family):
    frames = _clip()
    inr = from_config(
        make_config(
            family,
            height=32,
            width=48,
            num_frames=6,
            fc_dim=24,
            **({"mlp_hidden": 32, "pe_levels": 16} if family == "nerv" else {}),
        )
    )
    lr = 5e-3 if family == "nerv" else None  # NeRV's 5e-4 needs far more than this test's 360 steps
    result = fit(inr, frames, FitConfig(epochs=60, lr=lr, progress=False))
    with torch.no_grad():
        out = result.inr.decode(torch.arange(6))["rgb"]
    mse = float(((out - frames) ** 2).mean())
    assert -10 * math.log10(mse) > 22 and result.recoveries == 0
    assert result.history[-1] > result.history[0] + 5


def test_fit_recovers_from_a_collapse(monkeypatch):
    frames = _clip()
    calls = {"n": 0}
    real = fit_module.reconstruction_loss

    def sometimes_nan(family, out, target):
        calls["n"] += 1
        loss = real(family, out, target)
        return loss * float("nan") if calls["n"] in (40, 41, 90) else loss

    monkeypatch.setattr(fit_module, "reconstruction_loss", sometimes_nan)
    inr = from_config(make_config("hnerv", height=32, width=48, num_frames=6, fc_dim=24, ks_max=5))
    result = fit(inr, frames, FitConfig(epochs=40, progress=False))
    assert result.recoveries == 3
    assert all(torch.isfinite(p).all() for p in result.inr.parameters())
    assert math.isfinite(result.psnr) and result.psnr > 20


def test_fit_gives_up_after_too_many_collapses(monkeypatch):
    monkeypatch.setattr(fit_module, "reconstruction_loss", lambda f, o, t: (o - t).mean() * float("nan"))
    inr = from_config(make_config("hnerv", height=32, width=48, num_frames=6, fc_dim=8))
    with pytest.raises(fit_module.FitError):
        fit(inr, _clip(), FitConfig(epochs=20, progress=False, max_recoveries=2))


def test_temporal_variance_ratio_against_float64():
    rng = np.random.default_rng()
    source, decoded = rng.random((6, 3, 8, 10)), rng.random((6, 3, 8, 10)) * 0.3
    expected = decoded.var(0).mean() / source.var(0).mean()
    assert temporal_variance_ratio(torch.from_numpy(decoded), torch.from_numpy(source)) == pytest.approx(expected)
    mean_frame = torch.from_numpy(source.mean(0, keepdims=True).repeat(6, 0))
    assert temporal_variance_ratio(mean_frame, torch.from_numpy(source)) < 1e-12
    static = torch.from_numpy(np.repeat(source[:1], 6, 0))
    assert temporal_variance_ratio(torch.from_numpy(decoded), static) == 1.0  # the mean frame is the answer there


def test_fit_starts_afresh_when_stuck_at_the_mean_frame():
    """An absurd rate parks the decoder at the mean frame; the fit notices and restarts at a third of it.
    At a sane rate the same fit is left alone."""
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    base = torch.rand(1, 3, 32, 32, generator=g)
    frames = torch.cat([torch.roll(base, shifts=3 * i, dims=-1) for i in range(8)])
    cfg = make_config("nerv", height=32, width=32, num_frames=8, fc_dim=8, mlp_hidden=16, pe_levels=8)
    stuck = fit(from_config(cfg), frames, FitConfig(epochs=40, time_limit_s=None, lr=0.1, progress=False))
    assert 1 <= stuck.restarts <= 2
    # A budget that ends where the fit would start afresh returns the state it has (it used to end on
    # the fresh start's untrained weights: "training never produced a finite loss").
    ended = fit(from_config(cfg), frames, FitConfig(epochs=19, time_limit_s=None, lr=0.1, progress=False))
    assert ended.restarts == 0 and math.isfinite(ended.psnr)
    healthy = fit(from_config(cfg), frames, FitConfig(epochs=40, time_limit_s=None, lr=3e-3, progress=False))
    assert healthy.restarts == 0 and healthy.steps == 40 * 8


def test_a_short_clip_at_the_default_budget_gets_a_smaller_model():
    from nvp_export.encode import DEFAULT_BPP

    def file_bits(c):
        return stored_bits(c) + 8 * container_bytes(c)

    budget = DEFAULT_BPP * 8 * 180 * 320  # 8 frames of 320x180: the default sizes leave a narrow stem
    assert file_bits(make_config("hnerv", height=180, width=320, num_frames=8, fc_dim=16)) > budget
    cfg = config_for_budget("hnerv", 180, 320, 8, bpp=DEFAULT_BPP)
    assert file_bits(cfg) <= budget and PREFERRED_FC_DIM <= cfg.fc_dim < 16
    wider = make_config("hnerv", **{**cfg.__dict__, "fc_dim": cfg.fc_dim + 1})
    assert file_bits(wider) > budget


def test_clip_psnr_against_float64():
    rng = np.random.default_rng()
    source = rng.integers(0, 256, (4, 3, 6, 10)) / 255
    decoded = np.clip(source + rng.normal(0, 0.05, source.shape), -0.1, 1.1)
    rendered = np.round(np.clip(decoded, 0, 1) * 255)
    mse = ((rendered - source * 255) ** 2).reshape(4, -1).mean(1)
    expected = np.mean(10 * np.log10(255.0**2 / mse))
    got = fit_module.clip_psnr(torch.from_numpy(decoded).float(), torch.from_numpy(source).float())
    assert got == pytest.approx(expected, abs=1e-3)


def test_the_fit_records_the_psnr_reconstruction_alone_reached():
    """The clip's PSNR when an objective's terms join is the decoder's at that moment: what begin() sees."""

    class Watcher:
        start, lr = 0.5, 1e-3

        def begin(self, decode_all):
            self.seen = decode_all("rgb").clone()
            return torch.nn.Linear(1, 1)

        def loss(self, taps, idx):
            return taps["rgb"].new_zeros(())

    frames = _clip()
    watcher = Watcher()
    inr = from_config(make_config("hnerv", height=32, width=48, num_frames=6, fc_dim=8))
    result = fit(inr, frames, FitConfig(epochs=4, time_limit_s=None, progress=False), watcher)
    assert result.psnr_reconstruction_only == pytest.approx(fit_module.clip_psnr(watcher.seen, frames))
    plain = fit(from_config(inr.config), frames, FitConfig(epochs=2, time_limit_s=None, progress=False))
    assert plain.psnr_reconstruction_only is None


def test_batch_rate_scaling_rules():
    assert fit_module.batch_lr(3e-3, 1, "sqrt") == 3e-3
    assert fit_module.batch_lr(3e-3, 16, "sqrt") == pytest.approx(1.2e-2)
    assert fit_module.batch_lr(3e-3, 4, "linear") == pytest.approx(1.2e-2)
    assert fit_module.batch_lr(3e-3, 4, "none") == 3e-3
    with pytest.raises(ValueError, match="lr_scaling"):
        FitConfig(lr_scaling="cubic")


def _batched_fit(frames, **settings):
    torch.manual_seed(0)
    inr = from_config(make_config("hnerv", height=32, width=48, num_frames=6, fc_dim=24))
    return fit(inr, frames, FitConfig(time_limit_s=None, batch=3, progress=False, **settings))


def test_a_batched_fit_at_the_scaled_rate_learns_the_clip_in_the_same_epochs():
    """Three frames per step at the square-root-scaled rate clear batch 1's bar (test_fit_learns_the_clip) in the
    same 60 epochs, with a third of the steps; at the unscaled rate the same fit falls behind."""
    frames = _clip()
    scaled, unscaled = _batched_fit(frames, epochs=60), _batched_fit(frames, epochs=60, lr_scaling="none")
    assert scaled.steps == 60 * 2 and scaled.recoveries == 0
    assert scaled.psnr > 22 and scaled.psnr > unscaled.psnr + 1


def test_a_bf16_fit_decodes_in_bf16_and_learns_as_float32_does():
    class Watcher:  # an objective sees the decoder's taps as the fit computes them
        start, lr = 0.0, 1e-3

        def __init__(self):
            self.dtypes = set()

        def begin(self, decode_all):
            return torch.nn.Linear(1, 1)

        def loss(self, taps, idx):
            self.dtypes.add(taps["rgb"].dtype)
            return taps["rgb"].new_zeros(())

    frames, watcher = _clip(), Watcher()
    torch.manual_seed(0)
    inr = from_config(make_config("hnerv", height=32, width=48, num_frames=6, fc_dim=24))
    half = fit(inr, frames, FitConfig(epochs=30, time_limit_s=None, batch=3, bf16=True, progress=False), watcher)
    full = _batched_fit(frames, epochs=30)
    assert watcher.dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in half.inr.parameters())
    assert abs(half.psnr - full.psnr) < 1.0, (half.psnr, full.psnr)
