"""The base's weights on disk: safetensors (no pickle), its configuration and hash in the metadata.

The package ships one (``SHIPPED``); files name it by ``weights_hash``, which a reader recomputes from
the tensors it loaded, so a damaged or different weights file cannot pass for the base a file names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from nvp_rt.atomic import atomic_write

from .model import Base, BaseConfig, weights_hash

SHIPPED = Path(__file__).with_name("weights") / "base.safetensors"


class BaseWeightsError(ValueError):
    """The weights file is missing, malformed, or not the base it claims to be."""


def save_base(path: str | os.PathLike, model: Base, extra: dict[str, str] | None = None) -> str:
    """Write ``model``'s weights atomically with its config and hash; returns the hash."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    digest = weights_hash(state)
    metadata = {"config": json.dumps(model.config.to_dict()), "sha256": digest, **(extra or {})}
    atomic_write(Path(path), save(state, metadata))
    return digest


def load_base(path: str | os.PathLike | None = None) -> tuple[Base, str]:
    """(the base in eval mode, its hash) from ``path`` (default: the shipped weights)."""
    path = Path(path) if path is not None else SHIPPED
    if not path.is_file():
        raise BaseWeightsError(f"no base weights at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
        config = BaseConfig.from_dict(json.loads(metadata["config"]))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise BaseWeightsError(f"{path}: not a base weights file ({str(e).splitlines()[0][:200]})") from None
    digest = weights_hash(state)
    if metadata.get("sha256") != digest:
        raise BaseWeightsError(f"{path}: weights do not match their recorded hash")
    model = Base(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BaseWeightsError(f"{path}: weights do not fit their configuration ({str(e).splitlines()[0]})") from None
    return model.eval(), digest
