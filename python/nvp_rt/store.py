"""The model store: per-model data shared by every video.

Backbone-suffix graphs per (backbone, injection point), INR graphs per
architecture and compiled-engine caches live here, never inside a `.nvp`.
Entries are written atomically (a temporary file in the same folder, fsync,
rename), so readers never see half a file and two processes filling the store
at once are safe: both write the same bytes and the last rename wins.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .atomic import atomic_write

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}$")


class StoreEntryMissing(FileNotFoundError):
    """A graph the query needs is not in the model store."""


def default_root() -> Path:
    """$NVP_STORE, else $XDG_CACHE_HOME/nvp, else ~/.cache/nvp."""
    if os.environ.get("NVP_STORE"):
        return Path(os.environ["NVP_STORE"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "nvp"


class ModelStore:
    """Files keyed by (kind, name), e.g. ("suffix", "efficientnet_lite0@blocks.3")."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, kind: str, name: str, suffix: str = ".onnx") -> Path:
        for part, label in ((kind, "kind"), (name, "name")):
            if not _NAME.match(part):
                raise ValueError(f"invalid model-store {label} {part!r}: letters, digits and ._@+=- only")
        return self.root / kind / f"{name}{suffix}"

    def __contains__(self, key: tuple[str, str]) -> bool:
        return self.path(*key).is_file()

    def get(self, kind: str, name: str, suffix: str = ".onnx") -> Path:
        path = self.path(kind, name, suffix)
        if not path.is_file():
            raise StoreEntryMissing(
                f"the model store {self.root} has no {kind} '{name}'; `nvp-export` (task graphs) and "
                "`nvp encode` (decoder graphs) write it: run them with this store (--store or $NVP_STORE)"
            )
        return path

    def put(self, kind: str, name: str, data: bytes, suffix: str = ".onnx") -> Path:
        """Store `data` atomically; an identical entry already present is left untouched."""
        path = self.path(kind, name, suffix)
        if path.is_file() and path.stat().st_size == len(data) and _digest(path.read_bytes()) == _digest(data):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        return path


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
