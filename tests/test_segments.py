"""Videos of several segments: each decodes with its own INR, a query reads only the sections it needs,
frames across a boundary answer as they do one by one, parts join verbatim, URLs are read through fsspec,
and files of format 1.0 still open."""

import fsspec
import numpy as np
import pytest
import torch

import nvp_rt
from nvp_export.inr import from_config, make_config
from nvp_export.inr.store import load_segments, quantise_inr, save_nvp, tap_list
from nvp_export.onnx_export import export_route_graphs
from nvp_export.route.multipathway import PathwayAdapter
from nvp_export.zoo import load_backbone
from nvp_rt import nvpfile
from nvp_rt.codec import decode_tensors
from nvp_rt.nvpfile import NvpFile, NvpFormatError, Route, SegmentPayload, join_segments, replace_routes

pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")

HEIGHT, WIDTH = 32, 48
TAP, POINT = "block2", "stage3"


def _segment_inrs(family, lengths, seed):
    """One random INR per segment, all of one architecture (only the frame count differs)."""
    inrs = []
    for i, n in enumerate(lengths):
        torch.manual_seed(seed + i)
        inr = from_config(make_config(family, height=HEIGHT, width=WIDTH, num_frames=n, fc_dim=16)).eval()
        if family == "hnerv":
            with torch.no_grad():
                inr.embeddings.normal_()
        inrs.append(inr)
    return inrs


def _write(path, inrs):
    """The segments written as one file; returns the INRs as a reader gets them (quantised)."""
    coded = [quantise_inr(inr) for inr in inrs]
    total = sum(inr.num_frames for inr in inrs)
    manifest = {
        "inr": inrs[0].config_dict(),
        "taps": tap_list(inrs[0]),
        "video": {"frames": total, "height": HEIGHT, "width": WIDTH},
    }
    nvpfile.write_nvp(path, manifest, [SegmentPayload(inr.num_frames, a, m) for inr, (a, m, _) in zip(inrs, coded)])
    return [q for _, _, q in coded]


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, shared_store):
    rng = np.random.default_rng()
    d = tmp_path_factory.mktemp("segments")
    lengths = [int(n) for n in rng.integers(3, 7, size=3)]
    stored = _write(d / "long.nvp", _segment_inrs("hnerv", lengths, int(rng.integers(1 << 16))))
    store = shared_store
    backbone = load_backbone("efficientnet_lite0")
    torch.manual_seed(0)
    adapter = PathwayAdapter(stored[0].tap_shapes()[TAP][0], backbone.point(POINT)).eval()
    key = export_route_graphs(stored[0], backbone, POINT, store)
    arrays, meta = adapter.to_route()
    replace_routes(d / "long.nvp", [Route("cls", key, TAP, POINT, arrays, {"kind": "classification", **meta})])
    return d, store, stored, lengths


def _reference(stored, lengths, frames, tap):
    starts = np.cumsum([0, *lengths])
    out = []
    for f in frames:
        k = int(np.searchsorted(starts, f, side="right") - 1)
        with torch.no_grad():
            out.append(stored[k].decode(torch.tensor([f - starts[k]]), until=tap)[tap].numpy())
    return np.concatenate(out)


