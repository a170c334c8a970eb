"""Segmented encoding without Ray: the streaming reader, shot cuts, segment planning, the settings a resume compares.

(The encodes themselves, on a two-node Ray cluster, are in test_archive.py.)
"""

import av
import numpy as np
import pytest

from nvp_export.clips import ClipSpec, make_clip
from nvp_export.encode import EncodeConfig
from nvp_export.encode_many import EncodeJob, plan_video
from nvp_export.inr.fit import FitConfig
from nvp_export.parts import encode_settings, first_difference
from nvp_export.scenes import scene_cuts
from nvp_export.segments import MAX_SEGMENT_FRAMES, MIN_SEGMENT_FRAMES, default_segment_frames, plan_segments
from nvp_rt.video import FrameSelection, VideoError, index_video, read_video, write_video

MONTAGE = ClipSpec("montage", width=64, height=48, frames=40)  # four shots: cuts at 10, 20, 30


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory):
    """The montage as H.264 with a keyframe every 8 frames and B-frames (decode order differs from presentation)."""
    path = tmp_path_factory.mktemp("video") / "montage.mp4"
    write_video(path, make_clip(MONTAGE), 25, options={"g": "8", "bf": "2", "sc_threshold": "0"})
    return path


def decoded_whole(path) -> np.ndarray:
    """The reference: every frame, decoded from the start by PyAV, in presentation order."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_ranges_read_by_seeking_equal_the_whole_decode(gop_video, rng):
    whole = decoded_whole(gop_video)
    index = index_video(gop_video)
    assert index.frames == len(whole) == MONTAGE.frames
    with av.open(str(gop_video)) as container:  # the premise: keyframes to seek to, and reordered frames
        packets = [p for p in container.demux(video=0) if p.size]
        assert sum(p.is_keyframe for p in packets) == 5 and [p.pts for p in packets] != sorted(p.pts for p in packets)
    for _ in range(12):
        start = int(rng.integers(0, len(whole) - 1))
        stop, step = int(rng.integers(start + 1, len(whole) + 1)), int(rng.integers(1, 4))
        got, fps = read_video(gop_video, FrameSelection(start, stop, step), index if rng.random() < 0.5 else None)
        np.testing.assert_array_equal(got, whole[start:stop:step], err_msg=f"{start}:{stop}:{step}")
        assert fps == pytest.approx(25 / step)
    # Cropped and resized: as the same frames taken out of the whole video's read.
    shaped = FrameSelection(crop=(48, 40), size=(32, 24))
    everything, _ = read_video(gop_video, shaped)
    start = int(rng.integers(1, len(whole) - 4))
    got, _ = read_video(gop_video, FrameSelection(start, start + 4, crop=(48, 40), size=(32, 24)))
    np.testing.assert_array_equal(got, everything[start : start + 4])
    with pytest.raises(VideoError, match="out of range: the video has 40 frames"):
        read_video(gop_video, FrameSelection(30, 41))


def test_scene_cuts_find_the_montage_shots(gop_video):
    assert scene_cuts(gop_video) == [10, 20, 30]
    # Counted in the frames a selection takes: frames 5, 8, 11, ... -> the shot at 10 starts at the 2nd taken.
    assert scene_cuts(gop_video, FrameSelection(5, 35, 3)) == [2, 5, 9]


@pytest.mark.parametrize("trial", range(4))
def test_segment_plans_cover_the_video_never_longer_than_n(trial, rng):
    frames = int(rng.integers(1, 400))
    n = int(rng.integers(1, 70))
    cuts = sorted({int(c) for c in rng.integers(1, frames + 1, size=rng.integers(0, 12))}) if frames > 1 else []
    fixed = plan_segments(frames, n)
    assert len(fixed) == -(-frames // n)
    assert max(s.count for s in fixed) - min(s.count for s in fixed) <= 1
    for plan in (fixed, plan_segments(frames, n, cuts)):
        assert plan[0].start == 0 and plan[-1].stop == frames
        assert all(a.stop == b.start for a, b in zip(plan, plan[1:]))
        assert all(1 <= s.count <= n for s in plan)
    aligned = plan_segments(frames, n, cuts)
    shots = list(zip([0, *[c for c in cuts if c < frames]], [*[c for c in cuts if c < frames], frames]))
    for a, b in zip(aligned, aligned[1:]):
        shot = next(s for s in shots if s[0] <= b.start < s[1])
        if b.start != shot[0]:  # a boundary inside a shot: only where the shot is longer than N
            assert shot[1] - shot[0] > n
        else:  # at a cut: packing the shot into the segment before would have made it too long
            assert a.count + shot[1] - shot[0] > n


def test_segment_plan_examples():
    starts = [s.start for s in plan_segments(250, 64, [30, 76, 137, 187, 242])]
    assert starts == [0, 30, 76, 137, 187]  # bikes: the last two shots (55 + 8 frames) share a segment
    assert [s.count for s in plan_segments(250, 64)] == [63, 63, 62, 62]
    assert [s.count for s in plan_segments(10, 3, [5])] == [3, 2, 3, 2]


def test_default_segment_frames_follow_the_memory_bound():
    assert default_segment_frames(1080, 1920, 0.5) < default_segment_frames(720, 1280, 0.5) < MAX_SEGMENT_FRAMES
    assert default_segment_frames(180, 320, 0.5) == MAX_SEGMENT_FRAMES
    assert default_segment_frames(4320, 7680, 0.5) == MIN_SEGMENT_FRAMES
    frames = default_segment_frames(720, 1280, 0.5, memory_bytes=1 << 30)
    assert frames * 61 * 720 * 1280 <= 1 << 30 < (frames + 1) * 61 * 720 * 1280


def test_segments_share_one_architecture_within_the_budget(gop_video):
    from nvp_export.inr import stored_bits

    cfg = EncodeConfig(bpp=4, fit=FitConfig(epochs=1), segment_frames=16, cuts="scene")
    plan = plan_video(EncodeJob(str(gop_video), "out.nvp"), FrameSelection(), cfg)
    assert [(s.start, s.count) for s in plan.segments] == [(0, 10), (10, 10), (20, 10), (30, 10)]
    configs = [plan.segment_config(k) for k in range(4)]
    assert {c.fc_dim for c in configs} == {plan.inr_config.fc_dim}
    assert sum(stored_bits(c) for c in configs) <= 4 * 40 * 48 * 64  # the whole video's budget
    whole = plan_video(EncodeJob(str(gop_video), "out.nvp"), FrameSelection(), EncodeConfig(bpp=4))
    assert len(whole.segments) == 1 and whole.inr_config.fc_dim > plan.inr_config.fc_dim


def test_settings_differences_are_named(gop_video, tmp_path):
    cfg = EncodeConfig(bpp=0.5, segment_frames=16)
    before = encode_settings(gop_video, FrameSelection(), cfg)
    assert first_difference(before, dict(before)) is None
    now = encode_settings(gop_video, FrameSelection(), EncodeConfig(bpp=0.25, segment_frames=16))
    assert first_difference(now, before) == "--bpp 0.25 vs 0.5 in the existing parts"
    now = encode_settings(gop_video, FrameSelection(0, 20), cfg)
    assert first_difference(now, before) == "--frames 0:20:1 vs 0::1 in the existing parts"
    other = tmp_path / "other.mp4"
    other.write_bytes(gop_video.read_bytes()[:-1] + b"\0")
    assert first_difference(encode_settings(other, FrameSelection(), cfg), before).startswith("source ")
    same_device = EncodeConfig(bpp=0.5, segment_frames=16, fit=FitConfig(device="cpu", threads=3, progress=False))
    assert encode_settings(gop_video, FrameSelection(), same_device) == before  # what does not change the result


def test_warm_starts_stay_within_a_shot(gop_video):
    job = EncodeJob(str(gop_video), "out.nvp")
    by_shot = plan_video(job, FrameSelection(), EncodeConfig(bpp=12, segment_frames=6))
    assert [s.start for s in by_shot.segments] == [0, 5, 10, 15, 20, 25, 30, 35]  # shots of 10 in halves
    assert by_shot.warm_from == (None, 0, None, 2, None, 4, None, 6)  # each shot's second half from its first
    fixed = plan_video(job, FrameSelection(), EncodeConfig(bpp=4, segment_frames=16, cuts="none"))
    assert fixed.warm_from == (None, None, None)  # shots unknown: a warm start could cross a cut, where it loses
    cold = plan_video(job, FrameSelection(), EncodeConfig(bpp=4, segment_frames=16, warm_start=False))
    assert cold.warm_from == (None,) * len(cold.segments)
