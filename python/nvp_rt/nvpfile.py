"""The .nvp container: one file per video, safe to open from untrusted storage.

Layout (docs/format.md has the full description)::

    magic (8 bytes) | major u16 | minor u16 | manifest length u32 | crc32 of the header so far + manifest
    manifest (UTF-8 JSON) | section bytes ...

The manifest names every section with its offset (from the end of the
manifest), length and crc32; each section is a safetensors blob of numpy
arrays, whose meaning is described by the section's ``meta`` in the manifest.
Nothing here executes stored code: JSON and safetensors only, every length is
checked against the file before it is used, every byte is covered by a checksum.

A video is a list of *segments* (consecutive frame ranges), each an
independently decodable INR of one shared architecture, stored as one section
per group of its payload (``seg<i>/model``: the entropy model; ``seg<i>/<stage>``:
a decoder stage; ``seg<i>/embeddings``): opening reads the header and manifest
only, and a query reads the sections of the segments and stages it needs,
checking each one's crc32 as it arrives. A path with a protocol
(``s3://``, ``gs://``, ``memory://``...) is read through fsspec with ranged reads.
``routes`` holds the per-task adapters (entropy-coded too) and is replaced by
:func:`update_routes`, which carries the INR sections over verbatim.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from . import bases as _bases
from . import codec, schema
from .atomic import atomic_write, exclusive_lock
from .schema import NvpFormatError

MAGIC = b"\x89NVP\r\n\x1a\n"  # PNG-style: catches text-mode transfers and truncation at byte 0
FORMAT_VERSION = (2, 1)  # a reader accepts any minor of the majors it knows; 2.1 added files against a base
READABLE_MAJORS = (1, 2)  # 1.x: one INR section, float32 routes
_HEADER = struct.Struct("<8sHHII")
MAX_MANIFEST_BYTES = 16 << 20
# A section's safetensors header (JSON, parsed before any array), bounded before parsing as the
# manifest is: nvp's are a few KB (2.7 KB for the routes of five tasks).
MAX_SECTION_HEADER_BYTES = 1 << 20
MAX_READ_BYTES = 64 << 20  # one ranged read; adjacent sections beyond it are fetched in further reads
V1_INR_SECTION = "inr"
ROUTES_SECTION = "routes"
BASE_SECTION = "base/payload"  # a file against a base: its latents and modulation, coded
ROUTE_BITS = 8
_SEGMENT_SECTION = re.compile(r"^seg(0|[1-9][0-9]{0,6})/([A-Za-z0-9][A-Za-z0-9._@+=-]{0,199})$")


def segment_section(segment: int, group: str) -> str:
    return f"seg{segment}/{group}"


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
class Segment:
    """Frames ``start .. start + frames - 1`` of the video, decoded by their own INR."""

    start: int
    frames: int


class _Source:
    """Byte ranges of a file: ``os.pread`` on a local file kept open (a file replaced meanwhile is still
    read whole, from the inode it had at open), exact ranged reads through fsspec for a URL.

    Whatever goes wrong in storage (an HTTP error status, a reply shorter than its Content-Length, a
    server that gives no size or ignores ranges, a file replaced since it was opened) is one
    NvpFormatError naming the URL and what happened, never the storage library's own exception."""

    def __init__(self, path: str):
        self.path, self.bytes_read = path, 0
        self._lock = threading.Lock()
        self._fd: int | None = None  # set first: __del__ runs even when opening fails
        if "://" in path:
            try:
                import fsspec

                self._fs, self._key = fsspec.core.url_to_fs(path)
            except (ImportError, ValueError) as e:  # an unknown protocol, or its package missing
                raise NvpFormatError(f"{path}: cannot read ({str(e)[:200]})") from None
            self.size, self._version = self._remote_version()
            return
        if Path(path).is_dir():
            raise NvpFormatError(f"{path} is a directory, not a .nvp file")
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise NvpFormatError(f"{path}: no such file") from None
        except OSError as e:
            raise NvpFormatError(f"{path}: cannot read ({e.strerror})") from None
        self.size = os.fstat(self._fd).st_size

    def _remote(self, call: Callable[[], Any], doing: str) -> Any:
        """``call()`` (an fsspec request), its failure as one line."""
        try:
            return call()
        except FileNotFoundError as e:
            cause = _storage_failure(e.__cause__) if e.__cause__ is not None else None  # fsspec's HTTP 5xx at info
            raise NvpFormatError(f"{self.path}: {cause or 'no such file'} ({doing})") from None
        except Exception as e:  # any storage library's failure (aiohttp's, botocore's...): one line
            raise NvpFormatError(f"{self.path}: {_storage_failure(e)} ({doing})") from None

    def _remote_version(self) -> tuple[int, tuple]:
        """(size, what identifies this version of the file: size, ETag, Last-Modified where the store says)."""
        info = self._remote(lambda: self._fs.info(self._key), "asking for its size")
        size = info.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise NvpFormatError(
                f"{self.path}: the server does not give the file's size (no Content-Length); nvp reads files by ranges"
            )
        return size, (size, *(info.get(k) for k in _VERSION_KEYS))

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if self._fd is None:
            data = (
                bytes(self._remote(lambda: self._fs.cat_file(self._key, start=offset, end=offset + length), "reading"))
                if length
                else b""
            )
            if len(data) > length:
                raise NvpFormatError(
                    f"{self.path}: the server ignores range requests (it sent {len(data)} bytes for {length}); "
                    "nvp reads files by ranges"
                )
        else:
            data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise NvpFormatError(f"{self.path}: {self._changed() or 'the file changed or shrank while it was read'}")
        with self._lock:
            self.bytes_read += length
        return data

    def mismatch(self, what: str) -> NvpFormatError:
        """The error for bytes whose checksum does not match: a URL's file replaced since it was opened says
        so (a local file is read from the inode it had at open)."""
        changed = self._changed()
        if changed:
            return NvpFormatError(f"{self.path}: {changed} (read {what} again)")
        return NvpFormatError(f"{self.path}: {what} checksum mismatch (file corrupt or tampered)")

    def _changed(self) -> str | None:
        """How a URL's file differs from the one opened (its size, ETag or modification time), if it does."""
        if self._fd is not None:
            return None
        size, version = self._remote_version()
        if version == self._version:
            return None
        sizes = f": {self.size} bytes then, {size} now" if size != self.size else ""
        return f"the file changed since it was opened{sizes}"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


