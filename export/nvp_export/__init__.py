"""nvp export side: fit INRs, select layer pairs, train adapters, export ONNX. Needs torch.

Grouped by concept: ``inr`` (families, fitting, quantisation), ``zoo`` (backbone presets),
``route`` (CKA, adapters, adapter and joint training), ``fidelity`` (agreement with the
original frames, pixel paths), ``benchmark`` (`nvp bench`, rate-accuracy points). At the top:
``backbone`` (the interface all of them share), ``weights`` (checkpoints read safely),
``encode`` (video -> .nvp), ``onnx_export`` (graphs into the model store), ``clips``
(synthetic test clips), ``charts``, ``demo`` and ``cli``.
"""

import nvp_rt  # noqa: F401  (first: sets OpenMP's wait policy before torch loads OpenMP)
