"""nvp_rt.ops.resize_conv1x1 on the CPU against float64 references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nvp_rt
from nvp_rt import ops
from reference import linear_taps, rel_err, resize_bilinear, resize_conv1x1

# (case, x shape, C_out, (Ho, Wo))
CASES = [
    ("1x1-spatial-up", (2, 3, 1, 1), 5, (7, 3)),
    ("1x1-spatial-out", (1, 6, 9, 11), 4, (1, 1)),
    ("odd-sizes", (1, 5, 17, 13), 3, (29, 4)),
    ("large-downscale", (1, 8, 256, 200), 6, (7, 5)),
    ("non-integer-up", (1, 16, 9, 16), 12, (40, 71)),
    ("cin>cout-up", (1, 48, 40, 80), 24, (112, 112)),
    ("cin<cout-up", (1, 96, 20, 40), 256, (56, 56)),
    ("batch", (4, 32, 20, 30), 40, (28, 28)),
    ("identity-size", (2, 7, 13, 19), 9, (13, 19)),
    ("5d", (2, 16, 3, 20, 30), 24, (28, 28)),
    ("5d-down", (1, 64, 4, 45, 80), 64, (28, 28)),
    ("single-channel", (3, 1, 10, 10), 1, (15, 6)),
]


def make_inputs(rng, x_shape, c_out, with_bias=True):
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal((c_out, x_shape[1]), dtype=np.float32)
    b = rng.standard_normal(c_out, dtype=np.float32) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("order", ["auto", "resize_first", "conv_first"])
@pytest.mark.parametrize("case,x_shape,c_out,size", CASES, ids=[c[0] for c in CASES])
def test_matches_float64_reference(rng, case, x_shape, c_out, size, order):
    x, w, b = make_inputs(rng, x_shape, c_out)
    y = ops.resize_conv1x1(x, w, b, size, order=order)
    assert y.dtype == np.float32
    assert y.shape == (x_shape[0], c_out, *x_shape[2:-2], *size)
    assert rel_err(y, resize_conv1x1(x, w, b, size)) <= 1e-5


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(rng, threads):
    x, w, b = make_inputs(rng, (3, 24, 2, 15, 22), 16)
    for order in ("resize_first", "conv_first"):
        ref = ops.resize_conv1x1(x, w, b, (31, 9), order=order, num_threads=1)
        y = ops.resize_conv1x1(x, w, b, (31, 9), order=order, num_threads=threads)
        np.testing.assert_array_equal(y, ref)


def test_random_shapes(rng):
    """Many random geometries, both orders, against the float64 reference."""
    for _ in range(40):
        five_d = rng.random() < 0.3
        c_in, c_out = (int(v) for v in rng.integers(1, 50, size=2))
        h, w, ho, wo = (int(v) for v in rng.integers(1, 70, size=4))
        shape = (int(rng.integers(1, 3)), c_in, *((int(rng.integers(1, 4)),) if five_d else ()), h, w)
        x, wt, b = make_inputs(rng, shape, c_out, with_bias=bool(rng.random() < 0.5))
        ref = resize_conv1x1(x, wt, b, (ho, wo))
        for order in ("resize_first", "conv_first"):
            assert rel_err(ops.resize_conv1x1(x, wt, b, (ho, wo), order=order), ref) <= 1e-5, (shape, c_out, ho, wo)


def test_reference_is_torch_bilinear(rng):
    """The reference itself follows torch.nn.functional.interpolate's bilinear semantics."""
    x = rng.standard_normal((2, 3, 11, 17))
    for size in [(5, 7), (23, 40), (11, 17), (1, 1), (31, 3)]:
        t = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False, antialias=False)
        np.testing.assert_allclose(resize_bilinear(x, size), t.numpy(), rtol=0, atol=1e-12)


def test_matches_onnx_resize_conv(rng):
    """Same result as ONNX Resize(linear, half_pixel) + Conv run by ONNX Runtime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    for x_shape, c_out, size in [((1, 12, 9, 14), 7, (20, 33)), ((2, 8, 30, 40), 5, (7, 11))]:
        x, w, b = make_inputs(rng, x_shape, c_out)
        graph = helper.make_graph(
            [
                helper.make_node(
                    "Resize", ["x", "", "", "sizes"], ["r"], mode="linear", coordinate_transformation_mode="half_pixel"
                ),
                helper.make_node("Conv", ["r", "w", "b"], ["y"]),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [
                numpy_helper.from_array(np.array([*x_shape[:2], *size], np.int64), "sizes"),
                numpy_helper.from_array(w[:, :, None, None], "w"),
                numpy_helper.from_array(b, "b"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(["y"], {"x": x})[0]
        assert rel_err(ops.resize_conv1x1(x, w, b, size), expected.astype(np.float64)) <= 1e-5


def test_weight_in_conv_layout_and_no_bias(rng):
    x, w, _ = make_inputs(rng, (1, 10, 8, 8), 6, with_bias=False)
    y = ops.resize_conv1x1(x, w[:, :, None, None], None, (12, 5))
    assert rel_err(y, resize_conv1x1(x, w, None, (12, 5))) <= 1e-5


def test_out_receives_result(rng):
    x, w, b = make_inputs(rng, (2, 6, 9, 9), 4)
    out = np.full((2, 4, 5, 6), np.nan, np.float32)
    y = ops.resize_conv1x1(x, w, b, (5, 6), out=out)
    assert y is out or np.shares_memory(y, out)
    assert rel_err(out, resize_conv1x1(x, w, b, (5, 6))) <= 1e-5


def test_accepts_torch_cpu_tensors(rng):
    x, w, b = make_inputs(rng, (1, 4, 6, 6), 3)
    y = ops.resize_conv1x1(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), (3, 9))
    assert rel_err(y, resize_conv1x1(x, w, b, (3, 9))) <= 1e-5


def test_cost_model_picks_cheaper_order():
    # Upsampling with few output channels: convolve at the small input size first.
    assert ops.chosen_order((1, 48, 40, 80), (24, 48), (112, 112)) == "conv_first"
    # Downsampling: resize first, the conv then runs at the small output size.
    assert ops.chosen_order((1, 64, 90, 160), (64, 64), (28, 28)) == "resize_first"


class FakeCudaArray:
    """Exposes __cuda_array_interface__ only; no kernel ever reads it (the call fails before)."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (1 << 40, False), "version": 3}


