"""The .nvp container: one file per video, safe to open from untrusted storage.

Layout (docs/format.md has the full description)::

    magic (8 bytes) | major u16 | minor u16 | manifest length u32 | crc32 of the header so far + manifest
    manifest (UTF-8 JSON) | section bytes ...

The manifest names every section with its offset (from the end of the
manifest), length and crc32; each section is a safetensors blob of numpy
arrays, whose meaning is described by the section's ``meta`` in the manifest.
Nothing here executes stored code: JSON and safetensors only, every length is
checked against the file before it is used, every byte is covered by a checksum.

Sections: ``inr`` holds the entropy-coded INR (see codec.py) and is written
once; ``routes`` holds the per-task adapters and is replaced by
:func:`replace_routes`, which carries the ``inr`` bytes over verbatim.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from . import schema
from .atomic import atomic_write, exclusive_lock
from .schema import NvpFormatError

MAGIC = b"\x89NVP\r\n\x1a\n"  # PNG-style: catches text-mode transfers and truncation at byte 0
FORMAT_VERSION = (1, 0)  # a reader accepts any minor of its major
_HEADER = struct.Struct("<8sHHII")
MAX_MANIFEST_BYTES = 16 << 20
INR_SECTION = "inr"
ROUTES_SECTION = "routes"


@dataclass(frozen=True)
class Route:
    """How one task reads this video: decode the INR to ``tap``, adapt, inject into ``backbone``."""

    task: str
    backbone: str
    tap: str
    injection_point: str
    arrays: dict[str, np.ndarray]  # adapter weights, e.g. {"weight": (C_out, C_in), "bias": (C_out,)}
    metadata: dict[str, Any]

    def header(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "backbone": self.backbone,
            "tap": self.tap,
            "injection_point": self.injection_point,
            "arrays": sorted(self.arrays),
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Section:
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


@dataclass(frozen=True)
class NvpFile:
    """A validated .nvp file in memory."""

    path: Path
    version: tuple[int, int]
    manifest: dict[str, Any]  # without the section index
    sections: dict[str, Section]
    size_bytes: int
    checksums: dict[str, int]  # section name -> crc32, as the manifest's index states it

    @classmethod
    def open(cls, path: str | os.PathLike) -> NvpFile:
        path = Path(path)
        if path.is_dir():
            raise NvpFormatError(f"{path} is a directory, not a .nvp file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NvpFormatError(f"{path}: no such file") from None
        except OSError as e:
            raise NvpFormatError(f"{path}: cannot read ({e.strerror})") from None
        version, manifest, raw = _parse(data, str(path))
        index = manifest.pop("sections")
        sections = {}
        for name, entry in index.items():
            try:
                arrays = _st_load(raw[name]) if raw[name] else {}
            except (SafetensorError, ValueError, TypeError, KeyError) as e:  # KeyError: a dtype numpy lacks
                raise NvpFormatError(f"{path}: section {name!r} is not a valid array blob ({e})") from None
            sections[name] = Section(arrays, entry.get("meta", {}))
        checksums = {name: entry["crc32"] for name, entry in index.items()}
        nvp = cls(path, version, manifest, sections, len(data), checksums)
        try:
            schema.check_inr_manifest(manifest)
            nvp.routes()
        except NvpFormatError as e:
            raise NvpFormatError(f"{path}: {e}") from None
        return nvp

    @property
    def inr(self) -> Section:
        return self.sections[INR_SECTION]

    def routes(self) -> list[Route]:
        """The routes, validated against the INR's taps (``schema.check_routes``)."""
        section = self.sections.get(ROUTES_SECTION)
        if section is None:
            return []
        channels = {t["name"]: t["shape"][0] for t in self.manifest["taps"]}
        return [
            Route(h["task"], h["backbone"], h["tap"], h["injection_point"], h["arrays"], h["metadata"])
            for h in schema.check_routes(section.meta, section.arrays, channels)
        ]