def test_each_segment_decodes_with_its_own_inr(segmented, rng):
    d, store, stored, lengths = segmented
    session = nvp_rt.Session(d / "long.nvp", store=store)
    total = sum(lengths)
    assert session.inr.num_frames == total and [s.frames for s in session.inr.segments] == lengths
    frames = rng.permutation(total)[: int(rng.integers(2, total))]
    pixels = session.decode(frames)
    reference = _reference(stored, lengths, frames, "rgb")
    expected = (np.clip(reference, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1  # rounding at exact .5 steps only
    read_back = load_segments(d / "long.nvp")  # the export side reads them back too
    assert [start for start, _ in read_back] == list(np.cumsum([0, *lengths[:-1]]))
    for (_, inr), want in zip(read_back, stored):
        for k, v in want.state_dict().items():
            torch.testing.assert_close(inr.state_dict()[k], v, rtol=0, atol=0)


def test_frames_across_a_boundary_answer_as_one_by_one(segmented, rng):
    d, store, _, lengths = segmented
    session = nvp_rt.Session(d / "long.nvp", store=store)
    boundary = lengths[0] + int(rng.integers(0, 2)) * lengths[1]
    frames = [boundary + 1, boundary - 1, boundary, boundary - 2]
    together = session.run(["cls"], frames=frames)["cls"].logits
    alone = np.concatenate([session.run(["cls"], frames=[f])["cls"].logits for f in frames])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_a_one_frame_query_reads_its_task_bytes_only(segmented, rng):
    """Through fsspec (an in-memory filesystem standing in for object storage): the file opens from its
    header and manifest, and a one-frame query fetches what ``task_bytes`` says, not the other segments."""
    d, store, _, lengths = segmented
    data = (d / "long.nvp").read_bytes()
    fs = fsspec.filesystem("memory")
    fs.pipe("/archive/long.nvp", data)
    remote = nvp_rt.Session("memory://archive/long.nvp", store=store)
    local = nvp_rt.Session(d / "long.nvp", store=store)
    k = int(rng.integers(len(lengths)))
    frame = sum(lengths[:k]) + int(rng.integers(lengths[k]))
    got = remote.run(["cls"], frames=[frame])["cls"].logits
    np.testing.assert_array_equal(got, local.run(["cls"], frames=[frame])["cls"].logits)
    nvp = NvpFile.open(d / "long.nvp")
    assert (
        remote.bytes_read
        == nvp.task_bytes(TAP, k)
        < len(data) - sum(nvp.payload_sizes(j)["embeddings"] for j in range(3) if j != k)
    )
    np.testing.assert_array_equal(remote.decode([frame]), local.decode([frame]))


def test_parts_join_verbatim_and_architectures_must_match(tmp_path, rng):
    lengths = [int(n) for n in rng.integers(2, 6, size=2)]
    inrs = _segment_inrs("nerv", lengths, int(rng.integers(1 << 16)))
    parts = []
    for i, inr in enumerate(inrs):
        arrays, meta, _ = quantise_inr(inr)
        parts.append(tmp_path / f"part{i}.nvp")
        save_nvp(
            parts[-1],
            inr,
            arrays,
            meta,
            {
                "video": {"frames": inr.num_frames, "height": HEIGHT, "width": WIDTH},
                "metrics": {"psnr_quantised_db": float(i)},
            },
        )
    out = tmp_path / "joined.nvp"
    join_segments(out, parts, {"height": HEIGHT, "width": WIDTH, "fps": 25.0})
    joined = NvpFile.open(out)
    assert [s.frames for s in joined.segments] == lengths and joined.manifest["video"]["frames"] == sum(lengths)
    assert [s["info"]["metrics"]["psnr_quantised_db"] for s in joined.manifest["segments"]] == [0.0, 1.0]
    for i, part in enumerate(parts):
        alone = NvpFile.open(part).segment_tensors(0)
        for name, value in joined.segment_tensors(i).items():
            np.testing.assert_array_equal(value, alone[name])
    other = from_config(make_config("nerv", height=HEIGHT, width=WIDTH, num_frames=3, fc_dim=12))
    arrays, meta, _ = quantise_inr(other)
    save_nvp(tmp_path / "other.nvp", other, arrays, meta, {"video": {"frames": 3, "height": HEIGHT, "width": WIDTH}})
    with pytest.raises(NvpFormatError, match="architecture differs"):
        join_segments(tmp_path / "bad.nvp", [parts[0], tmp_path / "other.nvp"], {"height": HEIGHT, "width": WIDTH})
    assert not (tmp_path / "bad.nvp").exists()


def test_format_1_files_still_open_and_decode(segmented, tmp_path, rng):
    """A 1.0 file (one ``inr`` section coded as one group, float32 routes) decodes as its 2.0 twin does;
    adding a route to it is refused with a message."""
    d, store, _, _ = segmented
    inr = _segment_inrs("hnerv", [5], int(rng.integers(1 << 16)))[0]
    arrays, meta, stored = quantise_inr(inr)
    flat = decode_tensors(arrays, meta)
    from nvp_rt.codec import encode_tensors

    v2_arrays, v2_meta = encode_tensors(flat, {k: 6 if k == "embeddings" else 8 for k in flat})
    v1_arrays = {k.split("/", 1)[1]: v for k, v in v2_arrays.items()}
    v1_meta = {"codec": "quant-range-v1", "tensors": v2_meta["groups"]["all"]["tensors"], "streams": v2_meta["streams"]}
    manifest = {
        "inr": stored.config_dict(),
        "taps": tap_list(stored),
        "video": {"frames": 5, "height": HEIGHT, "width": WIDTH},
    }
    data = nvpfile._serialise(
        manifest, {"inr": (nvpfile._blob(v1_arrays), v1_meta), "routes": (b"", {"routes": []})}, (1, 0)
    )
    old = tmp_path / "old.nvp"
    old.write_bytes(data)
    export_route_graphs(stored, load_backbone("efficientnet_lite0"), POINT, store)
    session = nvp_rt.Session(old, store=store)
    with torch.no_grad():
        want = stored.decode(torch.arange(5))["rgb"].numpy()
    got = session.decode(range(5)).astype(int)
    assert np.abs(got - (np.clip(want, 0, 1) * 255).round().transpose(0, 2, 3, 1)).max() <= 1
    with pytest.raises(NvpFormatError, match="format 1"):
        replace_routes(old, [])


def test_export_trains_one_route_over_all_segments(tmp_path, rng):
    """``nvp-export`` on a file of several segments: one adapter for the whole video, whose answers through
    the runtime equal the torch path on every segment's frames."""
    from nvp_export.cli import main as export_main
    from nvp_export.inr import load_video
    from nvp_export.route.adapter import AdapterSpec, MicroAdapter

    lengths = [int(n) for n in rng.integers(3, 6, size=2)]
    path = tmp_path / "two.nvp"
    _write(path, _segment_inrs("hnerv", lengths, int(rng.integers(1 << 16))))
    store = tmp_path / "store"
    args = ["--task", "efficientnet_lite0", str(path), "--epochs", "2", "--top", "0.05", "--store", str(store), "-q"]
    assert export_main(args) == 0
    (route,) = NvpFile.open(path).routes()
    frames = list(range(sum(lengths)))
    logits = nvp_rt.Session(path, store=store).run([route.task], frames=frames)[route.task].logits
    weight = route.arrays["weight0"]
    size = tuple(route.metadata["pathways"][0]["size"])
    adapter = MicroAdapter.from_arrays(AdapterSpec(weight.shape[1], weight.shape[0], size), route.arrays)
    with torch.no_grad():
        taps = load_video(path).decode(torch.tensor(frames), until=route.tap)[route.tap]
        reference = load_backbone("efficientnet_lite0").suffix(adapter(taps), route.injection_point).numpy()
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()
