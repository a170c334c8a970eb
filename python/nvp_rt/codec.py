"""Quantisation and entropy coding of INR tensors into a real bitstream, and back.

Each tensor is quantised to ``bits`` unsigned levels with a min and a step that
are stored in float16, either once for the whole tensor or once per slice along
an axis, whichever gives the lower squared error (HNeRV's rule; weights use 8
bits, HNeRV embeddings 6). The symbols of all tensors with the same bit width
share one adaptive-free categorical model whose symbol counts are stored, and
are range-coded (``constriction``) into one stream per bit width. The decoder
rebuilds the identical model from the stored counts, so the stream decodes
exactly to the quantised symbols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NoReturn

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


def quantise_best(x: np.ndarray, bits: int) -> Quantised:
    """Per-tensor or per-slice along one of the first two axes, whichever errs less.

    1-D tensors (biases) stay per-tensor: one range per element would store them in float16.
    """
    x64 = np.asarray(x, dtype=np.float64)
    axes = range(min(x64.ndim, 2)) if x64.ndim >= 2 else ()
    candidates = [quantise(x, bits, None)] + [quantise(x, bits, a) for a in axes if x64.shape[a] > 1]
    return min(candidates, key=lambda q: float(np.sum((q.dequantise().astype(np.float64) - x64) ** 2)))


def _model(counts: np.ndarray):
    probabilities = counts.astype(np.float64) / counts.sum()
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def encode_tensors(tensors: dict[str, np.ndarray], bits: dict[str, int]) -> tuple[dict[str, np.ndarray], dict]:
    """Quantise and entropy-code ``tensors``; returns (arrays, meta) for an .nvp section."""
    arrays: dict[str, np.ndarray] = {}
    entries = []
    groups: dict[int, list[np.ndarray]] = {}
    for name, x in tensors.items():
        q = quantise_best(x, bits[name])
        entries.append({"name": name, "shape": list(np.shape(x)), "bits": q.bits, "axis": q.axis})
        arrays[f"{name}:low"], arrays[f"{name}:step"] = q.low.reshape(-1), q.step.reshape(-1)
        groups.setdefault(q.bits, []).append(q.symbols.reshape(-1))
    streams = {}
    for b, parts in groups.items():
        symbols = np.concatenate(parts).astype(np.int32)
        counts = np.bincount(symbols, minlength=1 << b).astype(np.uint32)
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(symbols, _model(counts))
        arrays[f"stream{b}:counts"] = counts
        arrays[f"stream{b}:words"] = encoder.get_compressed()
        streams[str(b)] = int(symbols.size)
    return arrays, {"codec": "quant-range-v1", "tensors": entries, "streams": streams}


def _fail(what: str) -> NoReturn:
    raise NvpFormatError(f"INR payload: {what}")


def _check(ok: bool | np.bool_, what: str) -> None:
    if not ok:
        _fail(what)


def decode_tensors(arrays: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_tensors` (to the dequantised float32 values), validating as it goes.

    Every size is checked against the stored bytes before it is allocated: a stream's symbol count
    against its counts, the tensors' shapes and what its coded words can hold (:func:`_check_capacity`).
    """
    _check(isinstance(meta, dict) and meta.get("codec") == "quant-range-v1", "unknown codec")
    entries = schema.sequence(meta.get("tensors"), "INR payload: tensors", 1, 4096)
    streams = schema.mapping(meta.get("streams"), "INR payload: streams")
    names = set()
    for i, e in enumerate(entries):
        field = f"INR payload: tensors[{i}]"
        e = schema.mapping(e, field)
        name = schema.string(e.get("name"), f"{field}.name")
        _check(name not in names, f"tensor {name!r} appears twice")
        names.add(name)
        dims = schema.sequence(e.get("shape"), f"{field}.shape", 0, 8)
        for j, d in enumerate(dims):
            schema.integer(d, f"{field}.shape[{j}]", 1, MAX_SYMBOLS)
        schema.integer(e.get("bits"), f"{field}.bits", 1, 16)
        schema.optional(e.get("axis"), schema.integer, f"{field}.axis", 0, max(len(dims) - 1, 0))
    claimed: dict[str, int] = {}
    for e in entries:
        claimed[str(e["bits"])] = claimed.get(str(e["bits"]), 0) + math.prod(e["shape"])
    # Checked before decoding, so a crafted symbol count cannot make the decoder allocate without bound.
    _check(claimed == streams and sum(claimed.values()) <= MAX_SYMBOLS, "stream sizes do not match the tensors")
    symbols_by_bits: dict[int, np.ndarray] = {}
    for key, total in streams.items():
        _check(
            key.isdigit() and 1 <= int(key) <= 16 and type(total) is int and 0 <= total <= MAX_SYMBOLS,
            f"bad stream {key!r}",
        )
        b = int(key)
        counts, words = arrays.get(f"stream{b}:counts"), arrays.get(f"stream{b}:words")
        if counts is None or words is None:
            _fail(f"stream {b} missing")
        _check(
            counts.dtype == np.uint32 and counts.shape == (1 << b,) and int(counts.sum(dtype=np.uint64)) == total,
            f"stream {b} symbol counts inconsistent",
        )
        _check(words.dtype == np.uint32 and words.ndim == 1, f"stream {b} words malformed")
        _check_capacity(b, counts, words)
        try:
            decoded = (
                constriction.stream.queue.RangeDecoder(words).decode(_model(counts), total)
                if total
                else np.zeros(0, np.int32)
            )
        except Exception as err:  # a damaged stream may fail inside the coder in coder-specific ways
            raise NvpFormatError(f"INR payload: stream {b} does not decode ({err})") from None
        _check(
            np.array_equal(np.bincount(decoded, minlength=1 << b), counts), f"stream {b} does not decode to its counts"
        )
        symbols_by_bits[b] = decoded
    used = dict.fromkeys(symbols_by_bits, 0)  # symbols taken from each stream so far
    out = {}
    for e in entries:
        name, shape, b, axis = e["name"], tuple(e["shape"]), e.get("bits"), e.get("axis")
        _check(b in symbols_by_bits, f"{name}: no stream for {b} bits")
        _check(axis is None or (isinstance(axis, int) and 0 <= axis < len(shape)), f"{name}: bad axis")
        n = math.prod(shape)
        stream, start = symbols_by_bits[b], used[b]
        _check(start + n <= stream.size, f"{name}: stream too short")
        q = stream[start : start + n].reshape(shape)
        used[b] += n
        low, step = arrays.get(f"{name}:low"), arrays.get(f"{name}:step")
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
        view = [1] * len(shape)
        if axis is not None:
            view[axis] = slices
        low, step = low.reshape(view), step.reshape(view)
        out[name] = Quantised(q, low, step, b, axis).dequantise()
    _check(all(used[b] == s.size for b, s in symbols_by_bits.items()), "stream has unused symbols")
    return out


def _check_capacity(bits: int, counts: np.ndarray, words: np.ndarray) -> None:
    """The symbols a stream claims must fit in its coded bits.

    A range coder spends at least the counts' entropy per symbol on average (up to a few words of
    state), and nvp's INRs never code below 1/MAX_SYMBOLS_PER_BIT bit per symbol unless they are small.
    """
    total = float(counts.sum(dtype=np.float64))
    coded_bits = 32.0 * words.size + 64
    p = counts[counts > 0] / total if total else np.ones(1)
    information = total * float(-(p * np.log2(p)).sum())
    _check(
        information <= 1.01 * coded_bits and total <= max(MAX_SYMBOLS_PER_BIT * coded_bits, FREE_SYMBOLS),
        f"stream {bits} claims {int(total)} symbols; its {words.size} words cannot hold them",
    )
