"""``Session``: answer tasks on a video's frames from one partial decode of its INR.

    s = nvp_rt.Session("clip.nvp")            # device="auto"|"cpu"|"cuda", backend="auto"|"ort"|"trt"
    out = s.run(["cls", "det"], frames=[0, 16, 32])
    out["cls"].top_k[0]                        # [(index, label, probability), ...]
    pixels = s.decode([0, 1])                  # uint8 (N, H, W, 3)

A file encoded against a pretrained base (docs/base.md) is queried the same way: its decoder is
``base_decoder.VideoBase`` instead of ``prefix.VideoINR`` (both a ``prefix.VideoDecoder``).

A query, as data flows (each step one place in this file):

1. ``_plan``: the routes of the asked tasks; the deepest INR tap any of them reads.
2. ``_decode_prefix``: per segment of the video the asked frames fall in, that
   segment's stage graphs run once, stem to that tap (the weights of a segment are
   read from the file and decoded on first use); every shallower tap on the way is
   kept for the tasks that read it.
3. ``_adapt``: each route's micro adapter, ``ops.resize_conv1x1`` (the fused
   C++/CUDA kernel), frame by frame, once per pathway of its injection point.
4. ``_Head.run``: the backbone suffix graph from the injection point (video
   heads take clips frame-major, so no relayout happens between the stages);
   ``results.postprocess`` turns its raw outputs into the task's answer.

On CUDA every stage reads and writes device memory (ONNX Runtime IOBinding,
the kernel's ``__cuda_array_interface__``); only the heads' outputs come back.

Graphs come from the model store and sessions from a cache keyed by graph
content, so a second video of a known architecture compiles nothing. One
Session serves concurrent ``run`` calls: ONNX Runtime sessions and the kernel
are thread-safe, and a query keeps all its state in local variables.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ops, shared_route
from .backends import Backend, SessionCache, resolve_backend
from .base_decoder import VideoBase
from .nvpfile import NvpFile, NvpFormatError, Route
from .prefix import STAGE_INPUT, STAGE_OUTPUT, VideoDecoder, VideoINR
from .results import postprocess
from .store import ModelStore

__all__ = ["NonFiniteOutputError", "Session", "UnknownTaskError"]

RESIDENT_SEGMENTS = 4  # segments whose decoded weights a Session keeps, most recently used first


class UnknownTaskError(ValueError):
    """A query names a task the file has no route for."""


class NonFiniteOutputError(NvpFormatError):
    """A file that passed every check decodes to NaN or infinite values (its weights overflow the decoder)."""


@dataclass(frozen=True)
class _Pathway:
    weights: list[tuple[Any, Any]]  # per 1x1 conv: (C_out, C_in), (C_out,), on the session's device
    size: tuple[int, int]


class _Head:
    """A backbone suffix from one injection point, with what post-processing needs to know."""

    def __init__(self, sessions: SessionCache, store: ModelStore, backbone: str, point: str):
        self.description = json.loads(store.get("backbone", backbone, suffix=".json").read_text())
        self.session = sessions.get(store.get("suffix", f"{backbone}@{point}"))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = list(self.description["outputs"])
        self.task = self.description["task"]
        self.clip_frames = int(self.description["preprocess"].get("num_frames", 1))
        self.text_step = sessions.get(store.get("decoder", backbone)) if self.task == "captioning" else None

    def run(self, device: _Device, features: list) -> dict[str, np.ndarray]:
        if self.text_step is not None:
            embeds = device.run(self.session, dict(zip(self.inputs, features)), self.outputs)[0]
            return {"token_ids": self._greedy_caption(device, embeds)}
        values = device.run(self.session, dict(zip(self.inputs, features)), self.outputs, to_host=True)
        return dict(zip(self.outputs, values))

    def _greedy_caption(self, device: _Device, embeds) -> np.ndarray:
        """transformers' greedy ``generate`` (num_beams=1, no sampling): argmax token after token until every
        caption has emitted the end token or ``max_tokens`` were generated; finished captions are padded."""
        settings = self.description["caption"]
        ids = np.full((embeds.shape[0], 1), settings["bos"], dtype=np.int64)
        finished = np.zeros(embeds.shape[0], dtype=bool)
        for _ in range(int(settings["max_tokens"])):
            logits = device.run(self.text_step, {"input_ids": ids, "image_embeds": embeds}, ["logits"], to_host=True)[0]
            token = np.where(finished, settings["pad"], logits.argmax(-1))
            ids = np.concatenate([ids, token[:, None]], axis=1)
            finished |= token == settings["eos"]
            if finished.all():
                break
        return ids


class _Route:
    """A task's route as the runtime runs it: INR tap -> adapters -> head."""

    def __init__(self, route: Route, head: _Head, tail, device: _Device, where: str):
        self.task, self.tap, self.head, self.tail = route.task, route.tap, head, tail
        meta = route.metadata
        pathways = meta.get("pathways")
        if not isinstance(pathways, list):
            raise NvpFormatError(f"{where}: route {route.task!r} is malformed (no list of pathways)")
        try:
            self.pathways = []
            for i, p in enumerate(pathways):
                prefix = f"pathway{i}/" if len(pathways) > 1 else ""
                convs = 2 if meta.get("hidden") else 1
                weights = [
                    (
                        device.kernel_array(route.arrays[f"{prefix}weight{j}"]),
                        device.kernel_array(route.arrays[f"{prefix}bias{j}"]),
                    )
                    for j in range(convs)
                ]
                self.pathways.append(_Pathway(weights, (int(p["size"][0]), int(p["size"][1]))))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise NvpFormatError(f"{where}: route {route.task!r} is malformed ({e})") from None
        if len(self.pathways) != len(head.inputs):
            raise NvpFormatError(
                f"{where}: route {route.task!r} has {len(self.pathways)} adapter pathway(s) but "
                f"its head takes {len(head.inputs)}"
            )


