"""Quantisation and entropy coding of INR tensors into a real bitstream, and back.

Each tensor is quantised to ``bits`` unsigned levels with a min and a step that
are stored in float16, either once for the whole tensor or once per slice along
an axis, whichever gives the lower squared error (HNeRV's rule; weights use 8
bits, HNeRV embeddings 6). Tensors are coded in groups (an INR's decoder stages
and its embeddings): each group is one range-coded stream per bit width
(``constriction``), all coded with one categorical model per bit width whose
symbol counts are stored once. The decoder rebuilds the identical model from the
stored counts, so any subset of groups decodes exactly, without the others' bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import constriction
import numpy as np

from . import schema
from .schema import NvpFormatError

MAX_SYMBOLS = 1 << 31  # quantised values in one payload; far above any INR nvp writes
# Symbols per coded bit a stream may claim. The entropy bound alone lets a near-constant stream
# claim any count in a few bytes; INRs nvp writes code at 2-7 bits per symbol, so a stream claiming
# more than 16 symbols per bit (under 1/16 bit each) is refused before anything is allocated --
# unless it is small (FREE_SYMBOLS, 4 MB decoded): an untrained or constant tensor codes to nothing.
MAX_SYMBOLS_PER_BIT = 16
FREE_SYMBOLS = 1 << 20
# Every value nvp codes lies within +-MAX_CODED_MAGNITUDE (INR weights, embeddings and adapters are
# a few units; a fit that diverges past this is refused at write). A reader refuses a quantisation
# grid reaching beyond twice that (float16 rounding of low and step widens the writer's grid by far
# less): a crafted file's float16 step of 65504 would otherwise dequantise to weights of 4e9.
MAX_CODED_MAGNITUDE = 1024.0
MAX_DECODED_MAGNITUDE = 2 * MAX_CODED_MAGNITUDE


@dataclass(frozen=True)
class Quantised:
    symbols: np.ndarray  # uint8/uint16 levels, same shape as the tensor
    low: np.ndarray  # float16, shape broadcastable to the tensor
    step: np.ndarray  # float16, same shape as low
    bits: int
    axis: int | None  # None: per-tensor

    def dequantise(self) -> np.ndarray:
        return self.low.astype(np.float32) + self.symbols.astype(np.float32) * self.step.astype(np.float32)


def _fp16_range(lo: np.ndarray, hi: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Float16 low/step whose grid covers [lo, hi] without clipping (step rounded up, low down)."""
    low = lo.astype(np.float16)
    low = np.where(low.astype(np.float64) > lo, np.nextafter(low, np.float16(-np.inf)), low)
    span = np.maximum(hi - low.astype(np.float64), 0.0)
    step = (span / levels).astype(np.float16)
    short = low.astype(np.float64) + step.astype(np.float64) * levels < hi
    step = np.where(short, np.nextafter(step, np.float16(np.inf)), step)
    step = np.where(step > 0, step, np.float16(np.finfo(np.float16).tiny))  # constant tensors
    return low, step


def quantise(x: np.ndarray, bits: int, axis: int | None) -> Quantised:
    x64 = np.asarray(x, dtype=np.float64)
    levels = (1 << bits) - 1
    if axis is None:
        lo, hi = np.array(x64.min()), np.array(x64.max())
    else:
        reduce = tuple(i for i in range(x64.ndim) if i != axis)
        lo, hi = x64.min(axis=reduce, keepdims=True), x64.max(axis=reduce, keepdims=True)
    low, step = _fp16_range(lo, hi, levels)
    q = np.clip(np.rint((x64 - low.astype(np.float64)) / step.astype(np.float64)), 0, levels)
    return Quantised(q.astype(np.uint8 if bits <= 8 else np.uint16), low, step, bits, axis)


# A slice's range is two float16 (4 bytes). Per-slice ranges are considered only where they add at most
# this share to the tensor's codes: a route's (320, 4) adapter weight has as many bytes of ranges per
# output channel as of codes, which at 0.05 bpp left no room for the decoder.
MAX_RANGE_SHARE = 1 / 8


