"""Reading and writing ordinary video files with PyAV (FFmpeg), torch-free.

Frames are uint8 arrays (N, H, W, 3) in RGB. Failures a user can cause (missing
or corrupt file, no video stream, no frames) raise :class:`VideoError` with a
one-line message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_output, atomic_write


class VideoError(ValueError):
    """A video file cannot be read or written as asked."""


@dataclass(frozen=True)
class FrameSelection:
    """Which frames to take and how to shape them: frames start, start+step, ... < stop (None: to the end)."""

    start: int = 0
    stop: int | None = None
    step: int = 1
    crop: tuple[int, int] | None = None  # (width, height), centred, before resizing
    size: tuple[int, int] | None = None  # (width, height) after cropping

    def __post_init__(self):
        if self.start < 0 or self.step < 1 or (self.stop is not None and self.stop <= self.start):
            raise VideoError(f"bad frame range {self.start}:{self.stop}:{self.step}")
        for name, wh in (("crop", self.crop), ("size", self.size)):
            if wh is not None and (wh[0] < 1 or wh[1] < 1):
                raise VideoError(f"bad {name} {wh[0]}x{wh[1]}")


def _av():
    import av  # imported here so `nvp info` works without FFmpeg libraries

    return av


@dataclass(frozen=True)
class VideoIndex:
    """Where the frames of a video's first stream are: one pass over its packets, nothing decoded."""

    frames: int
    fps: float
    # Presentation timestamps of the frames, in presentation order (stream time base); None where the
    # container leaves a packet without one: such a video is then read from its start.
    pts: np.ndarray | None

    def selected(self, selection: FrameSelection) -> int:
        """How many frames ``selection`` takes; VideoError if its stop is past the end."""
        if selection.stop is not None and selection.stop > self.frames:
            raise VideoError(
                f"frames {selection.start}:{selection.stop} out of range: the video has {self.frames} frames"
            )
        return len(range(selection.start, self.frames if selection.stop is None else selection.stop, selection.step))


def index_video(path: str | os.PathLike) -> VideoIndex:
    """The frame count and timestamps of ``path``: reads its packets, decodes nothing (cheap for any length)."""
    with _Video(path) as video:
        return video.index()


def iter_video(
    path: str | os.PathLike, selection: FrameSelection = FrameSelection(), index: VideoIndex | None = None
) -> Iterator[np.ndarray]:
    """The selected frames (uint8 (H, W, 3)), decoded one at a time: decoding starts at the keyframe before
    ``selection.start`` (``index``, from :func:`index_video`, saves a pass over the packets), so reading a
    range costs that range, and memory one frame, whatever the video's length."""
    with _Video(path) as video:
        yield from video.frames(selection, index)


def read_video(
    path: str | os.PathLike, selection: FrameSelection = FrameSelection(), index: VideoIndex | None = None
) -> tuple[np.ndarray, float]:
    """(frames uint8 (N, H, W, 3), frames per second of the source)."""
    with _Video(path) as video:
        frames = list(video.frames(selection, index))
        return np.stack(frames), video.fps / selection.step


