"""Picture-quality measures shared by the CLI, tests and benchmarks."""

from __future__ import annotations

import numpy as np


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """Mean over frames of each frame's PSNR in dB (frames first; uint8 or float arrays of the same shape)."""
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    diff = reference.astype(np.float64) - test.astype(np.float64)
    mse = np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1)
    return float(np.mean(10 * np.log10(peak * peak / np.maximum(mse, 1e-12))))