def _parse(data: bytes, where: str) -> tuple[tuple[int, int], dict, dict[str, bytes]]:
    if len(data) < _HEADER.size:
        raise NvpFormatError(f"{where}: too short to be a .nvp file ({len(data)} bytes)")
    magic, major, minor, manifest_len, manifest_crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise NvpFormatError(f"{where}: not a .nvp file (bad magic)")
    if major != FORMAT_VERSION[0]:
        raise NvpFormatError(
            f"{where}: .nvp format {major}.{minor} is not supported (this reader: {FORMAT_VERSION[0]}.x)"
        )
    if manifest_len > MAX_MANIFEST_BYTES or _HEADER.size + manifest_len > len(data):
        raise NvpFormatError(f"{where}: truncated or corrupt (manifest length {manifest_len} exceeds the file)")
    body_start = _HEADER.size + manifest_len
    manifest_bytes = data[_HEADER.size : body_start]
    if zlib.crc32(manifest_bytes, zlib.crc32(data[: _HEADER.size - 4])) != manifest_crc:
        raise NvpFormatError(f"{where}: manifest checksum mismatch (file corrupt or tampered)")
    try:
        manifest = schema.mapping(schema.load_json(manifest_bytes, "manifest"), "manifest")
        index = schema.check_section_index(manifest.get("sections"))
    except NvpFormatError as e:
        raise NvpFormatError(f"{where}: {e}") from None
    body = memoryview(data)[body_start:]
    raw, end = {}, 0
    for name, (offset, length, crc, _) in sorted(index.items(), key=lambda kv: kv[1][0]):
        if offset != end:
            raise NvpFormatError(f"{where}: section {name!r} overlaps or leaves a gap")
        if offset + length > len(body):
            raise NvpFormatError(f"{where}: truncated (section {name!r} ends past the end of the file)")
        chunk = bytes(body[offset : offset + length])
        if zlib.crc32(chunk) != crc:
            raise NvpFormatError(f"{where}: section {name!r} checksum mismatch (file corrupt or tampered)")
        raw[name] = chunk
        end = offset + length
    if end != len(body):
        raise NvpFormatError(f"{where}: {len(body) - end} unexpected trailing bytes")
    if INR_SECTION not in raw:
        raise NvpFormatError(f"{where}: no {INR_SECTION!r} section")
    return (major, minor), manifest, raw


def _blob(arrays: dict[str, np.ndarray]) -> bytes:
    return _st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()}) if arrays else b""


def _serialise(manifest: dict[str, Any], sections: dict[str, tuple[bytes, dict]]) -> bytes:
    index, offset = {}, 0
    for name, (blob, meta) in sections.items():
        index[name] = {"offset": offset, "length": len(blob), "crc32": zlib.crc32(blob), "meta": meta}
        offset += len(blob)
    # allow_nan=False: a NaN would make a file its own reader refuses (strict JSON), so writing fails instead.
    manifest_bytes = json.dumps({**manifest, "sections": index}, indent=1, sort_keys=True, allow_nan=False).encode()
    prefix = _HEADER.pack(MAGIC, *FORMAT_VERSION, len(manifest_bytes), 0)[:-4]
    header = prefix + struct.pack("<I", zlib.crc32(manifest_bytes, zlib.crc32(prefix)))
    return b"".join([header, manifest_bytes, *(blob for blob, _ in sections.values())])


def _routes_section(routes: Sequence[Route]) -> tuple[bytes, dict]:
    arrays = {f"{i}/{k}": v for i, r in enumerate(routes) for k, v in r.arrays.items()}
    return _blob(arrays), {"routes": [r.header() for r in routes]}


def write_nvp(
    path: str | os.PathLike,
    manifest: dict[str, Any],
    inr_arrays: dict[str, np.ndarray],
    inr_meta: dict[str, Any],
    routes: Sequence[Route] = (),
) -> int:
    """Write a complete .nvp file atomically; returns its size in bytes."""
    data = _serialise(
        manifest, {INR_SECTION: (_blob(inr_arrays), inr_meta), ROUTES_SECTION: _routes_section(list(routes))}
    )
    atomic_write(path, data)
    return len(data)


def replace_routes(path: str | os.PathLike, routes: list[Route]) -> int:
    """Swap the routes of an existing file; the INR payload bytes are copied verbatim, not re-encoded."""
    return update_routes(path, lambda _: list(routes))


def update_routes(
    path: str | os.PathLike, change: Callable[[list[Route]], list[Route]], inr_checksum: int | None = None
) -> int:
    """Read-modify-write of the routes under an exclusive lock: ``change`` gets the routes the file
    has at that moment, so concurrent writers each keep the others' routes. With ``inr_checksum``
    (the INR section's crc32 the caller worked from), a file whose INR changed meanwhile is refused."""
    with exclusive_lock(path):
        current = NvpFile.open(path)
        data = Path(path).read_bytes()
        _, manifest, raw = _parse(data, str(path))
        index = manifest.pop("sections")
        if inr_checksum is not None and index[INR_SECTION]["crc32"] != inr_checksum:
            raise NvpFormatError(
                f"{path}: its video payload was rewritten while this route was trained "
                "(another process changed the file); run the export again"
            )
        sections = {name: (raw[name], index[name].get("meta", {})) for name in raw if name != ROUTES_SECTION}
        sections[ROUTES_SECTION] = _routes_section(list(change(current.routes())))
        out = _serialise(manifest, sections)
        atomic_write(path, out)
    return len(out)
