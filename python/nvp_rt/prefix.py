"""The INR prefix: a video decoded up to the tap a task needs, one ONNX graph per decoder stage.

Stage graphs are keyed by architecture (family and configuration, not the
frame count) and live in the model store as ``inr/<arch>.<stage>.onnx`` with
the stage's weights as graph inputs. A video binds its own weights at run time,
so every video of an architecture shares the compiled sessions. Chained, the
stages are the prefix up to any tap; every stage output on the way is a tap,
so tasks reading shallower taps reuse what a deeper task decoded anyway, and
the last stage ("rgb") is the full decode for viewing.

The stem's input is computed here: HNeRV reads the frame's stored embedding;
NeRV encodes t = index / frames positionally, in float64 as the export side does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .codec import decode_tensors
from .nvpfile import NvpFile, NvpFormatError

FAMILIES = ("hnerv", "nerv")
STAGE_INPUT = "input"
STAGE_OUTPUT = "output"


def architecture_key(config: dict) -> str:
    """``<family>-<hash>`` of everything in the INR configuration that shapes its graphs (not the frame count)."""
    shape = {k: v for k, v in config.items() if k != "num_frames"}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
    return f"{config['family']}-{digest}"


def positional_encoding(t: np.ndarray, levels: int, base: float) -> np.ndarray:
    """NeRV's [sin(t b^i pi), cos(t b^i pi)], i < levels, in float64, returned as float32."""
    angles = np.asarray(t, np.float64)[:, None] * (base ** np.arange(levels, dtype=np.float64) * np.pi)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Tap:
    name: str
    shape: tuple[int, ...]  # (C, H, W) of one frame


class VideoINR:
    """One video's INR as the runtime needs it: taps, per-stage weights and the stem input of any frame."""

    def __init__(self, nvp: NvpFile):
        config = nvp.manifest.get("inr")
        where = str(nvp.path)
        if not isinstance(config, dict) or config.get("family") not in FAMILIES:
            raise NvpFormatError(f"{where}: manifest has no INR configuration of a known family {FAMILIES}")
        self.config = config
        self.family = config["family"]
        self.key = architecture_key(config)
        try:
            self.num_frames = int(config["num_frames"])
            self.taps = [Tap(str(t["name"]), tuple(int(d) for d in t["shape"])) for t in nvp.manifest["taps"]]
        except (KeyError, TypeError, ValueError) as e:
            raise NvpFormatError(f"{where}: malformed INR manifest ({e})") from None
        if not self.taps or self.taps[-1].name != "rgb" or self.num_frames <= 0:
            raise NvpFormatError(f"{where}: the INR must have frames and end in an 'rgb' tap")
        tensors = decode_tensors(nvp.inr.arrays, nvp.inr.meta)
        embeddings = tensors.pop("embeddings", None)
        self.embeddings: np.ndarray | None = None  # HNeRV's: one per frame; NeRV's stem input is computed
        if self.family == "hnerv":
            if embeddings is None or embeddings.ndim != 4 or embeddings.shape[0] != self.num_frames:
                raise NvpFormatError(f"{where}: HNeRV payload lacks one embedding per frame")
            self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        names = {t.name for t in self.taps}
        self.stage_weights: dict[str, dict[str, np.ndarray]] = {t.name: {} for t in self.taps}
        for name, value in tensors.items():
            parts = name.split(".")
            if len(parts) < 3 or parts[0] != "stages" or parts[1] not in names:
                raise NvpFormatError(f"{where}: INR payload has a tensor {name!r} that belongs to no stage")
            self.stage_weights[parts[1]][name] = np.ascontiguousarray(value, dtype=np.float32)

    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.taps]

    def tap(self, name: str) -> Tap:
        for t in self.taps:
            if t.name == name:
                return t
        raise KeyError(f"the INR has no tap {name!r}; it has {self.tap_names}")

    def stages_until(self, deepest: str) -> list[str]:
        names = self.tap_names
        return names[: names.index(deepest) + 1]

    def stem_input(self, frames: np.ndarray) -> np.ndarray:
        """(B,) frame indices, already range-checked -> the stem graph's input."""
        if self.embeddings is not None:
            return self.embeddings[frames]
        return positional_encoding(
            frames / self.num_frames, int(self.config["pe_levels"]), float(self.config["pe_base"])
        )
