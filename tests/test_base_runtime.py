"""The torch-free runtime on files encoded against the shipped base: ``Session`` decodes the frames the
torch reader decodes, for every modulation kind; the base's hash and the modulated weights computed in
numpy are the export side's; missing graphs, an unknown or damaged base and a damaged payload are refused
in one line; a route added to a base file keeps the payload and reads the base's taps."""

import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

pytest.importorskip("torch")

import torch  # noqa: E402

import nvp_rt  # noqa: E402
from nvp_export.base import SHIPPED, Base, BaseConfig, load_base, weights_hash  # noqa: E402
from nvp_export.base.encode import BaseEncodeConfig, encode, read, write  # noqa: E402
from nvp_export.base.modulate import KINDS, Modulation  # noqa: E402
from nvp_export.inr import load_video  # noqa: E402
from nvp_export.onnx_export import export_backbone_graphs, export_base_graphs  # noqa: E402
from nvp_export.route.multipathway import PathwayAdapter  # noqa: E402
from nvp_export.zoo import load_backbone  # noqa: E402
from nvp_rt import bases  # noqa: E402
from nvp_rt.base_decoder import convolutions, modulated_weights, read_payload  # noqa: E402
from nvp_rt.nvpfile import BASE_SECTION, NvpFile, Route, base_nvp_bytes, stored_route, update_routes  # noqa: E402
from nvp_rt.schema import NvpFormatError  # noqa: E402
from nvp_rt.store import ModelStore  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")

FRAMES, HEIGHT, WIDTH = 6, 60, 80
# Bits per pixel each kind needs: a full fine-tune stores 299k values of 8 bits (83 bpp of this clip).
BPP = {"none": 1.5, "bias": 1.5, "film": 2.0, "lora": 4.0, "full": 100.0}


