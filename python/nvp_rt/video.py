"""Reading and writing ordinary video files with PyAV (FFmpeg), torch-free.

Frames are uint8 arrays (N, H, W, 3) in RGB. Failures a user can cause (missing
or corrupt file, no video stream, no frames) raise :class:`VideoError` with a
one-line message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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


def read_video(path: str | os.PathLike, selection: FrameSelection = FrameSelection()) -> tuple[np.ndarray, float]:
    """(frames uint8 (N, H, W, 3), frames per second of the source)."""
    av = _av()
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path} is a directory, not a video")
    frames = []
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as e:
        # FFmpeg also refuses files whose only stream never got a frame (no codec parameters).
        raise VideoError(f"{path}: not a readable video, or one without frames ({_reason(e)})") from None
    try:
        with container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate or stream.guessed_rate or 30)
            decoded = 0
            for i, frame in enumerate(container.decode(stream)):
                if selection.stop is not None and i >= selection.stop:
                    break
                decoded = i + 1
                if i < selection.start or (i - selection.start) % selection.step:
                    continue
                frames.append(_shape(frame.to_ndarray(format="rgb24"), selection, frame, path))
    except VideoError:
        raise
    except (av.FFmpegError, ValueError, OSError) as e:
        raise VideoError(f"{path}: cannot decode video ({_reason(e)})") from None
    if selection.stop is not None and decoded < selection.stop:
        raise VideoError(
            f"{path}: frames {selection.start}:{selection.stop} out of range: the video has {decoded} frames"
        )
    if not frames:
        raise VideoError(f"{path}: no frames in the selected range")
    return np.stack(frames), fps / selection.step


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
) -> int:
    """Encode frames into a video file atomically; returns the bytes of coded video (stream payload, no container)."""
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
    with atomic_output(path) as tmp, av.open(str(tmp), "w", format=fmt) as container:
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


def write_pngs(folder: str | os.PathLike, frames: np.ndarray, first_index: int = 0, step: int = 1) -> list[Path]:
    """One PNG per frame, named by its frame index in the video; each file written atomically."""
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
        atomic_write(out, data)
        written.append(out)
    return written
