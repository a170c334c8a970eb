"""Archive scale on a local Ray cluster of two simulated nodes: library queries (Ray Data), and encodes of several
inputs and of segmented videos (workers dying, resume, refused resumes).

The cluster (a head and a worker node, one CPU each) starts once for the module. The library's files share one
INR architecture and two routes into tiny backbones (classification, detection), so graphs export in seconds;
answers are checked against ``Session.run`` on each file, which tests/test_session.py holds to the torch path.
"""

import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from torch import nn

import nvp_rt
from nvp_export.backbone import Backbone, Preprocess
from nvp_export.benchmark.library import LibrarySpec, RouteSpec, library_routes, write_library
from nvp_export.clips import ClipSpec, write_clip
from nvp_export.encode import EncodeConfig
from nvp_export.encode_many import EncodeJob, TaskResources, encode_many, encode_segment, plan_jobs, plan_video
from nvp_export.inr.fit import FitConfig
from nvp_export.parts import Parts
from nvp_rt.atomic import atomic_write
from nvp_rt.cli import main
from nvp_rt.nvpfile import NvpFile
from nvp_rt.quality import psnr
from nvp_rt.store import ModelStore
from nvp_rt.video import FrameSelection, read_video

FILES = 4
SPEC = LibrarySpec(height=32, width=48, frames=8, fc_dim=16)


class TinyDetectionHead(nn.Module):
    """DETR's outputs: (N, queries, classes + 1) logits, the last "no object", and (N, queries, 4) boxes."""

    def __init__(self, channels: int, queries: int = 4, classes: int = 3):
        super().__init__()
        self.queries, self.classes = queries, classes
        self.logits = nn.Linear(channels, queries * (classes + 1))
        self.boxes = nn.Linear(channels, queries * 4)

    def forward(self, x):
        z = x.mean((2, 3))
        logits = 8 * self.logits(z).reshape(-1, self.queries, self.classes + 1)  # confident: some pass 0.7
        return logits, self.boxes(z).reshape(-1, self.queries, 4).sigmoid()


def tiny_classifier() -> Backbone:
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 10),
    )
    labels = [f"class{i}" for i in range(10)]
    preprocess = Preprocess((16, 24))
    return Backbone.from_sequential(
        "tiny_cls", layers, ["1"], preprocess=preprocess, labels=labels, pretrained=True, weights_source="test"
    )


