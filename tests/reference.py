"""float64 references for the kernels, written from the definitions."""

import numpy as np


def linear_taps(n_in: int, n_out: int):
    """Half-pixel bilinear taps along one axis (torch align_corners=False / ONNX half_pixel)."""
    dst = np.arange(n_out, dtype=np.float64)
    src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.minimum(src - i0, 1.0)
    return i0, i1, 1.0 - w1, w1


def resize_bilinear(x: np.ndarray, size) -> np.ndarray:
    """Bilinear resize over the last two axes, in float64."""
    x = x.astype(np.float64)
    (ho, wo), (h, w) = size, x.shape[-2:]
    y0, y1, wy0, wy1 = linear_taps(h, ho)
    x0, x1, wx0, wx1 = linear_taps(w, wo)
    rows = x[..., y0, :] * wy0[:, None] + x[..., y1, :] * wy1[:, None]
    return rows[..., x0] * wx0 + rows[..., x1] * wx1


def resize_conv1x1(x, weight, bias, size) -> np.ndarray:
    """conv1x1(resize(x)) in float64 for (N, C, H, W) or (N, C, T, H, W)."""
    r = resize_bilinear(x, size)
    w = weight.reshape(weight.shape[0], weight.shape[1]).astype(np.float64)
    y = np.einsum("oc,nc...->no...", w, r)
    if bias is not None:
        y += bias.astype(np.float64).reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def rel_err(y, ref) -> float:
    """max |y - ref| / max |ref|: error relative to the output's scale."""
    y = np.asarray(y, np.float64)
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
