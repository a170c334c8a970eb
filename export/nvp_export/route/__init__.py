"""Routes: how a task reaches a backbone from the INR instead of from pixels.

``cka`` ranks (INR tap, injection point) pairs by linear CKA; ``adapter`` is the micro adapter
(bilinear resize + 1x1 conv) and its closed-form fit; ``losses`` the feature-transfer loss;
``adapt`` selects and trains a classification route, ``task_adapt`` one for the other task
presets; ``multipathway`` the adapters of injection points that carry several tensors
(SlowFast's pathways, a segmenter's scales); ``task_cost`` and ``flops`` count what a
route costs; ``joint`` optimises the INR and a route's adapter together.
"""