# What identifies a version of a file in fsspec's info, by filesystem: HTTP, S3, GCS, memory and others.
_VERSION_KEYS = ("ETag", "Last-Modified", "LastModified", "etag", "updated", "mtime", "created")


def _storage_failure(error: BaseException) -> str:
    """What a storage library's exception says, in a few words: an HTTP status, a reply cut short, ..."""
    status = getattr(error, "status", None)
    if isinstance(status, int):  # aiohttp's ClientResponseError
        if status == 404:
            return "no such file"
        if status == 416:
            return "the file changed since it was opened (HTTP 416: a range past its end)"
        return f"HTTP {status} {getattr(error, 'message', '')}".rstrip()
    if type(error).__name__ in ("ClientPayloadError", "ContentLengthError", "TransferEncodingError"):
        return "the reply ended before the length the server announced"
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {str(error)[:200]}" if str(error) else type(error).__name__


@dataclass(frozen=True)
class _Entry:
    offset: int  # from the start of the file
    length: int
    crc32: int
    meta: dict[str, Any]


class NvpFile:
    """A .nvp file whose header and manifest are read and validated; sections are read when asked for."""

    def __init__(self, source: _Source, version: tuple[int, int], manifest: dict[str, Any], index: dict[str, _Entry]):
        self.path, self.version, self.manifest = source.path, version, manifest
        self.size_bytes = source.size
        self._source, self._index = source, index
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()
        self.segments = _segments(manifest, version)
        # The pretrained base this file was encoded against (docs/base.md), or None for a file of its own INRs.
        self.base: dict[str, Any] | None = manifest.get("base")
        if self.base is not None:
            if BASE_SECTION not in index or any(_SEGMENT_SECTION.match(n) for n in index):
                raise NvpFormatError(f"a file against a base holds its payload in {BASE_SECTION!r} and no segment")
        elif version[0] >= 2:
            _check_segment_sections(index, len(self.segments))
        self._routes: list[Route] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, bases: Collection[str] | None = None) -> NvpFile:
        """``bases``: the hashes of the pretrained bases this reader has (default: ``bases.known_bases()``);
        a file encoded against another is refused in one line naming its hash."""
        source = _Source(str(path))
        where = source.path
        header = source.read(0, _HEADER.size)
        version, manifest_len = _parse_header(header, source.size, where)
        body_start = _HEADER.size + manifest_len
        manifest = _parse_manifest(header, source.read(_HEADER.size, manifest_len), source)
        try:
            index = _check_index(manifest.pop("sections", None), version, body_start, source.size)
            if "base" in manifest:
                schema.check_base_manifest(manifest)
                digest = manifest["base"]["sha256"]
                if digest not in (_bases.known_bases() if bases is None else bases):
                    raise NvpFormatError(
                        f"encoded against base {digest}, which this reader does not have "
                        "(a base's weights file in nvp_export/base/weights or a folder of NVP_BASES)"
                    )
            else:
                schema.check_inr_manifest(manifest)
            nvp = cls(source, version, manifest, index)
            nvp.routes()
        except NvpFormatError as e:  # named once: a section's own errors already start with the path
            raise NvpFormatError(str(e) if str(e).startswith(f"{where}: ") else f"{where}: {e}") from None
        return nvp

    @property
    def bytes_read(self) -> int:
        """Bytes this object has fetched from storage so far (header, manifest, sections)."""
        return self._source.bytes_read

    @property
    def sections(self) -> dict[str, int]:
        """Section name -> length in bytes, in file order."""
        return {name: e.length for name, e in self._index.items()}

    @property
    def payload_checksum(self) -> int:
        """One crc32 over every section but the routes: changes whenever the video payload does."""
        crc = 0
        for name, entry in self._index.items():
            if name != ROUTES_SECTION:
                crc = zlib.crc32(struct.pack("<I", entry.crc32), zlib.crc32(name.encode(), crc))
        return crc

    def section(self, name: str) -> dict[str, np.ndarray]:
        """A section's arrays, read (one ranged read), checksummed and parsed on first use."""
        return self.sections_of([name])[name]

    def sections_of(self, names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """Several sections' arrays; those not read yet are fetched with one ranged read per run of
        adjacent sections (a segment's model, embeddings and stages lie back to back), then each is
        checksummed and parsed."""
        with self._lock:
            out = {n: self._arrays[n] for n in names if n in self._arrays}
        missing = sorted((n for n in dict.fromkeys(names) if n not in out), key=lambda n: self._index[n].offset)
        runs: list[list[str]] = []
        for name in missing:
            last = self._index[runs[-1][-1]] if runs else None
            entry = self._index[name]
            if (
                last is not None
                and last.offset + last.length == entry.offset
                and entry.offset + entry.length - self._index[runs[-1][0]].offset <= MAX_READ_BYTES
            ):
                runs[-1].append(name)
            else:
                runs.append([name])
        for run in runs:
            start = self._index[run[0]].offset
            data = self._source.read(start, self._index[run[-1]].offset + self._index[run[-1]].length - start)
            for name in run:
                entry = self._index[name]
                out[name] = self._parse_section(name, data[entry.offset - start :][: entry.length])
        with self._lock:
            self._arrays.update(out)
        return out

    def _parse_section(self, name: str, chunk: bytes) -> dict[str, np.ndarray]:
        if zlib.crc32(chunk) != self._index[name].crc32:
            raise self._source.mismatch(f"section {name!r}")
        header = int.from_bytes(chunk[:8], "little") if len(chunk) >= 8 else 0
        if header > MAX_SECTION_HEADER_BYTES:
            raise NvpFormatError(
                f"{self.path}: section {name!r} has an array header of {header} bytes "
                f"(at most {MAX_SECTION_HEADER_BYTES})"
            )
        try:
            return _st_load(chunk) if chunk else {}
        except (SafetensorError, ValueError, TypeError, KeyError) as e:  # KeyError: a dtype numpy lacks
            # The parser's message may quote the whole header: its start says what is wrong.
            raise NvpFormatError(f"{self.path}: section {name!r} is not a valid array blob ({str(e)[:200]})") from None

    @property
    def num_frames(self) -> int:
        """The video's frames, all segments together."""
        return sum(s.frames for s in self.segments)

    def section_meta(self, name: str) -> dict[str, Any]:
        """A section's description in the manifest (``meta``; empty if it has none)."""
        return self._index[name].meta

    def payload_sections(self) -> dict[str, tuple[bytes, dict[str, Any]]]:
        """Every section but the routes as (bytes, meta), each read once and checked (crc32, array blob):
        what a rewrite carries over verbatim."""
        out = {}
        for name, entry in self._index.items():
            if name != ROUTES_SECTION:
                chunk = self._source.read(entry.offset, entry.length)
                self._parse_section(name, chunk)
                out[name] = (chunk, entry.meta)
        return out

    def verify(self) -> None:
        """Read every section once: any damaged byte anywhere in the file raises NvpFormatError."""
        self.sections_of(list(self._index))

    def segment_tensors(self, segment: int, groups: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The dequantised tensors of ``groups`` (default: all) of one segment; reads only their sections."""
        if self.version[0] == 1:  # one segment, one section: it is all or nothing
            entry = self._index[V1_INR_SECTION]
            return codec.decode_tensors(self.section(V1_INR_SECTION), entry.meta)
        model = self._index[segment_section(segment, codec.MODEL)]
        described = model.meta.get("groups")  # "all" is what the model codes, not the sections there happen to be
        wanted = list(groups) if groups is not None else list(described) if isinstance(described, dict) else []
        absent = [g for g in wanted if segment_section(segment, g) not in self._index]
        if absent:
            raise NvpFormatError(f"{self.path}: segment {segment} has no section {absent[0]!r}")
        read = self.sections_of([segment_section(segment, g) for g in [codec.MODEL, *wanted]])
        arrays = {f"{g}/{k}": v for g in [codec.MODEL, *wanted] for k, v in read[segment_section(segment, g)].items()}
        try:
            return codec.decode_tensors(arrays, model.meta, wanted)
        except NvpFormatError as e:
            raise NvpFormatError(f"{self.path}: segment {segment}: {e}") from None

    def declared_symbols(self, segment: int) -> int:
        """How many quantised values a segment's payload says it holds (before anything is decoded)."""
        name = V1_INR_SECTION if self.version[0] == 1 else segment_section(segment, codec.MODEL)
        streams = self._index[name].meta.get("streams")
        if not isinstance(streams, dict):
            raise NvpFormatError(f"{self.path}: segment {segment} has no stream index")
        return sum(v for v in streams.values() if isinstance(v, int) and not isinstance(v, bool))

    def payload_sizes(self, segment: int) -> dict[str, int]:
        """Bytes of each of a segment's sections, the entropy model included, by group."""
        if self.version[0] == 1:
            return {"all": self._index[V1_INR_SECTION].length}
        prefix = f"seg{segment}/"
        return {n[len(prefix) :]: e.length for n, e in self._index.items() if n.startswith(prefix)}

    def routes(self) -> list[Route]:
        """The routes, validated against the INR's taps (``schema.check_routes``)."""
        if self._routes is None:
            self._routes = self._read_routes()
        return list(self._routes)

    def _read_routes(self) -> list[Route]:
        entry = self._index.get(ROUTES_SECTION)
        if entry is None:
            return []
        arrays = self.section(ROUTES_SECTION)
        if self.version[0] >= 2 and arrays:
            payload = entry.meta.get("payload")
            try:
                arrays = codec.decode_tensors(arrays, payload if isinstance(payload, dict) else {})
            except NvpFormatError as e:  # the codec's message speaks of an INR payload: say which one it is
                raise NvpFormatError(f"routes section: {e}") from None
        channels = {t["name"]: t["shape"][0] for t in self.manifest["taps"]}
        return [
            Route(h["task"], h["backbone"], h["tap"], h["injection_point"], h["arrays"], h["metadata"])
            for h in schema.check_routes(entry.meta, arrays, channels)
        ]

    def task_bytes(self, tap: str, segment: int = 0) -> int:
        """What a query that reads ``tap`` on frames of one segment fetches: header and manifest, the
        segment's entropy model, its embeddings, its stages up to the tap, and the routes section (a file
        against a base: its one payload section, the latents and modulation of every stage)."""
        if self.base is not None:
            inr = self._index[BASE_SECTION].length
        else:
            taps = [t["name"] for t in self.manifest["taps"]]
            needed = taps[: taps.index(tap) + 1] + ["embeddings", codec.MODEL]
            inr = sum(n for g, n in self.payload_sizes(segment).items() if g in needed or g == "all")
        routes = self._index[ROUTES_SECTION].length if ROUTES_SECTION in self._index else 0
        return self._body_start + inr + routes

    @property
    def _body_start(self) -> int:
        return min((e.offset for e in self._index.values()), default=self.size_bytes)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> NvpFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _segments(manifest: dict[str, Any], version: tuple[int, int]) -> list[Segment]:
    frames = manifest["base" if "base" in manifest else "inr"]["num_frames"]
    if version[0] == 1:
        return [Segment(0, frames)]
    return [Segment(s["start"], s["frames"]) for s in schema.check_segments(manifest.get("segments"), frames)]


def _check_segment_sections(index: dict[str, _Entry], segments: int) -> None:
    """Every segment has an entropy model and at least one group; no section belongs to no segment."""
    groups: dict[int, set[str]] = {}
    for name in index:
        match = _SEGMENT_SECTION.match(name)
        if match:
            groups.setdefault(int(match.group(1)), set()).add(match.group(2))
    if set(groups) != set(range(segments)):
        raise NvpFormatError(f"the sections hold segments {sorted(groups)[:8]}, the manifest lists {segments}")
    for i, names in groups.items():
        if codec.MODEL not in names or len(names) < 2:
            raise NvpFormatError(f"segment {i} lacks its entropy model or its payload")


def _parse_header(data: bytes, size: int, where: str) -> tuple[tuple[int, int], int]:
    if len(data) < _HEADER.size:
        raise NvpFormatError(f"{where}: too short to be a .nvp file ({len(data)} bytes)")
    magic, major, minor, manifest_len, _ = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise NvpFormatError(f"{where}: not a .nvp file (bad magic)")
    if major not in READABLE_MAJORS:
        raise NvpFormatError(
            f"{where}: .nvp format {major}.{minor} is not supported (this reader: "
            + ", ".join(f"{m}.x" for m in READABLE_MAJORS)
            + "; a newer nvp wrote it)"
        )
    if manifest_len > MAX_MANIFEST_BYTES or _HEADER.size + manifest_len > size:
        raise NvpFormatError(f"{where}: truncated or corrupt (manifest length {manifest_len} exceeds the file)")
    return (major, minor), manifest_len


def _parse_manifest(header: bytes, data: bytes, source: _Source) -> dict[str, Any]:
    """The manifest's bytes checked against the header's crc32 and parsed (no copy of them: up to 16 MiB)."""
    if zlib.crc32(data, zlib.crc32(header[: _HEADER.size - 4])) != _HEADER.unpack_from(header)[4]:
        raise source.mismatch("manifest")
    try:
        return schema.mapping(schema.load_json(data, "manifest"), "manifest")
    except NvpFormatError as e:
        raise NvpFormatError(f"{source.path}: {e}") from None


def _check_index(sections: Any, version: tuple[int, int], body_start: int, size: int) -> dict[str, _Entry]:
    """Sections tile the body exactly, in offset order (sections a newer minor version added are skipped,
    not refused: they still tile and are checksummed by ``verify``)."""
    index = schema.check_section_index(sections)
    out, end = {}, 0
    for name, (offset, length, crc, meta) in sorted(index.items(), key=lambda kv: kv[1][0]):
        if offset != end:
            raise NvpFormatError(f"section {name[:40]!r} overlaps or leaves a gap")
        if body_start + offset + length > size:
            raise NvpFormatError(f"truncated (section {name[:40]!r} ends past the end of the file)")
        out[name] = _Entry(body_start + offset, length, crc, meta)
        end = offset + length
    if body_start + end != size:
        raise NvpFormatError(f"{size - body_start - end} unexpected trailing bytes")
    if version[0] == 1 and V1_INR_SECTION not in out:
        raise NvpFormatError(f"no {V1_INR_SECTION!r} section")
    return out


def _blob(arrays: dict[str, np.ndarray]) -> bytes:
    return _st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()}) if arrays else b""