def random_clip(rng) -> np.ndarray:
    """Smooth random colours drifting over time (so the latents code to something), uint8 (N, H, W, 3)."""
    coarse = rng.uniform(0, 255, (FRAMES + 3, HEIGHT // 10, WIDTH // 10, 3))
    return np.stack([np.kron(coarse[i : i + 4].mean(0), np.ones((10, 10, 1))) for i in range(FRAMES)]).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_store, one_torch_thread):
    """kind -> a fresh random clip encoded against the shipped base with that modulation (fitted with a
    large rate so the modulation moves away from the base in a few steps); the base's graphs exported."""
    rng = np.random.default_rng()
    base, digest = load_base()
    export_base_graphs(base.decoder, digest, shared_store)
    d = tmp_path_factory.mktemp("base_runtime")
    out = {}
    for kind in KINDS:
        cfg = BaseEncodeConfig(bpp=BPP[kind], modulation=kind, fit_seconds=5, max_steps=4, lr_modulation=0.03)
        write(d / f"{kind}.nvp", encode(random_clip(rng), base, digest, cfg))
        out[kind] = d / f"{kind}.nvp"
    return out


def _payload(path):
    """The file's payload (latents, modulation values) and its manifest's ``base`` entry."""
    with NvpFile.open(path) as nvp:
        assert nvp.base is not None
        return read_payload(nvp.section(BASE_SECTION), nvp.section_meta(BASE_SECTION), nvp.base), nvp.base


def _plain_frames(path) -> np.ndarray:
    """The file's latents through the base with no modulation: what a reader ignoring it would show."""
    base, _ = load_base()
    payload, _ = _payload(path)
    with torch.no_grad():
        rgb = base.decoder(torch.from_numpy(payload.latents))["rgb"]
    return (rgb.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_session_decodes_the_frames_the_torch_reader_decodes(files, shared_store, kind, rng):
    expected = read(files[kind])
    session = nvp_rt.Session(files[kind], store=shared_store)
    assert session.inr.tap_names == ["stem", "block1", "block2", "rgb"] and session.size == (HEIGHT, WIDTH)
    frames = session.decode()
    assert frames.dtype == np.uint8 and frames.shape == expected.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert np.abs(frames.astype(int) - expected).max() <= 1
    some = rng.choice(FRAMES, 3, replace=False)
    np.testing.assert_array_equal(session.decode(some), frames[some])
    if kind != "none":  # the modulation changes the pixels: a reader that dropped it would fail above
        assert np.abs(_plain_frames(files[kind]).astype(int) - expected).max() > 1


TINY = BaseConfig(latent_dim=4, encoder_dims=(8, 16), stem_dim=16, block_dims=(8, 6))


@pytest.mark.parametrize("kind", KINDS)
def test_modulated_weights_in_numpy_are_the_torch_modulations(kind):
    torch.manual_seed(int(np.random.default_rng().integers(1 << 31)))
    decoder = Base(TINY).decoder
    modulation = Modulation(decoder, kind, rank=3)
    with torch.no_grad():
        for v in modulation.values.values():
            v.copy_(torch.randn_like(v) * 0.2)
    weights = {k: v.detach().numpy() for k, v in decoder.named_parameters()}
    stages = list(decoder.stages)
    assert convolutions(weights, stages) == modulation.convs  # the order the values are stored in
    stored = {k: v.numpy() for k, v in modulation.stored().items()}
    got = modulated_weights(weights, kind, 3, stored, stages)
    expected = {k: v.detach().double() for k, v in modulation.parameters_for_video().items()}
    assert set(got) == set(expected)
    for name, value in got.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, expected[name].numpy(), rtol=1e-5, atol=1e-6)
    if kind != "none":
        some = next(iter(stored))
        with pytest.raises(ValueError, match="does not fit the base"):
            modulated_weights(weights, kind, 3, {**stored, some: stored[some][:-1]}, stages)


def test_the_hash_in_numpy_is_the_export_sides():
    rng = np.random.default_rng()
    state = {
        "b.weight": torch.from_numpy(rng.normal(size=(3, 2, 3, 3)).astype(np.float32)),
        "a.scale": torch.from_numpy(rng.normal(size=(5,)).astype(np.float16)),
        "c.count": torch.tensor(int(rng.integers(1 << 40))),  # 0-d int64
    }
    reference = hashlib.sha256()  # the byte layout, written out: name|torch dtype|shape tuple|bytes, names sorted
    for name in sorted(state):
        reference.update(f"{name}|{state[name].dtype}|{tuple(state[name].shape)}|".encode())
        reference.update(state[name].numpy().tobytes())
    assert bases.weights_hash({k: v.numpy() for k, v in state.items()}) == weights_hash(state) == reference.hexdigest()
    # The shipped file's recorded hash was computed by torch at pretraining: numpy over its tensors gives it.
    from safetensors.numpy import load_file

    _, digest = load_base()
    assert bases.weights_hash(load_file(str(SHIPPED))) == digest
    assert bases.load_weights(digest)[1] == load_base()[0].config.to_dict()


def test_a_damaged_or_unknown_base_is_refused_in_one_line(files, shared_store, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    _, digest = load_base()
    state = load_file(str(SHIPPED))
    state["decoder.stages.rgb.conv.bias"] = state["decoder.stages.rgb.conv.bias"] + np.float32(1e-3)
    folder = tmp_path / "bases"
    folder.mkdir()
    config = json.dumps(load_base()[0].config.to_dict())
    save_file(state, str(folder / "fake.safetensors"), {"config": config, "sha256": digest})  # claims the base
    monkeypatch.setenv("NVP_BASES", str(folder))  # searched before the shipped folder
    with pytest.raises(NvpFormatError, match="do not match their recorded hash") as e:
        nvp_rt.Session(files["bias"], store=shared_store).decode([0])
    assert str(files["bias"]) in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv("NVP_BASES")
    with NvpFile.open(files["bias"]) as nvp:
        manifest = {k: v for k, v in nvp.manifest.items() if k != "segments"}
        arrays, meta = nvp.section(BASE_SECTION), nvp.section_meta(BASE_SECTION)
    other = f"{int(np.random.default_rng().integers(1 << 62)):064x}"
    crafted = tmp_path / "other.nvp"
    crafted.write_bytes(base_nvp_bytes({**manifest, "base": {**manifest["base"], "sha256": other}}, arrays, meta))
    with pytest.raises(NvpFormatError, match=f"encoded against base {other}, which this reader does not have"):
        nvp_rt.Session(crafted, store=shared_store)


def test_missing_graphs_and_a_damaged_payload_are_refused_in_one_line(files, shared_store, tmp_path):
    empty = ModelStore(tmp_path / "empty")
    with pytest.raises(NvpFormatError, match="no decoder graphs of base .*`nvp base-graphs`") as e:
        nvp_rt.Session(files["film"], store=empty)
    assert "\n" not in str(e.value)
    with NvpFile.open(files["film"]) as nvp:
        manifest = {k: v for k, v in nvp.manifest.items() if k != "segments"}
        arrays, meta = nvp.section(BASE_SECTION), nvp.section_meta(BASE_SECTION)
    bad = tmp_path / "bad.nvp"
    broken = {  # checksums valid (the file is rebuilt), contents not: each refused when decoded
        "the latents' words not uint32": ({**arrays, "latents:words": arrays["latents:words"].view(np.int32)}, meta),
        "a negative Laplace scale": ({**arrays, "latents:scales": -arrays["latents:scales"]}, meta),
        "a modulation role missing": ({k: v for k, v in arrays.items() if "gain" not in k}, meta),
        "an unknown payload format": (arrays, {**meta, "format": "nvp-base-payload-9"}),
    }
    for what, (a, m) in broken.items():
        bad.write_bytes(base_nvp_bytes(manifest, a, m))
        session = nvp_rt.Session(bad, store=shared_store)  # opening reads the manifest only
        with pytest.raises(NvpFormatError, match="base payload") as e:
            session.decode([0])
        assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value), what


def test_a_route_added_to_a_base_file_keeps_its_payload_and_reads_the_bases_taps(files, shared_store, rng, capsys):
    from nvp_rt.cli import main

    path = files["lora"]
    with pytest.raises(NvpFormatError, match="encoded against base .* not an INR of its own"):
        load_video(path)  # what `nvp-export --task` trains on: one line, not a KeyError
    before = read(path)
    with NvpFile.open(path) as nvp:
        payload_bytes = nvp.payload_sections()[BASE_SECTION]
    backbone = load_backbone("efficientnet_lite0")
    tap, point = "block1", "stage3"
    torch.manual_seed(int(rng.integers(1 << 31)))
    base, _ = load_base()
    adapter = PathwayAdapter(base.decoder.tap_shapes(HEIGHT, WIDTH)[tap][0], backbone.point(point))
    key = export_backbone_graphs(backbone, [point], shared_store)
    arrays, meta = adapter.eval().to_route()
    route = stored_route(Route("cls", key, tap, point, arrays, {"kind": backbone.task, **meta}))
    adapter.load_route(route.arrays)
    update_routes(path, lambda routes: [*routes, route])

    with NvpFile.open(path) as nvp:
        assert [r.task for r in nvp.routes()] == ["cls"] and nvp.base is not None
        assert nvp.payload_sections()[BASE_SECTION] == payload_bytes  # carried over verbatim
    np.testing.assert_array_equal(read(path), before)
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "routes      1" in listed and f"cls: tap {tap} -> {key} @ {point}" in listed
    session = nvp_rt.Session(path, store=shared_store)
    assert session.tasks == ["cls"]
    assert np.abs(session.decode().astype(int) - before).max() <= 1
    frames = rng.choice(FRAMES, 3, replace=False)
    answer = session.run(["cls"], frames=frames.tolist())["cls"]
    payload, head = _payload(path)  # the torch reference: the video's own decoder to the tap, adapter, suffix
    modulation = Modulation(base.decoder, "lora", head["rank"])
    modulation.load_stored({k: torch.from_numpy(v) for k, v in payload.modulation.items()})
    with torch.no_grad():
        features = modulation.decode(torch.from_numpy(payload.latents[frames]), until=tap)[tap]
        logits = backbone.suffix(adapter(features), point).numpy()
    assert answer.logits.shape == logits.shape
    assert np.abs(answer.logits - logits).max() <= 1e-4 * np.abs(logits).max()


def test_nvp_view_decodes_a_base_file(files, shared_store, tmp_path, capsys):
    import av

    from nvp_rt.cli import main

    out = tmp_path / "frames"
    assert (
        main(["view", str(files["film"]), "-o", str(out), "--frames", "1:5:2", "--store", str(shared_store.root)]) == 0
    )
    expected = read(files["film"])
    for i in (1, 3):
        with av.open(str(out / f"frame_{i:06d}.png")) as container:
            png = next(container.decode(video=0)).to_ndarray(format="rgb24")
        assert np.abs(png.astype(int) - expected[i]).max() <= 1
    assert sorted(p.name for p in out.iterdir()) == ["frame_000001.png", "frame_000003.png"]
    capsys.readouterr()
    assert main(["view", str(files["film"]), "-o", str(tmp_path / "x"), "--store", str(tmp_path / "empty")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "`nvp base-graphs`" in error[0]


def test_nvp_encode_base_writes_a_file_the_runtime_decodes_at_once(tmp_path, capsys, one_torch_thread):
    from nvp_export.clips import ClipSpec, write_clip
    from nvp_rt.cli import main
    from nvp_rt.quality import psnr

    seed = int(np.random.default_rng().integers(1 << 16))
    source = write_clip(tmp_path / "clip.mp4", ClipSpec("coffee", width=WIDTH, height=HEIGHT, frames=FRAMES, seed=seed))
    out, store = tmp_path / "clip.nvp", tmp_path / "store"  # a fresh store: the encode must fill it
    capsys.readouterr()
    args = ["encode", tmp_path / "clip.mp4", "-o", out, "--base", "--bpp", 3, "--modulation", "film"]
    assert main([str(a) for a in [*args, "--fit-seconds", 1, "--threads", 1, "-q", "--store", store]]) == 0
    printed = capsys.readouterr().out
    size = out.stat().st_size
    assert (
        f"{out}: {FRAMES} frames {WIDTH}x{HEIGHT}, {size} bytes" in printed and size <= 3 * FRAMES * HEIGHT * WIDTH / 8
    )
    with NvpFile.open(out) as nvp:
        assert nvp.base is not None and nvp.base["modulation"] == "film" and nvp.base["sha256"] == load_base()[1]
    frames = nvp_rt.Session(out, store=ModelStore(store)).decode()
    assert np.abs(frames.astype(int) - read(out)).max() <= 1
    assert f"PSNR {psnr(source, read(out)):.2f} dB after quantisation" in printed

    odd = tmp_path / "odd.mp4"
    write_clip(odd, ClipSpec("coffee", width=64, height=48, frames=2, seed=seed))
    side = load_base()[0].config.factor
    suggested = f"{64 // side * side}x{48 // side * side}"
    for argv, words in (
        (["encode", odd, "-o", tmp_path / "odd.nvp", "--base"], [f"multiples of {side}", f"--size {suggested}"]),
        (["encode", odd, "-o", tmp_path / "odd.nvp", "--modulation", "lora"], ["--modulation", "--base"]),
        (["encode", odd, "-o", tmp_path / "odd.nvp", "--base", "--params", 1000], ["--params", "from-scratch"]),
    ):
        assert main([str(a) for a in argv]) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and all(w in error[0] for w in words), error
    assert not (tmp_path / "odd.nvp").exists()


def test_nvp_base_graphs_fills_a_store_for_files_from_elsewhere(files, tmp_path, capsys):
    from nvp_rt.cli import main

    store = tmp_path / "store"
    with pytest.raises(NvpFormatError, match="`nvp base-graphs`"):
        nvp_rt.Session(files["bias"], store=ModelStore(store))
    assert main(["base-graphs", "--store", str(store)]) == 0
    assert f"decoder graphs of base {load_base()[1][:16]}" in capsys.readouterr().out
    frames = nvp_rt.Session(files["bias"], store=ModelStore(store)).decode()
    assert np.abs(frames.astype(int) - read(files["bias"])).max() <= 1


def test_decoding_a_base_file_never_imports_torch(files, shared_store):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        import nvp_rt
        frames = nvp_rt.Session({str(files["lora"])!r}, store={str(shared_store.root)!r}).decode()
        assert frames.shape == ({FRAMES}, {HEIGHT}, {WIDTH}, 3)
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print(leaked)
        sys.exit(1 if leaked else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
