"""nvp runtime: answer tasks from videos stored as implicit neural representations.

Torch-free by design: numpy, ONNX Runtime and nvp's own C++/CUDA kernels.
CUDA is loaded only when a CUDA array or device is asked for, so importing
this package works on machines with no GPU and no driver.
"""

import os
from importlib.metadata import PackageNotFoundError, version

# Idle OpenMP threads spin by default; where other jobs share the cores, spinning threads starve the
# one holding a barrier. Measured on 2 shared cores: a training step took 2.6-5x longer with 2 spinning
# threads than with 2 passive ones. libgomp reads this once, when the first library using it loads (our
# kernels below, or torch), so it is set before either; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import ops  # noqa: E402
from ._C import build_info  # noqa: E402
from .device import CudaUnavailableError, cuda_is_available

try:
    __version__ = version("nvp")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = ["ops", "build_info", "cuda_is_available", "CudaUnavailableError", "__version__"]
