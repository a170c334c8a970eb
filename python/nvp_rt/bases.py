"""The pretrained bases this reader knows, by hash: a file encoded against a base (docs/base.md) names
it by the sha256 of its weights, and a reader without those weights refuses the file.

Known bases are the safetensors weights files in the package's shipped folder
(``nvp_export/base/weights``, found without importing torch) and in the folders of ``NVP_BASES``
(``os.pathsep``-separated); each file's recorded hash (its metadata's ``sha256``) is read from its
header only. The export side recomputes the hash from the tensors when it loads a base to decode.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open


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
