"""The pretrained base (nvp_export.base): its corpus, model, weights file, pretraining, latent coding,
modulations, and encoding against it, on tiny sizes."""

import numpy as np
import pytest
import torch

from nvp_export.base import Base, BaseConfig, BaseWeightsError, load_base, save_base, weights_hash
from nvp_export.base import corpus as corpus_module
from nvp_export.base import latents as latents_module
from nvp_export.base.corpus import PHOTOS, CorpusConfig, corpus_clip, corpus_frames
from nvp_export.base.encode import BaseEncodeConfig, encode, read, write
from nvp_export.base.latents import code_latents, coded_bytes, step_for_bytes
from nvp_export.base.modulate import KINDS, Modulation
from nvp_export.base.pretrain import PretrainConfig, held_out_psnr, pretrain, to_tensor
from nvp_rt.latents import decode_latents
from nvp_rt.schema import NvpFormatError

TINY = BaseConfig(latent_dim=4, encoder_dims=(8, 16), strides=(5, 2), stem_dim=16, block_dims=(8, 6))
SMALL_CORPUS = CorpusConfig(width=40, height=30, frames=6)


@pytest.fixture
def tiny_base():
    torch.manual_seed(0)
    base = Base(TINY).eval()
    return base, weights_hash(base.state_dict())


def test_corpus_is_seeded_and_made_of_scikit_image_photographs(monkeypatch):
    from skimage import data as skdata

    asked = []
    for name in dir(skdata):
        f = getattr(skdata, name)
        if callable(f) and not name.startswith("_"):
            monkeypatch.setattr(skdata, name, lambda f=f, name=name: asked.append(name) or f())
    corpus_module.photo.cache_clear()
    try:
        clips = [corpus_clip(k, SMALL_CORPUS) for k in range(6)]
    finally:
        corpus_module.photo.cache_clear()
    assert asked and set(asked) <= set(PHOTOS)
    assert all(c.shape == (6, 30, 40, 3) and c.dtype == np.uint8 for c in clips)
    assert np.array_equal(corpus_clip(3, SMALL_CORPUS), clips[3])
    other_seed = CorpusConfig(**{**SMALL_CORPUS.__dict__, "seed": 1})
    assert not np.array_equal(corpus_clip(3, other_seed), clips[3])
    assert len({c.tobytes() for c in clips}) == len(clips)
    with pytest.raises(ValueError, match="not a corpus photograph"):
        corpus_module.photo("bigbuckbunny")


def test_encoder_one_pass_and_decoder_taps(tiny_base):
    base, _ = tiny_base
    frames = torch.rand(3, 3, 30, 40)
    latent = base.encoder(frames)
    assert tuple(latent.shape) == (3, *TINY.latent_shape(30, 40)) == (3, 4, 3, 4)
    taps = base.decoder(latent)
    shapes = base.decoder.tap_shapes(30, 40)
    assert list(taps) == list(shapes) == ["stem", "block1", "block2", "rgb"]
    assert {k: tuple(v.shape[1:]) for k, v in taps.items()} == shapes
    assert shapes == {"stem": (16, 3, 4), "block1": (8, 6, 8), "block2": (6, 30, 40), "rgb": (3, 30, 40)}
    partial = base.decoder(latent, until="block1")
    assert list(partial) == ["stem", "block1"]
    torch.testing.assert_close(partial["block1"], taps["block1"])
    assert 0 <= float(taps["rgb"].detach().min()) and float(taps["rgb"].detach().max()) <= 1
    with pytest.raises(ValueError, match="multiples of 10"):
        TINY.latent_shape(32, 40)


def test_weights_file_round_trip_and_hash(tiny_base, tmp_path):
    base, digest = tiny_base
    path = tmp_path / "base.safetensors"
    assert save_base(path, base) == digest
    loaded, loaded_digest = load_base(path)
    assert loaded_digest == digest and loaded.config == TINY
    frames = torch.rand(2, 3, 30, 40)
    torch.testing.assert_close(loaded(frames), base(frames), rtol=0, atol=0)
    changed = {k: v.clone() for k, v in base.state_dict().items()}
    changed["decoder.stages.rgb.conv.bias"][0] += 1e-6
    assert weights_hash(changed) != digest
    # Same metadata, other bytes: the recorded hash no longer matches.
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(BaseWeightsError, match="hash"):
        load_base(path)
    with pytest.raises(BaseWeightsError, match="no base weights"):
        load_base(tmp_path / "missing.safetensors")


