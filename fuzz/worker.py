"""A fuzzing child: reads mutant paths on stdin, one per line, and answers each with one JSON line.

Runs each file the way a user would: ``nvp info``, ``NvpFile.open`` and ``verify()``, every segment's INR
decoded whole, ``Session()``, every task on a clip's worth of frames from each segment's first
frame, and a decode of the first and last frame. Before each file the peak-RSS counter
is reset (``/proc/self/clear_refs``), so each answer carries that file's own peak. The parent
sets the memory limit (RLIMIT_AS) and the time limit, and restarts a worker that dies.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import traceback


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def exercise(path: str, store) -> None:
    from nvp_rt.cli import cmd_info
    from nvp_rt.nvpfile import NvpFile
    from nvp_rt.session import Session

    with contextlib.redirect_stdout(io.StringIO()):  # ``nvp info``, as text and as JSON
        for as_json in (False, True):
            cmd_info(argparse.Namespace(file=path, json=as_json))
    with NvpFile.open(path) as nvp:
        nvp.verify()
        for i in range(len(nvp.segments)):  # every group at once: the model's counts are checked too
            nvp.segment_tensors(i)
    session = Session(path, device="cpu", store=store, threads=1)
    n = session.inr.num_frames
    starts = [s.start for s in session.inr.segments]
    for task in session.tasks:
        clip = session.clip_length(task)
        for start in starts:  # a clip from each segment's first frame (it may run into the next segment)
            if start + clip <= n:
                session.run([task], frames=range(start, start + clip), top_k=1)
    images = [t for t in session.tasks if session.clip_length(t) == 1]
    if len(images) > 1:
        session.run(images, frames=[0, n - 1])  # one prefix shared by several tasks
    session.decode([0, n - 1])


def classify(error: BaseException) -> str:
    from nvp_rt.schema import NvpFormatError
    from nvp_rt.store import StoreEntryMissing

    if isinstance(error, NvpFormatError):
        return "format_error"
    if isinstance(error, StoreEntryMissing):
        return "store_missing"
    if isinstance(error, ValueError):
        return "value_error"
    return "other_exception"


def main() -> None:
    from nvp_rt.store import ModelStore

    store = ModelStore(sys.argv[1])
    for line in sys.stdin:
        path = line.strip()
        reset_peak()
        started = time.perf_counter()
        outcome, detail = "ok", ""
        try:
            exercise(path, store)
        except Exception as e:  # classified, not swallowed: the parent counts each kind
            outcome = classify(e)
            detail = f"{type(e).__name__}: {str(e)[:300]}"
            if outcome == "other_exception":
                frames = traceback.extract_tb(e.__traceback__)[-4:]
                detail += " | " + " < ".join(f"{fr.name}:{fr.lineno}" for fr in frames)
        print(
            json.dumps(
                {
                    "outcome": outcome,
                    "detail": detail,
                    "seconds": time.perf_counter() - started,
                    "peak_rss_mb": peak_rss_mb(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
