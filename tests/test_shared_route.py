"""Shared routes (``nvp_export.route.shared``): learnt on the corpus seen through the base as a coded file
gives it, scored on held-out corpus clips, stored in the model store under (base, backbone), and
fine-tuned on one clip only when asked, marked so."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nvp_export.backbone import to_unit_frames  # noqa: E402
from nvp_export.base import Base, BaseConfig  # noqa: E402
from nvp_export.base.corpus import CorpusConfig, corpus_frames  # noqa: E402
from nvp_export.fidelity.agreement import fidelity  # noqa: E402
from nvp_export.route.adapt import AdaptConfig  # noqa: E402
from nvp_export.route.shared import (  # noqa: E402
    CorpusTaps,
    SharedRouteConfig,
    finetune_on_clip,
    load_shared_route,
    shared_route_name,
    store_shared_route,
    train_shared_route,
)
from nvp_rt.store import ModelStore  # noqa: E402
from test_adapt import _tiny_backbone  # noqa: E402

SIZE = (80, 60)


def _base(seed: int) -> Base:
    torch.manual_seed(seed)
    return Base(BaseConfig(latent_dim=4, encoder_dims=(8, 8), stem_dim=8, block_dims=(8, 4))).eval()


def _config(**kw) -> SharedRouteConfig:
    small = dict(train_clips=2, held_out_clips=1, frames_per_clip=5, frame_size=SIZE, distil_epochs=2)
    return SharedRouteConfig(
        **{**small, **kw},
        adapt=AdaptConfig(epochs=2, task_epochs=0, max_adapter_percent=None, progress=False),
        progress=False,
    )


@pytest.fixture(scope="module")
def trained(one_torch_thread):
    seed = int(np.random.default_rng().integers(1 << 16))
    base, backbone, cfg = _base(seed), _tiny_backbone(), _config(seed=seed)
    return base, backbone, cfg, train_shared_route(base, "ab" * 32, backbone, cfg)


def test_corpus_taps_are_the_bases_decode_of_latents_within_half_a_step(one_torch_thread):
    rng = np.random.default_rng()
    base, cfg = _base(int(rng.integers(1 << 16))), _config(min_step=0.1, max_step=0.8)
    frames = corpus_frames(range(2), CorpusConfig(frames=5, width=SIZE[0], height=SIZE[1]))
    taps = CorpusTaps(base, frames, cfg, seed=int(rng.integers(1 << 16)))
    with torch.no_grad():
        clean = base.encoder(to_unit_frames(frames))
    assert ((taps.steps >= 0.1 - 1e-6) & (taps.steps <= 0.8 + 1e-6)).all()
    assert ((taps.latents - clean).abs() <= taps.steps.view(-1, 1, 1, 1) / 2 + 1e-6).all()
    idx = torch.from_numpy(rng.permutation(len(frames))[:4])
    first, again = taps.decode(idx, until="block1"), taps.decode(idx, until="block1")
    with torch.no_grad():
        want = base.decoder(taps.latents[idx].double().float(), until="block1")
    for name in ("stem", "block1"):
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
        torch.testing.assert_close(first[name], want[name])
        assert tuple(first[name].shape[1:]) == taps.tap_shapes()[name]
    assert set(first) == {"stem", "block1"}


def test_the_held_out_figures_are_the_stored_routes_on_clips_it_never_trained_on(trained):
    base, backbone, cfg, shared = trained
    route = shared.route
    assert route.metrics["trained_on"] == "corpus" and route.inr_tap in base.decoder.tap_names
    # recompute independently: the held-out clips (after the training clips), the route rebuilt from its arrays
    corpus = CorpusConfig(seed=cfg.corpus_seed, frames=cfg.frames_per_clip, width=SIZE[0], height=SIZE[1])
    held_frames = corpus_frames(range(cfg.train_clips, cfg.train_clips + cfg.held_out_clips), corpus)
    train_frames = corpus_frames(range(cfg.train_clips), corpus)
    assert not any((held_frames[i] == train_frames).all(axis=(1, 2, 3)).any() for i in range(len(held_frames)))
    held = CorpusTaps(base, held_frames, cfg, cfg.seed + 1)
    adapter = route.build_adapter().eval()
    with torch.no_grad():
        x = backbone.preprocess(to_unit_frames(held_frames))
        reference = backbone(x)
        idx = torch.arange(len(held_frames))
        out = backbone.suffix(adapter(held.decode(idx, until=route.inr_tap)[route.inr_tap]), route.injection_point)
    want = fidelity(out, reference)
    assert shared.held_out.top1_agreement == pytest.approx(want.top1_agreement)
    assert shared.held_out.top5_overlap == pytest.approx(want.top5_overlap)
    assert route.metrics["held_out_top5_overlap"] == pytest.approx(want.top5_overlap)
    assert adapter.stored().to_arrays().keys() == route.adapter.keys()
    for k, v in adapter.stored().to_arrays().items():  # already rounded to what a file stores
        np.testing.assert_allclose(v, route.adapter[k], atol=1e-6)


def test_the_store_keeps_a_route_per_base_and_backbone_and_refuses_a_damaged_one(trained, tmp_path):
    base, backbone, cfg, shared = trained
    store = ModelStore(tmp_path)
    assert load_shared_route(store, shared.base_sha256, backbone) is None
    name = store_shared_route(shared, store)
    assert name == shared_route_name(shared.base_sha256, shared.backbone_key)
    loaded = load_shared_route(store, shared.base_sha256, backbone)
    assert loaded is not None and loaded.adapter.keys() == shared.route.adapter.keys()
    for k in loaded.adapter:
        np.testing.assert_array_equal(loaded.adapter[k], shared.route.adapter[k])
    assert (loaded.inr_tap, loaded.injection_point, loaded.size) == (
        shared.route.inr_tap,
        shared.route.injection_point,
        tuple(shared.route.size),
    )
    assert json.loads(json.dumps(loaded.metrics)) == loaded.metrics
    assert load_shared_route(store, "cd" * 32, backbone) is None  # another base: none stored
    path = store.path("shared_route", name, ".safetensors")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data = data[: len(data) - 7]
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged") as e:
        load_shared_route(store, shared.base_sha256, backbone)
    assert "\n" not in str(e.value)


def test_finetuning_on_a_clip_says_so_and_keeps_the_routes_shape(trained):
    base, backbone, cfg, shared = trained
    frames = corpus_frames(range(1), CorpusConfig(seed=99, frames=6, width=SIZE[0], height=SIZE[1]))
    clip = CorpusTaps(base, frames, cfg, seed=5)
    tuned = finetune_on_clip(shared.route, clip, frames, backbone, epochs=2)
    assert tuned.metrics["trained_on"] == "this clip" and shared.route.metrics["trained_on"] == "corpus"
    assert tuned.adapter.keys() == shared.route.adapter.keys()
    assert any(not np.array_equal(tuned.adapter[k], shared.route.adapter[k]) for k in tuned.adapter)


@pytest.fixture(scope="module")
def lite0_route(shared_store, one_torch_thread):
    """A small shared route of EfficientNet-Lite0 for the shipped base, in the run's store (what a first
    ``nvp-export`` would train at full size)."""
    from nvp_export.base import load_base
    from nvp_export.zoo import load_backbone

    base, digest = load_base()
    backbone = load_backbone("efficientnet_lite0")
    shared = train_shared_route(base, digest, backbone, _config(seed=int(np.random.default_rng().integers(1 << 16))))
    store_shared_route(shared, shared_store)
    return backbone, shared


def test_nvp_export_adds_the_shared_route_to_a_base_file_and_the_runtime_answers_as_torch(
    tmp_path, shared_store, lite0_route, rng, capsys
):
    import nvp_rt
    from nvp_export.base import load_base
    from nvp_export.base.encode import BaseEncodeConfig, encode, write
    from nvp_export.base.video import BaseVideo
    from nvp_export.cli import main
    from nvp_rt.nvpfile import NvpFile

    base, digest = load_base()
    backbone, shared = lite0_route
    frames = corpus_frames(range(1), CorpusConfig(seed=int(rng.integers(1 << 16)), frames=6, width=80, height=60))
    path = tmp_path / "clip.nvp"
    write(path, encode(frames, base, digest, BaseEncodeConfig(bpp=1.5, fit_seconds=1, max_steps=3)))
    capsys.readouterr()
    assert main(["--task", "efficientnet_lite0", str(path), "--finetune", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--source" in err and len(err.splitlines()) == 1
    store = ["--store", str(shared_store.root)]
    assert main(["--task", "efficientnet_lite0", str(path), "--name", "cls", *store, "-q"]) == 0
    assert "trained on corpus" in capsys.readouterr().out
    with NvpFile.open(path) as nvp:
        (route,) = nvp.routes()
    # the file names the shared route and carries no adapter: adding the task cost it a manifest entry
    assert route.metadata["shared_route"] == shared_route_name(digest, shared.backbone_key) and route.arrays == {}
    assert route.metadata["trained_on"] == "corpus" and route.tap == shared.route.inr_tap
    adapter = shared.route.build_adapter().eval()
    chosen = sorted(rng.choice(6, 3, replace=False).tolist())
    answer = nvp_rt.Session(path, store=shared_store).run(["cls"], frames=chosen)["cls"]
    video = BaseVideo.open(path)
    with torch.no_grad():
        taps = video.decode(torch.tensor(chosen), until=route.tap)[route.tap]
        logits = backbone.suffix(adapter(taps), route.injection_point).numpy()
    assert np.abs(answer.logits - logits).max() <= 1e-3 * np.abs(logits).max()

    # a store without the shared route, or with a damaged one: one line naming it
    entry = shared_store.path("shared_route", route.metadata["shared_route"], ".safetensors")
    elsewhere = ModelStore(tmp_path / "other")
    for name in ("suffix", "base"):
        shutil.copytree(shared_store.root / name, elsewhere.root / name)
    with pytest.raises(FileNotFoundError, match="shared_route") as e:
        nvp_rt.Session(path, store=elsewhere)
    assert "\n" not in str(e.value)
    damaged = elsewhere.path("shared_route", route.metadata["shared_route"], ".safetensors")
    damaged.parent.mkdir(parents=True)
    data = bytearray(entry.read_bytes())
    data[-len(data) // 3] ^= 0x55
    damaged.write_bytes(bytes(data[:-5]))
    with pytest.raises(ValueError, match="unusable") as e:
        nvp_rt.Session(path, store=elsewhere)
    assert "\n" not in str(e.value)


def test_nvp_encode_base_for_a_task_names_its_shared_route_and_costs_the_pixels_no_adapter(
    tmp_path, shared_store, lite0_route, capsys
):
    from nvp_export.base.encode import read
    from nvp_export.clips import ClipSpec, write_clip
    from nvp_rt.cli import main
    from nvp_rt.nvpfile import NvpFile, update_routes

    backbone, shared = lite0_route
    seed = int(np.random.default_rng().integers(1 << 16))
    write_clip(tmp_path / "clip.mp4", ClipSpec("astronaut", width=80, height=60, frames=5, seed=seed))
    common = ["--base", "--bpp", "2", "--fit-seconds", "0.5", "--threads", "1", "-q", "--store", str(shared_store.root)]
    assert main(["encode", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "plain.nvp"), *common]) == 0
    assert main(["encode", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "for.nvp"), *common, "--for", "cls"]) == 0
    assert "cls/efficientnet_lite0: shared route" in capsys.readouterr().out
    with NvpFile.open(tmp_path / "for.nvp") as nvp:
        (route,) = nvp.routes()
    assert route.task == "cls" and route.arrays == {} and route.metadata["trained_on"] == "corpus"
    # the route takes none of the pixels' budget: the payload fills it as a plain encode's does, and the
    # task costs the file its manifest entry alone
    budget = 2 * 5 * 60 * 80 / 8
    sizes = {name: (tmp_path / f"{name}.nvp").stat().st_size for name in ("plain", "for")}
    bare = tmp_path / "bare.nvp"
    shutil.copyfile(tmp_path / "for.nvp", bare)
    without = update_routes(bare, lambda routes: [])
    assert 0.97 * budget <= without <= budget + 64 and 0.97 * budget <= sizes["plain"] <= budget
    assert 0 < sizes["for"] - without < 2048
    assert read(bare).shape == (5, 60, 80, 3)
