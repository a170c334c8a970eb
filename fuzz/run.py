"""The long fuzzing run: ``python -m fuzz.run --mutants 100000 [--seed 1] [--work DIR]``.

Builds the seed corpus (``fuzz.corpus``; torch, once per work folder), then runs the mutants of
``--seed`` through one child process at a time (``fuzz.runner``), printing counts every
``--every`` mutants and appending the failures' reproducers (seed, index, operations) as JSON
lines to ``WORK/failures.jsonl`` as they are found. Exit status 1 when any failure was found.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nvp_rt.arguments import Parser, integer, real

from . import corpus
from .runner import Limits, Report, fuzz


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m fuzz.run", description=__doc__.splitlines()[0])
    p.add_argument("--mutants", type=integer(1), default=100_000)
    p.add_argument("--start", type=integer(0), default=0, help="first mutant index (to resume a run)")
    p.add_argument("--seed", type=integer(0), default=1)
    p.add_argument("--file", choices=corpus.FILES, default="segments", help="the seed file to mutate")
    p.add_argument("--work", type=Path, default=Path("bench/results/fuzz"), help="corpus and results folder")
    p.add_argument("--seconds", type=real(0, 600, low_open=True), default=2.0, help="time limit per mutant")
    p.add_argument("--rss-mb", type=real(1), default=1024.0, help="peak RSS a mutant may reach")
    p.add_argument("--every", type=integer(1), default=1000, help="print counts every this many mutants")
    args = p.parse_args(argv)
    files = {name: args.work / f"{name}.nvp" for name in corpus.FILES}
    if not all(f.is_file() for f in files.values()):
        files = corpus.build(args.work)
    failures = args.work / "failures.jsonl"
    written = 0

    def save_failures(report: Report) -> None:
        nonlocal written
        with failures.open("a") as f:
            for failure in report.failures[written:]:
                f.write(json.dumps(failure) + "\n")
        written = len(report.failures)

    def progress(report: Report) -> None:
        save_failures(report)
        print(report.summary(), flush=True)

    limits = Limits(seconds=args.seconds, rss_mb=args.rss_mb)
    report = fuzz(
        files[args.file],
        args.work / "store",
        args.seed,
        range(args.start, args.start + args.mutants),
        limits,
        progress,
        args.every,
    )
    save_failures(report)
    print(report.summary())
    if report.failures:
        print(f"{len(report.failures)} failure(s); reproducers in {failures}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
