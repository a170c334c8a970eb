"""Command-line parsing that refuses what makes no sense with one line: value types for
``--top-k 0``, ``--crf 99``, ``--epochs -1``, ``--lr nan``, and a parser whose errors are a single
line (argparse's own prints the usage first)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: ...``, exit 2); ``--help`` still shows the usage.
    Subcommand parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in low..high (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def real(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high], or (low, high] with ``low_open``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return value

    parse.__name__ = "number"
    return parse
