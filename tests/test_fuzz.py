"""A short, deterministic fuzzing run (fixed seed) and the kept reproducers, each in a child process under a
memory and a time limit: crafted files are refused with NvpFormatError / ValueError, never a crash; weights
that overflow the decoder are refused by segment and frame, never answered with NaN."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fuzz package lives beside tests/
from fuzz import corpus, mutator, runner  # noqa: E402

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


def _overflowing(valid: Path, out: Path, segment: int) -> Path:
    """``valid`` with every weight and embedding of ``segment`` quantised on the grid low = step = 65504
    (float16's largest): each stored value finite, the dequantised ones 65504 to 1.7e7."""
    state = mutator.parse(valid.read_bytes())
    ops = [
        {"op": "range", "section": s, "name": None, "part": p, "value": 65504.0}
        for s in state.order
        if s.startswith(f"seg{segment}/") and s != f"seg{segment}/model"
        for p in (":low", ":step")
    ]
    out.write_bytes(mutator.apply(state, ops))
    return out


def _nvp(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from nvp_rt import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", ["hnerv", "segments"])
def test_weights_beyond_the_range_bound_are_refused_in_one_line(seed_files, name, tmp_path):
    """The probe's mutant (a segment's float16 steps at 65504): refused when the segment is decoded, by
    file, segment and tensor; `nvp run` exits 1 with one line and prints no answer."""
    files, store = seed_files
    segments = 1 if name == "hnerv" else len(corpus.SEGMENT_FRAMES)
    bad = _overflowing(files[name], tmp_path / "bad.nvp", segments - 1)
    code, out, err = _nvp("run", str(bad), "--tasks", "cls_stacked", "--store", str(store), "--device", "cpu")
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    assert f"{bad}: segment {segments - 1}: INR payload: stages." in err and "beyond +-2048" in err


@pytest.mark.parametrize("name", ["hnerv", "segments"])
def test_a_decoder_that_overflows_is_refused_naming_segment_and_frame(seed_files, name, tmp_path, monkeypatch):
    """Weights within every bound can still overflow the decoder (here: the bound lifted, as before issue 24):
    the stage whose output is not finite is named with its segment and frame, no answer holds NaN, a view
    writes nothing, and the other segments still answer."""
    from nvp_rt import Session, codec
    from nvp_rt.session import NonFiniteOutputError

    files, store = seed_files
    monkeypatch.setattr(codec, "MAX_DECODED_MAGNITUDE", float("inf"))
    last = len(corpus.SEGMENT_FRAMES) - 1 if name == "segments" else 0
    first_frame = sum(corpus.SEGMENT_FRAMES[:last]) if name == "segments" else 0
    bad = _overflowing(files[name], tmp_path / "bad.nvp", last)
    session = Session(bad, device="cpu", store=store)
    frames = range(corpus.FRAMES)
    with pytest.raises(NonFiniteOutputError, match=rf"segment {last}, frame {first_frame}: INR stage '\w+' holds NaN"):
        session.run(["cls_stacked"], frames=frames)
    with pytest.raises(NonFiniteOutputError, match=rf"segment {last}, frame {first_frame}: "):
        session.decode(frames)
    if name == "segments":  # the segments before still answer, with finite values
        assert np.isfinite(session.run(["cls_stacked"], frames=range(first_frame))["cls_stacked"].logits).all()
    code, out, err = _nvp("run", str(bad), "--tasks", "cls_stacked", "--store", str(store), "--device", "cpu")
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and f"segment {last}, frame {first_frame}" in err
    view = tmp_path / "view.mp4"
    code, _, err = _nvp("view", str(bad), "-o", str(view), "--store", str(store))
    assert code == 1 and len(err.splitlines()) == 1 and not view.exists() and list(tmp_path.iterdir()) == [bad]


def test_the_worker_sees_a_nan_anywhere_in_an_answer(seed_files, rng):
    """The fuzz worker's check, on real answers with one value made NaN at a time."""
    from fuzz import worker

    from nvp_rt import Session

    files, store = seed_files
    answers = Session(files["segments"], device="cpu", store=store).run(["cls_stacked"], frames=[0, 4])
    worker.check_answers(answers, [0, 4])  # finite: nothing raised
    answer = answers["cls_stacked"]
    row, column = (
        int(np.random.default_rng().integers(2)),
        int(np.random.default_rng().integers(answer.logits.shape[1])),
    )
    answer.logits[row, column] = np.nan
    with pytest.raises(worker.NonFiniteAnswer):
        worker.check_answers(answers, [0, 4])
    answer.logits[row, column] = 0.0
    answer.top_k[row][0] = (*answer.top_k[row][0][:2], float("inf"))
    with pytest.raises(worker.NonFiniteAnswer):
        worker.check_answers(answers, [0, 4])
