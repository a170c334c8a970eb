"""A fuzzing child: reads mutant paths on stdin, one per line, and answers each with one JSON line.

Runs each file the way a user would: ``NvpFile.open`` alone (its CPU time and the RSS it adds are
measured), ``nvp info``, ``NvpFile.open`` and ``verify()``, every segment's INR decoded whole,
``Session()``, every task on a clip's worth of frames from each segment's first frame, and a decode
of the first and last frame; every answer value and the decoded frames (in float, before they are
clipped to pixels) are checked for NaN and Inf. Before each file the peak-RSS counter
is reset (``/proc/self/clear_refs``), so each answer carries that file's own peak. The parent
sets the memory limit (RLIMIT_AS) and the time limit, and restarts a worker that dies.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import sys
import time
import traceback
from typing import Any

import numpy as np


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return _status_mb("VmHWM:")


def rss_mb() -> float:
    return _status_mb("VmRSS:")


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class NonFiniteAnswer(Exception):
    """An answer value or a decoded frame holds NaN or infinity: a failure, whatever the file."""


def non_finite(value: Any) -> bool:
    """Whether an answer (a result dataclass, its ``to_dict()``, arrays, lists, numbers) holds NaN or Inf."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fc" and not bool(np.isfinite(value).all())
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(non_finite(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(non_finite(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def check_answers(answers: dict[str, Any], frames: Any) -> None:
    for task, answer in answers.items():
        if non_finite(answer) or non_finite(answer.to_dict()):
            raise NonFiniteAnswer(f"task {task!r} on frames {list(frames)[:4]}: an answer holds NaN or Inf")


def timed_open(path: str) -> tuple[float, float]:
    """``NvpFile.open`` alone: (CPU seconds, MB its peak RSS rose above the RSS before it), errors ignored
    (``exercise`` meets them again)."""
    from nvp_rt.nvpfile import NvpFile

    reset_peak()
    before, started = rss_mb(), time.thread_time()  # this thread's CPU, not ONNX Runtime's threads'
    with contextlib.suppress(Exception):
        NvpFile.open(path).close()
    return time.thread_time() - started, peak_rss_mb() - before


def exercise(path: str, store) -> None:
    from nvp_rt.cli import cmd_info
    from nvp_rt.nvpfile import NvpFile
    from nvp_rt.session import Session, _Clock

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
                frames = range(start, start + clip)
                check_answers(session.run([task], frames=frames, top_k=1), frames)
    images = [t for t in session.tasks if session.clip_length(t) == 1]
    if len(images) > 1:
        check_answers(session.run(images, frames=[0, n - 1]), [0, n - 1])  # one prefix shared by several tasks
    ends = np.array([0, n - 1])
    session.decode(ends)
    # The frames in float, before ``decode`` clips them to uint8 (where a NaN would turn black), checked
    # here whatever the session checks itself.
    if non_finite(session._decode_prefix(ends, "rgb", {"rgb"}, _Clock())["rgb"]):
        raise NonFiniteAnswer(f"frames {ends.tolist()} decode to NaN or Inf")


def classify(error: BaseException) -> str:
    from nvp_rt.schema import NvpFormatError
    from nvp_rt.store import StoreEntryMissing

    if isinstance(error, NonFiniteAnswer):
        return "non_finite"
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
        open_seconds, open_rss_mb = timed_open(path)
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
                    "open_seconds": open_seconds,
                    "open_rss_mb": open_rss_mb,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
