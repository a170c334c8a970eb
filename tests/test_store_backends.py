"""The model store (atomic, shared) and backend resolution (explicit, never a silent fallback)."""

import multiprocessing
import threading

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import nvp_rt
from nvp_rt.backends import BackendUnavailableError, SessionCache, resolve_backend
from nvp_rt.store import ModelStore, StoreEntryMissing


def small_graph(rng) -> tuple[bytes, np.ndarray]:
    w = rng.standard_normal((3, 5), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), w


def test_put_get_round_trip_and_missing_entry(tmp_path, rng):
    store = ModelStore(tmp_path)
    data = rng.bytes(1000)
    path = store.put("suffix", "resnet50@layer2", data)
    assert store.get("suffix", "resnet50@layer2") == path and path.read_bytes() == data
    assert ("suffix", "resnet50@layer2") in store
    with pytest.raises(StoreEntryMissing, match="no suffix 'vit@3'"):
        store.get("suffix", "vit@3")
    assert not [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 300])
def test_rejects_unsafe_names(tmp_path, name):
    with pytest.raises(ValueError, match="invalid model-store"):
        ModelStore(tmp_path).path("suffix", name)


def _writer(root: str, payload: bytes, rounds: int) -> None:
    store = ModelStore(root)
    for _ in range(rounds):
        store.put("inr", "hnerv-test", payload)
        store.put("inr", "hnerv-test", payload[::-1])


def test_two_processes_populating_at_once(tmp_path, rng):
    """Concurrent writers: every read sees one whole version, never a mix or a part."""
    payload = rng.bytes(1 << 20)
    procs = [
        multiprocessing.get_context("spawn").Process(target=_writer, args=(str(tmp_path), payload, 20))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    store = ModelStore(tmp_path)
    seen = 0
    while any(p.is_alive() for p in procs):
        if ("inr", "hnerv-test") in store:
            data = store.get("inr", "hnerv-test").read_bytes()
            assert data in (payload, payload[::-1])
            seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_cpu_backend_and_bad_names():
    backend = resolve_backend("cpu", "auto")
    assert backend.device == "cpu" and backend.providers[0][0] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="device"):
        resolve_backend("tpu")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cpu", "tvm")


@pytest.mark.skipif(
    nvp_rt.cuda_is_available() and "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="checks the error where CUDA is missing",
)
def test_cuda_request_without_cuda_fails_clearly():
    assert resolve_backend("auto").device == "cpu"
    with pytest.raises(nvp_rt.CudaUnavailableError, match="device='cuda'"):
        resolve_backend("cuda")


@pytest.mark.skipif("TensorrtExecutionProvider" in ort.get_available_providers(), reason="TensorRT present")
def test_tensorrt_absence_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        resolve_backend("cpu", "trt")
    if nvp_rt.cuda_is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="TensorRT is not installable"):
            resolve_backend("cuda", "trt")


def test_session_cache_shares_sessions_and_reuses_optimized_graph(tmp_path, rng):
    data, w = small_graph(rng)
    store = ModelStore(tmp_path)
    graph = store.put("suffix", "toy@0", data)
    cache = SessionCache(resolve_backend("cpu"), store, threads=1)
    sessions = []
    threads = [threading.Thread(target=lambda: sessions.append(cache.get(graph))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(s) for s in sessions}) == 1
    optimized = list((tmp_path / "engines").glob("*.onnx"))
    assert len(optimized) == 1
    # A new process (a fresh cache) loads the optimised graph from the store.
    fresh = SessionCache(resolve_backend("cpu"), store, threads=1).get(graph)
    x = rng.standard_normal((4, 3), dtype=np.float32)
    expected = np.maximum(x.astype(np.float64) @ w.astype(np.float64), 0)
    for session in (sessions[0], fresh):
        np.testing.assert_allclose(session.run(["y"], {"x": x})[0], expected, rtol=1e-5, atol=1e-6)