# name -> (call on x (1, 4, 6, 6), w (3, 4), b (3,)), expected error, message pattern)
BAD_CALLS = {
    "wrong rank": (lambda x, w, b: ops.resize_conv1x1(x[0], w, b, (3, 3)), ValueError, "4-D"),
    "float64": (lambda x, w, b: ops.resize_conv1x1(x.astype(np.float64), w, b, (3, 3)), TypeError, "float32"),
    "int weight": (lambda x, w, b: ops.resize_conv1x1(x, w.astype(np.int32), b, (3, 3)), TypeError, "weight"),
    "non-contiguous": (lambda x, w, b: ops.resize_conv1x1(x[:, :, ::2], w, b, (3, 3)), ValueError, "contiguous"),
    "channel mismatch": (
        lambda x, w, b: ops.resize_conv1x1(x, np.ascontiguousarray(w[:, :3]), b, (3, 3)),
        ValueError,
        "channel mismatch",
    ),
    "3x3 weight": (
        lambda x, w, b: ops.resize_conv1x1(x, np.zeros((3, 4, 3, 3), np.float32), b, (3, 3)),
        ValueError,
        "weight",
    ),
    "bias shape": (lambda x, w, b: ops.resize_conv1x1(x, w, b[:2], (3, 3)), ValueError, "bias"),
    "zero size": (lambda x, w, b: ops.resize_conv1x1(x, w, b, (0, 3)), ValueError, "positive"),
    "negative size": (lambda x, w, b: ops.resize_conv1x1(x, w, b, (4, -2)), ValueError, "positive"),
    "size not a pair": (lambda x, w, b: ops.resize_conv1x1(x, w, b, (4,)), ValueError, "pair"),  # type: ignore[arg-type]
    "size float": (lambda x, w, b: ops.resize_conv1x1(x, w, b, (4.5, 2)), ValueError, "integers"),  # type: ignore[arg-type]
    "size missing": (lambda x, w, b: ops.resize_conv1x1(x, w, b), ValueError, "size"),
    "empty batch": (lambda x, w, b: ops.resize_conv1x1(x[:0], w, b, (3, 3)), ValueError, "empty"),
    "bad order": (lambda x, w, b: ops.resize_conv1x1(x, w, b, (3, 3), order="fastest"), ValueError, "order"),
    "out shape": (
        lambda x, w, b: ops.resize_conv1x1(x, w, b, (3, 3), out=np.zeros((1, 3, 3, 4), np.float32)),
        ValueError,
        "out",
    ),
    "out aliases x": (
        lambda x, w, b: ops.resize_conv1x1(x, np.eye(4, dtype=np.float32), None, (6, 6), out=x),
        ValueError,
        "overlap",
    ),
    "stream on cpu": (lambda x, w, b: ops.resize_conv1x1(x, w, b, (3, 3), stream=0), ValueError, "stream"),
    "list input": (lambda x, w, b: ops.resize_conv1x1(x.tolist(), w, b, (3, 3)), TypeError, "numpy"),
    "mixed devices": (
        lambda x, w, b: ops.resize_conv1x1(x, FakeCudaArray((3, 4)), b, (3, 3)),
        ValueError,
        "mixed devices",
    ),
    "zero threads": (lambda x, w, b: ops.resize_conv1x1(x, w, b, (3, 3), num_threads=0), ValueError, "num_threads"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_clear_error(rng, name):
    call, error, pattern = BAD_CALLS[name]
    x, w, b = make_inputs(rng, (1, 4, 6, 6), 3)
    with pytest.raises(error, match=pattern):
        call(x, w, b)


@pytest.mark.skipif(nvp_rt.cuda_is_available(), reason="checks the message where CUDA is missing")
def test_cuda_request_without_cuda_is_a_clear_error():
    with pytest.raises(nvp_rt.CudaUnavailableError, match="CUDA"):
        ops.to_device(np.zeros((2, 2), np.float32))
    fake = FakeCudaArray((1, 4, 6, 6))
    with pytest.raises(nvp_rt.CudaUnavailableError, match="CUDA"):
        ops.resize_conv1x1(fake, FakeCudaArray((3, 4)), None, (3, 3))


def test_linear_taps_weights_sum_to_one():
    for n_in, n_out in [(1, 5), (7, 3), (40, 112), (256, 7)]:
        i0, i1, w0, w1 = linear_taps(n_in, n_out)
        np.testing.assert_allclose(w0 + w1, 1.0)
        assert (0 <= i0).all() and (i1 < n_in).all() and (w0 >= 0).all() and (w1 >= 0).all()
