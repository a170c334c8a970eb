"""Crafted files with valid checksums: every violation of the schema is an NvpFormatError naming the
field, raised when the file is opened, before anything is allocated from what the file says."""

import sys
from pathlib import Path

import numpy as np
import pytest

from nvp_rt.codec import encode_tensors
from nvp_rt.nvpfile import NvpFile, NvpFormatError, Route, SegmentPayload, write_nvp
from nvp_rt.prefix import payload_group

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fuzz package lives beside tests/
from fuzz import mutator  # noqa: E402

from test_nvpfile import MANIFEST as _WRITTEN  # noqa: E402

MANIFEST = {**_WRITTEN, "video": {**_WRITTEN["video"], "fps": 30.0}}  # fps: a float field for the NaN case


def random_segments(rng) -> list[SegmentPayload]:
    """Two segments (5 and 3 frames) of random values, entropy-coded as nvp codes an INR's."""
    segments = []
    for frames in (5, 3):
        tensors = {
            "embeddings": rng.normal(size=(frames, 4, 4, 4)),
            "stages.stem.0.weight": rng.normal(size=(7, 4, 1, 1)),
            "stages.stem.0.bias": rng.normal(size=7),
        }
        arrays, meta = encode_tensors(tensors, {k: 6 if k == "embeddings" else 8 for k in tensors}, payload_group)
        segments.append(SegmentPayload(frames, arrays, meta))
    return segments


@pytest.fixture
def valid(tmp_path, rng):
    """A file nvp could have written: two segments (5 and 3 frames), each an entropy-coded payload in one
    section per stage, and a two-conv route from block1."""
    segments = random_segments(rng)
    route = Route(
        "cls",
        "efficientnet_lite0-0123",
        "block1",
        "stage3",
        {
            "weight0": rng.normal(size=(4, 6)).astype(np.float32),
            "bias0": np.zeros(4, np.float32),
            "weight1": rng.normal(size=(9, 4)).astype(np.float32),
            "bias1": np.zeros(9, np.float32),
        },
        {"kind": "classification", "hidden": 4, "pathways": [{"size": [28, 28], "frames": None}]},
    )
    path = tmp_path / "valid.nvp"
    write_nvp(path, MANIFEST, segments, [route])
    return path


def _open(path):
    """Open, read every section and decode every segment: a section's damage shows when it is read."""
    nvp = NvpFile.open(path)
    nvp.verify()
    for i in range(len(nvp.segments)):
        nvp.segment_tensors(i)
    return nvp


def _mutate(path, ops):
    bad = path.with_name("bad.nvp")
    bad.write_bytes(mutator.apply(mutator.parse(path.read_bytes()), ops))
    return bad


def _set(doc, path, value):
    return {"op": "json", "doc": doc, "path": path, "action": "set", "value": value}


def _fill(section, name, value):
    return {"op": "array", "section": section, "name": name, "action": "fill", "positions": [0], "values": [value]}


