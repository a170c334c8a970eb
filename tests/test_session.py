"""nvp_rt.Session against the torch reference path, for every exportable task kind and both INR families."""

import subprocess
import sys
import textwrap
import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch

import nvp_rt
from nvp_export.backbone import classify
from nvp_export.onnx_export import export_route_graphs
from nvp_export.route.multipathway import PathwayAdapter, decode_clips
from nvp_export.zoo import load_backbone
from nvp_rt.nvpfile import NvpFormatError, Route, replace_routes, stored_route
from nvp_rt.session import UnknownTaskError
from nvp_rt.store import ModelStore, StoreEntryMissing
from random_video import random_inr, write_video

pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")

FRAMES, HEIGHT, WIDTH = 8, 32, 48
# task -> (backbone builder, INR tap, injection point, adapter hidden width)
ROUTES = {
    "cls": (lambda: load_backbone("efficientnet_lite0"), "block2", "stage3", None),
    "cls_stacked": (lambda: load_backbone("efficientnet_lite0"), "block3", "stage2", 8),
    "det": (lambda: load_backbone("detr_r50", reduced=True), "block3", "stage2", None),
    "act": (lambda: load_backbone("slowfast_r50", reduced=True), "block2", "res3", None),
    "act_i3d": (lambda: load_backbone("i3d_r50", reduced=True), "block3", "res3", None),
    "seg": (lambda: load_backbone("segformer_b0", reduced=True), "block1", "stage2", None),
    "cap": (lambda: load_backbone("blip", reduced=True), "block2", "layer1", None),
}


def _random_inr(family: str, seed: int):
    return random_inr(family, FRAMES, HEIGHT, WIDTH, seed)


@pytest.fixture(scope="module")
def video(tmp_path_factory, shared_store):
    """An HNeRV video with a route of every kind (random adapters: equality, not accuracy, is under test)."""
    d = tmp_path_factory.mktemp("session")
    store = shared_store
    inr = write_video(d / "clip.nvp", _random_inr("hnerv", 0))
    backbones, adapters, routes = {}, {}, []
    for task, (build, tap, point, hidden) in ROUTES.items():
        bb = backbones[task] = build()
        torch.manual_seed(len(routes))
        adapter = adapters[task] = PathwayAdapter(inr.tap_shapes()[tap][0], bb.point(point), hidden).eval()
        key = export_route_graphs(inr, bb, point, store, stacked=hidden is not None)
        arrays, meta = adapter.to_route()
        route = stored_route(Route(task, key, tap, point, arrays, {"kind": bb.task, **meta}))
        adapter.load_route(route.arrays)  # the reference runs the adapter the file holds (8-bit)
        routes.append(route)
    replace_routes(d / "clip.nvp", routes)
    return d, store, inr, backbones, adapters


def torch_reference(inr, backbone, adapter, task, frames):
    _, tap, point, _ = ROUTES[task]
    idx = torch.as_tensor(frames)
    clip = backbone.preprocess.num_frames
    with torch.no_grad():
        taps = decode_clips(inr, idx.reshape(-1, clip) if clip > 1 else idx, tap)
        out = backbone.suffix(adapter(taps), point)
    return [o.numpy() for o in out] if isinstance(out, (tuple, list)) else [out.numpy()]


