"""Structure-aware mutations of a valid .nvp file, with every checksum fixed up afterwards.

A mutant is a valid file plus a list of operations, each a small JSON-serialisable dict, so a
reproducer is its operation list: applied to any valid file it regenerates the mutant
(``apply(parse(valid), ops)``). Operations reach past the checksums into what the reader trusts:

- ``json``: set, delete or insert a value anywhere in the manifest (its segment index included),
  a section's meta (a segment's entropy-model description, the routes' headers and payload) or a
  safetensors header (type confusion, huge and negative numbers, NaN / Infinity / 1e999, deep
  nesting, strings just over the reader's bound and of 15 MB, 600,000-value lists, values moved
  from elsewhere in the document);
- ``array``: overwrite elements of an array (NaN, Inf, huge, zero, random), truncate or extend it;
- ``range``: set a tensor's quantisation low or step (or those of every tensor of a section) to a
  float16 value, from 65504 to subnormals, just inside or beyond the reader's bound;
- ``segments``: split, merge or swap the manifest's segments, or make 2 to 65,537 one-frame ones
  (the frame counts follow: the table is consistent, the sections disagree);
- ``inflate``: multiply one dimension of a tensor of an entropy-coded payload (a segment's INR,
  the routes, a format 1.0 ``inr`` section) and re-code its bit width's streams and counts
  consistently, so a small valid stream claims a huge tensor (the frame counts follow for the
  embeddings);
- ``section``: drop a section, rename it (to another segment's, an unknown or a duplicate name) or
  copy it over another, so segments lack or share sections;
- ``index``: set or delete a section's offset / length / crc32 / meta in the index, or the index;
- ``flip``: xor one byte of a section;
- ``version``: set the header's format version (a 2.0 layout read as 1.x, or the reverse).
"""

from __future__ import annotations

import copy
import json
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np

MAGIC = b"\x89NVP\r\n\x1a\n"
_HEADER = struct.Struct("<8sHHII")
Op = dict[str, Any]
# Values a field is set to: other types, boundaries, overflows (markers are expanded when serialised).
POOL: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    3,
    7,
    255,
    65535,
    2**31 - 1,
    2**31,
    2**32,
    2**53,
    2**63,
    10**30,
    -(2**31),
    0.5,
    32.5,
    -0.0,
    1e-300,
    1e308,
    "",
    "32",
    "rgb",
    "stem",
    "x" * 300,
    [],
    [1],
    [0, 0],
    [[[]]],
    {},
    {"a": 1},
    {"$": "nan"},
    {"$": "inf"},
    {"$": "-inf"},
    {"$": "1e999"},
    {"$": "deep"},
    {"$": "long"},
    {"$": "huge"},
    {"$": "many"},
]
DTYPES = [
    "BF16",
    "F8_E4M3",
    "F8_E5M2",
    "F16",
    "F32",
    "F64",
    "I8",
    "I16",
    "I32",
    "I64",
    "U8",
    "U16",
    "U32",
    "U64",
    "BOOL",
    "C64",
    "XX",
]
FILLS: list[str | int] = ["nan", "inf", "-inf", "huge", "zero", 2**31, 7, 0]  # what array elements become
# What a quantisation range (a tensor's float16 ``:low`` / ``:step``, every slice) is set to: float16's
# largest, grids just inside and beyond the reader's bound (+-2048 over 255 levels), subnormals, zero.
RANGES = [65504.0, -65504.0, 2048 / 255, 2049 / 255, 8.0, -1024.0, 1024.0, 1e-3, 6e-8, 0.0, -0.0]
VERSIONS = [[1, 0], [1, 7], [2, 0], [2, 65535], [3, 0], [0, 1], [65535, 0]]  # [major, minor]
MAX_INFLATED = 1 << 24  # symbols an inflated stream may claim (the mutator itself encodes them)
SPECIAL = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 3e38, "zero": 0.0}


@dataclass
class State:
    """A parsed file: the manifest (without its section index), and per section its meta and blob parts."""

    version: tuple[int, int]
    manifest: dict[str, Any]
    metas: dict[str, dict[str, Any]]
    headers: dict[str, dict[str, Any]]  # safetensors header per section ({} for an empty section)
    data: dict[str, bytes]  # safetensors data bytes per section
    order: list[str]