class _Video:
    """An open video file's first video stream; failures a user can cause raise VideoError."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> _Video:
        av = _av()
        if not self.path.exists():
            raise VideoError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise VideoError(f"{self.path} is a directory, not a video")
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, ValueError, OSError) as e:
            # FFmpeg also refuses files whose only stream never got a frame (no codec parameters).
            raise VideoError(f"{self.path}: not a readable video, or one without frames ({_reason(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.path}: no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 30)
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    def index(self) -> VideoIndex:
        av = _av()
        pts: list[int | None] = []
        try:
            pts = [p.pts for p in self.container.demux(self.stream) if p.size]
        except (av.FFmpegError, ValueError, OSError) as e:
            raise VideoError(f"{self.path}: cannot read video ({_reason(e)})") from None
        known = None if any(p is None for p in pts) else np.sort(np.array(pts, np.int64))
        return VideoIndex(len(pts), self.fps, known)

    def frames(self, selection: FrameSelection, index: VideoIndex | None) -> Iterator[np.ndarray]:
        av = _av()
        decoded = 0
        taken = False
        try:
            for i, frame in self._numbered(selection.start, index):
                if selection.stop is not None and i >= selection.stop:
                    break
                decoded = i + 1
                if i < selection.start or (i - selection.start) % selection.step:
                    continue
                taken = True
                yield _shape(frame.to_ndarray(format="rgb24"), selection, frame, self.path)
        except (av.FFmpegError, ValueError, OSError) as e:
            if isinstance(e, VideoError):
                raise
            raise VideoError(f"{self.path}: cannot decode video ({_reason(e)})") from None
        if selection.stop is not None and decoded < selection.stop:
            raise VideoError(
                f"{self.path}: frames {selection.start}:{selection.stop} out of range: the video has {decoded} frames"
            )
        if not taken:
            raise VideoError(f"{self.path}: no frames in the selected range")

    def _numbered(self, start: int, index: VideoIndex | None) -> Iterator[tuple[int, Any]]:
        """Decoded frames with their position in presentation order, from the keyframe at or before ``start``."""
        if start:
            index = index or self.index()
            if index.pts is not None and start < index.frames:
                self.container.seek(int(index.pts[start]), stream=self.stream, backward=True)
                decoded = self.container.decode(self.stream)
                first = next(decoded, None)
                at = -1 if first is None or first.pts is None else int(np.searchsorted(index.pts, first.pts))
                if first is not None and 0 <= at <= start and at < index.frames and index.pts[at] == first.pts:
                    yield at, first
                    yield from enumerate(decoded, at + 1)
                    return
            # No timestamps to seek by, or a seek that missed (a container without a usable index):
            # decode from the start.
            self.container.close()
            self.__enter__()
        yield from enumerate(self.container.decode(self.stream))


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.split(": '")[0]  # FFmpeg repeats the path; keep the line short


def _shape(rgb: np.ndarray, selection: FrameSelection, frame, path) -> np.ndarray:
    if selection.crop:
        w, h = selection.crop
        if w > rgb.shape[1] or h > rgb.shape[0]:
            raise VideoError(f"{path}: crop {w}x{h} is larger than the frame {rgb.shape[1]}x{rgb.shape[0]}")
        y, x = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
        rgb = rgb[y : y + h, x : x + w]
    if selection.size and (rgb.shape[1], rgb.shape[0]) != selection.size:
        av = _av()
        resized = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        rgb = resized.reformat(width=selection.size[0], height=selection.size[1], interpolation="AREA").to_ndarray(
            format="rgb24"
        )
    return rgb


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 30.0,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    overwrite: bool = True,
) -> int:
    """Encode frames into a video file atomically (a new file only, without ``overwrite``); returns the bytes of
    coded video (stream payload, no container)."""
    av = _av()
    path = Path(path)
    if path.is_dir():
        raise VideoError(f"{path} is a directory")
    n, h, w, _ = frames.shape
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise VideoError(f"{w}x{h}: 4:2:0 video needs even width and height")
    fmt = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}.get(path.suffix.lower())
    if fmt is None:
        raise VideoError(f"{path}: unsupported video extension (use .mp4, .mkv, .mov or .avi, or a folder for PNGs)")
    payload = 0
    with atomic_output(path, overwrite) as tmp, av.open(str(tmp), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=round(fps) or 30, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                payload += packet.size
                container.mux(packet)
        for packet in stream.encode():
            payload += packet.size
            container.mux(packet)
    return payload


def png_name(index: int) -> str:
    return f"frame_{index:06d}.png"


def write_pngs(
    folder: str | os.PathLike, frames: np.ndarray, first_index: int = 0, step: int = 1, overwrite: bool = True
) -> list[Path]:
    """One PNG per frame, named by its frame index in the video; each file written atomically (a new file
    only, without ``overwrite``)."""
    av = _av()
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise VideoError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, rgb in enumerate(frames):
        codec = av.CodecContext.create("png", "w")
        codec.width, codec.height, codec.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        data = b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])
        out = folder / png_name(first_index + k * step)
        atomic_write(out, data, overwrite)
        written.append(out)
    return written
