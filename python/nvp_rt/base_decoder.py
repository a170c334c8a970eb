"""A file encoded against a pretrained base (docs/base.md), as the runtime decodes it.

``Session`` runs it as it runs a file's own INR (``prefix``): one ONNX graph per decoder stage (stem,
block1, ..., rgb), chained up to the tap a query needs. What differs is where the inputs come from:

- the stage graphs are the base decoder's, exported once per base by the export side
  (``nvp_export.onnx_export.export_base_graphs``) and keyed in the model store by the base's hash,
  ``base/<sha256[:16]>.<stage>.onnx``; their spatial sizes are free, so one export serves every file
  against that base at any frame size;
- the stem's input is the frame's latent, decoded from the file's payload (``latents``);
- each stage's weights are the base's (its safetensors file, its hash recomputed: ``bases``) with the
  file's modulation applied here in numpy, exactly as ``nvp_export.base.modulate.Modulation`` applies
  it in torch (none; bias: b + d; film: W (1 + g), b (1 + g) + d; lora: W + A B, b + d; full: W + D, b + d).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import bases, codec
from .latents import decode_latents
from .nvpfile import BASE_SECTION, NvpFile, NvpFormatError
from .prefix import Tap, VideoDecoder
from .store import ModelStore, StoreEntryMissing

PAYLOAD_FORMAT = "nvp-base-payload-1"  # the section's meta["format"]; the writer is nvp_export.base.encode
GRAPH_KIND = "base"
# A stage's convolutions in the order the base's modules register them (the stem: its conv, then the
# residual mix), which is the order a modulation stores their values in.
STAGE_CONVOLUTIONS = ("conv", "mix")
# The stored tensors of each modulation kind: one per role, every convolution's values of it in turn.
ROLES = {
    "none": (),
    "bias": ("shift",),
    "film": ("shift", "gain"),
    "lora": ("shift", "a", "b"),
    "full": ("shift", "delta"),
}


def graph_key(digest: str) -> str:
    """The model-store name of a base's stage graphs, ``<key>.<stage>``: its hash's first 16 hex digits."""
    return digest[:16]


def convolutions(decoder: dict[str, np.ndarray], stages: list[str]) -> list[str]:
    """The decoder's convolutions (``stages.<stage>.<conv>``), in the order a modulation stores them."""
    return [f"stages.{s}.{c}" for s in stages for c in STAGE_CONVOLUTIONS if f"stages.{s}.{c}.weight" in decoder]


def modulated_weights(
    decoder: dict[str, np.ndarray], kind: str, rank: int, stored: dict[str, np.ndarray], stages: list[str]
) -> dict[str, np.ndarray]:
    """The decoder's weights (``stages.<stage>.<conv>.weight|bias``, float32) with a file's modulation of
    ``kind`` applied; ``stored``: its values as the file stores them, one flat tensor per role. ValueError
    where they do not fit the decoder."""
    convs = convolutions(decoder, stages)
    shapes = [decoder[f"{c}.weight"].shape for c in convs]
    sizes = {
        "shift": [s[0] for s in shapes],
        "gain": [s[0] for s in shapes],
        "a": [s[0] * rank for s in shapes],
        "b": [rank * math.prod(s[1:]) for s in shapes],
        "delta": [math.prod(s) for s in shapes],
    }
    roles = ROLES[kind]
    got = {k: tuple(v.shape) for k, v in stored.items()}
    if got != {role: (sum(sizes[role]),) for role in roles}:
        raise ValueError(f"stored {kind} modulation does not fit the base ({sorted(got)[:4]})")
    pieces = {role: np.split(np.asarray(stored[role], np.float32), np.cumsum(sizes[role])[:-1]) for role in roles}
    out = {k: np.asarray(v, np.float32) for k, v in decoder.items()}
    for i, conv in enumerate(convs if roles else []):
        w, b = out[f"{conv}.weight"], out[f"{conv}.bias"]
        if kind == "film":
            gain = np.float32(1) + pieces["gain"][i]
            w, b = w * gain.reshape(-1, 1, 1, 1), b * gain
        elif kind == "lora":
            a, lb = pieces["a"][i].reshape(w.shape[0], rank), pieces["b"][i].reshape(rank, -1)
            w = w + (a @ lb).reshape(w.shape)
        elif kind == "full":
            w = w + pieces["delta"][i].reshape(w.shape)
        out[f"{conv}.weight"], out[f"{conv}.bias"] = w, b + pieces["shift"][i]
    return out