def quantise_best(x: np.ndarray, bits: int) -> Quantised:
    """Per-tensor or per-slice along one of the first two axes, whichever errs less, among the slicings
    whose ranges cost at most ``MAX_RANGE_SHARE`` of the codes.

    1-D tensors (biases) stay per-tensor: one range per element would store them in float16.
    """
    x64 = np.asarray(x, dtype=np.float64)
    axes = range(min(x64.ndim, 2)) if x64.ndim >= 2 else ()
    affordable = [a for a in axes if 1 < x64.shape[a] and 4 * 8 * x64.shape[a] <= MAX_RANGE_SHARE * bits * x64.size]
    candidates = [quantise(x, bits, None)] + [quantise(x, bits, a) for a in affordable]
    return min(candidates, key=lambda q: float(np.sum((q.dequantise().astype(np.float64) - x64) ** 2)))


def _model(counts: np.ndarray):
    probabilities = counts.astype(np.float64) / counts.sum()
    return constriction.stream.model.Categorical(probabilities, perfect=False)


CODEC = "quant-range-v2"
COUNT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))
MODEL = "model"  # the group that holds the symbol counts every other group is coded with


def encode_tensors(
    tensors: dict[str, np.ndarray], bits: dict[str, int], group: Callable[[str], str] = lambda name: "all"
) -> tuple[dict[str, np.ndarray], dict]:
    """Quantise and entropy-code ``tensors``; returns (arrays, meta) of the payload.

    Tensors are coded in groups (``group(name)``), each group its own range-coded stream per bit width,
    all with one categorical model per bit width (the ``model`` group's counts) fitted to every group's
    symbols: a reader decodes any subset of groups without touching the others' bytes, and the model
    is stored once. Array names are ``<group>/<name>``: the container stores each group as a section.
    """
    arrays: dict[str, np.ndarray] = {}
    groups: dict[str, dict] = {}
    symbols: dict[str, dict[int, list[np.ndarray]]] = {}
    for name, x in tensors.items():
        g = group(name)
        _check("/" not in g and g != MODEL, f"bad group name {g!r}")
        magnitude = float(np.abs(np.asarray(x, np.float64)).max(initial=0.0))
        if not magnitude <= MAX_CODED_MAGNITUDE:  # NaN too
            raise ValueError(
                f"tensor {name!r} holds values up to {magnitude:.4g}, beyond the +-{MAX_CODED_MAGNITUDE:g} "
                "nvp codes (a diverged fit?); nothing was written"
            )
        q = quantise_best(x, bits[name])
        groups.setdefault(g, {"tensors": [], "streams": {}})["tensors"].append(
            {"name": name, "shape": list(np.shape(x)), "bits": q.bits, "axis": q.axis}
        )
        arrays[f"{g}/{name}:low"], arrays[f"{g}/{name}:step"] = q.low.reshape(-1), q.step.reshape(-1)
        symbols.setdefault(g, {}).setdefault(q.bits, []).append(q.symbols.reshape(-1))
    joined = {
        g: {b: np.concatenate(parts).astype(np.int32) for b, parts in by_bits.items()} for g, by_bits in symbols.items()
    }
    totals: dict[int, np.ndarray] = {}
    for by_bits in joined.values():
        for b, s in by_bits.items():
            totals[b] = totals.get(b, np.zeros(1 << b, np.uint32)) + np.bincount(s, minlength=1 << b).astype(np.uint32)
    for b, counts in totals.items():  # in the narrowest type that holds them: 256 counts are 1 KB as uint32
        arrays[f"{MODEL}/stream{b}:counts"] = counts.astype(np.min_scalar_type(int(counts.max())))
    for g, by_bits in joined.items():
        for b, s in by_bits.items():
            encoder = constriction.stream.queue.RangeEncoder()
            encoder.encode(s, _model(totals[b]))
            arrays[f"{g}/stream{b}:words"] = encoder.get_compressed()
            groups[g]["streams"][str(b)] = int(s.size)
    streams = {str(b): int(c.sum(dtype=np.uint64)) for b, c in totals.items()}
    return arrays, {"codec": CODEC, "streams": streams, "groups": groups}


def _fail(what: str) -> NoReturn:
    raise NvpFormatError(f"INR payload: {what}")


