"""Decoding a file encoded against the pretrained base: the torch-free runtime (``nvp_rt.Session``) against
the torch reader (``nvp_export.base.encode.read``), the same file, the same threads.

The clip (Big Buck Bunny by default, 64 frames at 320x180) is encoded once with ``nvp encode --base``'s
library (``encode`` + ``write``), the base's graphs exported into a fresh store; then each reader decodes
every frame ``--repeats`` times and the median is kept:

- torch ``read``: the base's weights loaded and hashed, the payload decoded, the decoder run in torch;
- Session, cold: ``Session(path).decode()`` in a process that has compiled no graph yet (ONNX Runtime
  sessions created), measured once, first;
- Session, new file: ``Session(path).decode()`` once the process has the base's graphs compiled (what each
  further file against the base costs: weights loaded and hashed, payload decoded, graphs run);
- Session, decoded: ``decode()`` again on an open Session (the latents and weights already decoded).

    python bench/base_decode.py [--video bbb] [--bpp 0.1] [--modulation bias] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import nvp_rt
from nvp_export.base import load_base
from nvp_export.base.encode import BaseEncodeConfig, encode, read, write
from nvp_export.clips import RealClip
from nvp_export.onnx_export import export_base_graphs
from nvp_rt.store import ModelStore
from report import Run, make_parser


def _seconds(call, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> None:
    p = make_parser(__doc__, "base_decode", threads=1)
    p.add_argument("--video", default="bbb")
    p.add_argument("--size", default="320x180")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--bpp", type=float, default=0.1)
    p.add_argument("--modulation", default="bias")
    p.add_argument("--fit-seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = Run(args.out, "base_decode", threads=args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    frames = RealClip(args.video, width, height, args.frames).read()
    base, digest = load_base()
    cfg = BaseEncodeConfig(bpp=args.bpp, modulation=args.modulation, fit_seconds=args.fit_seconds, threads=args.threads)
    with tempfile.TemporaryDirectory() as folder:
        path, store = Path(folder) / "clip.nvp", ModelStore(Path(folder) / "store")
        size = write(path, encode(frames, base, digest, cfg, video={"source": args.video}))
        export_base_graphs(base.decoder, digest, store)

        cold_started = time.perf_counter()
        cold = nvp_rt.Session(path, store=store, threads=args.threads).decode()
        cold_s = time.perf_counter() - cold_started
        torch_s, reference = _seconds(lambda: read(path), args.repeats)
        new_file_s, _ = _seconds(lambda: nvp_rt.Session(path, store=store, threads=args.threads).decode(), args.repeats)
        session = nvp_rt.Session(path, store=store, threads=args.threads)
        session.decode()
        decoded_s, _ = _seconds(session.decode, args.repeats)
    assert isinstance(reference, np.ndarray)
    difference = int(np.abs(cold.astype(int) - reference).max())
    rows = {
        "torch read": torch_s,
        "Session, cold (graphs compiled)": cold_s,
        "Session, new file (graphs compiled before)": new_file_s,
        "Session, decoded (decode again)": decoded_s,
    }
    clip = f"{args.video} {args.frames} frames {width}x{height}, {args.modulation}, {size} bytes ({args.bpp} bpp)"
    table = "\n".join(
        [
            f"Decoding every frame of {clip}; median of {args.repeats} (cold: once).",
            "",
            "| reader | seconds | frames/s |",
            "|---|---|---|",
            *(f"| {k} | {v:.3f} | {args.frames / v:.0f} |" for k, v in rows.items()),
            "",
            f"Largest difference between the runtime's frames and torch's: {difference} level(s) of 255.",
        ]
    )
    run.write({"clip": clip, "bytes": size, "seconds": rows, "max_abs_difference": difference}, table)
    print(table)


if __name__ == "__main__":
    main()
