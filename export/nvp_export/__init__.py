"""nvp export side: fit INRs, select layer pairs, train adapters, export ONNX. Needs torch."""

import nvp_rt  # noqa: F401  (first: sets OpenMP's wait policy before torch loads OpenMP)
