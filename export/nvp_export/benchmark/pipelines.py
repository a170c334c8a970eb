"""The four decoding-inference pipelines of Table 1, each answering ``query(tasks, frames)`` with its stages timed.

- ``H264Pipeline`` (CPU): seek to the keyframe before each requested frame, threaded
  decode forward to it (PyAV), colour conversion then resize to the backbone's input in
  FFmpeg's swscale (``BackboneRunner.rgb``), normalisation in numpy, the full backbone in
  ONNX Runtime.
- ``H264Pipeline`` (NVDEC): the same with ``h264_cuvid``, which also resizes on the GPU
  (its ``resize`` option), and ONNX Runtime's CUDA provider; only where both exist
  (``nvdec_unavailable_reason``).
- ``INRPipeline``: the .nvp decoded in full to pixels (``Session.decode``: every INR
  stage graph), then the same preprocessing and full backbone.
- ``NVPPipeline``: ``Session.run``: INR prefix to the tap, adapter kernel, backbone suffix.

Input process = everything before the backbone (or suffix) graph runs; inference = the
backbone graphs and the post-processing of their raw outputs. Every pipeline returns
raw outputs per task ({"logits", "boxes"}) so accuracy is judged the same way for all.
A pixel path queried for several tasks decodes its frames once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import nvp_rt
from nvp_rt.backends import SessionCache, resolve_backend
from nvp_rt.nvpfile import NvpFile
from nvp_rt.store import ModelStore

__all__ = [
    "Timing",
    "BackboneRunner",
    "H264Reader",
    "H264Pipeline",
    "INRPipeline",
    "NVPPipeline",
    "nvdec_unavailable_reason",
    "Answers",
]

Answers = dict[str, dict[str, np.ndarray]]  # task -> raw outputs ("logits", and "boxes" for detection)
RESIZE = "BILINEAR"  # swscale's bilinear, as the backbones' bilinear preprocessing


@dataclass
class Timing:
    process: float  # s: decoding and preprocessing, up to the backbone graph's input
    inference: float  # s: backbone (suffix) graphs and post-processing

    @property
    def total(self) -> float:
        return self.process + self.inference


class BackboneRunner:
    """A full backbone graph from the model store, with its preprocessing: frames -> normalised input -> outputs."""

    def __init__(self, sessions: SessionCache, store: ModelStore, key: str):
        self.key = key
        self.description = json.loads(store.get("backbone", key, suffix=".json").read_text())
        self.session = sessions.get(store.get("backbone", key))
        pre = self.description["preprocess"]
        self.height, self.width = (int(v) for v in pre["input_size"])
        self.mean = np.asarray(pre["mean"], np.float32).reshape(1, 1, 3) * 255
        self.scale = 1 / (np.asarray(pre["std"], np.float32).reshape(1, 1, 3) * 255)
        self.clip_frames = int(pre.get("num_frames") or 1)
        self.outputs = list(self.description["outputs"])
        self.task = self.description["task"]

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) at the input size -> float32 (3, H, W), (x - mean) / std."""
        return ((rgb.astype(np.float32) - self.mean) * self.scale).transpose(2, 0, 1)

    def rgb(self, frame) -> np.ndarray:
        """An av.VideoFrame (any pixel format and size) -> uint8 (H, W, 3) RGB at the input size, in swscale.

        Colour conversion at the frame's size first, then the bilinear resize: swscale's one-call
        yuv420p -> rgb24 + resize shifted colours by ~2-3 levels (36.8 vs 41.1 dB PSNR against the
        resized original at 320x180) and cost EfficientNet-Lite0 13-17 points of top-1 agreement on the
        test clip at CRF 0-18. Frames already at the input size (NVDEC resized them) are only converted.
        """
        if isinstance(frame, np.ndarray):
            return frame
        if (frame.width, frame.height) != (self.width, self.height):
            if frame.format.name != "rgb24":
                frame = frame.reformat(format="rgb24")
            frame = frame.reformat(width=self.width, height=self.height, interpolation=RESIZE)
        return frame.to_ndarray(format="rgb24")

    def preprocess(self, frames: Sequence) -> np.ndarray:
        """av.VideoFrames (or uint8 RGB arrays at the input size) -> the backbone's input batch: (N, 3, H, W), or
        (N / T, 3, T, H, W) clips of consecutive frames for video backbones."""
        x = np.stack([self.normalise(self.rgb(f)) for f in frames])
        if self.clip_frames > 1:
            n = len(frames)
            if n % self.clip_frames:
                raise ValueError(f"{self.key} answers clips of {self.clip_frames} frames; {n} frames were requested")
            x = x.reshape(n // self.clip_frames, self.clip_frames, *x.shape[1:]).transpose(0, 2, 1, 3, 4)
        return np.ascontiguousarray(x)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, {"input": x})))


