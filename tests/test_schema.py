"""Crafted files with valid checksums: every violation of the schema is an NvpFormatError naming the
field, raised when the file is opened, before anything is allocated from what the file says."""

import sys
from pathlib import Path

import numpy as np
import pytest

from nvp_rt.codec import decode_tensors, encode_tensors
from nvp_rt.nvpfile import NvpFile, NvpFormatError, Route, write_nvp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fuzz package lives beside tests/
from fuzz import mutator  # noqa: E402

MANIFEST = {
    "video": {"frames": 8, "height": 16, "width": 16, "fps": 30.0},
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
}


@pytest.fixture
def valid(tmp_path, rng):
    """A file nvp could have written: an entropy-coded payload and a two-conv route from block1."""
    tensors = {
        "embeddings": rng.normal(size=(8, 4, 4, 4)),
        "stages.stem.0.weight": rng.normal(size=(7, 4, 1, 1)),
        "stages.stem.0.bias": rng.normal(size=7),
    }
    arrays, meta = encode_tensors(tensors, {k: 6 if k == "embeddings" else 8 for k in tensors})
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
    write_nvp(path, MANIFEST, arrays, meta, [route])
    return path


def _open(path):
    nvp = NvpFile.open(path)
    decode_tensors(nvp.inr.arrays, nvp.inr.meta)
    return nvp


def _mutate(path, ops):
    bad = path.with_name("bad.nvp")
    bad.write_bytes(mutator.apply(mutator.parse(path.read_bytes()), ops))
    return bad


def _set(doc, path, value):
    return {"op": "json", "doc": doc, "path": path, "action": "set", "value": value}


ROUTE = ["routes", 0]
CASES = {
    "frame count as a string": (_set("manifest", ["inr", "num_frames"], "32"), r"manifest\.inr\.num_frames"),
    "frame count with a fraction": (_set("manifest", ["inr", "num_frames"], 32.5), r"inr\.num_frames"),
    "bool as an integer": (_set("manifest", ["taps", 1, "shape", 0], True), r"taps\[1\]\.shape\[0\]"),
    "infinite frame count": (_set("manifest", ["inr", "num_frames"], {"$": "1e999"}), "overflows"),
    "NaN in the manifest": (_set("manifest", ["video", "fps"], {"$": "nan"}), "NaN"),
    "deep nesting": (_set("manifest", ["note"], {"$": "deep"}), "nested"),
    "empty tap shape": (_set("manifest", ["taps", 0, "shape"], []), r"taps\[0\]\.shape"),
    "tap of the wrong size": (_set("manifest", ["taps", 2, "shape"], [5, 16, 15]), r"taps\[2\]\.shape"),
    "video of another length": (_set("manifest", ["video", "frames"], 9), r"video\.frames"),
    "null section offset": (
        {"op": "index", "section": "inr", "key": "offset", "value": None},
        r"sections\.inr\.offset",
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
    "NaN adapter weight": (
        {
            "op": "array",
            "section": "routes",
            "name": "0/weight1",
            "action": "fill",
            "positions": [3],
            "values": ["nan"],
        },
        "NaN",
    ),
    "infinite adapter bias": (
        {"op": "array", "section": "routes", "name": "0/bias0", "action": "fill", "positions": [0], "values": ["inf"]},
        "infinite",
    ),
    "bfloat16 array": (_set("st:routes", ["0/bias0", "dtype"], "BF16"), "not a valid array blob"),
    "float8 array": (_set("st:inr", ["stages.stem.0.bias:low", "dtype"], "F8_E4M3"), "not a valid array blob"),
    "NaN quantisation range": (
        {
            "op": "array",
            "section": "inr",
            "name": "embeddings:step",
            "action": "fill",
            "positions": [0],
            "values": ["nan"],
        },
        "quantisation range",
    ),
    "infinite quantisation low": (
        {
            "op": "array",
            "section": "inr",
            "name": "stages.stem.0.weight:low",
            "action": "fill",
            "positions": [0],
            "values": ["-inf"],
        },
        "quantisation range",
    ),
    "bits a bool": (_set("meta:inr", ["tensors", 0, "bits"], True), r"tensors\[0\]\.bits"),
    "a small stream claiming a huge tensor": (
        {"op": "inflate", "tensor": "embeddings", "dim": 1, "factor": 4096},
        "cannot hold",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_a_crafted_field_is_refused_by_name(valid, name):
    _open(valid)
    op, field = CASES[name]
    bad = _mutate(valid, [op])
    with pytest.raises(NvpFormatError, match=field):
        _open(bad)


def test_a_near_constant_stream_cannot_claim_millions_of_frames(valid):
    """The reader allocates what the coded bytes can hold, not what the manifest claims: a valid stream of a
    few kilobytes declaring 131,072 frames is refused before decoding (such files were accepted at GBs)."""
    bad = _mutate(valid, [{"op": "inflate", "tensor": "embeddings", "dim": 0, "factor": 1 << 14}])
    nvp = NvpFile.open(bad)  # consistent: the frame count follows the embeddings
    assert nvp.manifest["inr"]["num_frames"] == 8 << 14 and bad.stat().st_size < 20_000
    with pytest.raises(NvpFormatError, match="cannot hold"):
        decode_tensors(nvp.inr.arrays, nvp.inr.meta)
