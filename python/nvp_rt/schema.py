"""What a .nvp file may say: types, finite values, ranges, and sizes consistent with the file itself.

The container's checksums catch accidents; a file crafted on purpose has valid checksums, so every
value read from the manifest is checked here before anything is built or allocated from it. A
violation raises :class:`NvpFormatError` naming the field (``manifest.inr.num_frames: ...``), and
every check runs when a file is opened (``NvpFile.open``, ``Session()``), never in a query.

Integers must be JSON integers (``true`` and ``32.5`` are not frame counts), numbers must be
finite, and every size has a bound: a manifest cannot make the reader allocate more than what
its own bytes justify (see ``codec.decode_tensors``) or what the bounds below allow.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

# A manifest's JSON is bounded before it is parsed, by counts over its bytes that allocate nothing
# (brackets and commas, inside strings too: an over-estimate), so the parser can build at most
# MAX_JSON_VALUES objects; nesting, string lengths and numbers are then checked over the parsed
# tree without recursion (Python's parser itself stops a deeper nesting with a RecursionError).
MAX_JSON_DEPTH = 32  # nvp writes depth 8
MAX_JSON_VALUES = 1 << 19  # a manifest of 2,000 segments holds about 200,000
MAX_JSON_STRING = 1 << 16  # characters of one string or key; nvp's longest is the 2 KB fingerprint
MAX_SIDE = 8192  # frame width / height
MAX_FRAMES = 1 << 20
MAX_SEGMENTS = 1 << 16
MAX_STAGES = 8  # upsampling stages of an INR
MAX_CHANNELS = 1 << 14
MAX_TAP_VALUES = 1 << 28  # C x H x W of one frame's tap
MAX_NAME = 200
MAX_ROUTES = 256
MAX_PATHWAYS = 8
MAX_ADAPTER_SIDE = 4096
MAX_FEATURE_VALUES = 1 << 26  # C x H x W of one frame's adapter output
MAX_CLIP_FRAMES = 1024
FAMILIES = ("hnerv", "nerv")
ROUTE_ARRAY_DTYPES = (np.float16, np.float32, np.float64)
_STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}$")  # what the model store accepts as a name
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MODULATIONS = ("none", "bias", "film", "lora", "full")  # a base file's per-video change to the decoder
_STORE_SUFFIX = re.compile(r"^[A-Za-z0-9._@+=-]{1,199}$")  # an injection point: "<backbone>@<point>"


class NvpFormatError(ValueError):
    """The bytes are not a valid .nvp file (truncated, tampered, wrong version, ...)."""


def fail(field: str, problem: str) -> NvpFormatError:
    return NvpFormatError(f"{field}: {problem}")


# -- JSON ------------------------------------------------------------------------------------------


def load_json(data: bytes, field: str) -> Any:
    """Strict JSON of bounded cost: at most MAX_JSON_VALUES values nested at most MAX_JSON_DEPTH deep, no
    string longer than MAX_JSON_STRING, no NaN / Infinity, no number that overflows."""
    values = data.count(b",") + data.count(b"[") + data.count(b"{") + 1
    if values > MAX_JSON_VALUES:
        raise fail(field, f"up to {values} values (at most {MAX_JSON_VALUES})")

    def no_constant(name: str) -> float:
        raise fail(field, f"{name} is not a number JSON allows")

    try:
        tree = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except NvpFormatError:
        raise
    except RecursionError:
        raise fail(field, f"nested more than {MAX_JSON_DEPTH} deep") from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: JSON syntax, huge ints
        raise fail(field, f"not valid JSON ({str(e)[:120]})") from None
    _check_tree(tree, field)
    return tree


def _check_tree(tree: Any, field: str) -> None:
    """Depth, string and key lengths and finite numbers of a parsed JSON document: one pass without
    recursion, a field's name built only for the error."""
    _check_scalar(tree, field)
    stack: list[tuple[Any, int, Any]] = [(tree, 0, field)] if isinstance(tree, (dict, list)) else []
    while stack:
        node, depth, where = stack.pop()
        if depth == MAX_JSON_DEPTH:
            raise fail(_field_name(where), f"nested more than {MAX_JSON_DEPTH} deep")
        if isinstance(node, dict):
            if node and max(map(len, node)) > MAX_JSON_STRING:
                raise fail(_field_name(where), f"a key of {max(map(len, node))} characters (at most {MAX_JSON_STRING})")
            children: Any = node.items()
        else:
            children = enumerate(node)
        for key, value in children:
            kind = type(value)
            if kind is dict or kind is list:
                stack.append((value, depth + 1, (where, key)))
            elif kind is str or kind is float:
                _check_scalar(value, (where, key))


