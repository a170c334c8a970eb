"""Where arrays live, and the lazily loaded CUDA kernels.

CPU arrays are numpy arrays (or anything exporting a CPU DLPack tensor, such
as a torch CPU tensor). CUDA arrays are anything exposing
``__cuda_array_interface__`` (CuPy, PyTorch, Numba, nvp's own DeviceArray).
The CUDA extension module is imported on the first CUDA request only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np


class CudaUnavailableError(RuntimeError):
    """A CUDA path was requested where nvp cannot run CUDA."""


@dataclass(frozen=True)
class CudaArray:
    """A C-contiguous CUDA array as the kernels take it."""

    ptr: int
    shape: tuple[int, ...]
    typestr: str

    def as_arg(self) -> tuple[int, list[int], str]:
        return (self.ptr, list(self.shape), self.typestr)


@functools.cache
def _cuda_module():
    try:
        from . import _C_cuda
    except ImportError as e:
        raise CudaUnavailableError(
            "nvp_rt was built without CUDA kernels (no nvcc at build time, or NVP_CUDA=OFF); "
            "rebuild with `pip install . -Ccmake.define.NVP_CUDA=ON`"
        ) from e
    return _C_cuda


def cuda_module():
    """The CUDA extension, after checking that a device is usable."""
    module = _cuda_module()
    count, reason = module.availability()
    if count == 0:
        raise CudaUnavailableError(f"CUDA was requested but no CUDA device is usable: {reason}")
    return module


def cuda_is_available() -> bool:
    """True when nvp's CUDA kernels are built and a CUDA device is usable."""
    try:
        cuda_module()
    except CudaUnavailableError:
        return False
    return True


def is_cuda(a: Any) -> bool:
    return a is not None and hasattr(a, "__cuda_array_interface__")


def as_cuda_array(a: Any, name: str) -> CudaArray:
    """Describe a CUDA array without copying; it must be C-contiguous."""
    iface = a.__cuda_array_interface__
    shape = tuple(int(d) for d in iface["shape"])
    typestr = iface["typestr"]
    strides = iface.get("strides")
    if strides is not None:
        itemsize = np.dtype(typestr).itemsize
        expected = []
        step = itemsize
        for d in reversed(shape):
            expected.append(step)
            step *= d
        if tuple(strides) != tuple(reversed(expected)) and int(np.prod(shape)) > 1:
            raise ValueError(f"{name} must be C-contiguous; call .contiguous() or copy it first")
    return CudaArray(int(iface["data"][0]), shape, typestr)


def as_host_array(a: Any, name: str) -> np.ndarray:
    """A numpy view of a CPU array without copying."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__dlpack_device__"):
        device_type, _ = a.__dlpack_device__()
        if device_type == 1:  # kDLCPU
            return np.from_dlpack(a)
        raise TypeError(
            f"{name} is on a device nvp cannot read through DLPack (type {device_type}); "
            "CUDA arrays must expose __cuda_array_interface__"
        )
    raise TypeError(f"{name} must be a numpy array or a CUDA array; got {type(a).__name__}")


def stream_handle(stream: Any) -> int:
    """A cudaStream_t as an integer, from an int or a framework's stream object."""
    if stream is None:
        return 0
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"stream must be an int handle or a CUDA stream object; got {type(stream).__name__}")


def to_device(a: np.ndarray, device: int = 0):
    """Copy a float32/float16 numpy array to a CUDA device (a DeviceArray)."""
    return cuda_module().DeviceArray.from_numpy(np.ascontiguousarray(a), device)