def parse(data: bytes) -> State:
    _, major, minor, length, _ = _HEADER.unpack_from(data)
    manifest = json.loads(data[_HEADER.size : _HEADER.size + length])
    body = data[_HEADER.size + length :]
    index = manifest.pop("sections")
    order = sorted(index, key=lambda n: index[n]["offset"])
    headers, blobs, metas = {}, {}, {}
    for name in order:
        e = index[name]
        blob = body[e["offset"] : e["offset"] + e["length"]]
        metas[name] = e.get("meta", {})
        if blob:
            n = struct.unpack_from("<Q", blob)[0]
            headers[name], blobs[name] = json.loads(blob[8 : 8 + n]), blob[8 + n :]
        else:
            headers[name], blobs[name] = {}, b""
    return State((major, minor), manifest, metas, headers, blobs, order)


_MARKERS: dict[str, Callable[[], str]] = {  # built only when a document holds one: some are megabytes
    "nan": lambda: "NaN",
    "inf": lambda: "Infinity",
    "-inf": lambda: "-Infinity",
    "1e999": lambda: "1e999",
    "deep": lambda: "[" * 100_000 + "]" * 100_000,
    "long": lambda: json.dumps("x" * ((1 << 16) + 1)),  # just over the reader's longest string
    "huge": lambda: json.dumps("\u20ac" * 5_000_000, ensure_ascii=False),  # 15 MB: just under its largest manifest
    "many": lambda: "[" + "0," * 600_000 + "0]",  # more values than a manifest may hold
}


def _expand(text: str) -> str:
    """Markers -> what JSON writers never produce but a crafted file may hold."""
    for marker, raw in _MARKERS.items():
        placeholder = json.dumps({"$": marker})
        if placeholder in text:
            text = text.replace(placeholder, raw())
    return text


def _dump(doc: Any) -> bytes:
    return _expand(json.dumps(doc, sort_keys=True)).encode()


