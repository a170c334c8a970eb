"""The clip the experiments race and kill commands on (8 frames of 64x64), and the commands: an encode and a
route export that take seconds."""

from __future__ import annotations

import sys
from pathlib import Path


def write_tiny_clip(path: Path) -> None:
    from nvp_export.clips import ClipSpec, write_clip

    write_clip(path, ClipSpec("chelsea", width=64, height=64, frames=8, seed=1))


def encode_command(clip: Path, out: Path, epochs: int) -> list[str]:
    """`nvp encode` of ``clip`` into ``out``: a small HNeRV, ``epochs`` epochs on one thread, quietly."""
    options = ["--params", "60000", "--epochs", str(epochs), "--threads", "1", "-q", "-y"]
    return [sys.executable, "-m", "nvp_rt.cli", "encode", str(clip), "-o", str(out), *options]


def export_command(nvp: Path, name: str | None = None, source: Path | None = None) -> list[str]:
    """`nvp-export` of an EfficientNet-Lite0 route into ``nvp``: one epoch of the top CKA pair, quietly."""
    named = ["--name", name] if name else []
    sourced = ["--source", str(source)] if source else []
    options = ["--epochs", "1", "--candidates", "top", "--top", "0.05", "-q", "--no-compare-pixels"]
    export = [sys.executable, "-m", "nvp_export.cli", "--task", "efficientnet_lite0"]
    return [*export, *named, str(nvp), *sourced, *options]
