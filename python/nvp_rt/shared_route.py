"""Routes a file names instead of carrying: the shared route of a base and a backbone (docs/base.md,
"Shared routes"), trained once on the base's corpus and kept in the model store, so that adding a
task to a file against the base costs the file a manifest entry, not an adapter.

The store holds it as safetensors (``shared_route/<name>.safetensors``: the adapter's arrays and a JSON
description, no code), written by ``nvp_export.route.shared``. ``resolve`` gives a file's route its
arrays from there, checked against the route's metadata as a route's own arrays are.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from safetensors import SafetensorError, safe_open

from . import schema
from .nvpfile import Route
from .schema import NvpFormatError
from .store import ModelStore

STORE_KIND = "shared_route"
SUFFIX = ".safetensors"
FORMAT = "nvp-shared-route-1"


def name_of(route: Route) -> str | None:
    """The shared route a file's route names, where it carries no arrays of its own."""
    name = route.metadata.get("shared_route")
    return name if isinstance(name, str) and not route.arrays else None


def read_entry(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(description, arrays) of a shared route's store entry; ValueError (one line) where it is not one."""
    try:
        with safe_open(str(path), "numpy") as f:
            description = json.loads((f.metadata() or {})["description"])
            arrays = {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(str(e).splitlines()[0][:160]) from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ValueError("not a shared route")
    return description, arrays


def resolve(route: Route, store: ModelStore, in_channels: int, where: str) -> Route:
    """``route`` with its adapter: its own, or the arrays of the shared route it names, read from ``store``
    and checked against the route's metadata; a missing or damaged entry is one line."""
    name = name_of(route)
    if name is None:
        return route
    path = store.get(STORE_KIND, name, SUFFIX)
    try:
        description, arrays = read_entry(path)
        if (description.get("inr_tap"), description.get("injection_point")) != (route.tap, route.injection_point):
            raise ValueError(f"it routes {description.get('inr_tap')} -> {description.get('injection_point')}")
        schema.check_arrays(arrays, f"shared route {name}", schema.ROUTE_ARRAY_DTYPES)
        schema.check_adapter(arrays, route.metadata, in_channels, f"route {route.task!r}")
    except ValueError as e:
        reason = str(e).splitlines()[0][:160]
        raise NvpFormatError(f"{where}: shared route {name} in {path} is unusable ({reason})") from None
    return replace(route, arrays=arrays)
