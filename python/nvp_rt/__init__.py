"""nvp runtime: answer tasks from videos stored as implicit neural representations.

Torch-free by design: numpy, ONNX Runtime and nvp's own C++/CUDA kernels.
CUDA is loaded only when a CUDA array or device is asked for, so importing
this package works on machines with no GPU and no driver.
"""

from importlib.metadata import PackageNotFoundError, version

from . import ops
from ._C import build_info
from .device import CudaUnavailableError, cuda_is_available

try:
    __version__ = version("nvp")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = ["Session", "query", "ops", "build_info", "cuda_is_available", "CudaUnavailableError", "__version__"]


def __getattr__(name):
    # Session pulls in ONNX Runtime, query pyarrow (and Ray when called); importing them on first use keeps
    # `import nvp_rt` light for kernel-only users.
    if name == "Session":
        from .session import Session

        return Session
    if name == "query":
        from .library import query

        return query
    raise AttributeError(f"module 'nvp_rt' has no attribute {name!r}")
