"""The .nvp container: round trips, tamper and truncation detection, atomic writes, route replacement."""

import os
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from nvp_rt import nvpfile
from nvp_rt.codec import decode_tensors, encode_tensors
from nvp_rt.nvpfile import MAGIC, NvpFile, NvpFormatError, Route, SegmentPayload, replace_routes, stored_route
from nvp_rt.prefix import payload_group


def _random_payload(rng, frames=8):
    """A coded payload of random tensors, grouped as an INR's: one group per stage of MANIFEST, embeddings."""
    tensors = {
        f"stages.{stage}.{i}.weight": rng.normal(size=tuple(rng.integers(1, 6, size=rng.integers(1, 4)))).astype(
            np.float32
        )
        for stage in ("stem", "block1", "block2", "rgb")
        for i in range(2)
    }
    tensors["embeddings"] = rng.normal(size=(frames, 4, 1, 1)).astype(np.float32)
    bits = {k: 6 if k == "embeddings" else 8 for k in tensors}
    return encode_tensors(tensors, bits, payload_group)


def write_nvp(path, manifest, arrays, meta, routes=()):
    """One segment of MANIFEST's frames."""
    return nvpfile.write_nvp(path, manifest, [SegmentPayload(manifest["inr"]["num_frames"], arrays, meta)], routes)


def _route(rng, task="cls"):
    return Route(
        task,
        "efficientnet_lite0",
        "block2",
        "_blocks.3",
        {"weight0": rng.normal(size=(8, 5)).astype(np.float32), "bias0": rng.normal(size=8).astype(np.float32)},
        {"hidden": None, "pathways": [{"size": [28, 28], "frames": None}]},
    )


# A manifest as nvp writes it: an INR configuration (16x16, strides 2 2) and its taps.
MANIFEST: dict[str, Any] = {
    "video": {"frames": 8, "height": 16, "width": 16},
    "inr": {
        "family": "hnerv",
        "height": 16,
        "width": 16,
        "num_frames": 8,
        "fc_dim": 7,
        "strides": [2, 2],
        "embed_dim": 4,
        "reduction": 1.2,
    },
    "taps": [
        {"name": "stem", "shape": [7, 4, 4]},
        {"name": "block1", "shape": [6, 8, 8]},
        {"name": "block2", "shape": [5, 16, 16]},
        {"name": "rgb", "shape": [3, 16, 16]},
    ],
    "note": "é",
}


def _write(tmp_path, rng, routes=()):
    path = tmp_path / "clip.nvp"
    arrays, meta = _random_payload(rng)
    manifest = MANIFEST
    size = write_nvp(path, manifest, arrays, meta, list(routes))
    return path, manifest, arrays, meta, size


def test_round_trip(tmp_path):
    rng = np.random.default_rng()
    route = _route(rng)
    path, manifest, arrays, meta, size = _write(tmp_path, rng, [route])
    nvp = NvpFile.open(path)
    assert size == os.path.getsize(path) == nvp.size_bytes
    assert {k: v for k, v in nvp.manifest.items() if k != "segments"} == manifest
    assert nvp.version == nvpfile.FORMAT_VERSION and nvp.segments == [nvpfile.Segment(0, 8)]
    expected = decode_tensors(arrays, meta)
    got = nvp.segment_tensors(0)
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    (back,) = nvp.routes()
    assert back.header() == route.header()
    for k, value in route.arrays.items():  # 8-bit codes: within half a step of the float adapter
        np.testing.assert_array_equal(back.arrays[k], stored_route(route).arrays[k])
        assert np.abs(back.arrays[k] - value).max() <= (value.max() - value.min()) / 255 * 0.51 + 1e-3


def test_a_query_reads_only_its_segment_and_stages(tmp_path):
    """Three segments: decoding stages of one reads the header, the manifest, that segment's model and
    those stages' sections, and nothing else."""
    rng = np.random.default_rng()
    frames = [int(n) for n in rng.integers(1, 6, size=3)]
    payloads = [SegmentPayload(n, *_random_payload(rng, n)) for n in frames]
    manifest = {**MANIFEST, "video": {**MANIFEST["video"], "frames": sum(frames)}}
    path = tmp_path / "long.nvp"
    nvpfile.write_nvp(path, manifest, payloads)
    nvp = NvpFile.open(path)
    assert [s.frames for s in nvp.segments] == frames and nvp.segments[2].start == frames[0] + frames[1]
    opened = nvp.bytes_read
    assert opened < nvp.size_bytes
    k = int(rng.integers(3))
    got = nvp.segment_tensors(k, ["stem", "block1"])
    want = decode_tensors(payloads[k].arrays, payloads[k].meta)
    assert set(got) == {n for n in want if payload_group(n) in ("stem", "block1")}
    for name, value in got.items():
        np.testing.assert_array_equal(value, want[name])
    sizes = nvp.payload_sizes(k)
    assert nvp.bytes_read - opened == sizes["model"] + sizes["stem"] + sizes["block1"]


