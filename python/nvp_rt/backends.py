"""Execution backends: which ONNX Runtime providers run the graphs, and the
session cache that makes sure nothing is compiled twice.

device: "auto" | "cpu" | "cuda"; backend: "auto" | "ort" | "trt".
A request that cannot be met raises with the reason; nothing falls back
silently (auto is the only mode that chooses).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from . import atomic
from .device import CudaUnavailableError, cuda_is_available
from .store import ModelStore

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "ort", "trt")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine."""


@dataclass(frozen=True)
class Backend:
    name: str  # "ort" or "trt"
    device: str  # "cpu" or "cuda"
    providers: tuple[tuple[str, dict], ...]

    @property
    def key(self) -> str:
        """Names compiled artefacts: ORT's optimised graphs are specific to its version and the CPU's ISA."""
        from .ops import cpu_capability

        return f"{self.name}-{self.device}-{cpu_capability()}-ort{ort.__version__}"


def _ort_has(provider: str) -> bool:
    return provider in ort.get_available_providers()


def resolve_backend(device: str = "auto", backend: str = "auto", store: ModelStore | None = None) -> Backend:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}; got {device!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    cuda_ready = _ort_has("CUDAExecutionProvider") and cuda_is_available()
    if device == "auto":
        device = "cuda" if cuda_ready else "cpu"
    if device == "cuda" and not cuda_ready:
        reason = (
            "ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)"
            if not _ort_has("CUDAExecutionProvider")
            else "nvp's CUDA kernels cannot run (see nvp_rt.cuda_is_available())"
        )
        raise CudaUnavailableError(f"device='cuda' was requested but {reason}")
    if backend == "auto":
        backend = "ort"
    if backend == "trt":
        if not _ort_has("TensorrtExecutionProvider"):
            raise BackendUnavailableError(
                "backend='trt' needs ONNX Runtime's TensorrtExecutionProvider with TensorRT libraries; "
                "TensorRT is not installable from the package registries these machines reach "
                "(install it from NVIDIA), or use backend='ort'"
            )
        if device != "cuda":
            raise BackendUnavailableError("TensorRT (backend='trt') runs on CUDA devices only; use device='cuda'")
        cache = str((store or ModelStore()).root / "engines" / "tensorrt")
        trt_options = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
        }
        return Backend("trt", "cuda", (("TensorrtExecutionProvider", trt_options), ("CUDAExecutionProvider", {})))
    if device == "cuda":
        return Backend("ort", "cuda", (("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})))
    return Backend("ort", "cpu", (("CPUExecutionProvider", {}),))


@dataclass
class SessionCache:
    """InferenceSessions keyed by graph content and backend, created once per process.

    Graphs are keyed by architecture (videos bind their weights at run time),
    so every video of an architecture shares one session. ORT's optimised
    graph is also kept on disk in the store, so a new process skips the
    optimisation passes.
    """

    backend: Backend
    store: ModelStore
    threads: int = 0  # 0: ONNX Runtime's default
    _sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)  # by graph content
    _files: dict[tuple, ort.InferenceSession] = field(default_factory=dict)  # by graph file identity
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def _options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: ORT warns on every optimised-graph save, which is intended here
        # Spinning threads would steal cores from nvp's own kernels between graph runs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def get(self, graph: Path) -> ort.InferenceSession:
        """The session of a graph file; each file is read and hashed once per process, not once per video.

        A store entry is replaced only by an atomic rename, so its (path, size, mtime, inode) names its content.
        """
        stat = os.stat(graph)
        identity = (str(graph), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._guard:
            if identity in self._files:
                return self._files[identity]
        data = Path(graph).read_bytes()
        key = hashlib.sha256(data).hexdigest()[:20]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._sessions:
                self._sessions[key] = self._create(data, key)
            session = self._sessions[key]
        with self._guard:
            self._files[identity] = session
        return session

    def _create(self, data: bytes, key: str) -> ort.InferenceSession:
        providers = [name for name, _ in self.backend.providers]
        provider_options = [opts for _, opts in self.backend.providers]
        opts = self._options()
        if self.backend.name == "trt":  # TensorRT keeps its own engine cache
            return ort.InferenceSession(data, opts, providers=providers, provider_options=provider_options)
        optimized = self.store.path("engines", f"{key}.{self.backend.key}")
        if optimized.is_file():
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                return ort.InferenceSession(
                    str(optimized), opts, providers=providers, provider_options=provider_options
                )
            except Exception:  # ORT rejects a stale or foreign cache entry: rebuild it below
                opts = self._options()
        optimized.parent.mkdir(parents=True, exist_ok=True)
        atomic.sweep(optimized.parent)
        tmp = atomic.temp_path(optimized)
        opts.optimized_model_filepath = str(tmp)
        session = ort.InferenceSession(data, opts, providers=providers, provider_options=provider_options)
        if tmp.is_file():
            os.replace(tmp, optimized)
        return session