def assert_close(a, b, rtol=1e-4):
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= rtol * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("task", list(ROUTES))
def test_session_matches_the_torch_path(video, task, rng):
    d, store, inr, backbones, adapters = video
    session = nvp_rt.Session(d / "clip.nvp", store=store)
    clip = backbones[task].preprocess.num_frames
    frames = list(range(FRAMES)) if clip > 1 else rng.choice(FRAMES, 3, replace=False).tolist()
    answer = session.run([task], frames=frames)[task]
    ref = torch_reference(inr, backbones[task], adapters[task], task, frames)
    kind = backbones[task].task
    if kind == "captioning":  # the runtime's greedy loop over the exported text-decoder step = generate()
        special = backbones[task].special_ids
        assert answer.token_ids == [[int(i) for i in row if i not in special] for row in ref[0]]
        assert any(answer.token_ids) and answer.texts is None  # random weights: ids, no vocabulary offline
        return
    assert_close(answer.logits, ref[0])
    if kind in ("classification", "action"):
        expected = classify(torch.from_numpy(ref[0]), backbones[task].labels)
        assert [[c for c, _, _ in row] for row in answer.top_k] == [[c for c, _, _ in row] for row in expected]
    elif kind == "detection":
        assert_close(answer.raw_boxes, ref[1])
        # The reference post-processing on the Session's raw outputs: same boxes in the video's pixels.
        expected = backbones[task].postprocess(
            (torch.from_numpy(answer.logits), torch.from_numpy(answer.raw_boxes)), (HEIGHT, WIDTH), threshold=0.0
        )
        low = nvp_rt.results.postprocess(
            "detection",
            {"logits": answer.logits, "boxes": answer.raw_boxes},
            {"labels": backbones[task].labels, "threshold": 0.0},
            frames,
            (HEIGHT, WIDTH),
        )
        for got, want in zip(low.detections, expected):
            np.testing.assert_allclose(got.boxes, want.boxes.numpy(), rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(got.labels, want.labels.numpy())
    elif kind == "segmentation":
        masks = backbones[task].postprocess(torch.from_numpy(answer.logits), (HEIGHT, WIDTH)).numpy()
        assert answer.masks.shape == (len(frames), HEIGHT, WIDTH)
        assert (answer.masks == masks).mean() > 0.999  # argmax ties between float32 paths may differ


@pytest.mark.parametrize("family", ["hnerv", "nerv"])
def test_decode_matches_the_torch_decoder(tmp_path, family, rng):
    store = ModelStore(tmp_path / "store")
    inr = write_video(tmp_path / "v.nvp", _random_inr(family, int(rng.integers(1 << 16))))
    from nvp_export.onnx_export import export_inr_graphs

    export_inr_graphs(inr, store)
    session = nvp_rt.Session(tmp_path / "v.nvp", store=store)
    frames = rng.choice(FRAMES, 4, replace=False)
    taps = session._decode_prefix(frames, "rgb", set(session.inr.tap_names), _clock())
    with torch.no_grad():
        ref = inr.decode(torch.from_numpy(frames))
    for name in inr.tap_names:
        assert_close(taps[name], ref[name].numpy(), rtol=1e-5)
    pixels = session.decode(frames)
    assert np.abs(pixels.astype(int) - inr.render(frames)).max() <= 1  # rounding at exact .5 steps only


def _clock():
    from nvp_rt.session import _Clock

    return _Clock()


def test_shared_prefix_decodes_once_to_the_deepest_tap(video, monkeypatch):
    d, store, *_ = video
    session = nvp_rt.Session(d / "clip.nvp", store=store)
    stages_run = []
    for name, graph in list(session._graphs.items()):

        class Counting:
            def __init__(self, graph, name):
                self.graph, self.name = graph, name

            def run(self, *args):
                stages_run.append(self.name)
                return self.graph.run(*args)

            def __getattr__(self, attribute):
                return getattr(self.graph, attribute)

        session._graphs[name] = Counting(graph, name)
    session.run(["cls", "det", "seg"], frames=[1, 2])
    assert stages_run == ["stem", "block1", "block2", "block3"]  # det's block3 is deepest; cls, seg reuse


def test_concurrent_queries_equal_serial(video, rng):
    d, store, *_ = video
    session = nvp_rt.Session(d / "clip.nvp", store=store)
    queries = [rng.choice(FRAMES, 2, replace=False).tolist() for _ in range(100)]
    serial = [session.run(["cls", "det"], frames=q) for q in queries]
    results, errors = [[None] * len(queries) for _ in range(8)], []

    def worker(t):
        try:
            for i, q in enumerate(queries):
                results[t][i] = session.run(["cls", "det"], frames=q)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for per_thread in results:
        for got, want in zip(per_thread, serial):
            np.testing.assert_array_equal(got["cls"].logits, want["cls"].logits)
            np.testing.assert_array_equal(got["det"].logits, want["det"].logits)


def test_a_second_video_of_the_architecture_compiles_nothing(video, tmp_path):
    d, store, inr, *_ = video
    first = nvp_rt.Session(d / "clip.nvp", store=store)
    compiled = len(first._sessions._sessions)
    other = _random_inr("hnerv", 7)
    other.load_state_dict({k: v for k, v in other.state_dict().items()})
    write_video(tmp_path / "other.nvp", other)
    second = nvp_rt.Session(tmp_path / "other.nvp", store=store)
    assert second._sessions is first._sessions and len(second._sessions._sessions) == compiled
    assert not np.array_equal(second.decode([0]), first.decode([0]))


def test_bad_queries_get_clear_errors(video, tmp_path):
    d, store, *_ = video
    session = nvp_rt.Session(d / "clip.nvp", store=store)
    with pytest.raises(UnknownTaskError, match="no route for task"):
        session.run(["nope"], frames=[0])
    with pytest.raises(IndexError, match="out of range"):
        session.run(["cls"], frames=[FRAMES])
    with pytest.raises(ValueError, match="clips of 8"):
        session.run(["act"], frames=[0, 1, 2])
    with pytest.raises(StoreEntryMissing, match="has no inr"):
        nvp_rt.Session(d / "clip.nvp", store=ModelStore(tmp_path / "empty"))
    data = (d / "clip.nvp").read_bytes()
    (tmp_path / "cut.nvp").write_bytes(data[: len(data) // 2])
    with pytest.raises(NvpFormatError, match="truncated"):
        nvp_rt.Session(tmp_path / "cut.nvp", store=store)
    if not nvp_rt.cuda_is_available():
        with pytest.raises(nvp_rt.CudaUnavailableError):
            nvp_rt.Session(d / "clip.nvp", store=store, device="cuda")


def test_a_session_lifetime_never_imports_torch(video):
    d, store, *_ = video
    script = textwrap.dedent(f"""
        import sys
        import nvp_rt
        s = nvp_rt.Session({str(d / "clip.nvp")!r}, store={str(store.root)!r})
        out = s.run(["cls", "det", "act", "seg", "cap"], frames=range({FRAMES}))
        s.decode([0, 1])
        assert out["cls"].top_k and out["act"].logits.shape[0] == 1
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print(leaked)
        sys.exit(1 if leaked else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nvp_run_prints_the_session_answers_as_json(video, capsys):
    import json

    from nvp_rt.cli import main

    d, store, *_ = video
    assert (
        main(["run", str(d / "clip.nvp"), "--tasks", "cls,det,act,seg", "--frames", "0:8", "--store", str(store.root)])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    expected = nvp_rt.Session(d / "clip.nvp", store=store).run(["cls", "det", "act", "seg"], frames=range(8))
    assert printed["tasks"]["cls"] == json.loads(json.dumps(expected["cls"].to_dict()))
    assert printed["tasks"]["act"]["clips"][0]["frames"] == list(range(8))
    assert len(printed["tasks"]["det"]["frames"]) == 8 and len(printed["tasks"]["seg"]["frames"]) == 8
    assert set(printed["timings_ms"]) >= {"prefix", "adapters", "heads", "total"}

    here = ["--store", str(store.root)]
    classes = nvp_rt.Session(d / "clip.nvp", store=store).classes("act")
    for args, words in [
        (["--tasks", "nope", *here], "no route"),
        (["--tasks", "cls", "--frames", "0:99", *here], "out of range"),
        (["--tasks", "cls", "--store", str(d / "nowhere")], "model store"),
        (["--tasks", "act", "--top-k", str(classes + 1), *here], f"ranks {classes} classes"),
    ]:
        assert main(["run", str(d / "clip.nvp"), *args]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


@pytest.mark.cuda
@pytest.mark.skipif(  # decided before the module's video fixture is built for nothing
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="this ONNX Runtime has no CUDA execution provider (onnxruntime-gpu)",
)
@pytest.mark.parametrize("task", ["cls", "cls_stacked", "det", "act", "seg"])
def test_cuda_session_matches_cpu(video, task):
    d, store, *_ = video
    cpu = nvp_rt.Session(d / "clip.nvp", store=store, device="cpu").run([task], frames=range(FRAMES))[task]
    gpu = nvp_rt.Session(d / "clip.nvp", store=store, device="cuda").run([task], frames=range(FRAMES))[task]
    assert_close(gpu.logits, cpu.logits, rtol=1e-3)  # cuDNN may pick other conv algorithms than MLAS


def test_detokenize_matches_transformers_wordpiece(tmp_path, rng):
    from transformers import BertTokenizer

    from nvp_rt.results import detokenize

    words = ["a", "cat", "sit", "##s", "on", "the", "mat", ".", ",", "dog", "'", "s", "n't", "play", "##ing", "!"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    for clean in (False, True):
        tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"), clean_up_tokenization_spaces=clean)
        for _ in range(50):
            ids = rng.integers(5, len(vocab), size=int(rng.integers(1, 12))).tolist()
            assert detokenize(ids, vocab, clean) == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_route_that_does_not_fit_its_tap_is_rejected_at_open(video, tmp_path):
    import shutil

    d, store, *_ = video
    bad = tmp_path / "bad.nvp"
    shutil.copy(d / "clip.nvp", bad)
    routes = nvp_rt.nvpfile.NvpFile.open(bad).routes()
    cls = next(r for r in routes if r.task == "cls")
    wider = {**cls.arrays, "weight0": np.zeros((cls.arrays["weight0"].shape[0], 3), np.float32)}
    replace_routes(bad, [Route("cls", cls.backbone, cls.tap, cls.injection_point, wider, cls.metadata)])
    with pytest.raises(NvpFormatError, match=r"routes\[0\].arrays\[weight0\]: .* do not map"):
        nvp_rt.Session(bad, store=store)
    # Well formed on its own, but resized to what its head does not take: refused at open, not in a query.
    (size,) = [p["size"] for p in cls.metadata["pathways"]]
    smaller = {**cls.metadata, "pathways": [{"size": [size[0] - 1, size[1]], "frames": None}]}
    shutil.copy(d / "clip.nvp", bad)
    replace_routes(bad, [Route("cls", cls.backbone, cls.tap, cls.injection_point, cls.arrays, smaller)])
    with pytest.raises(NvpFormatError, match="does not fit tap .* head's input"):
        nvp_rt.Session(bad, store=store)
