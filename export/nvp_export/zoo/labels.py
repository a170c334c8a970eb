"""Class names the presets answer with."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the standard index order (WordNet lemmas)."""
    lines = (Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8").splitlines()
    if len(lines) != 1000:
        raise RuntimeError(f"imagenet_classes.txt must hold 1000 names; it holds {len(lines)}")
    return tuple(lines)
