"""Loading a user's checkpoint safely: no pickle code runs, keys must match exactly.

The backbone presets (``zoo``) and the CLIP scorer (``fidelity.clip_score``) read their weights here;
a checkpoint they cannot use is a ``WeightsError``, reported in one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Wrappers training frameworks put around a state dict (pytorchvideo: model_state, timm/others: state_dict).
_WRAPPER_KEYS = ("state_dict", "model_state", "model")


class WeightsError(ValueError):
    """A checkpoint that cannot be used for this backbone (unreadable, wrong keys or shapes)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch checkpoint (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure is the file's fault, reported in one line
        raise WeightsError(f"cannot read weights from {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``, requiring the same keys and shapes (a one-line error otherwise)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{source}: keys do not match ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise WeightsError(
            f"{source}: {len(wrong)} tensors have the wrong shape, e.g. {k}: "
            f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        )
    module.load_state_dict(state, strict=True)


def find_cached(filenames: Sequence[str]) -> Path | None:
    """The first of ``filenames`` in torch hub's checkpoint cache (where torchvision keeps downloads)."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in filenames:
        if (cache / name).is_file():
            return cache / name
    return None
