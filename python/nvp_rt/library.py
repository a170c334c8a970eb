"""Queries over a library of .nvp files on Ray Data: one row per (file, frame, task).

    ds = nvp_rt.query("archive/*.nvp", ["cls", "det"], frames=slice(0, 64, 8))   # a lazy ray.data.Dataset
    ds.to_pandas()            # file, frame, task, kind, label, score, answer, error
    write_parquet(ds, "results.parquet")

Files are answered by a pool of ``QueryActor``s (``ray.data.ActorPoolStrategy``), each opening one
``Session`` per file. Compiled ONNX Runtime sessions are cached per process by graph, so an actor that
has served an architecture opens further files of it without compiling or re-reading graphs.

Rows: ``answer`` is the task's JSON for that frame (``results``' ``to_dict`` entry: top-k classes,
detections with boxes, class areas, caption); ``label`` and ``score`` type its headline: the top-1
class (classification, action), the best detection, the largest segment's class and area, the caption.
Clip tasks (action) give one row per clip, at its first frame. A file that is missing or unreadable,
a task it has no route for, or frames it cannot answer give a row with ``error`` set; the rest of the
library is answered.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_output
from .store import ModelStore

__all__ = ["QueryConfig", "QueryActor", "Summary", "query", "library_files", "answer_file", "write_parquet", "SCHEMA"]

SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("frame", pa.int64()),  # null: the error concerns the whole file
        ("task", pa.string()),  # null: the error concerns every task
        ("kind", pa.string()),  # classification, detection, action, segmentation, captioning
        ("label", pa.string()),
        ("score", pa.float64()),
        ("answer", pa.string()),  # JSON
        ("error", pa.string()),  # null where answered
    ]
)

Frames = slice | range | Sequence[int] | None


@dataclass(frozen=True)
class QueryConfig:
    """What every actor needs to answer a file."""

    tasks: tuple[str, ...]
    frames: slice | tuple[int, ...] | None = None  # a slice is clipped to each file's length; None: every frame
    store: str | None = None  # model store root; None: the default ($NVP_STORE, ~/.cache/nvp) where it runs
    device: str = "cpu"
    threads: int = 1  # ONNX Runtime threads per actor: one actor per CPU is the pool's unit of parallelism
    top_k: int = 5
    frames_per_call: int = 16  # frames decoded together: bounds memory for long files


def library_files(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Paths as given, globs expanded (sorted); a glob that matches nothing is an error, a missing path is not
    (it is reported in the results)."""
    items = [paths_or_globs] if isinstance(paths_or_globs, (str, os.PathLike)) else list(paths_or_globs)
    files = []
    for item in map(str, items):
        if glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {item!r}")
            files.extend(matches)
        else:
            files.append(item)
    if not files:
        raise ValueError("no files to query")
    return files


