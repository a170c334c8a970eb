"""What every nvp command line shares, and how other packages add subcommands to `nvp`.

Both the runtime's `nvp` and the export side's `nvp-export` report user mistakes as one
line (``UserError``, ``run_reporting_errors``) and set OpenMP's wait policy before torch
loads (``passive_openmp_waits``). The export side adds its torch-dependent subcommands
(`nvp encode`, `nvp bench`) through the entry-point group ``nvp.commands``, declared in
pyproject.toml: the runtime finds them here by name, so it never imports the export side. A
plugin that fails to import costs only its own command (``UnloadableCommand``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .backends import BackendUnavailableError
from .device import CudaUnavailableError

COMMANDS_GROUP = "nvp.commands"

# An entry point of the group names a function that adds its subcommand to `nvp`:
# ``add(subparsers)`` calls ``subparsers.add_parser(name, ...)`` and sets ``run=callable(args)``.
# Its module is imported for every `nvp` call (to list the commands): it must not import torch.
AddCommand = Callable[["argparse._SubParsersAction[Any]"], None]


class UserError(ValueError):
    """A mistake in how nvp was called; reported as one line."""


def registered_commands() -> dict[str, AddCommand]:
    """The subcommands installed packages declare under ``nvp.commands``, by command name; one whose
    plugin fails to import is an ``UnloadableCommand`` saying why."""
    commands: dict[str, AddCommand] = {}
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            commands[ep.name] = ep.load()
        except Exception as e:  # whatever a plugin's import raises, the other commands must still run
            commands[ep.name] = UnloadableCommand(ep.name, _load_failure(ep, e))
    return commands


def _load_failure(ep: EntryPoint, error: Exception) -> str:
    dist = f", from {ep.dist.name} {ep.dist.version}" if ep.dist else ""
    why = ": ".join([type(error).__name__, *str(error).splitlines()[:1]])
    return f"plugin {ep.value!r}{dist} failed to import: {why}"


@dataclass(frozen=True)
class UnloadableCommand:
    """The subcommand of a plugin that failed to import: running it fails with ``message``, one line;
    every other command runs as usual, after that line as a warning (``warn_unloadable``)."""

    name: str
    reason: str  # names the plugin and its error

    @property
    def message(self) -> str:
        return f"nvp {self.name} is unavailable: {self.reason}"

    def __call__(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        add_unavailable_command(subparsers, self.name, f"unavailable: {self.reason}", self.message)


def warn_unloadable(commands: dict[str, AddCommand], running: str) -> None:
    """One line on stderr per command of ``commands`` whose plugin failed to import, but ``running``'s own."""
    for name, add in commands.items():
        if isinstance(add, UnloadableCommand) and name != running:
            print(f"nvp: warning: {add.message}", file=sys.stderr)


def add_unavailable_command(subparsers: argparse._SubParsersAction[Any], name: str, summary: str, error: str) -> None:
    """A subcommand that cannot run here: whatever follows it, --help included, gets ``error`` in one line."""
    command = subparsers.add_parser(name, help=summary, add_help=False, prefix_chars="\0")  # no option characters

    def run(args) -> None:
        raise UserError(error)

    command.add_argument("arguments", nargs="*")
    command.set_defaults(run=run)


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' as (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def parse_frame_range(text: str) -> tuple[int, int | None, int]:
    """'a:b:s' with any part optional, like a Python slice over frame indices."""
    parts = text.split(":")
    try:
        if len(parts) > 3:
            raise ValueError
        values = [int(p) if p else None for p in parts] + [None] * (3 - len(parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:STEP, got {text!r}") from None
    start, stop, step = values[0] or 0, values[1], 1 if values[2] is None else values[2]
    if start < 0 or step < 1 or (stop is not None and stop <= start):
        raise argparse.ArgumentTypeError(f"bad frame range {text!r}")
    return start, stop, step


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-y", "--overwrite", action="store_true", help="replace an existing output")


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="model store folder (default: $NVP_STORE, else ~/.cache/nvp)")


def passive_openmp_waits() -> None:
    """Make idle OpenMP threads sleep rather than spin, for training commands; call before torch loads.

    Where other jobs share the cores, spinning threads starve the one holding a barrier (measured on 2
    shared cores: an HNeRV training step took 2.6-5x longer). A user's OMP_WAIT_POLICY wins. The
    library itself leaves the policy alone: spinning keeps the kernels' per-call latency low on
    dedicated cores (passive waits made a 0.06 ms adapter call 0.14 ms with 2 threads).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_reporting_errors(prog: str, run: Callable[[Any], object], args: Any) -> int:
    """Run a command; a user-facing failure becomes one line on stderr and exit code 1.

    User-facing failures (bad or tampered files, untileable sizes, paths, fits that collapse, missing
    model-store entries, a device or backend this machine lacks) are raised as ValueError / OSError
    subclasses or the two device errors, with a message meant for people; anything else is a bug and
    keeps its traceback.
    """
    try:
        run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, CudaUnavailableError, BackendUnavailableError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    return 0