def _check(ok: bool | np.bool_, what: str) -> None:
    if not ok:
        _fail(what)


def _from_v1(arrays: dict[str, np.ndarray], meta: dict) -> tuple[dict[str, np.ndarray], dict]:
    """A format-1.0 payload (one group, its counts beside its words) in the grouped form."""
    renamed = {(f"{MODEL}/{k}" if k.endswith(":counts") else f"all/{k}"): v for k, v in arrays.items()}
    streams = meta.get("streams")
    return renamed, {
        "codec": CODEC,
        "streams": streams,
        "groups": {"all": {"tensors": meta.get("tensors"), "streams": streams}},
    }


def _check_entries(entries: Any, field: str) -> list[dict]:
    entries = schema.sequence(entries, field, 1, 4096)
    for i, e in enumerate(entries):
        e = schema.mapping(e, f"{field}[{i}]")
        schema.string(e.get("name"), f"{field}[{i}].name")
        dims = schema.sequence(e.get("shape"), f"{field}[{i}].shape", 0, 8)
        for j, d in enumerate(dims):
            schema.integer(d, f"{field}[{i}].shape[{j}]", 1, MAX_SYMBOLS)
        schema.integer(e.get("bits"), f"{field}[{i}].bits", 1, 16)
        schema.optional(e.get("axis"), schema.integer, f"{field}[{i}].axis", 0, max(len(dims) - 1, 0))
    return entries


_BIT_WIDTH = re.compile(r"[1-9]|1[0-6]")


def _check_streams(streams: Any, field: str) -> dict[int, int]:
    out = {}
    for key, total in schema.mapping(streams, field).items():
        if _BIT_WIDTH.fullmatch(key) is None:  # not str.isdigit(): "¹" is a digit int() refuses
            raise NvpFormatError(f"{field}: key {key[:20]!r} is not a bit width 1..16")
        schema.integer(total, f"{field}.{key}", 0, MAX_SYMBOLS)
        out[int(key)] = total
    return out


