"""kill -9 at many points of `nvp encode`, `nvp-export` and `nvp view`: is any file left corrupt, and
does the next run leave temporary files behind? (targets: 0 and 0)

    python bench/experiments/kill9.py [--points 20] [--out DIR]

Each command is first run to completion (its duration T and a valid output to damage); then, per
point, it is started again over that output and killed with SIGKILL: at even points after a delay
spread over [0.1 T, 1.1 T], at odd points while it writes (as soon as one of its temporary files
appears, plus 0-40 ms), where a crash can do harm. After each kill the output must be the old file
or a complete new one (a .nvp that opens, a video that decodes); the command is then run once
more to completion, and no temporary file (``*.nvp-tmp``) may remain anywhere in the work folder
or the model store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/'s shared modules
from report import Run, make_parser  # noqa: E402
from tiny_clip import encode_command, export_command, write_tiny_clip  # noqa: E402

TEMP_SUFFIX = ".nvp-tmp"


def commands(work: Path) -> dict[str, tuple[list[str], Path]]:
    py = sys.executable
    nvp, out = work / "clip.nvp", work / "view.mp4"
    return {
        "encode": (encode_command(work / "clip.mp4", nvp, epochs=3), nvp),
        "export": (export_command(nvp), nvp),
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
    p = make_parser(__doc__, "kill9")
    p.add_argument("--points", type=int, default=20, help="kills per command")
    p.add_argument("--only", choices=["encode", "export", "view"], nargs="*")
    args = p.parse_args()
    run = Run(args.out, "kill9", threads=1)
    work = run.out.resolve()
    store = work / "store"
    env = {**os.environ, "NVP_STORE": str(store), "OMP_NUM_THREADS": "1"}
    if not (work / "clip.mp4").exists():
        write_tiny_clip(work / "clip.mp4")
    runs = commands(work)
    if not runs["encode"][1].exists():  # export and view need a file to work on
        subprocess.run(runs["encode"][0], env=env, check=True, capture_output=True)
    corrupt = left = kills = 0
    points = []
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
            points.append({"command": name, "killed": killed, "when": when, "intact": ok, "left": len(remaining)})
            print(
                f"{name} point {k + 1}/{args.points}: {'killed' if killed else 'finished'} {when}; "
                f"output {'intact' if ok else 'CORRUPT'}; {stale} temp file(s) after the kill, "
                f"{len(remaining)} after the next run",
                flush=True,
            )
    summary = f"{kills} kills: {corrupt} corrupt output(s), {left} temporary file(s) left after the next runs"
    run.write({"kills": kills, "corrupt": corrupt, "temporaries_left": left, "points": points}, summary)
    print(summary)
    return 1 if corrupt or left else 0


if __name__ == "__main__":
    sys.exit(main())
