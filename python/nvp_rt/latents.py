"""Reading a base file's per-frame latents (docs/base.md): range decoding and closed-loop prediction.

The writer is ``nvp_export.base.latents.code_latents``; both sides share the coder's model and the
per-symbol scales from here, so a reader and the writer agree by construction. Each frame's latent is
its prediction (the previous frame's decoded latent, inter, or the clip's per-channel mean, intra) plus
integer residuals times one quantisation step; the residuals are range-coded (``constriction``, as
``nvp_rt.codec``) under a zero-mean quantised Laplace per (mode, context, channel), the context being
whether the previous frame's residual at the same place was nonzero.
"""

from __future__ import annotations

import math

import constriction
import numpy as np

MAX_SYMBOL = 1 << 15  # residuals are clipped to +-this many steps (a bound for readers, never reached in practice)


def laplace_model(lo: int, hi: int):
    """The coder's model: a quantised Laplace over the integers ``lo..hi``, its scale given per symbol."""
    return constriction.stream.model.QuantizedLaplace(lo, hi)


def frame_scales(scales: np.ndarray, mode: int, contexts: np.ndarray) -> np.ndarray:
    """Per-symbol scales (C * H * W,) of one frame coded in ``mode`` with ``contexts`` (C, H, W)."""
    table = scales[mode].astype(np.float64)  # (2, C)
    return table[contexts, np.arange(contexts.shape[0])[:, None, None]].reshape(-1)


def decode_latents(arrays: dict[str, np.ndarray], meta: dict) -> np.ndarray:
    """The latents (N, C, H, W) float32 from ``code_latents``'s output, checked as read (ValueError)."""
    try:
        n, c, h, w = (int(v) for v in meta["shape"])
        step, (lo, hi) = float(meta["step"]), (int(v) for v in meta["range"])
        words, mean, scales, packed = (arrays[f"latents:{k}"] for k in ("words", "mean", "scales", "modes"))
    except (KeyError, TypeError, ValueError):
        raise ValueError("latents: description incomplete") from None
    if not (
        0 < n <= 1 << 20
        and 0 < c <= 4096
        and 0 < h * w <= 1 << 22
        and math.isfinite(step)
        and step > 0
        and -MAX_SYMBOL <= lo <= hi <= MAX_SYMBOL
        and words.dtype == np.uint32
        and mean.shape == (c,)
        and mean.dtype == scales.dtype == np.float16
        and scales.shape == (2, 2, c)
        and bool(np.isfinite(scales).all() and (scales > 0).all() and np.isfinite(mean).all())
        and packed.dtype == np.uint8
        and packed.shape == ((n + 7) // 8,)
    ):
        raise ValueError("latents: shape, step, range or model malformed")
    modes = np.unpackbits(packed)[:n]
    if modes[0]:
        raise ValueError("latents: the first frame cannot be predicted from a previous one")
    count = n * c * h * w
    if count > 64 * (32 * words.size + 64):  # a Laplace coder spends well over 1/64 bit a symbol here
        raise ValueError("latents: more symbols claimed than the stream can hold")
    out = np.empty((n, c, h, w), np.float32)
    intra = mean.astype(np.float32).reshape(-1, 1, 1)
    model, zeros = laplace_model(lo, hi), np.zeros(c * h * w)
    contexts = np.zeros((c, h, w), np.uint8)
    decoder = constriction.stream.queue.RangeDecoder(words)
    for t in range(n):
        try:
            q = decoder.decode(model, zeros, frame_scales(scales, int(modes[t]), contexts)).reshape(c, h, w)
        except Exception as e:  # a damaged stream fails inside the coder in coder-specific ways
            raise ValueError(f"latents: stream does not decode ({e})") from None
        out[t] = (out[t - 1] if modes[t] else intra) + q.astype(np.float32) * np.float32(step)
        contexts = (q != 0).astype(np.uint8)
    return out
