"""The paper's Table 1 / Table 2 comparison: H.264 (CPU, NVDEC), full INR decoding and NVP, measured side by side.

``run.run_bench(BenchConfig.quick())`` is what ``nvp bench --quick`` runs; see ``run`` for the stages.
``rate_accuracy`` scores one .nvp file against the pixel paths at its bpp (``bench/rate_accuracy.py``).
"""
