"""Two `nvp encode` runs to one new output, neither with --overwrite: how many succeed? (target: exactly one,
every time; the other fails with a one-line error and the output is the winner's file, whole)

    python bench/encode_race.py [--pairs 20] [--work DIR]

Each round starts two real `nvp encode` processes at once on a tiny clip (8 frames of 64x64, 2 epochs,
one thread each), to the same output name, which does not exist when they start: both pass the
up-front check, fit, and race to create the file. The two use different seeds, so the file says whose
it is (its manifest's ``encoding.fit.seed``). A round passes when one exits 0, the other exits 1 with one
line on stderr saying the output exists, the file verifies and is the winner's (its size the one the
winner printed), and no temporary file is left beside it. On a loaded machine one process may finish
before the other has started: the loser is then refused by the check at its start, which is counted apart.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nvp_rt.atomic import TEMP_SUFFIX
from nvp_rt.nvpfile import NvpFile


def encode(clip: Path, out: Path, seed: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nvp_rt.cli", "encode", str(clip), "-o", str(out), "--params", "20000"]
    command += ["--epochs", "2", "--threads", "1", "--seed", str(seed), "-q"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def round_(clip: Path, folder: Path, k: int) -> tuple[bool, str]:
    out = folder / f"race{k}.nvp"
    procs = {seed: encode(clip, out, seed) for seed in (2 * k, 2 * k + 1)}
    results = {seed: (p.wait(), *p.communicate()) for seed, p in procs.items()}
    winners = [seed for seed, (code, _, _) in results.items() if code == 0]
    losers = [(code, err) for code, _, err in results.values() if code != 0]
    if len(winners) != 1:
        return False, f"{len(winners)} of 2 succeeded: {[r[2].strip()[-200:] for r in results.values()]}"
    code, err = losers[0]
    if code != 1 or len(err.strip().splitlines()) != 1 or "exists" not in err:
        return False, f"the loser exited {code} with {err.strip()[-300:]!r}"
    with NvpFile.open(out) as nvp:
        nvp.verify()
        seed = nvp.manifest["encoding"]["fit"]["seed"]
        size = nvp.size_bytes
    if seed != winners[0] or f"{size} bytes" not in results[winners[0]][1]:
        return False, f"the file is seed {seed}'s ({size} bytes), the winner was seed {winners[0]}"
    temporaries = [p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    if temporaries:
        return False, f"temporary files left: {temporaries}"
    return True, f"seed {winners[0]} won; the other: {err.strip()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--work", type=Path, help="folder for the clip and outputs (default: a temporary one)")
    args = p.parse_args()
    folder = args.work or Path(tempfile.mkdtemp(prefix="nvp-encode-race-"))
    folder.mkdir(parents=True, exist_ok=True)
    clip = folder / "clip.mp4"
    if not clip.is_file():
        from nvp_export.clips import ClipSpec, write_clip

        write_clip(clip, ClipSpec("chelsea", width=64, height=64, frames=8, seed=1))
    passed, raced, started = 0, 0, time.perf_counter()
    for k in range(args.pairs):
        ok, detail = round_(clip, folder, k)
        passed += ok
        raced += "meanwhile" in detail
        print(f"round {k + 1}: {'ok' if ok else 'FAILED'}: {detail}", flush=True)
    print(
        f"{passed} of {args.pairs} rounds: exactly one encode succeeded, the other failed in one line, the "
        f"output whole; in {raced} both fitted and the loser was refused when it created the file (in the "
        f"others, by the check at its start: the winner had finished) ({time.perf_counter() - started:.0f} s)"
    )
    sys.exit(0 if passed == args.pairs else 1)


if __name__ == "__main__":
    main()
