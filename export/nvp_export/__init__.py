"""nvp export side: fit INRs, select layer pairs, train adapters, export ONNX. Needs torch."""

import os as _os

# Idle OpenMP threads spin by default; where other jobs share the cores, spinning threads starve the
# one holding a barrier. Measured on 2 shared cores: a training step took 2.6-5x longer with 2 spinning
# threads than with 2 passive ones. Set before torch loads its OpenMP runtime; a user's setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
