"""The base's pretraining curve: PSNR of the noisy training batches and of the held-out corpus clips, by step.

    python bench/base_pretrain_curve.py LOG.jsonl OUT.png

LOG is what ``python -m nvp_export.base.pretrain --log`` wrote.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nvp_export.charts import save_png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args()
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("event") == "train"]
    held = [r for r in train if "held_out_psnr" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(
        [r["step"] for r in train],
        [r["psnr_noisy"] for r in train],
        "C0-",
        lw=1,
        label="training batches (noisy latents)",
    )
    ax.plot([r["step"] for r in held], [r["held_out_psnr"] for r in held], "C1o-", label="held-out corpus clips")
    ax.set(xlabel="step (batch of 8 frames, 320x180)", ylabel="PSNR (dB)")
    minutes = train[-1]["seconds"] / 60 if train else 0
    ax.set_title(f"base pretraining, one CPU thread, {minutes:.0f} min")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, args.out)


if __name__ == "__main__":
    main()