def _check_route_shapes(route: Route, tap, head: _Head, where: str) -> None:
    """Adapter widths and sizes against the tap they read and the head they feed, at open rather than
    mid-query (the schema has checked the adapter's own shapes)."""
    pathways = len(head.inputs)
    for p, head_input in enumerate(head.session.get_inputs()):
        prefix = f"pathway{p}/" if pathways > 1 else ""
        first = route.arrays[f"{prefix}weight0"]
        last = route.arrays[f"{prefix}weight{1 if route.metadata.get('hidden') else 0}"]
        size = tuple(route.metadata["pathways"][p]["size"])
        video = head.clip_frames > 1
        expected = (head.clip_frames, last.shape[0], *size) if video else (last.shape[0], *size)
        if first.shape[1] != tap.shape[0] or not _fits((1, *expected), head_input.shape):
            raise NvpFormatError(
                f"{where}: route {route.task!r} adapter {tuple(first.shape)} to {size} does not "
                f"fit tap {tap.name} ({tap.shape[0]} channels) and its head's input "
                f"{head_input.shape[1:]}"
            )


def _fits(shape: tuple[int, ...], graph_shape: list) -> bool:
    """An array shape against a graph's declared one, whose symbolic dimensions match anything."""
    return len(shape) == len(graph_shape) and all(not isinstance(g, int) or g == d for d, g in zip(shape, graph_shape))