def nvdec_unavailable_reason() -> str | None:
    """None where FFmpeg's h264_cuvid decoder opens and ONNX Runtime has CUDA; else why not."""
    import av

    if "h264_cuvid" not in av.codec.codecs_available:
        return "this FFmpeg build has no h264_cuvid decoder"
    try:
        ctx = av.CodecContext.create("h264_cuvid", "r")
        ctx.open()
    except Exception as e:  # FFmpeg reports a missing driver / GPU as a generic error
        return f"h264_cuvid does not open here ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    try:
        resolve_backend("cuda", "ort")
    except Exception as e:
        return str(e)
    return None


class H264Reader:
    """Random access into an H.264 file: seek to the keyframe at or before each frame, decode forward to it.

    Consecutive requests within a GOP keep decoding forward without a new seek. ``decoder``: "cpu"
    (FFmpeg's h264, frame + slice threads) or "cuvid" (NVDEC, resizing to ``size`` on the GPU).
    """

    def __init__(self, path: str | Path, decoder: str = "cpu", size: tuple[int, int] | None = None, threads: int = 0):
        import av

        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in self.container.demux(self.stream) if p.pts is not None]
        self.pts = sorted(p for p, _ in packets)  # display order: frame i has pts[i]
        self.keyframes = np.array(sorted(p for p, key in packets if key))
        self.codec: Any  # PyAV's decoder context: the stream's own, or a hardware one
        if decoder == "cpu":
            self.codec = self.stream.codec_context
            self.codec.thread_type = "AUTO"
            self.codec.thread_count = threads
        elif decoder == "cuvid":
            self.codec = av.CodecContext.create("h264_cuvid", "r")
            self.codec.extradata = self.stream.codec_context.extradata
            if size is not None:
                self.codec.options = {"resize": f"{size[1]}x{size[0]}"}
        else:
            raise ValueError(f"decoder must be 'cpu' or 'cuvid'; got {decoder!r}")
        self._last: int | None = None  # pts of the last decoded frame
        self._frames: Iterator[Any] = iter(())  # av.VideoFrames from the last seek on

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def _decoded(self):
        for packet in self.container.demux(self.stream):
            yield from self.codec.decode(packet if packet.size else None)

    def _seek(self, keyframe_pts: int) -> None:
        self.container.seek(int(keyframe_pts), stream=self.stream, backward=True, any_frame=False)
        self.codec.flush_buffers()
        self._frames = self._decoded()
        self._last = None

    def read(self, indices: Sequence[int]) -> list:
        """av.VideoFrames of ``indices`` (in the order asked)."""
        wanted: dict[int, Any] = {}
        for i in sorted(set(int(i) for i in indices)):
            if not 0 <= i < self.num_frames:
                raise IndexError(f"frame {i} out of range 0..{self.num_frames - 1}")
            target = self.pts[i]
            key = self.keyframes[np.searchsorted(self.keyframes, target, side="right") - 1]
            if self._last is None or target <= self._last or key > self._last:
                self._seek(key)
            for frame in self._frames:
                self._last = frame.pts
                if frame.pts == target:
                    wanted[i] = frame
                    break
            else:
                raise ValueError(f"frame {i} (pts {target}) was not decoded")
        return [wanted[int(i)] for i in indices]

    def close(self) -> None:
        self.container.close()


def _routes(nvp_path: str | Path) -> dict[str, str]:
    """task -> backbone key, from the video's routes (the pixel paths answer the same tasks, in full)."""
    return {r.task: r.backbone for r in NvpFile.open(nvp_path).routes()}