def _serialise(
    manifest: dict[str, Any], sections: dict[str, tuple[bytes, dict]], version: tuple[int, int] = FORMAT_VERSION
) -> bytes:
    index: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, (blob, meta) in sections.items():
        index[name] = {"offset": offset, "length": len(blob), "crc32": zlib.crc32(blob)}
        if meta:
            index[name]["meta"] = meta
        offset += len(blob)
    # allow_nan=False: a NaN would make a file its own reader refuses (strict JSON), so writing fails instead.
    # Compact separators: at low rates the manifest is a visible part of the file.
    manifest_bytes = json.dumps(
        {**manifest, "sections": index}, sort_keys=True, allow_nan=False, separators=(",", ":")
    ).encode()
    prefix = _HEADER.pack(MAGIC, *version, len(manifest_bytes), 0)[:-4]
    header = prefix + struct.pack("<I", zlib.crc32(manifest_bytes, zlib.crc32(prefix)))
    return b"".join([header, manifest_bytes, *(blob for blob, _ in sections.values())])


def _routes_section(routes: Sequence[Route]) -> tuple[bytes, dict]:
    """Every adapter array quantised to 8 bits (per output channel where that errs less) and range-coded."""
    headers = [r.header() for r in routes]
    tensors = {f"{i}/{k}": np.asarray(v, np.float32) for i, r in enumerate(routes) for k, v in r.arrays.items()}
    if not tensors:
        return b"", {"routes": headers}
    arrays, payload = codec.encode_tensors(tensors, dict.fromkeys(tensors, ROUTE_BITS))
    return _blob(arrays), {"routes": headers, "payload": payload}


