"""Fidelity of the pixel paths: the same backbone fed decoded pixels instead of INR features.

The paper's pseudo-label protocol, applied to the two conventional pipelines an
NVP route replaces, each scored against the backbone on the original frames:

- full INR decode: every frame rendered to 8-bit RGB, preprocessed, the full backbone;
- H.264 at equal bpp: the original frames coded by libx264 at the bits per pixel
  of the .nvp's INR payload (``h264.at_bpp``), decoded, the full backbone.

Both pixel paths see 8-bit frames, as a viewer or a decoder hands them over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nvp_rt.nvpfile import ROUTES_SECTION, NvpFile
from nvp_rt.quality import psnr

from ..backbone import Backbone, to_uint8_frames, to_unit_frames
from .agreement import Fidelity, fidelity
from .h264 import H264Config, at_bpp

__all__ = ["PixelPath", "payload_bpp", "backbone_outputs", "compare_pixel_paths", "format_table"]


@dataclass
class PixelPath:
    name: str
    fidelity: Fidelity
    psnr: float  # dB, mean per frame, vs the original frames
    bpp: float | None
    detail: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            **self.fidelity.to_dict(),
            "psnr_db": self.psnr,
            "bpp": self.bpp,
            "detail": self.detail,
        }


def payload_bpp(nvp: NvpFile) -> float:
    """Bits per pixel of the file's coded INR (entropy-coded streams and their models; no manifest, no routes)."""
    video = nvp.manifest.get("video", {})
    pixels = video.get("frames", 0) * video.get("height", 0) * video.get("width", 0)
    if not pixels:
        raise ValueError(f"{nvp.path}: the manifest does not give the video's frames, height and width")
    return 8 * sum(n for name, n in nvp.sections.items() if name != ROUTES_SECTION) / pixels


@torch.no_grad()
def backbone_outputs(backbone: Backbone, frames: Any, batch: int = 8) -> torch.Tensor:
    """The full backbone's raw outputs on frames (uint8 or float in [0, 1], either layout)."""
    frames = to_unit_frames(frames)
    return torch.cat([backbone(backbone.preprocess(frames[s : s + batch])) for s in range(0, frames.shape[0], batch)])


def compare_pixel_paths(
    inr,
    original: Any,
    backbone: Backbone,
    bpp: float | None,
    h264: H264Config = H264Config(),
    reference: torch.Tensor | None = None,
) -> list[PixelPath]:
    """Full INR decode and (when ``bpp`` is given) H.264 at ``bpp``, scored against ``reference``
    (default: the backbone on ``original``)."""
    original_u8 = to_uint8_frames(to_unit_frames(original))
    if reference is None:
        reference = backbone_outputs(backbone, original_u8)
    decoded = inr.render(range(inr.num_frames))
    paths = [
        PixelPath(
            "full INR decode",
            fidelity(backbone_outputs(backbone, decoded), reference, backbone.task),
            psnr(original_u8, decoded),
            bpp,
            "8-bit RGB rendering",
        )
    ]
    if bpp is not None:
        coded = at_bpp(original_u8, bpp, h264)
        note = "" if coded.matched else f"; target {bpp:.3f} bpp is outside CRF 0-51"
        paths.append(
            PixelPath(
                "H.264 at equal bpp",
                fidelity(backbone_outputs(backbone, coded.frames), reference, backbone.task),
                psnr(original_u8, coded.frames),
                coded.bpp,
                coded.describe() + note,
            )
        )
    return paths


def format_table(rows: list[tuple[str, Fidelity, str]]) -> str:
    """Aligned lines: path name, top-1 agreement, top-5 overlap, detail."""
    width = max(len(name) for name, _, _ in rows)

    def pct(v):
        return f"{v:6.1%}" if v is not None else "   n/a"

    lines = [f"  {'path':<{width}}  top-1  top-5"]
    lines += [f"  {name:<{width}} {pct(f.top1_agreement)} {pct(f.top5_overlap)}  {detail}" for name, f, detail in rows]
    return "\n".join(lines)
