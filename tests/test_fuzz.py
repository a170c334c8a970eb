"""A short, deterministic fuzzing run (fixed seed) and the kept reproducers, each in a child process under a
memory and a time limit: crafted files are refused with NvpFormatError / ValueError, never a crash."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fuzz package lives beside tests/
from fuzz import corpus, runner  # noqa: E402

REPRODUCERS = Path(__file__).with_name("fuzz_reproducers.json")
pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory, model_store):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        files = corpus.build(tmp_path_factory.mktemp("fuzz"), model_store, tasks=("cls_stacked", "act"))
    finally:
        torch.set_num_threads(threads)
    return files, model_store


def test_a_deterministic_fuzzing_run_finds_no_failure(seed_files):
    """Mutants of the three-segment file."""
    files, store = seed_files
    report = runner.fuzz(files["segments"], store, seed=20261129, indices=range(300))
    assert report.failures == [], report.failures[:3]
    assert report.mutants == 300 and report.peak_rss_mb <= runner.Limits().rss_mb
    # The mutants reach past the container's checks: some are still valid files, most are refused by name.
    assert report.counts["ok"] >= 5 and report.counts["format_error"] >= 200, report.summary()


def test_kept_reproducers_are_refused(seed_files):
    """Each file the fuzzers (and the issue's probe) found, regenerated from its operations applied to its
    seed file (``file``; the three-segment one unless named)."""
    files, store = seed_files
    cases = json.loads(REPRODUCERS.read_text())
    wrong = []
    for name in {c.get("file", "segments") for c in cases}:
        mine = [c for c in cases if c.get("file", "segments") == name]
        answers = runner.run_ops(files[name], store, [c["ops"] for c in mine])
        wrong += [
            (c["name"], a)
            for c, a in zip(mine, answers)
            if a["outcome"] != c["outcome"] or c["words"] not in a["detail"]
        ]
    assert not wrong, wrong
