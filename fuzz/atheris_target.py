"""Coverage-guided fuzzing of the reader with atheris (libFuzzer for Python):

    NVP_FUZZ_STORE=WORK/store python -m fuzz.atheris_target WORK/atheris_corpus WORK/segments.nvp WORK/v1.nvp \\
        -atheris_runs=100000 -timeout=2 -rss_limit_mb=1024 -max_len=400000

Each input is a whole file, run as ``fuzz.worker.exercise`` runs it (open, Session, every task,
decode). Half the mutations are the structure-aware ones of ``fuzz.mutator`` (checksums fixed up,
so coverage reaches past the container), half libFuzzer's byte-level ones. Anything but an
NvpFormatError / ValueError / missing-graph refusal is a crash that libFuzzer reports and saves.
Coverage covers the Python runtime (``nvp_rt``); the C++ extension would need a build with
``-fsanitize=fuzzer-no-link`` to be instrumented, which the project's wheel is not.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["nvp_rt"]):  # every module a query reads a file through
    import nvp_rt.codec
    import nvp_rt.nvpfile
    import nvp_rt.prefix
    import nvp_rt.results
    import nvp_rt.schema
    import nvp_rt.session  # noqa: F401
    from nvp_rt.store import ModelStore, StoreEntryMissing

from . import mutator
from .worker import exercise

STORE = ModelStore(os.environ.get("NVP_FUZZ_STORE", "bench/results/fuzz/store"))
_FILE = Path(tempfile.mkdtemp(prefix="nvp-atheris-")) / "input.nvp"


def test_one_input(data: bytes) -> None:
    _FILE.write_bytes(data)
    try:
        exercise(str(_FILE), STORE)
    except (ValueError, StoreEntryMissing):  # refusals with a message: what a crafted file should get
        pass


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    if seed % 2:
        try:
            out, _ = mutator.mutant(data, seed, 0)
            if len(out) <= max_size:
                return out
        except Exception:  # not a parsable .nvp any more: fall back to byte-level mutation
            pass
    return atheris.Mutate(data, max_size)


def main() -> None:
    np.seterr(all="ignore")
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
