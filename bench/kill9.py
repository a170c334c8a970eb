"""kill -9 at many points of `nvp encode`, `nvp-export` and `nvp view`: is any file left corrupt, and
does the next run leave temporary files behind? (targets: 0 and 0)

    python bench/kill9.py [--points 20] [--work DIR]

Each command is first run to completion (its duration T and a valid output to damage); then, per
point, it is started again over that output and killed with SIGKILL: at even points after a delay
spread over [0.1 T, 1.1 T], at odd points while it writes (as soon as one of its temporary files
appears, plus 0-40 ms), where a crash can do harm. After each kill the output must be the old file
or a complete new one (a .nvp that opens, a video that decodes); the command is then run once
more to completion, and no temporary file (``*.nvp-tmp``) may remain anywhere in the work folder
or the model store.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TEMP_SUFFIX = ".nvp-tmp"


def commands(work: Path) -> dict[str, tuple[list[str], Path]]:
    py = sys.executable
    nvp, out = work / "clip.nvp", work / "view.mp4"
    return {
        "encode": (
            [
                py,
                "-m",
                "nvp_rt.cli",
                "encode",
                str(work / "clip.mp4"),
                "-o",
                str(nvp),
                "--params",
                "60000",
                "--epochs",
                "3",
                "--threads",
                "1",
                "-q",
                "-y",
            ],
            nvp,
        ),
        "export": (
            [
                py,
                "-m",
                "nvp_export.cli",
                "--task",
                "efficientnet_lite0",
                str(nvp),
                "--epochs",
                "1",
                "--candidates",
                "top",
                "--top",
                "0.05",
                "-q",
                "--no-compare-pixels",
            ],
            nvp,
        ),
        "view": ([py, "-m", "nvp_rt.cli", "view", str(nvp), "-o", str(out), "-y"], out),
    }


def intact(path: Path, before: bytes) -> bool:
    """The old bytes, or a complete file of the same kind."""
    data = path.read_bytes() if path.exists() else b""
    if data == before:
        return True
    try:
        if path.suffix == ".nvp":
            from nvp_rt.nvpfile import NvpFile

            NvpFile.open(path)
        else:
            from nvp_rt.video import read_video

            read_video(path)
        return True
    except ValueError:
        return False


def temporaries(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob(f"*{TEMP_SUFFIX}")]


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    try:
        proc.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def kill_at_write(proc: subprocess.Popen, work: Path, store: Path, extra: float) -> bool:
    """SIGKILL as soon as the command has a temporary file open (plus ``extra`` seconds)."""
    while proc.poll() is None:
        if temporaries(work, store):
            time.sleep(extra)
            return kill_after(proc, 0)
        time.sleep(0.001)
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=20, help="kills per command")
    p.add_argument("--work", type=Path, default=Path("bench/results/kill9"))
    p.add_argument("--only", choices=["encode", "export", "view"], nargs="*")
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    env = {**os.environ, "NVP_STORE": str(store), "OMP_NUM_THREADS": "1"}
    if not (work / "clip.mp4").exists():
        from nvp_export.clips import ClipSpec, write_clip

        write_clip(work / "clip.mp4", ClipSpec("chelsea", width=64, height=64, frames=8, seed=1))
    runs = commands(work)
    if not runs["encode"][1].exists():  # export and view need a file to work on
        subprocess.run(runs["encode"][0], env=env, check=True, capture_output=True)
    corrupt = left = kills = 0
    for name, (command, output) in runs.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        duration = time.perf_counter() - started
        for k in range(args.points):
            before = output.read_bytes()
            at_write = k % 2 == 1
            delay = duration * (0.1 + 1.0 * k / max(args.points - 1, 1))
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            killed = kill_at_write(proc, work, store, 0.04 * k / args.points) if at_write else kill_after(proc, delay)
            kills += killed
            ok = intact(output, before)
            corrupt += not ok
            stale = len(temporaries(work, store))
            subprocess.run(command, env=env, check=True, capture_output=True)  # the next run
            remaining = temporaries(work, store)
            left += len(remaining)
            when = "while writing" if at_write else f"at {delay:.1f} s of {duration:.1f} s"
            print(
                f"{name} point {k + 1}/{args.points}: {'killed' if killed else 'finished'} {when}; "
                f"output {'intact' if ok else 'CORRUPT'}; {stale} temp file(s) after the kill, "
                f"{len(remaining)} after the next run",
                flush=True,
            )
    print(f"{kills} kills: {corrupt} corrupt output(s), {left} temporary file(s) left after the next runs")
    return 1 if corrupt or left else 0


if __name__ == "__main__":
    sys.exit(main())