def stored_route(route: Route) -> Route:
    """``route`` with its adapter exactly as a reader will get it back from a file (quantised)."""
    blob, meta = _routes_section([route])
    arrays = codec.decode_tensors(_st_load(blob), meta["payload"])
    return Route(
        route.task,
        route.backbone,
        route.tap,
        route.injection_point,
        {k: arrays[f"0/{k}"] for k in route.arrays},
        route.metadata,
    )


def _payload_sections(segment: int, arrays: dict[str, np.ndarray], meta: dict) -> dict[str, tuple[bytes, dict]]:
    """A segment's grouped payload (``codec.encode_tensors``) as sections: the model first, then its groups."""
    groups: dict[str, dict[str, np.ndarray]] = {codec.MODEL: {}}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        groups.setdefault(group, {})[name] = value
    return {
        segment_section(segment, g): (_blob(a), meta if g == codec.MODEL else {})
        for g, a in sorted(groups.items(), key=lambda kv: kv[0] != codec.MODEL)
    }


@dataclass(frozen=True)
class SegmentPayload:
    """One segment's coded INR (``codec.encode_tensors`` output) and how many frames it holds."""

    frames: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    info: dict[str, Any] | None = None  # e.g. its own metrics, kept in the manifest's segment entry


def write_nvp(
    path: str | os.PathLike,
    manifest: dict[str, Any],
    segments: Sequence[SegmentPayload],
    routes: Sequence[Route] = (),
    overwrite: bool = True,
) -> int:
    """Write a complete .nvp file atomically (without ``overwrite``, only as a new file: OutputExistsError
    otherwise); returns its size in bytes.

    ``manifest["inr"]`` is the shared architecture; its ``num_frames`` is set to the segments' total.
    """
    sections: dict[str, tuple[bytes, dict]] = {}
    entries, start = [], 0
    for i, seg in enumerate(segments):
        sections.update(_payload_sections(i, seg.arrays, seg.meta))
        entries.append({"start": start, "frames": seg.frames, **({"info": seg.info} if seg.info else {})})
        start += seg.frames
    sections[ROUTES_SECTION] = _routes_section(list(routes))
    manifest = {**manifest, "inr": {**manifest["inr"], "num_frames": start}, "segments": entries}
    data = _serialise(manifest, sections)
    atomic_write(path, data, overwrite)
    return len(data)