def array(state: State, section: str, name: str) -> np.ndarray | None:
    h = state.headers[section].get(name)
    if not isinstance(h, dict) or h.get("dtype") not in _NP:
        return None
    try:
        a, b = (int(v) for v in h["data_offsets"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    flat = np.frombuffer(state.data[section][a:b], dtype=_NP[h["dtype"]]).copy()
    shape = h.get("shape")
    if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and math.prod(shape) == flat.size:
        return flat.reshape(shape)
    return flat


_NP = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "U32": np.uint32, "I64": np.int64, "U8": np.uint8}
_ST = {np.dtype(v).name: k for k, v in _NP.items()}


def set_arrays(state: State, section: str, arrays: dict[str, np.ndarray]) -> None:
    """Replace/add arrays of a section, rewriting its data and offsets (other headers kept as they are)."""
    old = {k: v for k, v in state.headers[section].items() if k != "__metadata__"}
    parts, header, offset = [], {}, 0
    for name in sorted(set(old) | set(arrays)):
        if name in arrays:
            a = np.ascontiguousarray(arrays[name])
            raw, entry = a.tobytes(), {"dtype": _ST[a.dtype.name], "shape": list(a.shape)}
        else:
            h = old[name]
            try:
                lo, hi = h["data_offsets"]
                raw, entry = state.data[section][lo:hi], {k: v for k, v in h.items() if k != "data_offsets"}
            except (TypeError, KeyError, ValueError):
                continue
        header[name] = {**entry, "data_offsets": [offset, offset + len(raw)]}
        parts.append(raw)
        offset += len(raw)
    state.headers[section], state.data[section] = header, b"".join(parts)


def serialise(state: State, index_ops: Sequence[Op] = ()) -> bytes:
    blobs = {}
    for name in state.order:
        if state.headers[name] or state.data[name]:
            h = _dump(state.headers[name])
            blobs[name] = struct.pack("<Q", len(h)) + h + state.data[name]
        else:
            blobs[name] = b""
    for op in (o for o in index_ops if o["op"] == "flip" and o["section"] in blobs):
        blob = bytearray(blobs[op["section"]])
        if blob:
            blob[op["pos"] % len(blob)] ^= op["xor"]
        blobs[op["section"]] = bytes(blob)
    index, offset = {}, 0
    for name in state.order:
        index[name] = {
            "offset": offset,
            "length": len(blobs[name]),
            "crc32": zlib.crc32(blobs[name]),
            "meta": state.metas[name],
        }
        offset += len(blobs[name])
    document = {**state.manifest, "sections": index}
    for op in (o for o in index_ops if o["op"] == "index"):
        entry, key = (document, "sections") if op["section"] is None else (index.get(op["section"], {}), op["key"])
        if op.get("action") == "delete":
            entry.pop(key, None)
        else:
            entry[key] = op.get("value")
    manifest = _dump(document)
    version = next((o["value"] for o in index_ops if o["op"] == "version"), state.version)
    prefix = _HEADER.pack(MAGIC, *version, len(manifest), 0)[:-4]
    crc = zlib.crc32(manifest, zlib.crc32(prefix))
    return prefix + struct.pack("<I", crc) + manifest + b"".join(blobs[n] for n in state.order)


# -- applying operations ---------------------------------------------------------------------------


def _doc(state: State, which: str) -> Any:
    kind, _, section = which.partition(":")
    return {
        "manifest": lambda: state.manifest,
        "meta": lambda: state.metas[section],
        "st": lambda: state.headers[section],
    }[kind]()


def _apply_json(state: State, op: Op) -> None:
    doc = _doc(state, op["doc"])
    *parents, last = op["path"]
    for key in parents:
        doc = doc[key]
    if op["action"] == "delete":
        del doc[last]
    elif op["action"] == "insert" and isinstance(doc, list):
        doc.insert(last, copy.deepcopy(op["value"]))
    else:
        doc[last] = copy.deepcopy(op["value"])


def _apply_array(state: State, op: Op) -> None:
    a = array(state, op["section"], op["name"])
    if a is None:
        return
    if op["action"] == "fill":
        flat = a.reshape(-1)
        for pos, value in zip(op["positions"], op["values"]):
            if not flat.size:
                continue
            v = SPECIAL.get(value, value) if isinstance(value, str) else value
            if a.dtype.kind == "f":
                with np.errstate(all="ignore"):
                    flat[pos % flat.size] = np.array(v).astype(a.dtype)
            else:  # integers: the non-finite specials become the largest value
                flat[pos % flat.size] = (int(v) if np.isfinite(v) else -1) % (1 << (8 * a.dtype.itemsize))
    elif op["action"] == "resize":
        a = np.resize(a.reshape(-1), op["size"]) if a.size else np.zeros(op["size"], a.dtype)
    set_arrays(state, op["section"], {op["name"]: a})


@dataclass(frozen=True)
class Payload:
    """Where an entropy-coded payload keeps its parts: its description (grouped as ``codec`` writes it),
    the section and array name of a bit width's symbol counts, of a group's coded words, and of a
    group's tensor's quantisation range (``<name>:low`` / ``<name>:step``)."""

    meta: dict[str, Any]
    counts: Callable[[int], tuple[str, str]]
    words: Callable[[str, int], tuple[str, str]]
    ranges: Callable[[str, str], tuple[str, str]]


def payload(state: State, key: str) -> Payload:
    """``key``: ``seg<i>/model`` (a segment's INR), ``routes`` or ``inr`` (format 1.0's one section)."""
    if key == "inr":  # one group whose description is the payload's own: the view shares its lists
        meta = state.metas["inr"]
        view = {"streams": meta["streams"], "groups": {"all": {"tensors": meta["tensors"], "streams": meta["streams"]}}}
        return Payload(
            view,
            lambda b: ("inr", f"stream{b}:counts"),
            lambda g, b: ("inr", f"stream{b}:words"),
            lambda g, t: ("inr", t),
        )
    if key == "routes":
        return Payload(
            state.metas["routes"]["payload"],
            lambda b: ("routes", f"model/stream{b}:counts"),
            lambda g, b: ("routes", f"{g}/stream{b}:words"),
            lambda g, t: ("routes", f"{g}/{t}"),
        )
    segment = key.partition("/")[0]
    return Payload(
        state.metas[key],
        lambda b: (key, f"stream{b}:counts"),
        lambda g, b: (f"{segment}/{g}", f"stream{b}:words"),
        lambda g, t: (f"{segment}/{g}", t),
    )


def payload_keys(state: State) -> list[str]:
    keys = [k for k in state.order if k.endswith("/model") or k == "inr"]
    routes = state.metas.get("routes", {})
    return keys + (["routes"] if isinstance(routes, dict) and isinstance(routes.get("payload"), dict) else [])


def _near_constant(n: int) -> np.ndarray:
    symbols = np.zeros(n, np.int32)
    symbols[:: max(n // 97, 1)] = 1  # tiny once range-coded
    return symbols


def _apply_inflate(state: State, op: Op) -> None:
    """Scale one dimension of a coded tensor; re-code its bit width's streams and counts to match (valid again)."""
    where = payload(state, op.get("payload", "seg0/model"))
    groups = where.meta["groups"]
    group, entry = next((g, e) for g, d in groups.items() for e in d["tensors"] if e["name"] == op["tensor"])
    entry["shape"][op["dim"]] *= op["factor"]
    if entry.get("axis") == op["dim"]:  # one range per slice: as many more ranges
        section, name = where.ranges(group, op["tensor"])
        for part in (":low", ":step"):
            values = array(state, section, name + part)
            if values is not None:
                set_arrays(state, section, {name + part: np.resize(values, entry["shape"][op["dim"]])})
    bits = entry["bits"]
    sizes = {
        g: sum(math.prod(e["shape"]) for e in d["tensors"] if e["bits"] == bits)
        for g, d in groups.items()
        if any(e["bits"] == bits for e in d["tensors"])
    }
    total = sum(sizes.values())
    if not (isinstance(bits, int) and 1 <= bits <= 16 and 0 < total <= MAX_INFLATED):
        return  # earlier operations broke the description: this one has nothing consistent to re-code
    symbols = {g: _near_constant(n) for g, n in sizes.items()}
    counts = sum(np.bincount(s, minlength=1 << bits) for s in symbols.values()).astype(np.uint32)
    model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
    for g, s in symbols.items():
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(s, model)
        section, name = where.words(g, bits)
        set_arrays(state, section, {name: encoder.get_compressed()})
        groups[g]["streams"][str(bits)] = int(s.size)
    where.meta["streams"][str(bits)] = total
    section, name = where.counts(bits)
    set_arrays(state, section, {name: counts})
    if op["tensor"] == "embeddings" and op["dim"] == 0:
        _set_frames(state, op.get("payload", "seg0/model"), entry["shape"][0])


def _set_frames(state: State, key: str, frames: int) -> None:
    """The manifest's frame counts after a payload's embeddings changed length: its segment's, the
    following segments' starts, and the video's."""
    segments = state.manifest.get("segments")
    if key.startswith("seg") and isinstance(segments, list):
        segments[int(key[3 : key.index("/")])]["frames"] = frames
        start = 0
        for s in segments:
            s["start"], start = start, start + s["frames"]
        frames = start
    state.manifest["inr"]["num_frames"] = frames
    if isinstance(state.manifest.get("video"), dict):
        state.manifest["video"]["frames"] = frames


def _apply_section(state: State, op: Op) -> None:
    """Drop a section, rename it (replacing any section of that name) or copy its bytes and meta over another."""
    name, to = op["section"], str(op.get("to"))
    if name not in state.order:
        return
    if op["action"] == "drop":
        state.order.remove(name)
        return
    if to == name:
        return
    parts = (copy.deepcopy(state.metas[name]), copy.deepcopy(state.headers[name]), state.data[name])
    if op["action"] == "rename":  # in place; a section already called ``to`` goes
        state.order = [to if n == name else n for n in state.order if n != to]
    elif to not in state.order:
        state.order.append(to)
    state.metas[to], state.headers[to], state.data[to] = parts


def _apply_range(state: State, op: Op) -> None:
    """Set every slice of a quantisation range (``name``: one ``<tensor>:low`` / ``:step`` array; None:
    those of every tensor of the section) to ``value``."""
    names = [op["name"]] if op.get("name") else [k for k in state.headers[op["section"]] if k.endswith(op["part"])]
    changed = {}
    for name in names:
        a = array(state, op["section"], name)
        if a is not None and a.dtype == np.float16:
            changed[name] = np.full_like(a, op["value"])
    set_arrays(state, op["section"], changed)


def _apply_segments(state: State, op: Op) -> None:
    """Rewrite the manifest's segment table: ``split`` one segment in two, ``merge`` one with the next,
    ``swap`` two segments' lengths, or ``many``: ``count`` one-frame segments (the frame counts follow,
    so the table stays consistent and only the sections disagree)."""
    segments = state.manifest["segments"]
    i = op["index"] % len(segments)
    if op["action"] == "split" and segments[i]["frames"] > 1:
        first = segments[i]["frames"] // 2
        segments[i : i + 1] = [{**segments[i], "frames": first}, {"frames": segments[i]["frames"] - first}]
    elif op["action"] == "merge" and i + 1 < len(segments):
        segments[i]["frames"] += segments.pop(i + 1)["frames"]
    elif op["action"] == "swap" and len(segments) > 1:
        j = (i + 1) % len(segments)
        segments[i]["frames"], segments[j]["frames"] = segments[j]["frames"], segments[i]["frames"]
    elif op["action"] == "many":
        segments[:] = [{"frames": 1} for _ in range(op["count"])]
    start = 0
    for s in segments:
        s["start"], start = start, start + s["frames"]
    state.manifest["inr"]["num_frames"] = start
    if isinstance(state.manifest.get("video"), dict):
        state.manifest["video"]["frames"] = start


def _apply_one(state: State, op: Op) -> None:
    try:
        {
            "json": _apply_json,
            "array": _apply_array,
            "inflate": _apply_inflate,
            "section": _apply_section,
            "range": _apply_range,
            "segments": _apply_segments,
        }.get(op["op"], lambda *_: None)(state, op)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, MemoryError, StopIteration):
        pass  # an earlier operation removed what this one targets: the mutant is what remains


def apply(state: State, ops: list[Op]) -> bytes:
    """The mutant's bytes; ``state`` is changed in place."""
    for op in ops:
        _apply_one(state, op)
    return serialise(state, ops)


# -- generating operations -------------------------------------------------------------------------


def _paths(doc: Any, prefix: Sequence[Any] = ()) -> list[list]:
    out = [list(prefix)] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, [*prefix, k])
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:16]):
            out += _paths(v, [*prefix, i])
    return out