def query(
    paths_or_globs,
    tasks: str | Sequence[str],
    frames: Frames = None,
    *,
    address: str | None = None,
    num_actors: int | None = None,
    store: ModelStore | str | os.PathLike | None = None,
    device: str = "cpu",
    threads: int = 1,
    top_k: int = 5,
    files_per_batch: int = 8,
    frames_per_call: int = 16,
):
    """Answer ``tasks`` on ``frames`` of every file: a lazy ``ray.data.Dataset`` of ``SCHEMA`` rows.

    Ray is started here (embedded; ``num_actors`` CPUs, else all) unless it runs already; ``address`` joins a
    cluster. ``num_actors`` defaults to one per ``threads`` CPUs of the cluster (fewer for a small library).
    ``frames``: a slice or range (clipped to each file's length), a list of indices, or None for all.
    """
    import ray

    from .cluster import connect

    config = QueryConfig(
        tasks=_tasks(tasks),
        frames=_frames(frames),
        store=str((store if isinstance(store, ModelStore) else ModelStore(store)).root),
        device=device,
        threads=threads,
        top_k=top_k,
        frames_per_call=frames_per_call,
    )
    files = library_files(paths_or_globs)
    if num_actors is not None and num_actors < 1:
        raise ValueError(f"num_actors must be at least 1; got {num_actors}")
    connect(address, num_cpus=None if address else num_actors)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = num_actors or max(1, min(cpus // threads, math.ceil(len(files) / files_per_batch)))
    # At least a block per actor, so that every actor gets files.
    blocks = min(len(files), max(actors, math.ceil(len(files) / files_per_batch)))
    items = ray.data.from_items([{"file": f} for f in files], override_num_blocks=blocks)
    return items.map_batches(
        QueryActor,
        fn_constructor_kwargs={"config": config},
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=math.ceil(len(files) / blocks),
        batch_format="numpy",
        num_cpus=threads,
    )


def _tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(t for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t)
    if not names:
        raise ValueError("no tasks requested")
    return names


def _frames(frames: Frames) -> slice | tuple[int, ...] | None:
    if frames is None or isinstance(frames, slice):
        return frames
    if isinstance(frames, range):
        return slice(frames.start, frames.stop, frames.step)
    indices = tuple(int(f) for f in frames)
    if not indices:
        raise ValueError("no frames requested")
    return indices


class QueryActor:
    """Answers batches of files (a Ray Data ``map_batches`` callable class, one per pool worker)."""

    def __init__(self, config: QueryConfig):
        self.config = config
        self.store = ModelStore(config.store)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [row for path in batch["file"] for row in answer_file(str(path), self.config, self.store)]
        return pa.Table.from_pylist(rows, schema=SCHEMA)


def answer_file(path: str, config: QueryConfig, store: ModelStore) -> list[dict[str, Any]]:
    """Rows for one file; a file that cannot be opened gives one error row."""
    from .session import Session

    try:
        session = Session(path, device=config.device, store=store, threads=config.threads)
    # One bad file must not stop a query over thousands: whatever opening it raises is reported in its row.
    except Exception as e:
        return [_error_row(path, None, None, e)]
    known = [t for t in config.tasks if t in session.tasks]
    rows = [
        _error_row(path, None, t, f"no route for task {t!r}; the file has {session.tasks}")
        for t in config.tasks
        if t not in known
    ]
    frames = _file_frames(config.frames, session.inr.num_frames)
    if not frames:
        total = session.inr.num_frames
        return rows + [_error_row(path, None, None, f"no frame of {config.frames} in a video of {total}")]
    if not known:
        return rows
    step = _call_frames(config.frames_per_call, [session.clip_length(t) for t in known])
    for i in range(0, len(frames), step):
        rows.extend(_answer(session, path, known, frames[i : i + step], config.top_k))
    return rows


def _file_frames(frames: slice | tuple[int, ...] | None, total: int) -> list[int]:
    if frames is None:
        return list(range(total))
    if isinstance(frames, slice):
        return list(range(total)[frames])
    return list(frames)  # out-of-range indices are the Session's to report


def _call_frames(wanted: int, clips: list[int]) -> int:
    """Frames per Session call: ``wanted`` rounded up to whole clips of every clip task."""
    unit = math.lcm(*clips)
    return max(1, math.ceil(wanted / unit)) * unit


def _answer(session, path: str, tasks: list[str], frames: list[int], top_k: int) -> list[dict[str, Any]]:
    """Rows of ``tasks`` on ``frames`` from one shared decode; a task that cannot answer them is retried alone,
    so its error lands in its own row and the others still answer."""
    try:
        answers = session.run(tasks, frames=frames, top_k=top_k)
    except (ValueError, IndexError) as e:
        if len(tasks) == 1:
            return [_error_row(path, frames[0], tasks[0], e)]
        return [row for t in tasks for row in _answer(session, path, [t], frames, top_k)]
    return [row for task, result in answers.items() for row in result_rows(path, task, result.to_dict())]


def result_rows(path: str, task: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """A task's ``to_dict()`` answer split into one row per frame (per clip for clip tasks)."""
    kind = result["kind"]
    rows = []
    for entry in result.get("frames") or result.get("clips") or []:
        answer = {k: v for k, v in entry.items() if k != "frame"}
        frame = entry["frame"] if "frame" in entry else entry["frames"][0]
        label, score = _headline(entry)
        rows.append(
            {
                "file": path,
                "frame": frame,
                "task": task,
                "kind": kind,
                "label": label,
                "score": score,
                "answer": json.dumps(answer),
                "error": None,
            }
        )
    return rows


def _headline(entry: dict[str, Any]) -> tuple[str | None, float | None]:
    if entry.get("top_k"):
        return entry["top_k"][0]["label"], entry["top_k"][0]["prob"]
    if entry.get("detections"):
        best = max(entry["detections"], key=lambda d: d["score"])
        return best["name"], best["score"]
    if entry.get("class_areas"):
        label, area = max(entry["class_areas"].items(), key=lambda kv: kv[1])
        return label, area
    return entry.get("text"), None


def _error_row(path: str, frame: int | None, task: str | None, error) -> dict[str, Any]:
    message = error if isinstance(error, str) else (str(error).splitlines() or [type(error).__name__])[0]
    return {
        "file": path,
        "frame": frame,
        "task": task,
        "kind": None,
        "label": None,
        "score": None,
        "answer": None,
        "error": message,
    }


@dataclass
class Summary:
    """What a written query holds: rows, files answered, files with errors (path -> first error)."""

    path: str
    rows: int
    files: int
    failed: dict[str, str]

    def line(self) -> str:
        text = f"{self.path}: {self.rows} rows from {self.files} files"
        if self.failed:
            file, error = next(iter(self.failed.items()))
            text += f"; {len(self.failed)} with errors (first: {error if file in error else f'{file}: {error}'})"
        return text


def write_parquet(dataset, path: str | os.PathLike) -> Summary:
    """Stream ``dataset``'s rows into one Parquet file at ``path``, atomically (a reader never sees a part)."""
    path = Path(path)
    rows, files, failed = 0, set(), dict[str, str]()
    with atomic_output(path) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer:
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            table = table.select(SCHEMA.names).cast(SCHEMA)
            writer.write_table(table)
            rows += table.num_rows
            for file, error in zip(table.column("file").to_pylist(), table.column("error").to_pylist()):
                files.add(file)
                if error is not None:
                    failed.setdefault(file, error)
    return Summary(str(path), rows, len(files), failed)