class _PixelPipeline:
    """Frames -> each task's preprocessing -> its full backbone. Subclasses say how frames are obtained."""

    name = "pixels"

    def __init__(self, nvp_path: str | Path, store: ModelStore, device: str = "cpu", threads: int = 0):
        self.nvp_path, self.store = Path(nvp_path), store
        backend = resolve_backend(device, "ort", store)
        sessions = SessionCache(backend, store, threads)
        self.backbones = {task: BackboneRunner(sessions, store, key) for task, key in _routes(nvp_path).items()}
        self.threads = threads

    def _frames(self, frames: Sequence[int], sizes: set[tuple[int, int]]) -> list:
        raise NotImplementedError

    def query(self, tasks: Sequence[str], frames: Sequence[int]) -> tuple[Answers, Timing]:
        t0 = time.perf_counter()
        runners = [self.backbones[t] for t in tasks]
        decoded = self._frames(frames, {(r.height, r.width) for r in runners})
        inputs = [r.preprocess(decoded) for r in runners]
        t1 = time.perf_counter()
        answers = {t: r.run(x) for t, r, x in zip(tasks, runners, inputs)}
        return answers, Timing(t1 - t0, time.perf_counter() - t1)

    def close(self) -> None:
        pass


class H264Pipeline(_PixelPipeline):
    """H.264 file -> PyAV decode (CPU or NVDEC) -> swscale resize -> numpy normalise -> full backbone."""

    def __init__(
        self, h264_path: str | Path, nvp_path: str | Path, store: ModelStore, decoder: str = "cpu", threads: int = 0
    ):
        super().__init__(nvp_path, store, "cuda" if decoder == "cuvid" else "cpu", threads)
        self.h264_path, self.decoder = Path(h264_path), decoder
        self.name = "H.264 NVDEC" if decoder == "cuvid" else "H.264 CPU"
        self.readers: dict = {}

    def open(self) -> None:
        self.close()
        if self.decoder == "cpu":
            self.readers[None] = H264Reader(self.h264_path, "cpu", threads=self.threads)

    def _frames(self, frames, sizes):
        if self.decoder == "cpu":
            return self.readers[None].read(frames)
        # NVDEC resizes as it decodes: one decoder per input size the tasks need (usually one).
        size = next(iter(sizes))
        if size not in self.readers:
            self.readers[size] = H264Reader(self.h264_path, "cuvid", size=size)
        return self.readers[size].read(frames)

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers = {}


class INRPipeline(_PixelPipeline):
    """.nvp -> the INR decoded in full to pixels (every stage graph) -> swscale resize -> full backbone."""

    name = "INR full decode"

    def __init__(self, nvp_path, store, device: str = "cpu", threads: int = 0):
        super().__init__(nvp_path, store, device, threads)
        self.device = device
        self.session: nvp_rt.Session | None = None

    def open(self) -> None:
        self.session = nvp_rt.Session(self.nvp_path, device=self.device, store=self.store, threads=self.threads)

    def _frames(self, frames, sizes):
        import av

        # Frame by frame: a 32-frame clip at 720p decoded at once holds ~12 GB of feature maps, and batches
        # decode no faster on CPU (their full-resolution maps fall out of cache; see InrBase.render).
        return [av.VideoFrame.from_ndarray(rgb, format="rgb24") for f in frames for rgb in self.session.decode([f])]


class NVPPipeline:
    """``nvp_rt.Session.run``: input process = INR prefix + adapters; inference = backbone suffixes + post."""

    name = "NVP"

    def __init__(self, nvp_path: str | Path, store: ModelStore, device: str = "cpu", threads: int = 0):
        self.nvp_path, self.store, self.device, self.threads = Path(nvp_path), store, device, threads
        self.session: nvp_rt.Session | None = None

    def open(self) -> None:
        self.session = nvp_rt.Session(self.nvp_path, device=self.device, store=self.store, threads=self.threads)

    def query(self, tasks: Sequence[str], frames: Sequence[int]) -> tuple[Answers, Timing]:
        t0 = time.perf_counter()
        results = self.session.run(list(tasks), frames=list(frames))
        total = time.perf_counter() - t0
        steps = self.session.last_timings
        process = steps.get("prefix", 0.0) + steps.get("adapters", 0.0)
        answers = {}
        for task, r in results.items():
            answers[task] = {"logits": r.logits}
            if hasattr(r, "raw_boxes"):
                answers[task]["boxes"] = r.raw_boxes
        return answers, Timing(process, total - process)

    def close(self) -> None:
        self.session = None
