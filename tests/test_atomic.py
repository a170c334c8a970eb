"""Writes that never lose data: modes follow the umask, symlinks are followed, stale temporaries of dead
writers are removed, concurrent read-modify-writes of one .nvp keep every writer's route, concurrent
writers of a new output cannot both succeed, and an output that cannot be written is found first."""

import multiprocessing
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from nvp_rt.atomic import TEMP_SUFFIX, OutputExistsError, OutputWriteError, atomic_output, atomic_write
from nvp_rt.nvpfile import NvpFile, NvpFormatError, update_routes
from nvp_rt.outputs import check_output
from test_nvpfile import MANIFEST, _random_payload, _route, write_nvp


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask_and_rewrites_keep_the_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", b"one")
        with atomic_output(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"two")
        assert _mode(tmp_path / "a.bin") == _mode(tmp_path / "b.bin") == 0o666 & ~umask
        os.chmod(tmp_path / "a.bin", 0o640)
        atomic_write(tmp_path / "a.bin", b"three")
        assert _mode(tmp_path / "a.bin") == 0o640 and (tmp_path / "a.bin").read_bytes() == b"three"
    finally:
        os.umask(old)


def test_a_symlink_is_followed_and_kept(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "clip.nvp"
    atomic_write(target, b"old")
    os.chmod(target, 0o604)
    link = tmp_path / "link.nvp"
    link.symlink_to(target)
    atomic_write(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new" and _mode(target) == 0o604


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".clip.nvp.{dead_pid}.0badc0de{TEMP_SUFFIX}"
    live = tmp_path / f".clip.nvp.{os.getppid()}.0badc0de{TEMP_SUFFIX}"  # a live process's write in progress
    other = tmp_path / ".notes.txt"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    atomic_write(tmp_path / "clip.nvp", b"whole")
    assert not stale.exists() and live.exists() and other.exists()


def _valid(tmp_path, rng):
    arrays, meta = _random_payload(rng)
    path = tmp_path / "clip.nvp"
    write_nvp(path, MANIFEST, arrays, meta, [_route(rng, "first")])
    return path


def _export(path, task, start, seed):
    """What nvp-export does: read the file, 'train' (sleep) while the other process does the same, add a route."""
    nvp = NvpFile.open(path)
    route = _route(np.random.default_rng(seed), task)
    while time.time() < start:
        time.sleep(0.001)
    time.sleep(0.05)
    update_routes(
        path, lambda routes: [r for r in routes if r.task != task] + [route], payload_checksum=nvp.payload_checksum
    )


def test_concurrent_exports_keep_both_routes(tmp_path, rng):
    path = _valid(tmp_path, rng)
    fork = multiprocessing.get_context("fork")
    for round_ in range(3):
        start = time.time() + 0.2
        procs = [fork.Process(target=_export, args=(path, f"task{round_}{k}", start, k)) for k in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    tasks = [r.task for r in NvpFile.open(path).routes()]
    assert sorted(tasks) == sorted(["first"] + [f"task{i}{k}" for i in range(3) for k in range(2)])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_a_route_trained_on_a_payload_that_changed_is_refused(tmp_path, rng):
    path = _valid(tmp_path, rng)
    before = NvpFile.open(path)
    arrays, meta = _random_payload(rng)
    write_nvp(path, MANIFEST, arrays, meta, before.routes())  # e.g. a joint optimisation meanwhile
    with pytest.raises(NvpFormatError, match="rewritten while"):
        update_routes(path, lambda routes: routes + [_route(rng, "late")], payload_checksum=before.payload_checksum)
    assert [r.task for r in NvpFile.open(path).routes()] == ["first"]


def _write_at(path, payloads, k, start, overwrite, results):
    while time.time() < start:
        pass
    try:
        atomic_write(path, payloads[k], overwrite=overwrite)
        results.put((k, ""))
    except OutputExistsError as e:
        results.put((k, str(e)))


@pytest.mark.parametrize("overwrite", [False, True])
def test_concurrent_writers_of_a_new_output(tmp_path, rng, overwrite):
    """Four processes write one new file at the same moment: without overwrite exactly one succeeds and the
    others are told the output exists (nothing replaced); with it every write lands whole, the last one wins."""
    fork = multiprocessing.get_context("fork")
    for round_ in range(5):
        path, results = tmp_path / f"out{round_}.nvp", fork.Queue()
        payloads = [rng.integers(0, 256, int(rng.integers(1, 1 << 20)), dtype=np.uint8).tobytes() for _ in range(4)]
        start = time.time() + 0.2
        procs = [fork.Process(target=_write_at, args=(path, payloads, k, start, overwrite, results)) for k in range(4)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
        won = [k for k, refused in outcomes if not refused]
        assert len(won) == (4 if overwrite else 1), outcomes
        assert path.read_bytes() in [payloads[k] for k in won]
        assert all(f"output {path} exists (another process wrote it meanwhile)" in m for _, m in outcomes if m)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{i}.nvp" for i in range(5)]  # no temporaries left


def _as_nobody(call, *args):
    """``call(*args)`` in a child that has dropped root (which writes anywhere): its exception's type and message."""
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()

    def child():
        os.setgid(65534)
        os.setuid(65534)
        try:
            call(*args)
            results.put(("ok", ""))
        except OSError as e:
            results.put((type(e).__name__, str(e)))

    proc = fork.Process(target=child)
    proc.start()
    result = results.get(timeout=30)
    proc.join(30)
    return result


def test_an_output_that_cannot_be_written_is_found_before_the_work(tmp_path):
    """``check_output`` refuses, naming the output: a read-only folder, a link into a missing folder, a
    folder that is a file. A write that fails midway (a file-size limit) names the output too, and leaves
    no temporary file."""
    link = tmp_path / "link.nvp"
    link.symlink_to(tmp_path / "missing" / "clip.nvp")
    with pytest.raises(OutputWriteError, match=f"cannot write {link}: it links to .*missing/clip.nvp, in .* exist"):
        check_output(link, overwrite=True)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError, match="does not exist|is not a folder"):
        check_output(tmp_path / "file" / "clip.nvp")
    if os.geteuid() == 0:  # root writes into read-only folders: the check runs as nobody
        shared = Path(tempfile.mkdtemp(dir="/tmp"))
        try:
            os.chmod(shared, 0o755)
            (shared / "ro").mkdir(mode=0o555)
            kind, message = _as_nobody(check_output, shared / "ro" / "clip.nvp")
            assert (kind, message) == (
                "OutputWriteError",
                f"cannot write {shared}/ro/clip.nvp: Permission denied (in {shared}/ro)",
            )
        finally:
            shutil.rmtree(shared)
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(OutputWriteError, match="Permission denied"):
            check_output(tmp_path / "ro" / "clip.nvp")
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))  # CPython ignores SIGXFSZ: writes fail
        try:
            atomic_write(tmp_path / "big.nvp", bytes(1 << 20))
        except OSError as e:
            results.put((type(e).__name__, str(e)))

    proc = fork.Process(target=limited)
    proc.start()
    assert results.get(timeout=30) == ("OutputWriteError", f"cannot write {tmp_path}/big.nvp: File too large")
    assert not (tmp_path / "big.nvp").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    with pytest.raises(FileNotFoundError, match="the input"), atomic_output(tmp_path / "out.parquet"):
        raise FileNotFoundError("the input went away")  # the writer's own failure is not the output's
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX) or p.name == "out.parquet"]