@dataclass(frozen=True)
class BasePayload:
    """A base file's payload decoded: the latents (N, C, h, w) and the modulation's stored values."""

    latents: np.ndarray
    modulation: dict[str, np.ndarray]


def read_payload(arrays: dict[str, np.ndarray], meta: dict[str, Any], head: dict[str, Any]) -> BasePayload:
    """The payload section's ``arrays`` and description ``meta`` against the manifest's ``base`` entry
    ``head`` (checked by ``schema.check_base_manifest``); NvpFormatError, one line, where they do not fit."""
    if meta.get("format") != PAYLOAD_FORMAT:
        raise NvpFormatError("base payload: unknown format")
    config = head["config"]
    factor = math.prod(config["strides"])
    expected = [head["num_frames"], config.get("latent_dim"), head["height"] // factor, head["width"] // factor]
    described = meta.get("latents")
    if not isinstance(described, dict) or described.get("shape") != expected:  # before decoding allocates
        raise NvpFormatError(f"base payload: latents described as {str(described)[:80]}, the manifest says {expected}")
    try:
        latents = decode_latents({k: v for k, v in arrays.items() if k.startswith("latents:")}, described)
        coded = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("modulation/")}
        values = codec.decode_tensors(coded, meta["modulation_meta"]) if ROLES[head["modulation"]] else {}
    except (ValueError, KeyError, TypeError) as e:
        raise NvpFormatError(f"base payload: {str(e).splitlines()[0][:200]}") from None
    return BasePayload(latents, values)


class VideoBase(VideoDecoder):
    """A file against a base: its one segment's latents and modulated stage weights, decoded on first use."""

    def __init__(self, nvp: NvpFile):
        if nvp.base is None:
            raise NvpFormatError(f"{nvp.path}: not encoded against a base")
        self.head = nvp.base
        taps = [Tap(str(t["name"]), tuple(int(d) for d in t["shape"])) for t in nvp.manifest["taps"]]
        super().__init__(nvp, taps, int(self.head["num_frames"]))
        self.key = graph_key(self.head["sha256"])
        self._decoded: tuple[np.ndarray, dict[str, dict[str, np.ndarray]]] | None = None
        self._lock = threading.Lock()

    def graph(self, store: ModelStore, stage: str) -> Path:
        try:
            return store.get(GRAPH_KIND, f"{self.key}.{stage}")
        except StoreEntryMissing:
            raise NvpFormatError(
                f"{self._where}: the model store {store.root} has no decoder graphs of base {self.key}; "
                "`nvp base-graphs` writes them (as `nvp encode --base` does), with this store (--store or $NVP_STORE)"
            ) from None

    def prepare(self, segment: int, stages: list[str]) -> None:
        self._load()

    def stage_weights(self, segment: int, stage: str) -> dict[str, np.ndarray]:
        return self._load()[1][stage]

    def stem_input(self, segment: int, frames: np.ndarray) -> np.ndarray:
        return self._load()[0][frames]

    def _load(self) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
        """(latents, stage -> modulated weights), decoded once: the payload is one section."""
        with self._lock:
            if self._decoded is None:
                self._decoded = self._decode()
            return self._decoded

    def _decode(self) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
        try:
            state, config = bases.load_weights(self.head["sha256"])
            if config != self.head["config"]:
                raise NvpFormatError(f"base {self.key}'s configuration is not the one the file names")
            decoder = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
            payload = read_payload(self._nvp.section(BASE_SECTION), self._nvp.section_meta(BASE_SECTION), self.head)
            try:
                weights = modulated_weights(
                    decoder, self.head["modulation"], int(self.head["rank"]), payload.modulation, self.tap_names
                )
            except ValueError as e:
                raise NvpFormatError(f"base payload: {e}") from None
        except NvpFormatError as e:
            raise NvpFormatError(str(e) if str(e).startswith(f"{self._where}: ") else f"{self._where}: {e}") from None
        by_stage: dict[str, dict[str, np.ndarray]] = {stage: {} for stage in self.tap_names}
        for name, value in weights.items():
            stage = name.split(".")[1]
            if stage not in by_stage:
                raise NvpFormatError(f"{self._where}: base {self.key} has weights of no tap ({name!r})")
            by_stage[stage][name] = np.ascontiguousarray(value, np.float32)
        return payload.latents, by_stage
