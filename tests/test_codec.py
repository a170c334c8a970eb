"""Quantisation error bounds against float64, the per-tensor/per-axis choice, and the real bitstream."""

import subprocess
import sys

import numpy as np
import pytest

from nvp_rt.codec import decode_tensors, encode_tensors, quantise, quantise_best
from nvp_rt.nvpfile import NvpFormatError


@pytest.mark.parametrize("bits", [6, 8])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_quantisation_error_is_at_most_half_a_step(bits, axis):
    rng = np.random.default_rng()
    x = (rng.normal(size=(12, 7, 3, 3)) * rng.uniform(0.01, 3, size=(12, 1, 1, 1)) + rng.normal()).astype(np.float32)
    q = quantise(x, bits, axis)
    assert q.symbols.max() <= (1 << bits) - 1
    err = np.abs(q.dequantise().astype(np.float64) - x.astype(np.float64))
    half_step = q.step.astype(np.float64) / 2 * (1 + 1e-3) + 1e-6 * np.abs(x).max()
    assert np.all(err <= np.broadcast_to(half_step, err.shape))
    # The grid spans the data: no value lies outside [low, low + step * levels].
    assert np.all(
        q.low.astype(np.float64)
        <= x.astype(np.float64).min(
            axis=None if axis is None else tuple(i for i in range(4) if i != axis), keepdims=True
        )
        + 1e-12
    )


def test_best_mode_errs_least():
    rng = np.random.default_rng()
    rows = rng.normal(size=(16, 64)) * np.logspace(-3, 0, 16)[:, None]  # per-row scales differ a lot
    best = quantise_best(rows.astype(np.float32), 8)
    errors = {a: np.sum((quantise(rows, 8, a).dequantise() - rows) ** 2) for a in (None, 0)}  # 1: 25% ranges
    assert best.axis == min(errors, key=errors.get)
    assert best.axis is not None and errors[best.axis] < errors[None] / 2
    # Ranges that would cost more than MAX_RANGE_SHARE of the codes are not an option: (320, 4) at 8 bits
    # has 1280 bytes of codes, per-row ranges 1280 more; per-column (16 bytes) and per-tensor remain.
    narrow = rng.normal(size=(320, 4)) * np.logspace(-3, 0, 320)[:, None]
    assert quantise_best(narrow.astype(np.float32), 8).axis in (None, 1)
    uniform = rng.uniform(-1, 1, size=(4, 256))  # same range everywhere: per-tensor is as good and cheaper to store
    assert quantise_best(uniform.astype(np.float32), 8).axis in (None, 0, 1)
    bias = rng.normal(size=33).astype(np.float32)
    assert quantise_best(bias, 8).axis is None


def test_bitstream_round_trip_is_exact_and_near_entropy():
    rng = np.random.default_rng()
    tensors = {
        "conv.weight": (rng.laplace(size=(48, 32, 3, 3)) * 0.05).astype(np.float32),
        "conv.bias": rng.normal(size=48).astype(np.float32),
        "embeddings": rng.normal(size=(16, 16, 3, 5)).astype(np.float32),
    }
    bits = {"conv.weight": 8, "conv.bias": 8, "embeddings": 6}
    arrays, meta = encode_tensors(tensors, bits)
    decoded = decode_tensors(arrays, meta)
    for name, x in tensors.items():
        expected = quantise_best(x, bits[name]).dequantise()
        np.testing.assert_array_equal(decoded[name], expected)
    # Compressed size vs the empirical entropy of the symbols (the best any order-0 coder can do).
    for b in (8, 6):
        counts = arrays[f"model/stream{b}:counts"].astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        entropy_bytes = -(counts[counts > 0] * np.log2(p)).sum() / 8
        assert arrays[f"all/stream{b}:words"].nbytes <= entropy_bytes * 1.02 + 16
        assert arrays[f"all/stream{b}:words"].nbytes < counts.sum() * b / 8  # real gain over raw symbols


