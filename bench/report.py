"""What every bench script shares: its command line's common options, the machine it measured, and
writing a run's JSON, markdown and chart into its results folder.

    from report import Run, make_parser
    args = make_parser(__doc__, "encode", threads=2).parse_args()   # --out (bench/results/encode), --threads
    run = Run(args.out, "encode", threads=args.threads)
    run.write({"rows": rows}, markdown_table, figure)      # encode.json, encode.md, encode.png

Each JSON holds the command that reproduces it, the machine and the wall time so far; each
markdown ends with a line saying the same. Files are written atomically, so a run cut short (or
one that writes after every point) leaves complete files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import nvp_rt
from nvp_export.charts import save_png
from nvp_rt import ops
from nvp_rt.atomic import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def make_parser(doc: str | None, results: str = "", threads: int | None = None) -> argparse.ArgumentParser:
    """A bench script's parser: the first paragraph of its docstring ``doc`` as the description, --out
    (default ``bench/results/<results>``) and, with a default ``threads``, --threads."""
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=RESULTS / results, help="results folder (default: %(default)s)")
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help="torch threads (default: %(default)s)")
    return p


def command() -> str:
    """The command line that ran this script, as a shell would take it back."""
    return shlex.join(["python", sys.argv[0], *sys.argv[1:]])


def machine(threads: int | None = None) -> dict[str, Any]:
    """The machine a run measures: what ``nvp bench`` records (CPU, cores, load, library versions; the
    ``threads`` the run uses, None where the script says), the kernels' instruction set, nvp's
    version and the GPU, if torch sees one."""
    import torch  # here: a script's child processes parse their options without loading torch

    from nvp_export.benchmark.report import machine as described_machine

    info = {**described_machine(threads or 0), "threads": threads, "kernel_isa": ops.cpu_capability()}
    info["nvp"] = nvp_rt.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: dict[str, Any]) -> str:
    """``machine``'s description in one line, for a markdown table's caption."""
    threads = f", {info['threads']} thread{'s' * (info['threads'] != 1)}" if info["threads"] else ""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (
        f"{info['cpu']}, {info['cores_visible']} logical CPUs{threads}, load average {info['load_before'][0]:.1f} "
        f"at start{gpu}; torch {info['torch']}, ONNX Runtime {info['onnxruntime']}"
    )


class Run:
    """One run of a bench script: its results folder, and the machine and command its figures come from."""

    def __init__(self, out: Path, name: str, threads: int | None = None):
        self.out, self.name = Path(out), name
        self.out.mkdir(parents=True, exist_ok=True)
        self.machine = machine(threads)
        self.command = command()
        self.started = time.perf_counter()

    def write(self, result: dict[str, Any], markdown: str | None = None, figure: Any = None) -> None:
        """``<name>.json`` (``result`` with the command, machine and wall time), ``<name>.md`` (``markdown``
        and a line naming the machine and command) and ``<name>.png`` (the matplotlib ``figure``), as given."""
        seconds = time.perf_counter() - self.started
        record = {"command": self.command, "machine": self.machine, "wall_seconds": seconds, **result}
        atomic_write(self.out / f"{self.name}.json", json.dumps(record, indent=1, default=str).encode())
        if markdown is not None:
            footer = f"Machine: {machine_line(self.machine)}. Command: `{self.command}` ({seconds:.0f} s)."
            atomic_write(self.out / f"{self.name}.md", f"{markdown.rstrip()}\n\n{footer}\n".encode())
        if figure is not None:
            save_png(figure, self.out / f"{self.name}.png")
