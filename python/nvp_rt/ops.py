"""Kernels the runtime runs for every task.

``resize_conv1x1`` is the micro adapter: a bilinear resize to the backbone's
spatial size followed by a 1×1 convolution, fused. CPU arrays go to the C++
kernels in ``nvp_rt._C``; CUDA arrays to ``nvp_rt._C_cuda``, loaded on first use.
"""

from __future__ import annotations

import os
from typing import Any

from . import _C
from .device import as_cuda_array, as_host_array, cuda_module, is_cuda, stream_handle, to_device

__all__ = [
    "resize_conv1x1",
    "chosen_order",
    "set_num_threads",
    "get_num_threads",
    "cpu_capability",
    "to_device",
]

_ORDERS = {"auto": 0, "resize_first": 1, "conv_first": 2}
_num_threads = int(os.environ.get("NVP_NUM_THREADS", "0") or 0)


def set_num_threads(n: int) -> None:
    """Threads the CPU kernels use; 0 means all (the default, or NVP_NUM_THREADS)."""
    global _num_threads
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"num_threads must be a non-negative int; got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    return _num_threads if _num_threads > 0 else _C.max_threads()


def cpu_capability() -> str:
    """The instruction set the CPU kernels use on this machine (avx512, avx2, baseline)."""
    return _C.cpu_capability()


def _parse_size(size: Any) -> tuple[int, int]:
    try:
        ho, wo = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be a pair (Ho, Wo); got {size!r}") from None
    for d in (ho, wo):
        if isinstance(d, bool) or not hasattr(d, "__index__"):
            raise ValueError(f"size must hold two integers; got {size!r}")
    return int(ho), int(wo)


def _parse_order(order: str) -> int:
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {sorted(_ORDERS)}; got {order!r}")
    return _ORDERS[order]


def chosen_order(x_shape, weight_shape, size) -> str:
    """The order ('resize_first' or 'conv_first') the kernel picks for these shapes."""
    ho, wo = _parse_size(size)
    return _C.chosen_order(list(x_shape), list(weight_shape), ho, wo)


def resize_conv1x1(
    x: Any,
    weight: Any,
    bias: Any = None,
    size: tuple[int, int] | None = None,
    *,
    order: str = "auto",
    out: Any = None,
    stream: Any = None,
    num_threads: int | None = None,
):
    """y = conv1x1(bilinear_resize(x, size), weight, bias), fused.

    x: (N, C_in, H, W) or (N, C_in, T, H, W), resized over (H, W) per frame.
    weight: (C_out, C_in) or (C_out, C_in, 1, 1); bias: (C_out,) or None.
    size: (Ho, Wo). Bilinear exactly as torch ``interpolate(mode="bilinear",
    align_corners=False, antialias=False)`` and ONNX ``Resize`` (linear,
    half_pixel).

    CPU: float32 numpy arrays (or CPU DLPack tensors); returns a numpy array.
    CUDA: float32 or float16 arrays exposing ``__cuda_array_interface__``, all
    on one device; work is enqueued on ``stream`` (a handle or a framework's
    stream object; default the legacy default stream) and the result is an
    nvp ``DeviceArray`` (``__cuda_array_interface__`` and ``__dlpack__``).
    ``out`` receives the result in place when given (then None is returned on
    CUDA). ``order`` forces 'resize_first' or 'conv_first'; the default picks
    the cheaper one.
    """
    if size is None:
        raise ValueError("size=(Ho, Wo) is required")
    ho, wo = _parse_size(size)
    order_code = _parse_order(order)
    args = {"x": x, "weight": weight, "bias": bias, "out": out}
    on_cuda = {name for name, a in args.items() if is_cuda(a)}
    if on_cuda:
        on_cpu = {name for name, a in args.items() if a is not None and name not in on_cuda}
        if on_cpu:
            raise ValueError(
                f"mixed devices: {', '.join(sorted(on_cuda))} on CUDA but {', '.join(sorted(on_cpu))} on CPU"
            )
        module = cuda_module()
        described = {name: as_cuda_array(a, name).as_arg() if a is not None else None for name, a in args.items()}
        return module.resize_conv1x1(
            described["x"],
            described["weight"],
            described["bias"],
            ho,
            wo,
            order_code,
            stream_handle(stream),
            described["out"],
        )
    if stream is not None:
        raise ValueError("stream applies to CUDA arrays only; the inputs are on the CPU")
    host = {name: as_host_array(a, name) if a is not None else None for name, a in args.items()}
    threads = get_num_threads() if num_threads is None else int(num_threads)
    if threads <= 0:
        raise ValueError(f"num_threads must be positive; got {num_threads!r}")
    return _C.resize_conv1x1(host["x"], host["weight"], host["bias"], ho, wo, order_code, threads, host["out"])