def tiny_detector() -> Backbone:
    torch.manual_seed(1)
    stages = [
        ("stem", nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())),
        ("head", nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), TinyDetectionHead(12))),
    ]
    return Backbone(
        "tiny_det", stages, Preprocess((16, 24)), task="detection", labels=["a", "b", "c"], pretrained=True,
        weights_source="test",
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node, one CPU each; this process is the driver."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    d = tmp_path_factory.mktemp("library")
    store = ModelStore(d / "store")
    specs = [RouteSpec("cls", tiny_classifier, "block2", "1"), RouteSpec("det", tiny_detector, "block2", "stem")]
    routes = library_routes(SPEC, specs, store)
    files = write_library(d / "lib", FILES, SPEC, routes)
    corrupt = d / "corrupt.nvp"
    data = files[0].read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    return d, store, [str(f) for f in files], str(d / "missing.nvp"), str(corrupt)


def assert_same_answer(got, want, where):
    """JSON answers equal up to float32 rounding of batched against single-frame graph runs."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_same_answer(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_answer(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=0.011), (where, got, want)  # boxes: 2 decimals
    else:
        assert got == want, (where, got, want)


def expected_rows(store, files, tasks, frames):
    """(file, frame, task) -> answer, each frame queried alone through Session.run."""
    out = {}
    for f in files:
        session = nvp_rt.Session(f, store=store)
        for frame in frames:
            for task, result in session.run(tasks, frames=[frame]).items():
                (entry,) = result.to_dict()["frames"]
                out[(f, frame, task)] = {k: v for k, v in entry.items() if k != "frame"}
    return out


def test_library_query_equals_sessions_and_reports_bad_files(cluster, library, rng):
    d, store, files, missing, corrupt = library
    # Frames 1, 3, 5, 7 of 8 in calls of 2 or 3 frames: each must answer as if queried alone.
    paths = [*files, missing, corrupt]
    per_call = int(rng.integers(2, 4))
    ds = nvp_rt.query(paths, ["cls", "det"], frames=slice(1, None, 2), store=store, frames_per_call=per_call)
    rows = ds.to_pandas()
    errors = rows[rows.error.notna()]
    assert sorted(errors.file) == sorted([missing, corrupt])
    assert errors.frame.isna().all() and errors.task.isna().all()
    assert "no such file" in errors[errors.file == missing].error.iloc[0]
    assert "truncated" in errors[errors.file == corrupt].error.iloc[0]

    answered = rows[rows.error.isna()]
    want = expected_rows(store, files, ["cls", "det"], [1, 3, 5, 7])
    assert len(answered) == len(want)
    for row in answered.itertuples():
        answer = json.loads(row.answer)
        assert_same_answer(answer, want[(row.file, row.frame, row.task)], f"{row.file}:{row.frame}:{row.task}")
        if row.task == "cls":
            top1 = answer["top_k"][0]
            assert (row.kind, row.label, row.score) == ("classification", top1["label"], top1["prob"])
        else:
            best = max(answer["detections"], key=lambda x: x["score"], default=None)
            assert row.kind == "detection" and row.label == (best and best["name"])
    cls = answered[answered.task == "cls"]
    assert len({row.answer for row in cls.itertuples()}) == len(cls)  # files and frames answer differently


def test_query_batches_equal_one_by_one_and_clip_to_each_file(cluster, library, rng):
    d, store, files, *_ = library
    start, step = int(rng.integers(0, 3)), int(rng.integers(1, 3))
    frames = list(range(start, SPEC.frames, step))
    ds = nvp_rt.query(files[:2], "cls", frames=slice(start, 100, step), store=store, frames_per_call=SPEC.frames)
    whole = ds.to_pandas()
    assert sorted(whole.frame.unique()) == frames  # START:100:STEP clipped to the files' 8 frames, in one call
    want = expected_rows(store, files[:2], ["cls"], frames)
    for row in whole.itertuples():
        assert_same_answer(json.loads(row.answer), want[(row.file, row.frame, row.task)], f"{row.file}:{row.frame}")


def test_a_known_architecture_opens_without_reading_its_graphs(library, monkeypatch):
    d, store, files, *_ = library
    key = nvp_rt.Session(files[0], store=store).inr.key
    read, read_bytes = [], Path.read_bytes

    def spy(path):
        read.append(path)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", spy)
    nvp_rt.Session(files[1], store=store).run(["cls", "det"], frames=[0])
    assert not [p for p in read if p.suffix == ".onnx"]
    # A store entry replaced, as the store replaces them (atomic rename), is read again.
    stem = store.get("inr", f"{key}.stem")
    atomic_write(stem, read_bytes(stem))
    nvp_rt.Session(files[2], store=store)
    assert [p for p in read if p.suffix == ".onnx"] == [stem]


def nvp_cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nvp_rt.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def test_nvp_query_joins_the_cluster_and_writes_parquet(cluster, library, tmp_path):
    d, store, files, missing, _ = library
    head, _ = cluster
    out = tmp_path / "results.parquet"
    proc = nvp_cli(
        "query", str(d / "lib" / "*.nvp"), missing, "--tasks", "cls,det", "--frames", "0:8:4", "-o", out,
        "--address", head.address, "--store", store.root, "--num-actors", 2,
    )  # fmt: skip
    # The missing file: reported in the summary and a one-line error, the rest answered and written.
    assert proc.returncode == 1, proc.stderr
    assert f"{out}: 17 rows from 5 files; 1 with errors" in proc.stdout
    error = "nvp query: error: 1 of 5 files were not fully answered: see the error column"
    assert proc.stderr.strip().splitlines()[-1] == error
    table = pq.read_table(out).to_pandas()
    want = expected_rows(store, files, ["cls", "det"], [0, 4])
    answered = table[table.error.isna()]
    assert len(answered) == len(want) == 16
    for row in answered.itertuples():
        assert_same_answer(json.loads(row.answer), want[(row.file, row.frame, row.task)], f"{row.file}:{row.frame}")
    assert [f.name for f in tmp_path.iterdir()] == ["results.parquet"]  # no temporary left behind


def test_nvp_query_user_errors_are_one_line(library, tmp_path):
    d, store, *_ = library
    for args, words in [
        (["--address", "127.0.0.1:1"], "does not answer"),
        (["--address", "nonsense"], "not HOST:PORT"),
    ]:
        proc = nvp_cli("query", str(d / "lib" / "*.nvp"), "--tasks", "cls", "-o", tmp_path / "r.parquet", *args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], proc.stderr
    nowhere = str(tmp_path / "none" / "*.nvp")
    proc = nvp_cli("query", nowhere, "--tasks", "cls", "-o", tmp_path / "r.parquet")
    assert proc.returncode == 1 and proc.stderr.strip() == f"nvp query: error: no file matches {nowhere!r}"
    assert not (tmp_path / "r.parquet").exists()


def test_import_nvp_rt_does_not_import_ray():
    script = (
        "import sys, nvp_rt; nvp_rt.Session; sys.exit(any(m.split('.')[0] in ('ray', 'pyarrow') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 0


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Tiny clips of one size (one INR architecture: its graphs are exported once into the shared store)."""
    d = tmp_path_factory.mktemp("clips")
    for i, name in enumerate(["coffee", "astronaut", "chelsea"]):
        write_clip(d / f"{name}.mp4", ClipSpec(name, width=32, height=32, frames=4, seed=i))
    write_clip(d / "scenes.mp4", ClipSpec("montage", width=32, height=32, frames=12))  # four shots of 3 frames
    return d, ModelStore(d / "store")


TINY_FIT = ["--params", "40000", "--epochs", "3", "--time-limit", "0", "--threads", "1", "-q"]


def assert_valid_encoding(path, source, store):
    nvp = NvpFile.open(path)  # complete: every section's checksum holds
    frames, _ = read_video(source)
    assert nvp.manifest["video"]["frames"] == len(frames) == 4
    decoded = nvp_rt.Session(path, store=store).decode(range(4))
    assert psnr(frames, decoded) == pytest.approx(nvp.manifest["metrics"]["psnr_quantised_db"], abs=0.05)


def test_nvp_encode_several_inputs_on_the_cluster(cluster, clips, capsys):
    d, store = clips
    out = d / "out"
    code = main(
        ["encode", str(d / "*o*.mp4"), str(d / "missing.mp4"), "-o", f"{out}/", "--store", str(store.root), *TINY_FIT]
    )
    captured = capsys.readouterr()
    # The missing input fails alone, with a one-line error and a non-zero exit; the others are written.
    assert code == 1
    assert captured.err.strip().splitlines()[-1].startswith("nvp encode: error: 1 of 3 inputs failed (first: ")
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.nvp", "coffee.nvp"]
    for name in ("astronaut", "coffee"):
        assert f"{out / name}.nvp: 4 frames 32x32" in captured.out
        assert_valid_encoding(out / f"{name}.nvp", d / f"{name}.mp4", store)


def encode_dying_once(markers, plan, k, store):
    """The segment encoder, but its worker process dies in the first attempt at each segment: half a second in, or
    as it finishes where the encode is quicker, before the result is reported."""
    marker = Path(markers) / f"{Path(plan.job.output).name}.{k}"
    if not marker.exists():
        marker.touch()
        threading.Timer(0.5, os._exit, (1,)).start()
        encode_segment(plan, k, store)
        os._exit(1)
    encode_segment(plan, k, store)


def assert_valid_segmented(outcome, selection, store):
    """The output opens (every checksum holds), holds every selected frame, and decodes to the PSNR its segments
    measured when they were fitted."""
    nvp = NvpFile.open(outcome.job.output)
    frames, _ = read_video(outcome.job.source, selection)
    assert nvp.manifest["video"]["frames"] == len(frames) == outcome.report.frames
    decoded = nvp_rt.Session(outcome.job.output, store=store).decode(range(len(frames)))
    per_frame = [psnr(f[None], d[None]) for f, d in zip(frames, decoded)]
    assert np.mean(per_frame) == pytest.approx(outcome.report.psnr_quantised, abs=0.05)


def test_encode_survives_workers_dying_mid_task(cluster, clips, tmp_path):
    d, store = clips
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    sources = [str(d / "chelsea.mp4"), str(d / "scenes.mp4")]  # one segment; four shots, four segments
    jobs = plan_jobs(sources, tmp_path)
    config = EncodeConfig(params=120000, fit=FitConfig(epochs=3, time_limit_s=None, threads=1), segment_frames=4)
    dying = functools.partial(encode_dying_once, str(tmp_path / "markers"))
    (tmp_path / "markers").mkdir()
    outcomes = encode_many(jobs, FrameSelection(), config, store.root, progress=False, encode=dying)
    assert [o.error for o in outcomes] == [None, None]
    assert [o.report.segments for o in outcomes] == [1, 4]
    with pytest.raises(ValueError, match="exists; pass --overwrite"):  # finished outputs are kept unless asked
        plan_jobs(sources, tmp_path)
    assert plan_jobs(sources, tmp_path, overwrite=True) == jobs
    died = ["chelsea.nvp.0", "scenes.nvp.0", "scenes.nvp.1", "scenes.nvp.2", "scenes.nvp.3"]
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == died  # each segment's first attempt died
    # Under the outputs' names only complete files, and the parts are gone (a worker killed inside an atomic write
    # may leave a hidden temporary beside them, never a part under the name).
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "chelsea.nvp",
        "markers",
        "scenes.nvp",
    ]
    for outcome in outcomes:
        assert_valid_segmented(outcome, FrameSelection(), store)


