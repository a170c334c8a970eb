"""H.264 at a target bpp: the CRF bisection lands on the rate, and the GOP setting is applied."""

import numpy as np
import pytest

from nvp_export.clips import PHOTOS, ClipSpec, make_clip
from nvp_export.fidelity.h264 import H264Config, at_bpp, code
from nvp_rt.quality import psnr


@pytest.fixture
def clip(rng):
    spec = ClipSpec(PHOTOS[rng.integers(len(PHOTOS))], width=64, height=48, frames=8, seed=int(rng.integers(1000)))
    return make_clip(spec)


def bpp_of(frames, crf, config=H264Config()):
    return 8 * code(frames, crf, config)[1] / frames[..., 0].size


def test_bisection_hits_a_target_inside_the_crf_range(clip, rng):
    low, high = bpp_of(clip, 40), bpp_of(clip, 8)
    target = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    result = at_bpp(clip, target)
    assert result.matched and abs(result.bpp / target - 1) <= 0.03, (target, result.bpp, result.crf)
    assert 8 <= result.crf <= 40 and result.encodes <= 2 + H264Config().max_steps
    assert result.frames.shape == clip.shape and result.frames.dtype == np.uint8
    assert psnr(clip, result.frames) > psnr(clip, code(clip, 45)[0])  # more bits, closer to the source
    assert f"CRF {result.crf:.2f}" in result.describe() and f"GOP {clip.shape[0]}" in result.describe()


def test_targets_outside_the_range_return_the_nearest_end(clip):
    cheap = at_bpp(clip, 1e-4)
    assert cheap.crf == 51 and not cheap.matched and cheap.encodes == 1
    rich = at_bpp(clip, 1e3)
    assert rich.crf == 0 and not rich.matched and rich.bpp < 1e3


def test_gop_is_applied(clip):
    one_gop = bpp_of(clip, 23)
    intra_only = bpp_of(clip, 23, H264Config(gop=1))  # every frame a keyframe: no temporal prediction
    assert intra_only > 1.3 * one_gop
    assert at_bpp(clip, one_gop, H264Config(gop=2)).gop == 2


def test_bad_input_is_refused(clip):
    with pytest.raises(ValueError, match="even"):
        code(clip[:, :47], 23)
    with pytest.raises(ValueError, match="positive"):
        at_bpp(clip, 0)
    with pytest.raises(ValueError, match="gop"):
        H264Config(gop=0)