def decode_tensors(
    arrays: dict[str, np.ndarray], meta: dict, groups: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_tensors` (to the dequantised float32 values) for ``groups`` (default: all),
    validating as it goes.

    Every size is checked against the stored bytes before it is allocated: a group's symbol count
    against the tensors' shapes and what its coded words can hold (:func:`_check_capacity`). When every
    group is decoded, the symbols must also add up to the stored counts exactly.
    """
    _check(isinstance(meta, dict), "no payload description")
    if meta.get("codec") == "quant-range-v1":
        arrays, meta = _from_v1(arrays, meta)
    _check(meta.get("codec") == CODEC, "unknown codec")
    totals = _check_streams(meta.get("streams"), "INR payload: streams")
    described = schema.mapping(meta.get("groups"), "INR payload: groups")
    _check(0 < len(described) <= 4096, "no groups")
    wanted = list(described) if groups is None else list(groups)
    _check(all(g in described for g in wanted), "a requested group is missing")
    models: dict[int, np.ndarray] = {}
    for b, total in totals.items():
        counts = arrays.get(f"{MODEL}/stream{b}:counts")
        if not (
            counts is not None
            and counts.dtype in COUNT_DTYPES
            and counts.shape == (1 << b,)
            and int(counts.sum(dtype=np.uint64)) == total
        ):
            _fail(f"stream {b} symbol counts inconsistent")
        models[b] = counts
    claimed = dict.fromkeys(totals, 0)
    plans = {}
    for g, description in described.items():
        field = f"INR payload: groups.{g[:40]}"
        description = schema.mapping(description, field)
        entries = _check_entries(description.get("tensors"), f"{field}.tensors")
        streams = _check_streams(description.get("streams"), f"{field}.streams")
        sizes: dict[int, int] = {}
        for e in entries:
            sizes[e["bits"]] = sizes.get(e["bits"], 0) + math.prod(e["shape"])
        # Checked before decoding, so a crafted symbol count cannot make the decoder allocate without bound.
        _check(
            sizes == streams and all(b in totals for b in streams),
            f"group {g[:40]!r}: stream sizes do not match its tensors",
        )
        for b, n in streams.items():
            claimed[b] += n
        plans[g] = (entries, streams)
    _check(claimed == totals, "the groups' symbols do not add up to the model's counts")
    names = [e["name"] for entries, _ in plans.values() for e in entries]
    _check(len(set(names)) == len(names), "a tensor appears twice")
    out: dict[str, np.ndarray] = {}
    histograms = {b: np.zeros(1 << b, np.int64) for b in totals}
    coders = {b: _model(models[b]) for b in totals}
    for g in wanted:
        entries, streams = plans[g]
        symbols_by_bits = {}
        for b, n in streams.items():
            words = arrays.get(f"{g}/stream{b}:words")
            if words is None or words.dtype != np.uint32 or words.ndim != 1:
                _fail(f"group {g[:40]!r}: stream {b} words missing or malformed")
            _check_capacity(b, models[b], n, words)
            try:
                decoded = (
                    constriction.stream.queue.RangeDecoder(words).decode(coders[b], n) if n else np.zeros(0, np.int32)
                )
            except Exception as err:  # a damaged stream may fail inside the coder in coder-specific ways
                raise NvpFormatError(f"INR payload: stream {b} of group {g[:40]!r} does not decode ({err})") from None
            histograms[b] += np.bincount(decoded, minlength=1 << b)
            symbols_by_bits[b] = decoded
        out.update(_dequantise(arrays, g, entries, symbols_by_bits))
    if set(wanted) == set(described):
        _check(
            all(np.array_equal(histograms[b], models[b]) for b in totals), "the streams do not decode to their counts"
        )
    return out


def _dequantise(
    arrays: dict[str, np.ndarray], group: str, entries: list[dict], symbols_by_bits: dict[int, np.ndarray]
) -> dict[str, np.ndarray]:
    """Hand a group's decoded symbols out to its tensors, in order, and map them back to values."""
    used = dict.fromkeys(symbols_by_bits, 0)
    out = {}
    for e in entries:
        name, shape, b, axis = e["name"], tuple(e["shape"]), e["bits"], e.get("axis")
        n = math.prod(shape)
        stream, start = symbols_by_bits[b], used[b]
        q = stream[start : start + n].reshape(shape)
        used[b] += n
        low, step = arrays.get(f"{group}/{name}:low"), arrays.get(f"{group}/{name}:step")
        slices = 1 if axis is None else shape[axis]
        if not (
            low is not None
            and step is not None
            and low.dtype == step.dtype == np.float16
            and low.shape == step.shape == (slices,)
        ):
            _fail(f"{name}: quantisation range malformed")
        _check(
            bool(np.isfinite(low).all() and np.isfinite(step).all() and (step >= 0).all()),
            f"{name}: quantisation range holds NaN, infinite or negative values",
        )
        low64, high64 = low.astype(np.float64), low.astype(np.float64) + step.astype(np.float64) * ((1 << b) - 1)
        _check(
            bool(low64.min() >= -MAX_DECODED_MAGNITUDE and high64.max() <= MAX_DECODED_MAGNITUDE),
            f"{name}: quantisation range reaches {max(-low64.min(), high64.max()):.4g}, beyond "
            f"+-{MAX_DECODED_MAGNITUDE:g}",
        )
        view = [1] * len(shape)
        if axis is not None:
            view[axis] = slices
        out[name] = Quantised(q, low.reshape(view), step.reshape(view), b, axis).dequantise()
    return out


def _check_capacity(bits: int, counts: np.ndarray, symbols: int, words: np.ndarray) -> None:
    """The symbols a stream claims must fit in its coded bits.

    A range coder spends at least -log2 of the model's largest probability on every symbol (up to a few
    words of state), and nvp's INRs never code below 1/MAX_SYMBOLS_PER_BIT bit per symbol unless they
    are small.
    """
    total = float(counts.sum(dtype=np.float64))
    coded_bits = 32.0 * words.size + 64
    cheapest = -math.log2(min(float(counts.max()) / total, 1.0)) if total else 0.0
    _check(
        symbols * cheapest <= 1.01 * coded_bits and symbols <= max(MAX_SYMBOLS_PER_BIT * coded_bits, FREE_SYMBOLS),
        f"stream {bits} claims {symbols} symbols; its {words.size} words cannot hold them",
    )
