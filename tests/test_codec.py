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
    errors = {a: np.sum((quantise(rows, 8, a).dequantise() - rows) ** 2) for a in (None, 0, 1)}
    assert best.axis == min(errors, key=errors.get)
    assert best.axis is not None and errors[best.axis] < errors[None] / 2
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
        counts = arrays[f"stream{b}:counts"].astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        entropy_bytes = -(counts[counts > 0] * np.log2(p)).sum() / 8
        assert arrays[f"stream{b}:words"].nbytes <= entropy_bytes * 1.02 + 16
        assert arrays[f"stream{b}:words"].nbytes < counts.sum() * b / 8  # real gain over raw symbols


def test_constant_tensors_round_trip():
    """A constant tensor (an untrained INR's zero embeddings) codes to almost nothing and still decodes."""
    rng = np.random.default_rng()
    tensors = {
        "embeddings": np.full((24, 16, 2, 3), rng.normal(), np.float32),
        "conv.weight": rng.normal(size=(8, 4)).astype(np.float32),
    }
    arrays, meta = encode_tensors(tensors, {"embeddings": 6, "conv.weight": 8})
    assert arrays["stream6:words"].size <= 2
    decoded = decode_tensors(arrays, meta)
    np.testing.assert_array_equal(decoded["embeddings"], quantise_best(tensors["embeddings"], 6).dequantise())


@pytest.mark.parametrize("damage", ["shape", "counts", "words", "bits", "low"])
def test_inconsistent_payload_is_rejected(damage):
    rng = np.random.default_rng()
    arrays, meta = encode_tensors({"w": rng.normal(size=(8, 4)).astype(np.float32)}, {"w": 8})
    if damage == "shape":
        meta["tensors"][0]["shape"] = [8, 5]
    elif damage == "counts":
        arrays["stream8:counts"] = arrays["stream8:counts"].copy()
        arrays["stream8:counts"][0] += 1
    elif damage == "words":
        arrays["stream8:words"] = arrays["stream8:words"][:1]
    elif damage == "bits":
        meta["tensors"][0]["bits"] = 6
    else:
        arrays["w:low"] = arrays["w:low"][:1].astype(np.float32)
    with pytest.raises(NvpFormatError):
        decode_tensors(arrays, meta)


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys, nvp_rt.codec, nvp_rt.nvpfile, nvp_rt.cli, nvp_rt.video, nvp_rt.quality; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