class Session:
    """One video and the tasks routed in it; see the module docstring."""

    def __init__(
        self, path, device: str = "auto", backend: str = "auto", store: ModelStore | str | None = None, threads: int = 0
    ):
        self.path = str(path)
        self.store = store if isinstance(store, ModelStore) else ModelStore(store)
        self.backend: Backend = resolve_backend(device, backend, self.store)
        self.device = self.backend.device
        self._sessions = _session_cache(self.backend, self.store, threads)
        self._device = _Device(self.device)
        nvp = NvpFile.open(path)
        self.video = nvp.manifest.get("video", {})
        # The video's decoder: its own INR, or the pretrained base it was encoded against (docs/base.md).
        self.inr: VideoDecoder = VideoBase(nvp) if nvp.base is not None else VideoINR(nvp)
        _, height, width = self.inr.tap("rgb").shape
        self.size = (height, width)
        self._graphs = {name: self._stage_graph(name) for name in self.inr.tap_names}
        self._weights_cache: OrderedDict[tuple[int, str], dict[str, Any]] = OrderedDict()
        self._weights_lock = threading.Lock()
        self._routes: dict[str, _Route] = {}
        for route in nvp.routes():
            route = shared_route.resolve(route, self.store, self.inr.tap(route.tap).shape[0], self.path)
            head = _Head(self._sessions, self.store, route.backbone, route.injection_point)
            tail = (
                self._sessions.get(self.store.get("adapter", "gelu_conv1x1")) if route.metadata.get("hidden") else None
            )
            self._routes[route.task] = _Route(route, head, tail, self._device, self.path)
            _check_route_shapes(route, self.inr.tap(route.tap), head, self.path)
        self._timings = threading.local()

    @property
    def bytes_read(self) -> int:
        """Bytes fetched from the file so far: header, manifest, routes, and the sections queries needed."""
        return self.inr.bytes_read

    @property
    def tasks(self) -> list[str]:
        return list(self._routes)

    def clip_length(self, task: str) -> int:
        """Consecutive frames one answer of ``task`` takes (1 for image tasks)."""
        self._plan([task])
        return self._routes[task].head.clip_frames

    def classes(self, task: str) -> int | None:
        """How many classes a classification or action task ranks (None for other kinds)."""
        self._plan([task])
        head = self._routes[task].head
        if head.task not in ("classification", "action"):
            return None
        labels = head.description.get("labels") or []
        width = head.session.get_outputs()[0].shape[-1]
        return len(labels) or (width if isinstance(width, int) else None)

    @property
    def last_timings(self) -> dict[str, float]:
        """Seconds per step of this thread's last query: prefix, adapters, heads, post, total, engine."""
        return dict(getattr(self._timings, "value", {}))

    def _stage_graph(self, name: str):
        """A stage's graph from the store, its output checked against the manifest's tap."""
        session = self._sessions.get(self.inr.graph(self.store, name))
        if not _fits((1, *self.inr.tap(name).shape), session.get_outputs()[0].shape):
            raise NvpFormatError(
                f"{self.path}: tap {name!r} is {self.inr.tap(name).shape} in the manifest "
                f"but {session.get_outputs()[0].shape[1:]} in its architecture's graph"
            )
        return session

    def _stage_weights(self, segment: int, name: str) -> dict[str, Any]:
        """One segment's weights of one stage on the session's device, checked against the stage graph
        when first decoded; the last few segments' stay resident."""
        key = (segment, name)
        with self._weights_lock:
            if key in self._weights_cache:
                self._weights_cache.move_to_end(key)
                return self._weights_cache[key]
        session = self._graphs[name]
        weights = self.inr.stage_weights(segment, name)
        expected = {i.name: i.shape for i in session.get_inputs() if i.name != STAGE_INPUT}
        if set(expected) != set(weights) or any(tuple(weights[k].shape) != tuple(s) for k, s in expected.items()):
            raise NvpFormatError(
                f"{self.path}: the decoder weights of stage {name!r} (segment {segment}) do not fit its graph"
            )
        if name == self.inr.tap_names[0]:
            stage_input = next(i for i in session.get_inputs() if i.name == STAGE_INPUT)
            if not _fits(self.inr.stem_input(segment, np.zeros(1, np.int64)).shape, stage_input.shape):
                raise NvpFormatError(f"{self.path}: the decoder's stem input does not fit its graph")
        placed = {k: self._device.graph_array(v) for k, v in weights.items()}
        with self._weights_lock:
            self._weights_cache[key] = placed
            while len(self._weights_cache) > RESIDENT_SEGMENTS * len(self._graphs):
                self._weights_cache.popitem(last=False)
        return placed

    # -- a query ---------------------------------------------------------------------------------------------

    def _frames(self, frames) -> np.ndarray:
        idx = np.arange(self.inr.num_frames) if frames is None else np.asarray(list(_flatten(frames)))
        if idx.size == 0:
            raise ValueError("no frames requested")
        if idx.dtype.kind not in "iu":
            raise ValueError(f"frame indices must be integers; got {idx.dtype}")
        if idx.min() < 0 or idx.max() >= self.inr.num_frames:
            raise IndexError(f"frame index out of range: the video has frames 0..{self.inr.num_frames - 1}")
        return idx.astype(np.int64)

    def _plan(self, tasks: Sequence[str]) -> tuple[list[_Route], str]:
        missing = [t for t in tasks if t not in self._routes]
        if missing:
            raise UnknownTaskError(
                f"{self.path} has no route for task(s) {missing}; it has {self.tasks} "
                "(add one with `nvp-export --task NAME`)"
            )
        routes = [self._routes[t] for t in tasks]
        order = self.inr.tap_names
        return routes, max((r.tap for r in routes), key=order.index)

    def _decode_prefix(self, frames: np.ndarray, deepest: str, keep: set[str], clock: _Clock) -> dict[str, Any]:
        """The taps in ``keep`` of ``frames``, each segment's frames run through that segment's weights;
        frames from several segments are put back in the asked order (on the host)."""
        segments, local = self.inr.locate(frames)
        parts = []
        stages = self.inr.stages_until(deepest)
        for segment in dict.fromkeys(segments.tolist()):
            mine = np.flatnonzero(segments == segment)
            self.inr.prepare(segment, stages)
            x, taps = self._device.graph_array(self.inr.stem_input(segment, local[mine])), {}
            for name in stages:
                weights = self._stage_weights(segment, name)
                with clock.engine():
                    x = self._device.run(self._graphs[name], {STAGE_INPUT: x, **weights}, [STAGE_OUTPUT])[0]
                self._check_finite(self._device.on_host(x), f"INR stage {name!r}", frames[mine])
                if name in keep:
                    taps[name] = x
            parts.append((mine, taps))
        if len(parts) == 1:
            return parts[0][1]
        merged = {}
        for name in keep:
            host = [self._device.to_host(taps[name]) for _, taps in parts]
            out = np.empty((frames.size, *host[0].shape[1:]), np.float32)
            for (mine, _), values in zip(parts, host):
                out[mine] = values
            merged[name] = self._device.from_host(out)
        return merged

    def _adapt(self, route: _Route, features, frames: np.ndarray, clock: _Clock) -> list:
        """(N, C, h, w) tap features of ``frames`` -> one input per head pathway: (N, C', H', W'), or clips
        frame-major (N / T, T, C', H', W') for video heads."""
        clip = route.head.clip_frames
        n = features.shape[0]
        if n % clip:
            raise ValueError(
                f"task {route.task!r} answers clips of {clip} consecutive frames; "
                f"{n} frames were requested (ask for a multiple of {clip})"
            )
        out = []
        for p in route.pathways:
            (w0, b0), rest = p.weights[0], p.weights[1:]
            with clock.engine():
                y = ops.resize_conv1x1(features, w0, b0, size=p.size)
                for w1, b1 in rest:  # the stacked form: GELU, then the second 1x1 conv
                    y = self._device.run(route.tail, {"input": y, "weight": w1, "bias": b1}, ["output"])[0]
                self._device.kernel_done()
            self._check_finite(self._device.on_host(y), f"route {route.task!r}'s adapter", frames)
            out.append(y if clip == 1 else self._device.reshape(y, (n // clip, clip, *y.shape[1:])))
        return out

    def _check_finite(self, values: np.ndarray | None, what: str, frames: np.ndarray) -> None:
        """Refuse a stage's output (row i computed from ``frames[i]``) that holds NaN or infinity: a file
        whose every stored value is finite and in range can still overflow its decoder, and a NaN must
        never reach an answer or a pixel. ``None``: the values stay on the device (CUDA), unchecked here;
        the heads' outputs and decoded pixels, which such a value reaches, come to the host and are."""
        if values is None or values.dtype.kind != "f" or np.isfinite(values).all():
            return
        row = int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0])
        frame = int(frames[row])
        segment = int(self.inr.locate(np.array([frame]))[0][0])
        raise NonFiniteOutputError(
            f"{self.path}: segment {segment}, frame {frame}: {what} holds NaN or infinite values "
            "(the file's weights overflow its decoder)"
        )

    def run(self, tasks: str | Sequence[str], frames: Iterable[int] | None = None, top_k: int = 5) -> dict[str, Any]:
        """Answer ``tasks`` on ``frames`` (default: all); a dict task -> typed result (see ``nvp_rt.results``)."""
        clock = _Clock()
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        if not tasks:
            raise ValueError("no tasks requested")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer; got {top_k!r}")
        idx = self._frames(frames)
        routes, deepest = self._plan(tasks)
        with clock.step("prefix"):
            taps = self._decode_prefix(idx, deepest, {r.tap for r in routes}, clock)
        answers = {}
        for route in routes:
            with clock.step("adapters"):
                features = self._adapt(route, taps[route.tap], idx, clock)
            with clock.step("heads"), clock.engine():
                raw = route.head.run(self._device, features)
            first_frames = idx[:: route.head.clip_frames]  # an output row per frame, or per clip
            for output, values in raw.items():
                self._check_finite(values, f"route {route.task!r}'s head output {output!r}", first_frames)
            with clock.step("post"):
                frames_of = idx.tolist()
                if route.head.clip_frames > 1:
                    frames_of = idx.reshape(-1, route.head.clip_frames).tolist()
                answers[route.task] = postprocess(
                    route.head.task, raw, route.head.description, frames_of, self.size, top_k
                )
        self._timings.value = clock.finish()
        return answers

    def decode(self, frames: Iterable[int] | None = None) -> np.ndarray:
        """RGB frames for people: uint8 (N, H, W, 3), the INR decoded in full."""
        idx = self._frames(frames)
        clock = _Clock()
        decoded = self._decode_prefix(idx, "rgb", {"rgb"}, clock)["rgb"]
        rgb = self._device.to_host(decoded)
        if self._device.on_host(decoded) is None:  # on the host the prefix's last stage checked these values
            self._check_finite(rgb, "the decoded pixels", idx)
        return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def _flatten(frames) -> Iterable[int]:
    if isinstance(frames, (int, np.integer)) and not isinstance(frames, bool):
        yield int(frames)
        return
    for f in frames:
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
            raise ValueError(f"frame indices must be integers; got {f!r}")
        yield int(f)


class _Device:
    """Where a query's arrays live between stages: numpy on the CPU; device memory on CUDA.

    On CUDA, graph inputs and outputs are bound in place (IOBinding) and the
    kernel reads and writes the same memory through ``__cuda_array_interface__``,
    so features stay on the GPU from the stem to the heads.
    """

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "cuda":
            import onnxruntime as ort

            from .device import cuda_module

            self._ort, self._cuda = ort, cuda_module()

    def graph_array(self, a: np.ndarray):
        """A host array as a graph input (weights are placed once, at open)."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        return a if self.kind == "cpu" else self._ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0)

    def from_host(self, a: np.ndarray):
        """A host array as a stage output would be: numpy on the CPU, device memory on CUDA."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        return a if self.kind == "cpu" else _OrtCudaArray(self._ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0))

    def kernel_array(self, a: np.ndarray):
        """A host array as an argument of the adapter kernel."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        return a if self.kind == "cpu" else self._cuda.DeviceArray.from_numpy(a, 0)

    def run(self, graph, feeds: dict[str, Any], outputs: list[str], to_host: bool = False) -> list:
        if self.kind == "cpu":
            return graph.run(outputs, feeds)
        binding = graph.io_binding()
        for name, value in feeds.items():
            if isinstance(value, self._ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            elif isinstance(value, np.ndarray):  # small host inputs (token ids): ORT copies them over
                binding.bind_cpu_input(name, value)
            else:
                cai = value.__cuda_array_interface__
                binding.bind_input(name, "cuda", 0, np.float32, list(cai["shape"]), cai["data"][0])
        for name in outputs:
            if to_host:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, "cuda", 0)
        graph.run_with_iobinding(binding)
        values = binding.get_outputs()
        return [v.numpy() for v in values] if to_host else [_OrtCudaArray(v) for v in values]

    def on_host(self, a) -> np.ndarray | None:
        """``a`` where it is already a host array (the CPU), else None: copying device memory back to
        check it would cost what keeping the features on the GPU saves."""
        return a if self.kind == "cpu" else None

    def kernel_done(self) -> None:
        """The kernel runs on the default stream, ONNX Runtime on its own: order them."""
        if self.kind == "cuda":
            self._cuda.synchronize(0)

    def reshape(self, a, shape: tuple[int, ...]):
        return a.reshape(shape) if self.kind == "cpu" else _CudaView(a, shape)

    def to_host(self, a) -> np.ndarray:
        return a if self.kind == "cpu" else a.numpy()


class _CudaView:
    """A contiguous CUDA array seen with another shape; keeps its owner alive."""

    def __init__(self, owner, shape: tuple[int, ...]):
        self.owner, self.shape = owner, tuple(int(d) for d in shape)
        self.__cuda_array_interface__ = {**owner.__cuda_array_interface__, "shape": self.shape, "strides": None}


class _OrtCudaArray:
    """An ONNX Runtime output on the GPU, readable by the kernel and by the next graph."""

    def __init__(self, value):
        self.value, self.shape = value, tuple(value.shape())
        self.__cuda_array_interface__ = {
            "shape": self.shape,
            "typestr": "<f4",
            "data": (value.data_ptr(), False),
            "strides": None,
            "version": 3,
        }

    def numpy(self) -> np.ndarray:
        return self.value.numpy()


class _Clock:
    """Wall time per query step, and the part of it spent inside engines and kernels."""

    def __init__(self):
        self.start = time.perf_counter()
        self.steps: dict[str, float] = {}
        self.engine_s = 0.0

    class _Span:
        def __init__(self, add):
            self.add = add

        def __enter__(self):
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            self.add(time.perf_counter() - self.t0)

    def step(self, name: str):
        return self._Span(lambda s: self.steps.__setitem__(name, self.steps.get(name, 0.0) + s))

    def engine(self):
        def add(s):
            self.engine_s += s

        return self._Span(add)

    def finish(self) -> dict[str, float]:
        return {**self.steps, "engine": self.engine_s, "total": time.perf_counter() - self.start}


_CACHES: dict[tuple, SessionCache] = {}
_CACHES_LOCK = threading.Lock()


def _session_cache(backend: Backend, store: ModelStore, threads: int) -> SessionCache:
    """One cache per (backend, store, threads) in the process, shared by every Session: a second video of a
    known architecture finds its compiled sessions here."""
    key = (backend.key, repr(backend.providers), str(store.root.resolve()), threads)
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = SessionCache(backend, store, threads)
        return _CACHES[key]
