"""Where a command may write: never over one of its own inputs, never over an existing file unless
asked (``--overwrite``, as FFmpeg's ``-y``), and only where the write can succeed -- all found before
the command's long work starts. Writing itself is ``atomic``'s, which creates a new output exclusively
(``OutputExistsError``, defined there, when another process wrote it meanwhile)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .atomic import OutputExistsError, check_writable


class OutputIsInputError(ValueError):
    """The output names one of the command's inputs (directly or through a link)."""


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same inode (hard links), or the same target (symlinks)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> Path:
    """``output`` as a file a command may (re)write, or the reason it may not, as one line."""
    output = Path(output)
    for source in inputs:
        if same_file(output, source):
            raise OutputIsInputError(f"output {output} is the input {source}; choose another output name")
    if output.is_dir():
        raise IsADirectoryError(f"output {output} is a directory; give a file name")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {output.parent} does not exist")
    if not overwrite and os.path.lexists(output):
        raise OutputExistsError(f"output {output} exists; pass --overwrite to replace it")
    check_writable(output)
    return output
