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

A file encoded against a pretrained base (docs/base.md) runs the same way through
``base_decoder.VideoBase``: the base decoder's stage graphs (keyed by the base's hash),
the frame's decoded latent as the stem's input, the base's weights with the file's
modulation applied as each stage's weights. ``VideoDecoder`` is what both give the Session.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .nvpfile import NvpFile, NvpFormatError
from .store import ModelStore

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


def payload_group(tensor: str) -> str:
    """The payload group (file section) a tensor of an INR's state is stored in: its decoder stage, or
    ``embeddings``; a query reads the groups of the stages it runs, nothing else."""
    parts = tensor.split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "stages" else tensor


class VideoDecoder:
    """What the runtime needs of a video's decoder, whatever stores it: its taps, shallow to deep and
    ending in "rgb"; its frames, in segments; per segment each stage's weights and the stem's input of any
    frame (``stage_weights``, ``stem_input``, after ``prepare``); and the stage graphs (``graph``). A file's
    own INR is :class:`VideoINR`; a file against a pretrained base is ``base_decoder.VideoBase``."""

    def __init__(self, nvp: NvpFile, taps: list[Tap], num_frames: int):
        self._nvp, self._where = nvp, str(nvp.path)
        self.taps, self.num_frames = taps, num_frames
        if not self.taps or self.taps[-1].name != "rgb" or self.num_frames <= 0:
            raise NvpFormatError(f"{self._where}: the decoder must have frames and end in an 'rgb' tap")
        self.segments = nvp.segments
        self._starts = np.array([s.start for s in self.segments], np.int64)

    @property
    def bytes_read(self) -> int:
        return self._nvp.bytes_read

    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.taps]

    def tap(self, name: str) -> Tap:
        for t in self.taps:
            if t.name == name:
                return t
        raise KeyError(f"the video has no tap {name!r}; it has {self.tap_names}")

    def stages_until(self, deepest: str) -> list[str]:
        names = self.tap_names
        return names[: names.index(deepest) + 1]

    def locate(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) frame indices, already range-checked -> (segment of each, index within its segment)."""
        segment = np.searchsorted(self._starts, frames, side="right") - 1
        return segment, frames - self._starts[segment]

    def graph(self, store: ModelStore, stage: str) -> Path:
        """The stage's graph in ``store`` (weights as inputs, named as ``stage_weights``'s keys)."""
        raise NotImplementedError

    def prepare(self, segment: int, stages: list[str]) -> None:
        """Decode what a query of ``segment`` up to the last of ``stages`` needs."""
        raise NotImplementedError

    def stage_weights(self, segment: int, stage: str) -> dict[str, np.ndarray]:
        """A segment's weights of one stage, named as the stage graph's inputs."""
        raise NotImplementedError

    def stem_input(self, segment: int, frames: np.ndarray) -> np.ndarray:
        """(B,) frame indices within ``segment`` -> the stem graph's input."""
        raise NotImplementedError


class VideoINR(VideoDecoder):
    """One video's own INR: per segment the stage weights and the stem input of any frame, decoded from
    the file when a query first needs them."""

    def __init__(self, nvp: NvpFile, cached_segments: int = 4):
        config = nvp.manifest.get("inr")
        where = str(nvp.path)
        if not isinstance(config, dict) or config.get("family") not in FAMILIES:
            raise NvpFormatError(f"{where}: manifest has no INR configuration of a known family {FAMILIES}")
        self.config = config
        self.family = config["family"]
        self.key = architecture_key(config)
        try:
            num_frames = int(config["num_frames"])
            taps = [Tap(str(t["name"]), tuple(int(d) for d in t["shape"])) for t in nvp.manifest["taps"]]
        except (KeyError, TypeError, ValueError) as e:
            raise NvpFormatError(f"{where}: malformed INR manifest ({e})") from None
        super().__init__(nvp, taps, num_frames)
        self._cached = cached_segments
        self._decoded: OrderedDict[tuple[int, str], np.ndarray | dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def graph(self, store: ModelStore, stage: str) -> Path:
        return store.get("inr", f"{self.key}.{stage}")

    def stage_weights(self, segment: int, stage: str) -> dict[str, np.ndarray]:
        weights = self._group(segment, stage)
        assert isinstance(weights, dict)
        return weights

    def stem_input(self, segment: int, frames: np.ndarray) -> np.ndarray:
        if self.family == "hnerv":
            embeddings = self._group(segment, "embeddings")
            assert isinstance(embeddings, np.ndarray)
            return embeddings[frames]
        length = self.segments[segment].frames
        return positional_encoding(frames / length, int(self.config["pe_levels"]), float(self.config["pe_base"]))

    def prepare(self, segment: int, stages: list[str]) -> None:
        """Decode what a query of ``segment`` up to the last of ``stages`` needs, in one pass over the
        payload (one validation of the segment's description, one model per bit width)."""
        self._groups(segment, [*stages, *(["embeddings"] if self.family == "hnerv" else [])])

    def _group(self, segment: int, group: str) -> np.ndarray | dict[str, np.ndarray]:
        return self._groups(segment, [group])[group]

    def _groups(self, segment: int, groups: list[str]) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
        """Payload groups of one segment, decoded and checked; the last few segments' stay decoded."""
        with self._lock:
            found = {g: self._decoded[(segment, g)] for g in groups if (segment, g) in self._decoded}
            for g in found:
                self._decoded.move_to_end((segment, g))
        missing = [g for g in groups if g not in found]
        if not missing:
            return found
        decoded = self._decode_groups(segment, missing)
        with self._lock:
            for g, value in decoded.items():
                self._decoded[(segment, g)] = value
            segments = dict.fromkeys(s for s, _ in self._decoded)
            while len(segments) > self._cached:
                oldest = next(iter(segments))
                for k in [k for k in self._decoded if k[0] == oldest]:
                    del self._decoded[k]
                segments.pop(oldest)
        return {**found, **decoded}

    def _decode_groups(self, segment: int, groups: list[str]) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
        where = f"{self._where}: segment {segment}"
        if self._nvp.version[0] == 1:  # one section for everything: split it by group
            tensors = self._nvp.segment_tensors(segment)
            unknown = {payload_group(k) for k in tensors} - {*self.tap_names, "embeddings"}
            if unknown:
                raise NvpFormatError(f"{where}: INR payload has tensors of no stage ({sorted(unknown)[:3]})")
        else:
            tensors = self._nvp.segment_tensors(segment, groups)
        by_group: dict[str, dict[str, np.ndarray]] = {g: {} for g in groups}
        for name, value in tensors.items():
            if payload_group(name) in by_group:
                by_group[payload_group(name)][name] = value
            elif self._nvp.version[0] > 1:
                raise NvpFormatError(f"{where}: a section holds a tensor {name!r} of another stage")
        out: dict[str, np.ndarray | dict[str, np.ndarray]] = {}
        for group, members in by_group.items():
            if group != "embeddings":
                out[group] = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in members.items()}
                continue
            embeddings = members.get("embeddings")
            if embeddings is None or embeddings.ndim != 4 or embeddings.shape[0] != self.segments[segment].frames:
                raise NvpFormatError(f"{where}: HNeRV payload lacks one embedding per frame")
            out[group] = np.ascontiguousarray(embeddings, dtype=np.float32)
        return out