def _check_scalar(value: Any, where: Any) -> None:
    if isinstance(value, str) and len(value) > MAX_JSON_STRING:
        raise fail(_field_name(where), f"a string of {len(value)} characters (at most {MAX_JSON_STRING})")
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(_field_name(where), "a number overflows")


def _field_name(where: Any) -> str:
    """``(((field, key), 3), key)`` -> ``field.key[3].key``."""
    if isinstance(where, str):
        return where
    parent, key = where
    return f"{_field_name(parent)}[{key}]" if isinstance(key, int) else f"{_field_name(parent)}.{key[:40]}"


# -- values ----------------------------------------------------------------------------------------


def mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(field, f"expected an object, got {_kind(value)}")
    return value


def sequence(value: Any, field: str, low: int = 0, high: int = 1 << 20) -> list[Any]:
    if not isinstance(value, list):
        raise fail(field, f"expected a list, got {_kind(value)}")
    if not low <= len(value) <= high:
        raise fail(field, f"expected {low}..{high} entries, got {len(value)}")
    return value


def integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, f"expected an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise fail(field, f"{value} is out of range {low}..{high}")
    return value


def number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(field, f"expected a number, got {_kind(value)}")
    if not (math.isfinite(value) and low <= value <= high):
        raise fail(field, f"{value} is out of range {low}..{high}")
    return float(value)


