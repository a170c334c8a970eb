"""The backbone interface: a frozen pretrained model cut into named stages.

A backbone is an ordered list of named stages. The output of every stage but
the last is an *injection point*: the place where an adapted INR feature map can
enter the model. ``prefix(x, until=p)`` runs the stages up to and including
``p``; ``suffix(f, from_point=p)`` runs the stages after it, so
``suffix(prefix(x, p), p)`` is the full forward pass, operation for operation.

A user's own model plugs in the same way as the presets in ``nvp_export.zoo``:

    Backbone("mine", stages=[("stem", stem), ("body", body), ("head", head)],
             preprocess=Preprocess(input_size=(224, 224)),
             task="classification", labels=my_labels, pretrained=True)

or, for an ``nn.Sequential``, ``Backbone.from_sequential(name, seq, points=["2", "5"], ...)``
which groups consecutive children into stages ending at the named children.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Features = torch.Tensor | Sequence[torch.Tensor]  # one tensor, or one per pathway

__all__ = [
    "Preprocess",
    "InjectionPoint",
    "MultiPathwayPoint",
    "Backbone",
    "MultiPathwayBackbone",
    "as_pathways",
    "temporal_indices",
    "RandomWeightsWarning",
    "to_unit_frames",
    "classify",
]


class RandomWeightsWarning(UserWarning):
    """A backbone runs with randomly initialised weights (no pretrained checkpoint was found)."""


@dataclass(frozen=True)
class Preprocess:
    """How frames in [0, 1] become the backbone's input.

    Frames are resized (bilinear, the whole frame, no crop: the adapter's resize
    of INR features also maps the whole frame) to ``input_size`` and normalised
    per channel as (x - mean) / std. ``num_frames`` > 1 marks a video model whose
    input is (N, 3, T, H, W).
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_frames: int = 1
    # Off so the pixel path resizes like the adapter kernel and ONNX Resize (half_pixel, linear).
    antialias: bool = False

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) or (N, 3, T, H, W) float frames in [0, 1] -> normalised backbone input."""
        if frames.dim() == 5:
            n, c, t, h, w = frames.shape
            flat = frames.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
            out = self(flat)
            return out.reshape(n, t, c, *self.input_size).permute(0, 2, 1, 3, 4)
        if tuple(frames.shape[-2:]) != tuple(self.input_size):
            frames = F.interpolate(
                frames, size=self.input_size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
        mean = frames.new_tensor(self.mean).view(1, -1, 1, 1)
        std = frames.new_tensor(self.std).view(1, -1, 1, 1)
        return (frames - mean) / std


@dataclass(frozen=True)
class InjectionPoint:
    """A stage boundary where adapted features can enter; ``shape`` excludes the batch dim."""

    name: str
    shape: tuple[int, ...]  # (C, H, W), or (C, T, H, W) for video models

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return tuple(self.shape[-2:])

    @property
    def pathway_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-pathway shapes: a single-tensor point is one pathway (``MultiPathwayPoint`` has several)."""
        return (tuple(self.shape),)

    @property
    def pathway_frames(self) -> tuple[int | None, ...]:
        """Per pathway, its frame count; None for image features."""
        return tuple(s[1] if len(s) == 4 else None for s in self.pathway_shapes)


@dataclass(frozen=True)
class MultiPathwayPoint(InjectionPoint):
    """An injection point carrying one tensor per pathway; ``shape`` is the tuple of their shapes."""

    shape: tuple[tuple[int, ...], ...]  # type: ignore[assignment]  # one shape per pathway

    @property
    def channels(self) -> tuple[int, ...]:  # type: ignore[override]  # one per pathway
        return tuple(s[0] for s in self.shape)

    @property
    def spatial_size(self) -> tuple[tuple[int, ...], ...]:  # type: ignore[override]  # one per pathway
        return tuple(tuple(s[-2:]) for s in self.shape)

    @property
    def pathway_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(s) for s in self.shape)