def test_every_flipped_byte_is_detected(tmp_path):
    rng = np.random.default_rng()
    path, *_ = _write(tmp_path, rng, [_route(rng)])
    data = path.read_bytes()
    bad = tmp_path / "bad.nvp"
    positions = [*range(24), *rng.choice(len(data), size=min(len(data), 150), replace=False)]  # header + random
    for pos in positions:
        corrupt = bytearray(data)
        corrupt[pos] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(corrupt))
        with pytest.raises(NvpFormatError):
            NvpFile.open(bad).verify()  # open checks header and manifest; a section, when it is read


def test_truncation_and_trailing_bytes_are_detected(tmp_path):
    rng = np.random.default_rng()
    path, *_ = _write(tmp_path, rng)
    data = path.read_bytes()
    bad = tmp_path / "bad.nvp"
    for cut in [0, 3, len(MAGIC), 20, *rng.integers(21, len(data), size=40)]:
        bad.write_bytes(data[:cut])
        with pytest.raises(NvpFormatError):
            NvpFile.open(bad).verify()
    bad.write_bytes(data + b"\0")
    with pytest.raises(NvpFormatError, match="trailing"):
        NvpFile.open(bad)


def test_crafted_headers_are_rejected_before_use(tmp_path):
    rng = np.random.default_rng()
    path, *_ = _write(tmp_path, rng)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.nvp"
    # A newer major version, correctly checksummed, is refused by name.
    future = bytearray(data)
    struct.pack_into("<H", future, 8, nvpfile.FORMAT_VERSION[0] + 1)
    manifest_len = struct.unpack_from("<I", data, 12)[0]
    struct.pack_into(
        "<I", future, 16, zlib.crc32(bytes(future[20 : 20 + manifest_len]), zlib.crc32(bytes(future[:16])))
    )
    bad.write_bytes(bytes(future))
    with pytest.raises(NvpFormatError, match="not supported"):
        NvpFile.open(bad)
    # A section index pointing past the end, with a valid manifest checksum, is a bounds error.
    header = struct.calcsize("<8sHHII")
    manifest_len = struct.unpack_from("<I", data, 12)[0]
    manifest = data[header : header + manifest_len].decode()
    huge = manifest.replace('"length":', '"length":9', 1).encode()
    prefix = bytes(data[:12]) + struct.pack("<I", len(huge))
    crafted = prefix + struct.pack("<I", zlib.crc32(huge, zlib.crc32(prefix))) + huge + data[header + manifest_len :]
    bad.write_bytes(bytes(crafted))
    with pytest.raises(NvpFormatError, match="section"):
        NvpFile.open(bad)
    with pytest.raises(NvpFormatError, match="directory"):
        NvpFile.open(tmp_path)
    with pytest.raises(NvpFormatError, match="no such file"):
        NvpFile.open(tmp_path / "missing.nvp")


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path, monkeypatch):
    rng = np.random.default_rng()
    path, *_ = _write(tmp_path, rng)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(nvpfile.os, "replace", crash)
    arrays, meta = _random_payload(rng)
    with pytest.raises(OSError, match="simulated"):
        write_nvp(path, {**MANIFEST, "other": 1}, arrays, meta)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.nvp"]


def test_replace_routes_keeps_payload_bytes(tmp_path):
    rng = np.random.default_rng()
    path, manifest, arrays, meta, _ = _write(tmp_path, rng)
    old = NvpFile.open(path)

    def inr_bytes(p):
        data = p.read_bytes()
        header = struct.calcsize("<8sHHII")
        manifest_len = struct.unpack_from("<I", data, 12)[0]
        import json

        sections = json.loads(data[header : header + manifest_len])["sections"]
        return [
            data[header + manifest_len + e["offset"] :][: e["length"]] for n, e in sections.items() if n != "routes"
        ]

    payload = inr_bytes(path)
    routes = [_route(rng, "cls"), _route(rng, "det")]
    replace_routes(path, routes)
    new = NvpFile.open(path)
    assert inr_bytes(path) == payload
    assert new.manifest == old.manifest and new.payload_checksum == old.payload_checksum
    assert [r.task for r in new.routes()] == ["cls", "det"]
    np.testing.assert_array_equal(new.routes()[1].arrays["weight0"], stored_route(routes[1]).arrays["weight0"])
    replace_routes(path, [])
    assert NvpFile.open(path).routes() == [] and inr_bytes(path) == payload