def string(value: Any, field: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise fail(field, f"expected a string, got {_kind(value)}")
    if not 0 < len(value) <= MAX_NAME or (pattern is not None and not pattern.match(value)):
        raise fail(field, f"{value[:40]!r} is not a valid name")
    return value


def optional(value: Any, check, *args) -> Any:
    return None if value is None else check(value, *args)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- container -------------------------------------------------------------------------------------


def check_section_index(index: Any) -> dict[str, tuple[int, int, int, dict[str, Any]]]:
    """{name: (offset, length, crc32, meta)} from the manifest's ``sections``."""
    index = mapping(index, "manifest.sections")
    out = {}
    for name, entry in index.items():
        field = f"manifest.sections.{name[:40]}"
        entry = mapping(entry, field)
        offset, length, crc = (
            integer(entry.get(k), f"{field}.{k}", 0, (1 << 32) - 1) for k in ("offset", "length", "crc32")
        )
        out[name] = (offset, length, crc, mapping(entry.get("meta", {}), f"{field}.meta"))
    return out


def check_arrays(arrays: dict[str, np.ndarray], field: str, dtypes: tuple[type, ...]) -> None:
    for name, a in arrays.items():
        if a.dtype.type not in dtypes:
            raise fail(
                f"{field}[{name!r}]", f"dtype {a.dtype} is not one of {', '.join(np.dtype(d).name for d in dtypes)}"
            )


# -- the INR ---------------------------------------------------------------------------------------


def check_inr_manifest(manifest: dict[str, Any]) -> None:
    """``inr`` (the decoder's configuration), ``taps`` and ``video``, against each other; ``metrics``."""
    config = mapping(manifest.get("inr"), "manifest.inr")
    family = config.get("family")
    if family not in FAMILIES:
        raise fail("manifest.inr.family", f"{str(family)[:40]!r} is not one of {FAMILIES}")
    height = integer(config.get("height"), "manifest.inr.height", 1, MAX_SIDE)
    width = integer(config.get("width"), "manifest.inr.width", 1, MAX_SIDE)
    frames = integer(config.get("num_frames"), "manifest.inr.num_frames", 1, MAX_FRAMES)
    strides = [
        integer(s, f"manifest.inr.strides[{i}]", 1, 8)
        for i, s in enumerate(sequence(config.get("strides"), "manifest.inr.strides", 1, MAX_STAGES))
    ]
    scale = math.prod(strides)
    if height % scale or width % scale:
        raise fail("manifest.inr.strides", f"{strides} do not tile {width}x{height}")
    for key, value in config.items():  # the rest shapes the graphs only through the architecture key
        field = f"manifest.inr.{key[:40]}"
        if key in ("family", "strides"):
            continue
        if isinstance(value, float):
            number(value, field, 1e-6, 1e6)
        else:
            integer(value, field, 1, MAX_FRAMES)
    if family == "nerv":
        integer(config.get("pe_levels"), "manifest.inr.pe_levels", 1, 1024)
        number(config.get("pe_base"), "manifest.inr.pe_base", 1e-6, 1e6)
    _check_taps(manifest.get("taps"), (height // scale, width // scale), strides)
    if "video" in manifest:  # present, even null: readers take its fields (``nvp info``)
        check_video(manifest["video"], {"frames": frames, "height": height, "width": width})
    if "metrics" in manifest:
        mapping(manifest["metrics"], "manifest.metrics")


def check_base_manifest(manifest: dict[str, Any]) -> None:
    """``base`` (the pretrained base a file was encoded against: its weights' sha256, its configuration,
    the frames' size and count, the modulation), ``taps`` and ``video`` against it; ``metrics``."""
    base = mapping(manifest.get("base"), "manifest.base")
    string(base.get("sha256"), "manifest.base.sha256", _SHA256)
    config = mapping(base.get("config"), "manifest.base.config")
    for key, value in config.items():
        field = f"manifest.base.config.{key[:40]}"
        values = sequence(value, field, 1, MAX_STAGES) if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            integer(v, f"{field}[{i}]" if isinstance(value, list) else field, 1, MAX_CHANNELS)
    # the encoder's strides, first to last; the decoder upsamples by them in reverse
    strides = [
        integer(s, f"manifest.base.config.strides[{i}]", 1, 8)
        for i, s in enumerate(sequence(config.get("strides"), "manifest.base.config.strides", 1, MAX_STAGES))
    ]
    height = integer(base.get("height"), "manifest.base.height", 1, MAX_SIDE)
    width = integer(base.get("width"), "manifest.base.width", 1, MAX_SIDE)
    frames = integer(base.get("num_frames"), "manifest.base.num_frames", 1, MAX_FRAMES)
    scale = math.prod(strides)
    if height % scale or width % scale:
        raise fail("manifest.base.config.strides", f"{strides} do not tile {width}x{height}")
    if base.get("modulation") not in MODULATIONS:
        raise fail("manifest.base.modulation", f"{str(base.get('modulation'))[:40]!r} is not one of {MODULATIONS}")
    integer(base.get("rank"), "manifest.base.rank", 1, MAX_CHANNELS)
    _check_taps(manifest.get("taps"), (height // scale, width // scale), strides[::-1])
    if "video" in manifest:
        check_video(manifest["video"], {"frames": frames, "height": height, "width": width})
    if "metrics" in manifest:
        mapping(manifest["metrics"], "manifest.metrics")


def check_segments(segments: Any, frames: int) -> list[dict[str, Any]]:
    """``segments``: consecutive frame ranges from 0 that cover the INR's ``frames`` exactly."""
    segments = sequence(segments, "manifest.segments", 1, MAX_SEGMENTS)
    start = 0
    for i, seg in enumerate(segments):
        field = f"manifest.segments[{i}]"
        seg = mapping(seg, field)
        if integer(seg.get("start"), f"{field}.start", 0, MAX_FRAMES) != start:
            raise fail(f"{field}.start", f"{seg['start']} does not follow the previous segment's end {start}")
        start += integer(seg.get("frames"), f"{field}.frames", 1, MAX_FRAMES)
        optional(seg.get("info"), mapping, f"{field}.info")
    if start != frames:
        raise fail("manifest.segments", f"cover {start} frames, the INR has {frames}")
    return segments


def _check_taps(taps: Any, grid: tuple[int, int], strides: list[int]) -> None:
    """Names unique, the last "rgb" (3, H, W); one tap per stage, each at its stage's resolution."""
    taps = sequence(taps, "manifest.taps", len(strides) + 2, len(strides) + 2)
    h, w = grid
    names = set()
    for i, tap in enumerate(taps):
        field = f"manifest.taps[{i}]"
        tap = mapping(tap, field)
        name = string(tap.get("name"), f"{field}.name", _STORE_NAME)
        if name in names:
            raise fail(f"{field}.name", f"{name!r} appears twice")
        names.add(name)
        shape = [
            integer(d, f"{field}.shape[{j}]", 1, MAX_CHANNELS if j == 0 else MAX_SIDE)
            for j, d in enumerate(sequence(tap.get("shape"), f"{field}.shape", 3, 3))
        ]
        if 0 < i <= len(strides):
            h, w = h * strides[i - 1], w * strides[i - 1]
        if shape[1:] != [h, w] or math.prod(shape) > MAX_TAP_VALUES:
            raise fail(f"{field}.shape", f"{shape} is not a {h}x{w} feature map of this INR")
    if taps[-1]["name"] != "rgb" or taps[-1]["shape"][0] != 3:
        raise fail("manifest.taps", "the last tap must be 'rgb' with 3 channels")


def check_video(video: Any, expected: dict[str, int]) -> None:
    """The source's description; its frame count and size are the INR's."""
    video = mapping(video, "manifest.video")
    for key, value in expected.items():
        if integer(video.get(key), f"manifest.video.{key}", 1, MAX_FRAMES) != value:
            raise fail(f"manifest.video.{key}", f"{video[key]} differs from the INR's {value}")
    if "fps" in video:
        number(video["fps"], "manifest.video.fps", 1e-3, 1e4)
    if "fingerprint" in video:
        mapping(video["fingerprint"], "manifest.video.fingerprint")


# -- routes ----------------------------------------------------------------------------------------


def check_routes(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], tap_channels: dict[str, int]
) -> list[dict[str, Any]]:
    """The routes section's headers, with every adapter array present, finite and of the right shape.

    ``tap_channels``: the INR's taps, name -> channels. Returns the headers, each with its ``arrays``
    resolved to ``{name: array}``.
    """
    check_arrays(arrays, "routes section", ROUTE_ARRAY_DTYPES)
    routes = sequence(meta.get("routes", []), "routes", 0, MAX_ROUTES)
    out, tasks = [], set()
    for i, head in enumerate(routes):
        field = f"routes[{i}]"
        head = mapping(head, field)
        task = string(head.get("task"), f"{field}.task")
        if task in tasks:
            raise fail(f"{field}.task", f"{task!r} is routed twice")
        tasks.add(task)
        string(head.get("backbone"), f"{field}.backbone", _STORE_NAME)
        string(head.get("injection_point"), f"{field}.injection_point", _STORE_SUFFIX)
        tap = string(head.get("tap"), f"{field}.tap")
        if tap not in tap_channels:
            raise fail(f"{field}.tap", f"{tap!r} is not a tap of this INR ({', '.join(tap_channels)})")
        metadata = mapping(head.get("metadata", {}), f"{field}.metadata")
        # A route may name a shared route of the model store instead of carrying its adapter
        # (nvp_rt.shared_route); its arrays are checked when the store gives them.
        shared = metadata.get("shared_route") is not None
        if shared:
            string(metadata["shared_route"], f"{field}.metadata.shared_route", _STORE_NAME)
        names = [
            string(n, f"{field}.arrays[{j}]")
            for j, n in enumerate(sequence(head.get("arrays"), f"{field}.arrays", 0 if shared else 1, 64))
        ]
        missing = [n for n in names if f"{i}/{n}" not in arrays]
        if missing:
            raise fail(f"{field}.arrays", f"{missing[0]!r} is not in the routes section")
        resolved = {n: arrays[f"{i}/{n}"] for n in names}
        if names:
            check_adapter(resolved, metadata, tap_channels[tap], field)
        out.append({**head, "arrays": resolved, "metadata": metadata})
    return out


def check_adapter(arrays: dict[str, np.ndarray], metadata: dict[str, Any], in_channels: int, field: str) -> None:
    """Per pathway, 1x1 conv(s) from the tap's channels: weight (C_out, C_in), bias (C_out,)."""
    hidden = optional(metadata.get("hidden"), integer, f"{field}.metadata.hidden", 1, MAX_CHANNELS)
    pathways = sequence(metadata.get("pathways"), f"{field}.metadata.pathways", 1, MAX_PATHWAYS)
    expected = set()
    for p, pathway in enumerate(pathways):
        where = f"{field}.metadata.pathways[{p}]"
        pathway = mapping(pathway, where)
        size = [
            integer(s, f"{where}.size[{j}]", 1, MAX_ADAPTER_SIDE)
            for j, s in enumerate(sequence(pathway.get("size"), f"{where}.size", 2, 2))
        ]
        optional(pathway.get("frames"), integer, f"{where}.frames", 1, MAX_CLIP_FRAMES)
        prefix = f"pathway{p}/" if len(pathways) > 1 else ""
        c_in = in_channels
        for j in range(2 if hidden is not None else 1):
            weight, bias = (arrays.get(f"{prefix}{k}{j}") for k in ("weight", "bias"))
            name = f"{field}.arrays[{prefix}weight{j}]"
            if weight is None or bias is None:
                raise fail(f"{field}.arrays", f"pathway {p} lacks {prefix}weight{j} or {prefix}bias{j}")
            c_out = hidden if j == 0 and hidden is not None else None
            if (
                weight.ndim != 2
                or weight.shape[1] != c_in
                or (c_out is not None and weight.shape[0] != c_out)
                or not 1 <= weight.shape[0] <= MAX_CHANNELS
                or bias.shape != weight.shape[:1]
            ):
                raise fail(name, f"shapes {weight.shape} and {bias.shape} do not map {c_in} channels")
            if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
                raise fail(name, "holds NaN or infinite values")
            expected |= {f"{prefix}weight{j}", f"{prefix}bias{j}"}
            c_in = weight.shape[0]
        if c_in * size[0] * size[1] > MAX_FEATURE_VALUES:
            raise fail(f"{where}.size", f"{size} x {c_in} channels is too large a feature map")
    extra = sorted(set(arrays) - expected)
    if extra:
        raise fail(f"{field}.arrays", f"{extra[0]!r} belongs to no adapter conv")