def _get(doc: Any, path: list) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _value(rng: np.random.Generator, current: Any, docs: list[Any]) -> Any:
    roll = rng.random()
    if roll < 0.25 and isinstance(current, (int, float)) and not isinstance(current, bool):
        # Python arithmetic: a value already near 2**63 must grow, not overflow numpy's int64.
        return type(current)(current * int(rng.choice([0, -1, 2, 10, 1000, 2**20])) + int(rng.integers(-2, 3)))
    if roll < 0.35 and docs:  # a value from elsewhere
        doc = docs[rng.integers(len(docs))]
        paths = _paths(doc)
        return copy.deepcopy(_get(doc, paths[rng.integers(len(paths))])) if paths else None
    if roll < 0.4 and isinstance(current, str):
        return rng.choice(DTYPES)
    return copy.deepcopy(POOL[rng.integers(len(POOL))])


def random_ops(state: State, rng: np.random.Generator) -> list[Op]:
    ops: list[Op] = []
    for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
        kind = str(
            rng.choice(
                [
                    *("json", "json", "json", "st", "array", "inflate", "section", "index", "flip", "version"),
                    *("range", "segments"),
                ],
                p=[0.27, 0.13, 0.09, 0.11, 0.12, 0.07, 0.05, 0.04, 0.03, 0.01, 0.05, 0.03],
            )
        )
        if not state.order:
            break
        # The routes are one section among a segmented file's many; they still get a fair share.
        routes = "routes" in state.order and rng.random() < 0.25
        section = "routes" if routes else state.order[rng.integers(len(state.order))]
        if kind in ("json", "st"):
            which = f"st:{section}" if kind == "st" else rng.choice(["manifest", f"meta:{section}"])
            doc = _doc(state, which)
            paths = _paths(doc)
            if not paths:
                continue
            path = paths[rng.integers(len(paths))]
            current = _get(doc, path)
            action = rng.choice(["set", "set", "set", "delete", "insert"])
            ops.append(
                {
                    "op": "json",
                    "doc": which,
                    "path": path,
                    "action": str(action),
                    "value": _value(rng, current, [state.manifest, *state.metas.values()]),
                }
            )
            _apply_one(state, ops[-1])  # later operations see this one's result
        elif kind == "array":
            names = [k for k in state.headers[section] if k != "__metadata__"]
            if not names:
                continue
            name = names[rng.integers(len(names))]
            if rng.random() < 0.7:
                k = int(rng.integers(1, 4))
                op: Op = {
                    "op": "array",
                    "section": section,
                    "name": name,
                    "action": "fill",
                    "positions": [int(p) for p in rng.integers(0, 2**31, k)],
                    "values": [FILLS[i] for i in rng.integers(0, len(FILLS), k)],
                }
            else:
                a = array(state, section, name)
                size = 0 if a is None else int(a.size)
                op = {
                    "op": "array",
                    "section": section,
                    "name": name,
                    "action": "resize",
                    "size": int(rng.choice([0, 1, max(size // 2, 1), size + 1, size * 2 + 3])),
                }
            ops.append(op)
            _apply_one(state, op)
        elif kind == "inflate":
            keys = payload_keys(state)
            if not keys:
                continue
            key = keys[rng.integers(len(keys))]
            try:
                tensors = [e for g in payload(state, key).meta["groups"].values() for e in g["tensors"]]
            except (KeyError, TypeError, AttributeError):
                continue
            if not tensors:
                continue
            e = tensors[rng.integers(len(tensors))]
            if not (isinstance(e, dict) and isinstance(e.get("shape"), list) and e["shape"]):
                continue
            op = {
                "op": "inflate",
                "payload": key,
                "tensor": e.get("name"),
                "dim": int(rng.integers(len(e["shape"]))),
                "factor": int(rng.choice([2, 16, 256, 2048])),
            }
            ops.append(op)
            _apply_one(state, op)
        elif kind == "section":
            group = section.partition("/")[2]
            listed = state.manifest.get("segments")
            segments = len(listed) if isinstance(listed, list) else 1
            targets = [
                f"seg{int(rng.integers(segments + 1))}/{group or 'model'}",
                *state.order,
                "seg0/x",
                "inr",
                "routes",
            ]
            op = {
                "op": "section",
                "section": section,
                "action": str(rng.choice(["drop", "rename", "copy"])),
                "to": targets[rng.integers(len(targets))],
            }
            ops.append(op)
            _apply_one(state, op)
        elif kind == "range":
            ranges = [k for k in state.headers[section] if k.endswith((":low", ":step"))]
            if not ranges:
                continue
            whole = rng.random() < 0.3  # every tensor of the section at once
            op = {
                "op": "range",
                "section": section,
                "name": None if whole else ranges[rng.integers(len(ranges))],
                "part": str(rng.choice([":low", ":step"])),
                "value": float(RANGES[rng.integers(len(RANGES))]),
            }
            ops.append(op)
            _apply_one(state, op)
        elif kind == "segments":
            op = {
                "op": "segments",
                "action": str(rng.choice(["split", "merge", "swap", "many"])),
                "index": int(rng.integers(0, 1 << 16)),
                "count": int(rng.choice([2, 9, 1 << 10, 1 << 16, (1 << 16) + 1])),
            }
            ops.append(op)
            _apply_one(state, op)
        elif kind == "index":  # one entry's field, or (one time in ten) the whole index, set or deleted
            whole = rng.random() < 0.1
            op = {"op": "index", "section": None if whole else section, "action": "set", "value": _value(rng, 0, [])}
            if not whole:
                op["key"] = str(rng.choice(["offset", "length", "crc32", "meta"]))
            if rng.random() < 0.2:
                op["action"] = "delete"
                del op["value"]
            ops.append(op)
        elif kind == "version":
            ops.append({"op": "version", "value": VERSIONS[rng.integers(len(VERSIONS))]})
        else:
            ops.append(
                {"op": "flip", "section": section, "pos": int(rng.integers(0, 2**31)), "xor": int(rng.integers(1, 256))}
            )
    return ops


def mutant(valid: bytes, seed: int, index: int) -> tuple[bytes, list[Op]]:
    """Mutant ``index`` of run ``seed``: (bytes, operations that regenerate it from ``valid``)."""
    rng = np.random.default_rng([seed, index])
    ops = random_ops(parse(valid), rng)
    return apply(parse(valid), ops), ops
