"""Writes that never lose data: modes follow the umask, symlinks are followed, stale temporaries of dead
writers are removed, and concurrent read-modify-writes of one .nvp keep every writer's route."""

import multiprocessing
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from nvp_rt.atomic import TEMP_SUFFIX, atomic_output, atomic_write
from nvp_rt.nvpfile import NvpFile, NvpFormatError, update_routes
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
