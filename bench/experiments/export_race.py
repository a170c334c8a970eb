"""Concurrent route exports on one .nvp: how many routes are lost? (target: none)

    python bench/experiments/export_race.py [--pairs 20] [--real] [--out DIR]

Each round starts two exporters on the same file at once, with different task names, and then
counts the routes the file keeps. By default an exporter is ``export_race.py --one``: it
opens the file, "trains" for 0.3-0.8 s (a sleep) and adds its route with ``update_routes``, the
step ``nvp-export`` ends with (``--baseline``: as it did before, from the routes read at its
start: the control). ``--real`` runs the real ``nvp-export`` (tiny settings: 1 epoch of the
efficientnet_lite0 adapter on an 8-frame 64x64 clip; about 20-40 s a round on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nvp_rt.nvpfile import NvpFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/'s shared modules
from report import Run, make_parser  # noqa: E402
from tiny_clip import encode_command, export_command, write_tiny_clip  # noqa: E402


def one_export(path: Path, task: str, seed: int, baseline: bool = False) -> None:
    from nvp_rt.nvpfile import NvpFile, Route, replace_routes, update_routes

    nvp = NvpFile.open(path)  # what nvp-export reads first ...
    tap = nvp.manifest["taps"][1]
    rng = np.random.default_rng(seed)
    route = Route(
        task,
        "efficientnet_lite0-race",
        tap["name"],
        "stage3",
        {"weight0": rng.normal(size=(40, tap["shape"][0])).astype(np.float32), "bias0": np.zeros(40, np.float32)},
        {"kind": "classification", "hidden": None, "pathways": [{"size": [28, 28], "frames": None}]},
    )
    time.sleep(random.Random(seed).uniform(0.3, 0.8))  # ... then trains for a while ...
    if baseline:  # what nvp-export did before: the routes read at the start, written back with its own
        replace_routes(path, [r for r in nvp.routes() if r.task != task] + [route])
        return
    update_routes(
        path,
        lambda routes: [r for r in routes if r.task != task] + [route],  # ... and adds its route
        payload_checksum=nvp.payload_checksum,
    )


def make_file(work: Path) -> tuple[Path, Path]:
    """A tiny encoded clip (and its source, for --real)."""
    clip, out = work / "clip.mp4", work / "clip.nvp"
    if not out.is_file():
        write_tiny_clip(clip)
        subprocess.run(encode_command(clip, out, epochs=5), check=True)
    return clip, out


def main() -> int:
    p = make_parser(__doc__, "export_race")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--real", action="store_true", help="run the real nvp-export (slow)")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="exporters as nvp-export was before the lock (routes read at the start): a control",
    )
    p.add_argument("--one", nargs=4, metavar=("FILE", "TASK", "SEED", "BASELINE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one_export(Path(args.one[0]), args.one[1], int(args.one[2]), args.one[3] == "1")
        return 0
    run = Run(args.out, "export_race", threads=1)
    clip, path = make_file(run.out)
    lost, rounds = 0, []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in range(args.pairs):
        tasks = [f"r{k}a", f"r{k}b"]
        if args.real:
            commands = [export_command(path, t, clip) for t in tasks]
        else:
            commands = [
                [sys.executable, __file__, "--one", str(path), t, str(1000 * k + i), str(int(args.baseline))]
                for i, t in enumerate(tasks)
            ]
        procs = [
            subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands
        ]
        errors = [proc.communicate()[1] for proc in procs]
        failed = [e.strip().splitlines()[-1] for proc, e in zip(procs, errors) if proc.returncode]
        have = {r.task for r in NvpFile.open(path).routes()}
        missing = [t for t in tasks if t not in have]
        lost += len(missing)
        rounds.append({"exit_codes": [proc.returncode for proc in procs], "routes": len(have), "lost": missing})
        print(
            f"round {k + 1}: exit codes {rounds[-1]['exit_codes']}, routes now {len(have)}, "
            f"lost {missing or 'none'}" + (f"; errors: {failed}" if failed else ""),
            flush=True,
        )
    temps = [p.name for p in run.out.iterdir() if p.name.endswith(".nvp-tmp")]
    kind = (
        "real nvp-export runs"
        if args.real
        else "stand-in exporters" + (" (the pre-lock control)" if args.baseline else "")
    )
    summary = f"{args.pairs} concurrent pairs of {kind}: {lost} route(s) lost, {len(temps)} temporary file(s) left"
    run.write(
        {
            "pairs": args.pairs,
            "real": args.real,
            "baseline": args.baseline,
            "lost": lost,
            "temporaries": temps,
            "rounds": rounds,
        },
        summary,
    )
    print(summary)
    return 1 if lost or temps else 0


if __name__ == "__main__":
    sys.exit(main())