def test_groups_decode_alone_and_share_one_model():
    """Grouped coding: any subset of groups decodes to exactly what the whole payload decodes to, and
    the groups' streams together cost what one stream would (one model, fitted to all of them)."""
    rng = np.random.default_rng()
    stages = [f"s{i}" for i in range(int(rng.integers(2, 5)))]
    tensors = {
        f"stages.{s}.{k}.weight": (rng.laplace(size=(int(rng.integers(4, 40)), 24)) * 0.1).astype(np.float32)
        for s in stages
        for k in range(2)
    }
    tensors["embeddings"] = rng.normal(size=(6, 8, 2, 3)).astype(np.float32)
    bits = {k: 6 if k == "embeddings" else 8 for k in tensors}
    group = lambda name: name.split(".")[1] if name.startswith("stages.") else name  # noqa: E731
    arrays, meta = encode_tensors(tensors, bits, group)
    whole = decode_tensors(arrays, meta)
    for name, x in tensors.items():
        np.testing.assert_array_equal(whole[name], quantise_best(x, bits[name]).dequantise())
    pick = [g for g in [*stages, "embeddings"] if rng.random() < 0.5] or [stages[0]]
    without_others = {k: v for k, v in arrays.items() if k.split("/")[0] in (*pick, "model")}
    part = decode_tensors(without_others, meta, pick)
    assert set(part) == {k for k in tensors if group(k) in pick}
    for name, value in part.items():
        np.testing.assert_array_equal(value, whole[name])
    alone, _ = encode_tensors(tensors, bits)  # one group: one stream per bit width
    grouped_words = sum(v.nbytes for k, v in arrays.items() if k.endswith(":words"))
    single_words = sum(v.nbytes for k, v in alone.items() if k.endswith(":words"))
    assert grouped_words <= single_words + 8 * len(meta["groups"]) * len(meta["streams"])


def test_format_1_payloads_still_decode():
    """Files of format 1.0 hold one payload with its counts beside its words, unprefixed."""
    rng = np.random.default_rng()
    tensors = {
        "w": rng.normal(size=(9, 5)).astype(np.float32),
        "embeddings": rng.normal(size=(3, 4)).astype(np.float32),
    }
    bits = {"w": 8, "embeddings": 6}
    arrays, meta = encode_tensors(tensors, bits)
    v1_arrays = {k.split("/", 1)[1]: v for k, v in arrays.items()}
    v1_meta = {"codec": "quant-range-v1", "tensors": meta["groups"]["all"]["tensors"], "streams": meta["streams"]}
    decoded = decode_tensors(v1_arrays, v1_meta)
    for name, x in tensors.items():
        np.testing.assert_array_equal(decoded[name], quantise_best(x, bits[name]).dequantise())


def test_constant_tensors_round_trip():
    """A constant tensor (an untrained INR's zero embeddings) codes to almost nothing and still decodes."""
    rng = np.random.default_rng()
    tensors = {
        "embeddings": np.full((24, 16, 2, 3), rng.normal(), np.float32),
        "conv.weight": rng.normal(size=(8, 4)).astype(np.float32),
    }
    arrays, meta = encode_tensors(tensors, {"embeddings": 6, "conv.weight": 8})
    assert arrays["all/stream6:words"].size <= 2
    decoded = decode_tensors(arrays, meta)
    np.testing.assert_array_equal(decoded["embeddings"], quantise_best(tensors["embeddings"], 6).dequantise())


@pytest.mark.parametrize("damage", ["shape", "counts", "words", "bits", "low"])
def test_inconsistent_payload_is_rejected(damage):
    rng = np.random.default_rng()
    arrays, meta = encode_tensors({"w": rng.normal(size=(8, 4)).astype(np.float32)}, {"w": 8})
    entry = meta["groups"]["all"]["tensors"][0]
    if damage == "shape":
        entry["shape"] = [8, 5]
    elif damage == "counts":
        arrays["model/stream8:counts"] = arrays["model/stream8:counts"].copy()
        arrays["model/stream8:counts"][0] += 1
    elif damage == "words":
        arrays["all/stream8:words"] = arrays["all/stream8:words"][:1]
    elif damage == "bits":
        entry["bits"] = 6
    else:
        arrays["all/w:low"] = arrays["all/w:low"][:1].astype(np.float32)
    with pytest.raises(NvpFormatError):
        decode_tensors(arrays, meta)


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys, nvp_rt.codec, nvp_rt.nvpfile, nvp_rt.cli, nvp_rt.video, nvp_rt.quality; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
