"""nvp_rt.ops.resize_conv1x1 on CUDA against float64 references (skipped without a GPU)."""

import numpy as np
import pytest
import torch

from nvp_rt import ops
from reference import rel_err, resize_conv1x1
from test_ops import CASES, make_inputs

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("order", ["auto", "resize_first", "conv_first"])
@pytest.mark.parametrize("case,x_shape,c_out,size", CASES, ids=[c[0] for c in CASES])
def test_float32_matches_reference(rng, case, x_shape, c_out, size, order):
    x, w, b = make_inputs(rng, x_shape, c_out)
    y = ops.resize_conv1x1(ops.to_device(x), ops.to_device(w), ops.to_device(b), size, order=order)
    assert y.shape == (x_shape[0], c_out, *x_shape[2:-2], *size) and y.dtype == "float32"
    assert rel_err(y.numpy(), resize_conv1x1(x, w, b, size)) <= 1e-5


@pytest.mark.parametrize("order", ["resize_first", "conv_first"])
def test_float16_matches_reference(rng, order):
    for x_shape, c_out, size in [((2, 32, 20, 30), 16, (56, 56)), ((1, 16, 4, 45, 80), 24, (28, 28))]:
        x, w, b = (a.astype(np.float16) for a in make_inputs(rng, x_shape, c_out))
        y = ops.resize_conv1x1(ops.to_device(x), ops.to_device(w), ops.to_device(b), size, order=order)
        assert y.dtype == "float16"
        # Inputs are exactly representable; the error is the fp16 rounding of the output.
        assert rel_err(y.numpy(), resize_conv1x1(x, w, b, size)) <= 2e-3


def test_out_and_stream_with_torch_tensors(rng):
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    x, w, b = make_inputs(rng, (2, 24, 3, 17, 29), 40)
    xt, wt, bt = (torch.from_numpy(a).cuda() for a in (x, w, b))
    out = torch.full((2, 40, 3, 31, 9), float("nan"), device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        assert ops.resize_conv1x1(xt, wt, bt, (31, 9), out=out, stream=stream) is None
    stream.synchronize()
    assert rel_err(out.cpu().numpy(), resize_conv1x1(x, w, b, (31, 9))) <= 1e-5


def test_result_exports_through_dlpack_and_cai(rng):
    x, w, b = make_inputs(rng, (1, 8, 10, 12), 4)
    y = ops.resize_conv1x1(ops.to_device(x), ops.to_device(w), ops.to_device(b), (5, 7))
    iface = y.__cuda_array_interface__
    assert iface["shape"] == (1, 4, 5, 7) and iface["typestr"] == "<f4" and iface["data"][0] == y.data_ptr
    assert y.__dlpack_device__() == (2, y.device)
    if torch.cuda.is_available():
        t = torch.from_dlpack(y)
        assert t.is_cuda and t.data_ptr() == y.data_ptr
        assert rel_err(t.cpu().numpy(), resize_conv1x1(x, w, b, (5, 7))) <= 1e-5


def test_device_errors(rng):
    x, w, b = make_inputs(rng, (1, 4, 6, 6), 3)
    xd = ops.to_device(x)
    with pytest.raises(ValueError, match="mixed devices"):
        ops.resize_conv1x1(xd, w, b, (3, 3))
    with pytest.raises(TypeError, match="dtype"):
        ops.resize_conv1x1(xd, ops.to_device(w.astype(np.float16)), None, (3, 3))
    with pytest.raises(ValueError, match="channel mismatch"):
        ops.resize_conv1x1(xd, ops.to_device(np.ascontiguousarray(w[:, :2])), None, (3, 3))
    with pytest.raises(ValueError, match="positive"):
        ops.resize_conv1x1(xd, ops.to_device(w), None, (0, 3))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="contiguous"):
            ops.resize_conv1x1(torch.from_numpy(x).cuda()[..., ::2], torch.from_numpy(w).cuda(), None, (3, 3))