def encode_counting(calls, interrupted, plan, k, store):
    """The segment encoder, recording each call; segments in ``interrupted`` fail as an interruption would."""
    (Path(calls) / f"{k}.{uuid.uuid4().hex}").touch()
    if k in interrupted:
        raise InterruptedError("interrupted")
    encode_segment(plan, k, store)


def fitted(calls) -> list[int]:
    fits = sorted(int(p.name.split(".")[0]) for p in Path(calls).iterdir())
    for p in Path(calls).iterdir():
        p.unlink()
    return fits


def test_an_interrupted_encode_resumes_without_redoing_finished_segments(cluster, clips, tmp_path):
    d, store = clips
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    source, output = str(d / "scenes.mp4"), tmp_path / "scenes.nvp"
    calls = tmp_path / "calls"
    calls.mkdir()
    fit_args = ["--params", "120000", "--epochs", "3", "--time-limit", "0", "--threads", "1", "-q"]
    # Segments of at most 2 frames in shots of 3 (as the scene score finds them): a shot's second segment
    # warm-starts from its first. The first warm start's source is interrupted: it and the segments that start
    # from it are lost (they never run), the others are kept.
    config = EncodeConfig(params=120000, fit=FitConfig(epochs=3, time_limit_s=None, threads=1), segment_frames=2)
    job = EncodeJob(source, str(output))
    plan = plan_video(job, FrameSelection(), config)
    interrupted = next(k for k in plan.warm_from if k is not None)
    dependent = {k for k, source_k in enumerate(plan.warm_from) if source_k == interrupted}
    segments = set(range(len(plan.segments)))
    counting = functools.partial(encode_counting, str(calls), {interrupted})
    (outcome,) = encode_many([job], FrameSelection(), config, store.root, progress=False, encode=counting)
    assert outcome.error is not None and outcome.report is None and not output.exists()
    parts = Parts(output)
    kept = sorted(segments - dependent - {interrupted})
    assert sorted(p.name for p in parts.folder.iterdir()) == ["plan.json", *(f"seg-{k:05d}.nvp" for k in kept)]
    assert fitted(calls) == sorted(segments - dependent)
    names = sorted(p.name for p in parts.folder.iterdir())

    # Other settings: refused in one line naming the difference, the parts left as they are.
    proc = nvp_cli("encode", source, "-o", output, "--segment-frames", 2, "--store", store.root, *fit_args[:1],
                   "100000", *fit_args[2:])  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "(--params 100000 vs 120000 in the existing parts)" in line and "--overwrite" in line, line
    assert sorted(p.name for p in parts.folder.iterdir()) == names

    # The same settings: the missing segment is fitted, and a part that fails validation is redone, never trusted.
    damaged = parts.path(kept[-1]).read_bytes()
    parts.path(kept[-1]).write_bytes(damaged[:-10])
    counting = functools.partial(encode_counting, str(calls), set())
    (outcome,) = encode_many([job], FrameSelection(), config, store.root, progress=False, encode=counting)
    assert outcome.error is None, outcome.error
    assert fitted(calls) == sorted({interrupted, *dependent, kept[-1]})
    assert not parts.folder.exists()
    assert_valid_segmented(outcome, FrameSelection(), store)

    # --overwrite starts over, whatever is there; paths relative to the command's folder (not the workers').
    shutil.copy(source, tmp_path / "input.mp4")
    proc = nvp_cli("encode", "input.mp4", "-o", output.name, "--segment-frames", 6, "--overwrite", "--store",
                   store.root, *fit_args, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "12 frames 32x32" in proc.stdout and "over 2 segments" in proc.stdout
    assert NvpFile.open(output).manifest["video"]["frames"] == 12 and not parts.folder.exists()


def test_encode_user_errors_are_one_line(clips, tmp_path):
    d, store = clips
    source, output = d / "scenes.mp4", tmp_path / "out.nvp"
    for args, words in [
        (["--address", "127.0.0.1:1"], "does not answer"),
        (["--segment-frames", "0"], "--segment-frames"),
    ]:
        proc = nvp_cli("encode", source, "-o", output, "--store", store.root, *TINY_FIT, *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert words in lines[-1], proc.stderr
        assert list(tmp_path.iterdir()) == []  # nothing written: no output, no parts


def test_encode_refuses_gpu_requests_the_cluster_cannot_meet(cluster, clips, tmp_path):
    """A task asking for a GPU the cluster lacks would wait forever; it is refused before anything is written."""
    d, store = clips
    jobs = plan_jobs([str(d / "chelsea.mp4")], tmp_path)
    config = EncodeConfig(params=120000, fit=FitConfig(epochs=1, time_limit_s=None, threads=1))
    for gpus, words in [(0.25, "asks for 0.25 GPU(s) but the Ray cluster has 0"), (1.5, "whole number")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            encode_many(jobs, FrameSelection(), config, store.root, TaskResources(gpus=gpus), progress=False)
    assert list(tmp_path.iterdir()) == []