def base_nvp_bytes(manifest: dict[str, Any], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """A whole .nvp file encoded against a base: ``manifest["base"]`` names it (``schema.check_base_manifest``),
    ``arrays`` and ``meta`` are its coded payload (one section, ``BASE_SECTION``), no routes. The bytes, so
    an encoder counts exactly what it will write (``atomic.atomic_write`` writes them)."""
    frames = manifest["base"]["num_frames"]
    manifest = {**manifest, "segments": [{"start": 0, "frames": frames}]}
    return _serialise(manifest, {BASE_SECTION: (_blob(arrays), meta)})


def join_segments(
    path: str | os.PathLike,
    parts: Sequence[str | os.PathLike],
    video: dict[str, Any],
    routes: Sequence[Route] = (),
    overwrite: bool = True,
) -> int:
    """One file of ``parts`` (single-segment .nvp files of one architecture, in frame order), their
    payload bytes copied verbatim; ``video`` describes the whole source. Atomic (a new file only, without
    ``overwrite``); returns the size."""
    if not parts:
        raise ValueError("no segments to join")
    sections: dict[str, tuple[bytes, dict]] = {}
    entries, start, first = [], 0, None
    for i, part in enumerate(parts):
        with NvpFile.open(part) as nvp:
            if nvp.version[0] < 2 or len(nvp.segments) != 1:
                raise NvpFormatError(f"{part}: not a single-segment .nvp file of format 2")
            shape = ({k: v for k, v in nvp.manifest["inr"].items() if k != "num_frames"}, nvp.manifest["taps"])
            if first is None:
                first = (shape, nvp.manifest)
            elif shape != first[0]:
                raise NvpFormatError(f"{part}: its INR architecture differs from {parts[0]}'s")
            for name, payload in nvp.payload_sections().items():
                sections[segment_section(i, name.partition("/")[2])] = payload
            frames = nvp.segments[0].frames
            info = {k: nvp.manifest[k] for k in ("metrics", "encoding") if k in nvp.manifest}
            entries.append({"start": start, "frames": frames, "info": info})
            start += frames
    assert first is not None
    sections[ROUTES_SECTION] = _routes_section(list(routes))
    manifest = {
        **{k: v for k, v in first[1].items() if k not in ("segments", "video", "metrics", "encoding")},
        "inr": {**first[1]["inr"], "num_frames": start},
        "video": {**video, "frames": start},
        "segments": entries,
    }
    data = _serialise(manifest, sections)
    atomic_write(path, data, overwrite)
    return len(data)


def replace_routes(path: str | os.PathLike, routes: list[Route]) -> int:
    """Swap the routes of an existing file; the INR payload bytes are copied verbatim, not re-encoded."""
    return update_routes(path, lambda _: list(routes))


def update_routes(
    path: str | os.PathLike, change: Callable[[list[Route]], list[Route]], payload_checksum: int | None = None
) -> int:
    """Read-modify-write of the routes under an exclusive lock: ``change`` gets the routes the file
    has at that moment, so concurrent writers each keep the others' routes. With ``payload_checksum``
    (the file's ``payload_checksum`` the caller worked from), a file whose INR changed meanwhile is refused.
    The file is rewritten in the current format (a 1.x file's INR section is carried over as it is)."""
    with exclusive_lock(path):
        with NvpFile.open(path) as current:
            if payload_checksum is not None and current.payload_checksum != payload_checksum:
                raise NvpFormatError(
                    f"{path}: its video payload was rewritten while this route was trained "
                    "(another process changed the file); run the export again"
                )
            if current.version[0] == 1:
                raise NvpFormatError(f"{path}: a format 1.x file; re-encode it to add routes (`nvp encode`)")
            sections = current.payload_sections()
            sections[ROUTES_SECTION] = _routes_section(list(change(current.routes())))
            manifest = current.manifest
        out = _serialise(manifest, sections)
        atomic_write(path, out)
    return len(out)