def test_pretraining_reduces_the_loss(one_torch_thread):
    cfg = PretrainConfig(
        steps=120,
        batch=4,
        lr=3e-3,
        clips=3,
        held_out_clips=1,
        noise_min=0.01,
        noise_max=0.02,
        log_every=30,
        eval_every=120,
        base=TINY,
        corpus=SMALL_CORPUS,
    )
    torch.manual_seed(cfg.seed)
    initial = Base(TINY)  # pretrain's first weights: the same seed, nothing drawn before them
    model, records = pretrain(cfg)
    pool = to_tensor(corpus_frames(range(cfg.clips), SMALL_CORPUS), torch.device("cpu"))
    assert held_out_psnr(model, pool) > held_out_psnr(initial, pool) + 1.5
    assert [r["step"] for r in records if r.get("event") == "train"] == [30, 60, 90, 120]
    again, _ = pretrain(cfg)
    assert weights_hash(again.state_dict()) == weights_hash(model.state_dict())  # seeded: the same weights


def test_latent_coding_is_closed_loop_and_exact():
    rng = np.random.default_rng(0)
    shot = np.cumsum(rng.normal(0, 0.05, (5, 3, 4, 6)), axis=0) + rng.normal(0, 1, (1, 3, 4, 6))
    cut = rng.normal(3, 1, (4, 3, 4, 6))  # a new shot: far from the previous frame
    latents = np.concatenate([shot, cut]).astype(np.float32)
    step = 0.07
    arrays, meta, decoded = code_latents(latents, step)
    np.testing.assert_array_equal(decode_latents(arrays, meta), decoded)
    assert np.abs(decoded.astype(np.float64) - latents).max() <= step / 2 + 1e-5
    modes = np.unpackbits(arrays["latents:modes"])[: len(latents)]
    assert modes[0] == 0 and modes[5] == 0 and modes[1:5].all()  # intra at the start and at the cut
    sizes = [coded_bytes(code_latents(latents, s)[0]) for s in (0.01, 0.05, 0.2, 1.0)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    budget = (sizes[1] + sizes[2]) // 2
    chosen = step_for_bytes(latents, budget)
    assert coded_bytes(code_latents(latents, chosen)[0]) <= budget
    assert coded_bytes(code_latents(latents, chosen * 0.97)[0]) > budget * 0.97
    bad = dict(arrays, **{"latents:scales": arrays["latents:scales"][:1]})
    with pytest.raises(ValueError, match="malformed"):
        decode_latents(bad, meta)


def reference_conv(x, w, b):
    return torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=w.shape[-1] // 2)


@pytest.mark.parametrize("kind", KINDS)
def test_modulation_is_the_stated_parameter_change(tiny_base, kind):
    base, _ = tiny_base
    modulation = Modulation(base.decoder, kind, rank=2)
    latent = torch.randn(2, 4, 3, 4)
    torch.testing.assert_close(modulation.decode(latent)["rgb"], base.decoder(latent)["rgb"])  # starts as the base
    torch.manual_seed(1)
    with torch.no_grad():
        for v in modulation.values.values():
            v.copy_(torch.randn_like(v) * 0.1)
    conv = base.decoder.stages["stem"].conv
    w, b = conv.weight.detach(), conv.bias.detach()
    values = {k: v.detach() for k, v in modulation.values.items()}
    if kind == "none":
        w2, b2 = w, b
    elif kind == "bias":
        w2, b2 = w, b + values["c0_shift"]
    elif kind == "film":
        g = 1 + values["c0_gain"]
        w2, b2 = w * g.view(-1, 1, 1, 1), b * g + values["c0_shift"]
    elif kind == "lora":
        w2 = w + (values["c0_a"] @ values["c0_b"]).view_as(w)
        b2 = b + values["c0_shift"]
    else:
        w2, b2 = w + values["c0_delta"], b + values["c0_shift"]
    x = torch.randn(2, 4, 3, 4)
    stem = modulation.decode(x, until="stem")["stem"]
    first = torch.nn.functional.gelu(reference_conv(x, w2, b2))
    mix = modulation.parameters_for_video()
    second = torch.nn.functional.gelu(reference_conv(first, mix["stages.stem.mix.weight"], mix["stages.stem.mix.bias"]))
    torch.testing.assert_close(stem.double(), first + second, rtol=1e-4, atol=1e-5)
    other = Modulation(base.decoder, kind, rank=2)
    other.load_stored(modulation.stored())
    torch.testing.assert_close(other.decode(x)["rgb"], modulation.decode(x)["rgb"])


def test_encode_against_the_base_round_trip(tiny_base, one_torch_thread, tmp_path):
    base, digest = tiny_base
    frames = corpus_clip(0, SMALL_CORPUS)
    n, h, w, _ = frames.shape
    cfg = BaseEncodeConfig(bpp=6.0, modulation="film", fit_seconds=1.0, max_steps=30)
    result = encode(frames, base, digest, cfg)
    assert len(result.data) <= cfg.bpp * n * h * w / 8
    assert result.bpp == 8 * len(result.data) / (n * h * w)
    assert result.steps == 30 and result.psnr_fitted > result.psnr_encoder_only
    write(tmp_path / "clip.nvp", result)
    decoded = read(tmp_path / "clip.nvp", (base, digest))
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    mse = ((decoded.astype(np.float64) - frames) ** 2).reshape(n, -1).mean(1)
    assert abs(float(np.mean(10 * np.log10(255.0**2 / mse))) - result.psnr) < 1e-6
    with pytest.raises(NvpFormatError, match="encoded against base"):
        read(tmp_path / "clip.nvp", (base, "0" * 64))
    smaller = encode(frames, base, digest, BaseEncodeConfig(bpp=3.0, modulation="bias", fit_seconds=1.0, max_steps=5))
    assert len(smaller.data) <= 3.0 * n * h * w / 8 < len(result.data)


def test_latent_model_scale_is_the_quantised_laplace_maximum_likelihood():
    rng = np.random.default_rng(2)
    for scale in (0.15, 0.6, 3.0):
        # Integer samples of a quantised Laplace of this scale: continuous draws rounded to the nearest integer.
        magnitudes = np.abs(np.rint(rng.laplace(0, scale, 200_000))).astype(np.int64)
        fitted = latents_module._fit_scale(magnitudes)
        assert abs(np.log(fitted / scale)) < 0.1  # the grid's spacing is 0.08 in log scale


def test_latent_stream_costs_about_its_entropy():
    rng = np.random.default_rng(3)
    # A static shot whose latents move in a few places per frame: most residuals are zero.
    start = rng.normal(0, 1, (1, 4, 6, 8))
    moves = rng.laplace(0, 0.05, (120, 4, 6, 8)) * (rng.random((120, 4, 6, 8)) < 0.05)
    latents = (start + np.cumsum(moves, axis=0)).astype(np.float32)
    step = 0.1
    arrays, meta, _ = code_latents(latents, step)
    q = np.rint(np.diff(latents.astype(np.float64), axis=0) / step)  # about the inter residuals
    values, counts = np.unique(q, return_counts=True)
    entropy_bytes = -(counts * np.log2(counts / counts.sum())).sum() / 8
    # Within 1.5x the residuals' empirical entropy (a Laplace is not their exact shape), plus 8 bits a value for
    # the intra frame. (The continuous Laplace's scale estimate, the mean magnitude, cost 3.6x the entropy here.)
    assert arrays["latents:words"].nbytes < 1.5 * entropy_bytes + 4 * 6 * 8


def test_the_shipped_base_is_named_by_its_hash():
    from safetensors import safe_open

    from nvp_export.base import SHIPPED

    assert SHIPPED.stat().st_size < 4 << 20  # a few MB at most, inside the package
    base, digest = load_base()
    with safe_open(str(SHIPPED), "pt") as f:
        metadata = f.metadata()
    assert metadata["sha256"] == digest == weights_hash(base.state_dict())
    assert base.config == BaseConfig() and "nvp_export.base.pretrain" in metadata["command"]