ROUTE = ["routes", 0]
MODEL = "meta:seg1/model"
CASES = {
    "frame count as a string": (_set("manifest", ["inr", "num_frames"], "32"), r"manifest\.inr\.num_frames"),
    "frame count with a fraction": (_set("manifest", ["inr", "num_frames"], 32.5), r"inr\.num_frames"),
    "bool as an integer": (_set("manifest", ["taps", 1, "shape", 0], True), r"taps\[1\]\.shape\[0\]"),
    "infinite frame count": (_set("manifest", ["inr", "num_frames"], {"$": "1e999"}), "overflows"),
    "NaN in the manifest": (_set("manifest", ["video", "fps"], {"$": "nan"}), "NaN"),
    "deep nesting": (_set("manifest", ["note"], {"$": "deep"}), "nested"),
    "empty tap shape": (_set("manifest", ["taps", 0, "shape"], []), r"taps\[0\]\.shape"),
    "tap of the wrong size": (_set("manifest", ["taps", 2, "shape"], [5, 16, 15]), r"taps\[2\]\.shape"),
    "video null": (_set("manifest", ["video"], None), r"manifest\.video: expected an object, got null"),
    "metrics a list": (_set("manifest", ["metrics"], [1]), r"manifest\.metrics: expected an object, got list"),
    "video of another length": (_set("manifest", ["video", "frames"], 9), r"video\.frames"),
    "null section offset": (
        {"op": "index", "section": "seg0/model", "key": "offset", "value": None},
        r"sections\.seg0/model\.offset",
    ),
    "section index missing": (
        {"op": "index", "section": None, "action": "delete"},
        r"manifest\.sections: expected an object",
    ),
    "section index a list": ({"op": "index", "section": None, "value": []}, r"manifest\.sections: expected an object"),
    "section meta a list": (
        {"op": "index", "section": "seg1/model", "key": "meta", "value": [1]},
        r"sections\.seg1/model\.meta",
    ),
    "segment index missing": (
        {"op": "json", "doc": "manifest", "path": ["segments"], "action": "delete"},
        r"manifest\.segments: expected a list",
    ),
    "segments with a gap": (_set("manifest", ["segments", 1, "start"], 6), r"segments\[1\]\.start"),
    "segments covering more frames than the INR": (_set("manifest", ["segments", 1, "frames"], 4), "cover 9 frames"),
    "segment of no frames": (_set("manifest", ["segments", 0, "frames"], 0), r"segments\[0\]\.frames"),
    "segment info a list": (_set("manifest", ["segments", 0, "info"], [1]), r"segments\[0\]\.info"),
    "a segment without its model section": (
        {"op": "section", "section": "seg1/model", "action": "drop"},
        "segment 1 lacks its entropy model",
    ),
    "a segment with its model only": (
        [{"op": "section", "section": f"seg1/{g}", "action": "drop"} for g in ("stem", "embeddings")],
        "segment 1 lacks its entropy model or its payload",
    ),
    "a stray segment's section": (
        {"op": "section", "section": "seg1/stem", "action": "copy", "to": "seg2/stem"},
        r"the sections hold segments \[0, 1, 2\], the manifest lists 2",
    ),
    "a stage a segment lacks": (
        {"op": "section", "section": "seg1/stem", "action": "rename", "to": "seg1/block1"},
        "segment 1 has no section 'stem'",  # decoding a segment whole reads every group its model codes
    ),
    "route metadata null": (_set("meta:routes", [*ROUTE, "metadata"], None), r"routes\[0\]\.metadata"),
    "route metadata a string": (_set("meta:routes", [*ROUTE, "metadata"], "x"), r"routes\[0\]\.metadata"),
    "task a list": (_set("meta:routes", [*ROUTE, "task"], ["cls"]), r"routes\[0\]\.task"),
    "backbone an int": (_set("meta:routes", [*ROUTE, "backbone"], 7), r"routes\[0\]\.backbone"),
    "unknown tap": (_set("meta:routes", [*ROUTE, "tap"], "block9"), r"routes\[0\]\.tap"),
    "pathway size a string": (
        _set("meta:routes", [*ROUTE, "metadata", "pathways", 0, "size", 0], "77"),
        r"pathways\[0\]\.size\[0\]",
    ),
    "huge pathway size": (
        _set("meta:routes", [*ROUTE, "metadata", "pathways", 0, "size"], [339640, 7]),
        r"pathways\[0\]\.size\[0\]",
    ),
    "hidden width off": (_set("meta:routes", [*ROUTE, "metadata", "hidden"], 5), r"arrays\[weight0\]"),
    # Stored adapters are 8-bit codes: a NaN or infinite adapter value can only come from its range.
    "NaN adapter weight": (
        _fill("routes", "all/0/weight1:step", "nan"),
        "routes section: .*0/weight1: quantisation range holds NaN",
    ),
    "infinite adapter bias": (
        _fill("routes", "all/0/bias0:low", "inf"),
        "0/bias0: quantisation range holds NaN, infinite",
    ),
    "routes' payload of another codec": (_set("meta:routes", ["payload", "codec"], "zip"), "unknown codec"),
    "routes' payload without a description": (
        {"op": "json", "doc": "meta:routes", "path": ["payload"], "action": "delete"},
        "routes section: INR payload: unknown codec",
    ),
    "bfloat16 array": (_set("st:routes", ["all/0/bias0:low", "dtype"], "BF16"), "not a valid array blob"),
    "float8 array": (_set("st:seg0/stem", ["stages.stem.0.bias:low", "dtype"], "F8_E4M3"), "not a valid array blob"),
    "NaN quantisation range": (_fill("seg1/embeddings", "embeddings:step", "nan"), "quantisation range"),
    "infinite quantisation low": (_fill("seg0/stem", "stages.stem.0.weight:low", "-inf"), "quantisation range"),
    "bits a bool": (_set(MODEL, ["groups", "stem", "tensors", 0, "bits"], True), r"groups\.stem\.tensors\[0\]\.bits"),
    "a group's stream sizes not its tensors'": (
        _set(MODEL, ["groups", "embeddings", "streams", "6"], 4),
        "group 'embeddings': stream sizes do not match its tensors",
    ),
    "groups not adding up to the model's counts": (
        _set(MODEL, ["streams", "8"], 1),
        "stream 8 symbol counts inconsistent",
    ),
    "a tensor in two groups": (
        _set(MODEL, ["groups", "stem", "tensors", 0, "name"], "embeddings"),
        "stream sizes do not match|appears twice",
    ),
    "a group's stream claiming more symbols than its words hold": (
        {"op": "array", "section": "seg1/embeddings", "name": "stream6:words", "action": "resize", "size": 1},
        "stream 6 claims 192 symbols; its 1 words cannot hold them",
    ),
    "a stream key int() refuses": (_set(MODEL, ["streams", "\u00b9"], 5), "streams: key '\u00b9' is not a bit width"),
    "a quantisation step of 65504": (
        {"op": "range", "section": "seg1/stem", "name": "stages.stem.0.weight:step", "value": 65504.0},
        r"segment 1: .*stages\.stem\.0\.weight: quantisation range reaches 1\.67e\+07, beyond \+-2048",
    ),
    "a quantisation low past the bound": (
        {"op": "range", "section": "seg0/stem", "name": None, "part": ":low", "value": -2050.0},
        r"segment 0: .*quantisation range reaches 2050",
    ),
    "a string just over the bound": (_set("manifest", ["video", "source"], {"$": "long"}), r"manifest\.video\.source"),
    "a 15 MB string": (_set("manifest", ["note"], {"$": "huge"}), r"manifest\.note: a string of 5000000 characters"),
    "a key over the bound": (_set("manifest", ["video", "k" * 70_000], 1), "manifest.video: a key of 70000 characters"),
    "too many values": (_set("manifest", ["note"], {"$": "many"}), r"manifest: up to 600\d+ values"),
    "a section's array header of megabytes": (
        _set("st:seg0/stem", ["__metadata__"], {"note": {"$": "huge"}}),
        r"an array header of 150\d{5} bytes",
    ),
    "a small stream claiming a huge tensor": (
        {"op": "inflate", "payload": "seg1/model", "tensor": "embeddings", "dim": 1, "factor": 1 << 14},
        "segment 1: INR payload: stream 6 claims .* cannot hold",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_a_crafted_field_is_refused_by_name(valid, name):
    _open(valid)
    ops, field = CASES[name]
    bad = _mutate(valid, ops if isinstance(ops, list) else [ops])
    with pytest.raises(NvpFormatError, match=field):
        _open(bad)


def test_a_near_constant_stream_cannot_claim_millions_of_frames(valid):
    """The reader allocates what the coded bytes can hold, not what the manifest claims: a valid stream of a
    few kilobytes declaring 49,152 frames for one segment is refused before decoding (such files were
    accepted at GBs), and the other segment still decodes."""
    bad = _mutate(
        valid, [{"op": "inflate", "payload": "seg1/model", "tensor": "embeddings", "dim": 0, "factor": 1 << 14}]
    )
    nvp = NvpFile.open(bad)  # consistent: the segment's and the video's frame counts follow the embeddings
    assert [s.frames for s in nvp.segments] == [5, 3 << 14] and nvp.manifest["inr"]["num_frames"] == 5 + (3 << 14)
    assert bad.stat().st_size < nvp.declared_symbols(1) / 10  # bytes that claim more than ten values each
    nvp.segment_tensors(0)
    with pytest.raises(NvpFormatError, match="segment 1: INR payload: stream 6 claims"):
        nvp.segment_tensors(1)


def test_a_section_of_a_newer_minor_version_is_skipped_but_checksummed(valid):
    """Forward compatibility: a section this reader does not know still tiles the file and is verified."""
    extra = _mutate(valid, [{"op": "section", "section": "seg1/stem", "action": "copy", "to": "extra"}])
    assert "extra" in _open(extra).sections
    data = bytearray(extra.read_bytes())
    data[NvpFile.open(extra)._index["extra"].offset] ^= 1
    extra.write_bytes(bytes(data))
    with pytest.raises(NvpFormatError, match="'extra' checksum"):
        _open(extra)
