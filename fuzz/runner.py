"""Run mutants through child processes with memory and time limits, and count the outcomes.

Outcomes: ``ok``; ``format_error`` (NvpFormatError), ``value_error`` (another ValueError),
``store_missing`` (the mutant names graphs the model store lacks: an OSError a user sees as one
line) -- these are the expected refusals; and the failures: ``other_exception`` (any other
exception), ``abort`` (the child died: a signal, e.g. SIGABRT on a failed allocation under the
memory limit), ``hang`` (no answer within the time limit), ``rss`` (peak RSS over the bound),
``non_finite`` (an answer value or a decoded frame holds NaN or Inf), ``slow_open`` and ``open_rss``
(``NvpFile.open`` alone over its CPU time or added-memory bound).
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import mutator

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ("ok", "format_error", "value_error", "store_missing")
FAILURES = ("other_exception", "abort", "hang", "rss", "non_finite", "slow_open", "open_rss")


@dataclass(frozen=True)
class Limits:
    seconds: float = 2.0  # CPU time per mutant (the child runs one thread)
    memory_bytes: int = 4 << 30  # RLIMIT_AS of a child (address space: ONNX Runtime reserves more than it uses)
    rss_mb: float = 1024.0  # peak resident memory one mutant may reach
    open_seconds: float = 1.0  # CPU time of ``NvpFile.open`` alone
    open_rss_mb: float = 300.0  # resident memory ``NvpFile.open`` alone may add


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)  # outcome, detail, ops
    peak_rss_mb: float = 0.0
    slowest_s: float = 0.0
    slowest_open_s: float = 0.0
    slowest_open_index: int | None = None  # the mutant to regenerate to see why
    peak_open_rss_mb: float = 0.0
    mutants: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.mutants / self.seconds if self.seconds else 0.0
        counts = ", ".join(f"{k} {self.counts.get(k, 0)}" for k in (*EXPECTED, *FAILURES))
        return (
            f"{self.mutants} mutants in {self.seconds:.0f} s ({rate:.1f}/s): {counts}; "
            f"peak RSS {self.peak_rss_mb:.0f} MB, slowest {self.slowest_s:.2f} s; "
            f"opens: slowest {self.slowest_open_s:.3f} s of CPU (mutant {self.slowest_open_index}), "
            f"at most {self.peak_open_rss_mb:.0f} MB added"
        )


class Worker:
    """One child process (``fuzz.worker``) under RLIMIT_AS, restarted after it dies or hangs."""

    def __init__(self, store: Path, limits: Limits, warmup: Path):
        self.store, self.limits, self.warmup = store, limits, warmup
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        memory = self.limits.memory_bytes

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fuzz.worker", str(self.store)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=limit,
        )
        self._ask(self.warmup, timeout=300)  # compiles the graphs once, outside any mutant's time

    def _cpu_seconds(self) -> float:
        """CPU time the child has used (user + system), from /proc."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _ask(self, path: Path, timeout: float) -> dict | None:
        """The child's answer, or None once it has spent ``timeout`` seconds of CPU on this file (or 15 x
        ``timeout`` of wall time): on shared cores a slow answer is not yet a hang."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        cpu_before, started = self._cpu_seconds(), time.perf_counter()
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while not selector.select(timeout / 4):
                if self._cpu_seconds() - cpu_before > timeout or time.perf_counter() - started > 15 * timeout:
                    return None
        finally:
            selector.close()
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {"outcome": "abort", "detail": f"exit {self.proc.wait()}"}

    def run(self, path: Path) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            answer = self._ask(path, self.limits.seconds)
        except BrokenPipeError:
            assert self.proc is not None
            answer = {"outcome": "abort", "detail": f"exit {self.proc.wait()}"}
        if answer is None:
            self.stop()
            return {"outcome": "hang", "detail": f"over {self.limits.seconds} s of CPU without an answer"}
        if answer["outcome"] == "abort":
            self.proc = None
        elif answer["peak_rss_mb"] > self.limits.rss_mb:
            answer = {**answer, "outcome": "rss", "detail": f"peak RSS {answer['peak_rss_mb']:.0f} MB"}
        elif answer["open_seconds"] > self.limits.open_seconds:
            answer = {**answer, "outcome": "slow_open", "detail": f"open took {answer['open_seconds']:.2f} s of CPU"}
        elif answer["open_rss_mb"] > self.limits.open_rss_mb:
            answer = {**answer, "outcome": "open_rss", "detail": f"open added {answer['open_rss_mb']:.0f} MB of RSS"}
        return answer

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def fuzz(
    valid: Path,
    store: Path,
    seed: int,
    indices: Iterable[int],
    limits: Limits = Limits(),
    progress: Callable[[Report], None] | None = None,
    progress_every: int = 1000,
) -> Report:
    """Mutants ``indices`` of run ``seed`` of the file ``valid``, one child process at a time."""
    report, data = Report(), valid.read_bytes()
    worker = Worker(store, limits, valid)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nvp-fuzz-") as tmp:
        path = Path(tmp) / "mutant.nvp"
        try:
            for index in indices:
                try:
                    blob, ops = mutator.mutant(data, seed, index)
                except Exception as e:  # the mutator's own bug: counted and reported, the run goes on
                    report.counts["mutator_error"] += 1
                    report.failures.append(
                        {"seed": seed, "index": index, "outcome": "mutator_error", "detail": repr(e)[:300], "ops": []}
                    )
                    continue
                path.write_bytes(blob)
                answer = worker.run(path)
                report.mutants += 1
                report.counts[answer["outcome"]] += 1
                report.peak_rss_mb = max(report.peak_rss_mb, answer.get("peak_rss_mb", 0.0))
                report.slowest_s = max(report.slowest_s, answer.get("seconds", 0.0))
                if answer.get("open_seconds", 0.0) > report.slowest_open_s:
                    report.slowest_open_s, report.slowest_open_index = answer["open_seconds"], index
                report.peak_open_rss_mb = max(report.peak_open_rss_mb, answer.get("open_rss_mb", 0.0))
                if answer["outcome"] in FAILURES:
                    report.failures.append(
                        {
                            "seed": seed,
                            "index": index,
                            "outcome": answer["outcome"],
                            "detail": answer.get("detail", ""),
                            "ops": ops,
                        }
                    )
                if progress and report.mutants % progress_every == 0:
                    report.seconds = time.perf_counter() - started
                    progress(report)
        finally:
            worker.stop()
    report.seconds = time.perf_counter() - started
    return report


def run_ops(valid: Path, store: Path, cases: list[list[dict]], limits: Limits = Limits()) -> list[dict]:
    """Mutants given by their operations (kept reproducers), in one child in turn: their answers."""
    worker = Worker(store, limits, valid)
    answers = []
    with tempfile.TemporaryDirectory(prefix="nvp-fuzz-") as tmp:
        path = Path(tmp) / "mutant.nvp"
        try:
            for ops in cases:
                path.write_bytes(mutator.apply(mutator.parse(valid.read_bytes()), ops))
                answers.append(worker.run(path))
        finally:
            worker.stop()
    return answers
