"""The pretrained bases this reader knows, by hash: a file encoded against a base (docs/base.md) names
it by the sha256 of its weights, and a reader without those weights refuses the file.

Known bases are the safetensors weights files in the package's shipped folder
(``nvp_export/base/weights``, found without importing torch) and in the folders of ``NVP_BASES``
(``os.pathsep``-separated); each file's recorded hash (its metadata's ``sha256``) is read from its
header only. Whoever decodes with a base loads it with :func:`load_weights`, which recomputes the
hash from the tensors (:func:`weights_hash`, the export side's too), so a damaged or different
weights file cannot pass for the base a file names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file

from .schema import NvpFormatError


def _folders() -> list[Path]:
    folders = [Path(p) for p in os.environ.get("NVP_BASES", "").split(os.pathsep) if p]
    spec = importlib.util.find_spec("nvp_export")
    if spec is not None and spec.origin is not None:
        folders.append(Path(spec.origin).parent / "base" / "weights")
    return folders


def known_bases() -> dict[str, Path]:
    """sha256 -> weights file, for every base this reader can find (unreadable files are skipped)."""
    out: dict[str, Path] = {}
    for folder in _folders():
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            try:
                with safe_open(str(path), "numpy") as f:
                    digest = (f.metadata() or {}).get("sha256")
            except (SafetensorError, OSError):
                continue
            if isinstance(digest, str):
                out.setdefault(digest, path)
    return out


def weights_hash(state: Mapping[str, np.ndarray]) -> str:
    """sha256 over the weights' names, dtypes, shapes and bytes in name order: a base's identity in files.

    Each tensor adds ``name|torch.<dtype>|<shape tuple>|`` then its bytes (little-endian, C order): the
    dtype as torch names it, since the export side hashed torch tensors when it recorded the shipped
    base's hash (numpy's names for the dtypes both have are torch's without the prefix)."""
    h = hashlib.sha256()
    for name in sorted(state):
        a = np.asarray(state[name])
        h.update(f"{name}|torch.{a.dtype.name}|{tuple(int(d) for d in a.shape)}|".encode())
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(order="C"))
    return h.hexdigest()


def load_weights(digest: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(every tensor of the base named by ``digest``, its configuration), its hash recomputed; a base this
    reader does not have, or whose file is damaged: NvpFormatError, one line."""
    path = known_bases().get(digest)
    if path is None:
        raise NvpFormatError(
            f"base {digest} is not one this reader has (a base's weights file in nvp_export/base/weights "
            "or a folder of NVP_BASES)"
        )
    try:
        with safe_open(str(path), "numpy") as f:
            config = json.loads((f.metadata() or {})["config"])
        state = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise NvpFormatError(f"{path}: not a base weights file ({str(e).splitlines()[0][:200]})") from None
    if weights_hash(state) != digest:
        raise NvpFormatError(f"{path}: the weights do not match their recorded hash {digest}")
    if not isinstance(config, dict):
        raise NvpFormatError(f"{path}: the base's configuration is not a mapping")
    return state, config
