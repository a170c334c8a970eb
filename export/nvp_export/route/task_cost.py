"""What a task route costs: adapter size relative to the backbone, and MACs of the NVP path vs the pixel path.

NVP path: INR decode up to the tap -> adapter (resize + 1x1 conv per pathway) -> backbone suffix.
Pixel path: full INR decode to RGB -> the backbone's preprocessing resize -> full backbone.
Both are counted per sample (a frame, or a clip of the backbone's ``num_frames`` frames)
with ``flops.macs`` (1 MAC = 1 FLOP as in the paper, bilinear resizes included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..backbone import Backbone
from .flops import macs
from .multipathway import PathwayAdapter, decode_clips

__all__ = ["macs", "RouteCost", "route_cost"]


@dataclass
class RouteCost:
    backbone: str
    tap: str
    point: str
    adapter_params: int
    backbone_params: int
    macs_nvp: int  # per sample: INR prefix + adapter + suffix
    macs_full: int  # per sample: full INR decode + resize + full backbone

    @property
    def adapter_percent(self) -> float:
        return 100.0 * self.adapter_params / self.backbone_params

    @property
    def macs_ratio(self) -> float:
        return self.macs_nvp / self.macs_full

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adapter_percent": self.adapter_percent, "macs_ratio": self.macs_ratio}


def _sample_indices(backbone: Backbone) -> torch.Tensor:
    t = backbone.preprocess.num_frames
    return torch.arange(t).unsqueeze(0) if t > 1 else torch.zeros(1, dtype=torch.long)


def route_cost(
    inr, backbone: Backbone, tap: str, point: str, suffix: Callable[[Any, str], Any] | None = None
) -> RouteCost:
    """Cost of the route ``tap`` -> ``point`` for one sample; the INR must encode at least one clip's frames.

    ``suffix(features, point)`` is what runs after the injection point (default ``backbone.suffix``);
    the pixel path then runs the prefix to the first injection point and the same suffix from there,
    which prefix/suffix splitting makes the full forward (e.g. BLIP's vision tower without the
    data-dependent text generation, which costs both paths the same and can be counted apart).
    """
    suffix = suffix or backbone.suffix
    if backbone.preprocess.num_frames > inr.num_frames:
        raise ValueError(
            f"{backbone.name} needs {backbone.preprocess.num_frames} frames per sample; "
            f"the INR encodes {inr.num_frames}"
        )
    idx = _sample_indices(backbone)
    adapter = PathwayAdapter(inr.tap_shapes()[tap][0], backbone.point(point)).eval()
    last = inr.tap_names[-1]

    first = backbone.point_names[0]

    def nvp():
        return suffix(adapter(decode_clips(inr, idx, tap)), point)

    def full():
        return suffix(backbone.prefix(backbone.preprocess(decode_clips(inr, idx, last)), first), first)

    return RouteCost(
        backbone.name, tap, point, adapter.num_parameters(), backbone.num_parameters(), macs(nvp), macs(full)
    )
