"""How the fit's rate should follow its batch (``FitConfig.lr_scaling``), on the tests' tiny clip, CPU.

The HNeRV of test_inr's fits (32x48, 6 frames, fc 24) fitted for the same epochs at batch 1 and at batch
3 and 6 with the family's rate scaled by sqrt(B), by B, or not at all; and batch 3 for three times the
epochs (the same number of steps, which is what a launch-bound GPU step costs). One thread, seeded,
so the figures repeat on one machine; PSNR of the kept state, dB.

    python bench/batch_rate.py [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nvp_export.inr import from_config, make_config  # noqa: E402
from nvp_export.inr.fit import FitConfig, fit  # noqa: E402
from test_inr import _clip  # noqa: E402

RUNS = [  # (label, batch, rule, epochs)
    ("batch 1", 1, "sqrt", 60),
    ("batch 3, sqrt", 3, "sqrt", 60),
    ("batch 3, linear", 3, "linear", 60),
    ("batch 3, none", 3, "none", 60),
    ("batch 6, sqrt", 6, "sqrt", 60),
    ("batch 6, linear", 6, "linear", 60),
    ("batch 3, sqrt, equal steps", 3, "sqrt", 180),
    ("batch 3, linear, equal steps", 3, "linear", 180),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames = _clip()
    print("| run | epochs | " + " | ".join(f"seed {s} dB" for s in args.seeds) + " | seconds |")
    print("|---|---|" + "---|" * len(args.seeds) + "---|")
    for label, batch, rule, epochs in RUNS:
        psnrs, started = [], time.perf_counter()
        for seed in args.seeds:
            torch.manual_seed(seed)
            inr = from_config(make_config("hnerv", height=32, width=48, num_frames=6, fc_dim=24))
            cfg = FitConfig(epochs=epochs, time_limit_s=None, batch=batch, lr_scaling=rule, seed=seed, progress=False)
            psnrs.append(fit(inr, frames, cfg).psnr)
        seconds = (time.perf_counter() - started) / len(args.seeds)
        print(f"| {label} | {epochs} | " + " | ".join(f"{p:.2f}" for p in psnrs) + f" | {seconds:.1f} |", flush=True)
        print(json.dumps({"run": label, "psnr_db": psnrs}), file=sys.stderr)


if __name__ == "__main__":
    main()
