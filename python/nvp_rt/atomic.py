"""Atomic file replacement: a reader sees the old file or the whole new one, never a part.

A write goes to a temporary file beside the target, named ``.<target>.<pid>.<token>.nvp-tmp``,
is fsynced and renamed over the target, or, where replacing was not asked for, hard-linked to the
target's name, which fails if a file of that name exists (so two writers of one new output cannot
both succeed). :func:`check_writable` finds, before the work that produces an output, that it could
not be written; a failure while writing names the output, not the temporary file. Rewriting keeps
the target's permission bits; a new file gets the ones the umask allows (0666 & ~umask, as
``open()`` would). A symbolic link is followed: its target is rewritten and the link kept.
Temporary files of writers that died (kill -9, power loss) are removed by the next write into the
same folder; files of live writers are left alone.

:func:`exclusive_lock` serialises read-modify-write cycles on one file between processes
(``flock`` on the file itself), e.g. two ``nvp-export`` runs adding routes at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".nvp-tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")
_swept: set[Path] = set()  # folders whose stale temporaries this process has removed
# A write that fails for one of these failed because of where it writes: a file-size limit, a full disk or
# quota, a read-only filesystem, an I/O error.
_WRITE_FAILURES = {errno.EFBIG, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def resolve(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` should replace: symbolic links followed."""
    return Path(os.path.realpath(path))


def temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writer process no longer exists; returns them."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
                removed.append(folder / name)
    return removed


def sweep(folder: Path) -> None:
    """Remove stale temporaries from ``folder``, once per process."""
    if folder not in _swept:
        remove_stale_temps(folder)
        _swept.add(folder)


class OutputExistsError(FileExistsError):
    """The output exists and replacing it was not asked for."""


class OutputWriteError(OSError):
    """An output cannot be written (its folder missing, read-only or full, a file-size limit...); the
    message names the output, never the temporary file beside it."""


def check_writable(path: str | os.PathLike) -> Path:
    """That a write to ``path`` can succeed, found before the work that produces it: the folder of the file
    it names (symbolic links followed) exists and takes a new file. Returns that file."""
    target = resolve(path)
    if not target.parent.is_dir():
        where = f"it links to {target}, in" if os.path.islink(path) else "its folder"
        problem = "is not a folder" if target.parent.exists() else "does not exist"
        raise OutputWriteError(f"cannot write {path}: {where} {target.parent} {problem}")
    probe = temp_path(target)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise OutputWriteError(f"cannot write {path}: {e.strerror} (in {target.parent})") from None
    probe.unlink()
    return target


def _mode_for(target: Path) -> int | None:
    """The permission bits to keep: the existing target's; None for a new file (umask applies)."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return None


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], object], overwrite: bool = True) -> Path:
    """Replace ``path`` with what ``write`` writes into an open binary file; returns the file written.
    Without ``overwrite`` the file is created exclusively: OutputExistsError if it exists, even when
    another process created it while this one was writing."""
    with atomic_output(path, overwrite) as tmp, open(tmp, "wb") as f:
        write(f)
    return resolve(path)


def atomic_write(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and rename."""
    return atomic_write_with(path, lambda f: f.write(data), overwrite)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path for a library that writes files by name (FFmpeg); renamed over ``path`` on
    success with the permission bits :func:`atomic_write` gives (created exclusively without
    ``overwrite``), removed on failure. A failure to write names ``path``, not the temporary file."""
    target = resolve(path)
    if target.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    sweep(target.parent)
    tmp = temp_path(target)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for open()
    except OSError as e:
        raise OutputWriteError(f"cannot write {path}: {e.strerror} (in {target.parent})") from None
    try:
        yield tmp
        mode = _mode_for(target)
        if mode is not None:
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        install(tmp, path, overwrite)
    except OutputExistsError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in _WRITE_FAILURES or str(tmp) in f"{e.filename} {e}":  # said of the output, not the temporary
            raise OutputWriteError(
                f"cannot write {path}: {e.strerror or str(e).replace(str(tmp), str(path))}"
            ) from None
        raise  # the block's own failure (e.g. reading what it writes)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def install(source: Path, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Put the finished file ``source`` (in the target's filesystem) in place of ``path``: a rename over it,
    or (without ``overwrite``) a hard link that fails when the target exists, so of two writers of one new
    file exactly one succeeds and the other gets OutputExistsError (``source`` is then left where it is)."""
    target = resolve(path)
    if overwrite:
        os.replace(source, target)
        return
    exists = OutputExistsError(
        f"output {path} exists (another process wrote it meanwhile); pass --overwrite to replace it"
    )
    try:
        os.link(source, target)
    except FileExistsError:
        raise exists from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        # A filesystem without hard links (FAT, some network mounts): claim the name exclusively, then rename
        # over the claim (a reader may see the file empty for that moment).
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise exists from None
        os.replace(source, target)
        return
    source.unlink()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on the existing file ``path`` (its link target) while the block runs.

    Writers replace the file by rename, so the lock is taken on the inode the path names once the
    lock is held: a process that waited on a file another one replaced locks the new file instead.
    """
    target = resolve(path)
    while True:
        fd = os.open(target, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(target).st_ino:
                yield target
                return
        finally:
            os.close(fd)  # closing releases the lock


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync directories; the file itself is complete