def as_pathways(features: Features) -> tuple[torch.Tensor, ...]:
    return (features,) if isinstance(features, torch.Tensor) else tuple(features)


def temporal_indices(num_frames: int, out_frames: int, device=None) -> torch.Tensor:
    """The frames a pathway sampling ``out_frames`` of ``num_frames`` sees (pytorchvideo's PackPathway rule)."""
    return torch.linspace(0, num_frames - 1, out_frames, device=device).long()


def to_unit_frames(frames: Any) -> torch.Tensor:
    """Frames as float32 (T, 3, H, W) in [0, 1].

    Accepts uint8 (T, H, W, 3) or (T, 3, H, W) arrays/tensors, or float ones
    already in [0, 1] in either layout.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames must be a numpy array or torch tensor; got {type(frames).__name__}")
    if frames.dim() != 4:
        raise ValueError(f"frames must be 4-D (T, H, W, 3) or (T, 3, H, W); got shape {tuple(frames.shape)}")
    if frames.shape[1] != 3 and frames.shape[-1] == 3:
        frames = frames.permute(0, 3, 1, 2)
    if frames.shape[1] != 3:
        raise ValueError(f"frames must have 3 colour channels; got shape {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        return frames.float().div_(255.0).contiguous()
    if not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 or float; got {frames.dtype}")
    frames = frames.float()
    if frames.numel() and (frames.min() < 0 or frames.max() > 1):
        raise ValueError("float frames must lie in [0, 1]")
    return frames.contiguous()


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """Float (T, 3, H, W) frames in [0, 1] (values outside are clipped) as uint8 (T, H, W, 3): what a viewer gets."""
    return (frames.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def classify(logits: torch.Tensor, labels: Sequence[str], k: int = 5) -> list[list[tuple[int, str, float]]]:
    """Per sample, the top-k (class index, label, probability)."""
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [
        [(int(i), labels[int(i)] if labels else str(int(i)), float(p)) for p, i in zip(ps, idx)]
        for ps, idx in zip(top.values, top.indices)
    ]


class Backbone(nn.Module):
    """A frozen model as named stages; see the module docstring."""

    def __init__(
        self,
        name: str,
        stages: Sequence[tuple[str, nn.Module]],
        preprocess: Preprocess,
        task: str = "classification",
        labels: Sequence[str] = (),
        pretrained: bool = False,
        weights_source: str = "",
        points: Sequence[str] | None = None,
        postprocess: Callable[[torch.Tensor], Any] | None = None,
    ):
        super().__init__()
        names = [n for n, _ in stages]
        if len(stages) < 2:
            raise ValueError("a backbone needs at least two stages (a prefix and a suffix)")
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique; got {names}")
        points = list(names[:-1] if points is None else points)
        unknown = [p for p in points if p not in names[:-1]]
        if unknown:
            raise ValueError(f"injection points {unknown} are not stage names before the last stage {names[:-1]}")
        self.name = name
        self.stages = nn.ModuleDict(dict(stages))
        self.preprocess = preprocess
        self.task = task
        self.labels = list(labels)
        self.pretrained = pretrained
        self.weights_source = weights_source
        self._point_names = sorted(points, key=names.index)
        self._postprocess = postprocess
        self.requires_grad_(False)
        self.eval()
        self.injection_points = self._probe_shapes()
        if not pretrained:
            warnings.warn(self.weights_note, RandomWeightsWarning, stacklevel=2)

    @classmethod
    def from_sequential(cls, name: str, module: nn.Sequential, points: Sequence[str], **kwargs) -> Backbone:
        """Group an ``nn.Sequential``'s children into stages ending at each child named in ``points``."""
        children = list(module.named_children())
        child_names = [n for n, _ in children]
        missing = [p for p in points if p not in child_names[:-1]]
        if missing:
            raise ValueError(
                f"injection points {missing} are not children (before the last) of the module: {child_names}"
            )
        stages, current = [], []
        for child_name, child in children:
            current.append(child)
            if child_name in points:
                stages.append((child_name, nn.Sequential(*current)))
                current = []
        stages.append(("head", nn.Sequential(*current)))
        return cls(name, stages, **kwargs)

    # The backbone is frozen in every use nvp makes of it (BN statistics included).
    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)

    @property
    def weights_note(self) -> str:
        if self.pretrained:
            return f"{self.name}: pretrained weights from {self.weights_source}"
        return (
            f"{self.name}: no pretrained weights found, running RANDOMLY INITIALISED "
            f"(outputs are meaningless; {self.weights_source or 'pass weights=PATH to load a checkpoint'})"
        )

    @property
    def point_names(self) -> list[str]:
        return list(self._point_names)

    def point(self, name: str) -> InjectionPoint:
        for p in self.injection_points:
            if p.name == name:
                return p
        raise ValueError(f"{self.name} has no injection point {name!r}; it has {self.point_names}")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def _probe_shapes(self) -> list[InjectionPoint]:
        h, w = self.preprocess.input_size
        t = self.preprocess.num_frames
        x = torch.zeros((1, 3, h, w) if t == 1 else (1, 3, t, h, w))
        with torch.no_grad():
            feats = self.features(x, self._point_names)
        return [self._injection_point(n, feats[n]) for n in self._point_names]

    def _injection_point(self, name: str, features: torch.Tensor) -> InjectionPoint:
        """The point ``name`` described from one sample's features there."""
        return InjectionPoint(name, tuple(features.shape[1:]))

    def features(self, x: torch.Tensor, points: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs at each of ``points`` from one pass that stops at the deepest of them."""
        wanted = set(points)
        unknown = wanted - set(self._point_names)
        if unknown or not wanted:
            raise ValueError(f"{self.name} has no injection points {sorted(unknown)}; it has {self._point_names}")
        out, names = {}, self._stage_names()
        deepest = max(names.index(p) for p in wanted)
        for stage_name in names[: deepest + 1]:
            x = self.stages[stage_name](x)
            if stage_name in wanted:
                out[stage_name] = x
        return out

    def prefix(self, x: torch.Tensor, until: str) -> torch.Tensor:
        """Normalised input -> features at injection point ``until``."""
        return self.features(x, [until])[until]

    def suffix(self, features: torch.Tensor, from_point: str) -> torch.Tensor:
        """Features at injection point ``from_point`` -> raw task output (e.g. logits)."""
        if from_point not in self._point_names:
            raise ValueError(f"{self.name} has no injection point {from_point!r}; it has {self._point_names}")
        names = self._stage_names()
        for stage_name in names[names.index(from_point) + 1 :]:
            features = self.stages[stage_name](features)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return x

    def postprocess(self, outputs: Any, *options: Any, **named: Any) -> Any:
        """Raw task output -> the task's answer; ``options`` are the task's (classification: ``k``, the
        top-k labels, default 5; presets define their own)."""
        if self._postprocess is not None:
            return self._postprocess(outputs)
        if self.task == "classification":
            return classify(outputs, self.labels, *options, **named)
        return outputs

    def describe(self) -> str:
        pts = ", ".join(f"{p.name} {'x'.join(map(str, p.shape))}" for p in self.injection_points)
        params = f"{self.num_parameters() / 1e6:.2f}M params"
        return f"{self.name} ({self.task}, {params}): {self.weights_note}\n  injection points: {pts}"


class MultiPathwayBackbone(Backbone):
    """A ``Backbone`` whose stage boundaries may carry a tuple of tensors (one per pathway)."""

    def _injection_point(self, name: str, features: Features) -> InjectionPoint:
        if isinstance(features, torch.Tensor):
            return super()._injection_point(name, features)
        return MultiPathwayPoint(name, tuple(tuple(p.shape[1:]) for p in features))
