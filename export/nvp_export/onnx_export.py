"""ONNX graphs for the runtime, written into the model store (layout in ``nvp_rt.store``).

- ``inr/<arch>.<stage>.onnx``: one graph per INR decoder stage, keyed by
  architecture; the stage's weights are graph *inputs* named by their
  state-dict key, so each video binds its own weights at run time.
- ``base/<sha256[:16]>.<stage>.onnx``: the same for a pretrained base's decoder (docs/base.md), keyed by
  its hash, with free spatial sizes; a file binds the base's weights with its own modulation applied.
- ``suffix/<backbone>@<point>.onnx``: the backbone from an injection point to
  its raw task outputs; ``backbone/<backbone>.onnx``: the whole backbone from
  normalised pixels (what the pixel-path baselines run);
  ``backbone/<backbone>.json``: task, labels, preprocessing, output names.

``<backbone>`` is the preset name plus a fingerprint of its weights, so two
checkpoints of one preset never share graphs. Exporting is idempotent: graphs
already in the store are not exported again.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import onnx
import torch
from torch import nn

from nvp_rt.base_decoder import GRAPH_KIND as BASE_GRAPHS
from nvp_rt.base_decoder import graph_key
from nvp_rt.prefix import STAGE_INPUT, STAGE_OUTPUT, architecture_key
from nvp_rt.store import ModelStore

from .backbone import Backbone, MultiPathwayPoint, temporal_indices
from .base.model import BaseDecoder
from .inr import INR
from .inr.segmented import SegmentedVideo

__all__ = [
    "backbone_key",
    "export_inr_graphs",
    "export_base_graphs",
    "export_backbone_graphs",
    "export_route_graphs",
    "OUTPUT_NAMES",
]

# Raw outputs of each task kind's graphs, in the order the backbone returns them.
OUTPUT_NAMES = {
    "classification": ["logits"],
    "action": ["logits"],
    "segmentation": ["logits"],
    "detection": ["logits", "boxes"],
    "captioning": ["image_embeds"],  # the text decoder's greedy loop runs in the runtime over decoder/<backbone>
}
OPSET = 18
ADAPTER_TAIL = "gelu_conv1x1"  # nvp_rt.session reads it under this name


def backbone_key(backbone: Backbone) -> str:
    """``<name>-<first 10 hex of sha256 over the weights>``."""
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{backbone.name}-{digest.hexdigest()[:10]}"


def _to_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_dims: Sequence[Sequence[int]] | None = None,
) -> onnx.ModelProto:
    """Export with dynamic ``dynamic_dims`` per input (default: the leading, batch, dimension)."""
    dims = dynamic_dims or [(0,)] * len(example)
    dynamic: tuple[Any, ...] = tuple({d: torch.export.Dim.DYNAMIC for d in ds} for ds in dims)
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        dynamic = (dynamic,)  # torch.export wants *args' shapes as one tuple
    with _quiet_exporter():
        program = torch.onnx.export(
            module.eval(),
            example,
            None,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic,
            dynamo=True,
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    return program.model_proto


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints every step and logs every op it skips; callers report progress themselves."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _weights_as_inputs(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """Turn the initializers named ``prefix...`` (the stage's weights) into graph inputs."""
    graph = model.graph
    kept: list[onnx.TensorProto] = []
    moved: list[onnx.TensorProto] = []
    for init in graph.initializer:
        (moved if init.name.startswith(prefix) else kept).append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for init in moved:
        graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return model


class _Stage(nn.Module):
    """One INR stage under its state-dict path, so the exported weight names are the file's tensor names."""

    def __init__(self, name: str, stage: nn.Module):
        super().__init__()
        self.stages = nn.ModuleDict({name: stage})
        self.name = name

    def forward(self, x):
        return self.stages[self.name](x)


def export_inr_graphs(inr: INR | SegmentedVideo, store: ModelStore, progress=None) -> str:
    """Stage graphs of ``inr``'s architecture (weights unbound) into ``store``; returns the architecture key."""
    key = architecture_key(inr.config_dict())
    with torch.no_grad():
        x = inr.stem_input(torch.arange(min(2, inr.num_frames)))
        for name, stage in inr.stages.items():
            module = _Stage(name, stage)
            y = module(x)
            if ("inr", f"{key}.{name}") not in store:
                model = _to_onnx(module, (x,), [STAGE_INPUT], [STAGE_OUTPUT])
                store.put("inr", f"{key}.{name}", _weights_as_inputs(model, f"stages.{name}.").SerializeToString())
            if progress:
                progress(f"INR stage {name}")
            x = y
    return key


def export_base_graphs(decoder: BaseDecoder, digest: str, store: ModelStore, progress=None) -> str:
    """Stage graphs of the base decoder whose base hashes to ``digest`` (weights unbound, spatial sizes
    free, so they serve every file against the base at any frame size) into ``store``; returns their key
    (``nvp_rt.base_decoder.graph_key``)."""
    key = graph_key(digest)
    with torch.no_grad():
        x = torch.randn(2, decoder.config.latent_dim, 3, 4)  # batch and sides distinct: none is taken for another
        for name, stage in decoder.stages.items():
            module = _Stage(name, stage)
            y = module(x)
            if (BASE_GRAPHS, f"{key}.{name}") not in store:
                model = _to_onnx(module, (x,), [STAGE_INPUT], [STAGE_OUTPUT], dynamic_dims=[(0, 2, 3)])
                store.put(
                    BASE_GRAPHS, f"{key}.{name}", _weights_as_inputs(model, f"stages.{name}.").SerializeToString()
                )
            if progress:
                progress(f"base stage {name}")
            x = y
    return key


class _Suffix(nn.Module):
    """The suffix with one tensor argument per pathway (ONNX inputs are flat).

    Video points take every pathway's features frame-major and at the clip's
    full rate, (N, T, C, H, W): that is the layout the runtime's per-frame
    adapters produce, so the graph, not the runtime, picks a slower pathway's
    frames (pytorchvideo's rule, as ``PathwayAdapter``) and moves T behind C.
    Selecting frames after the per-frame adapter equals selecting them before.
    """

    def __init__(self, backbone: Backbone, point: str):
        super().__init__()
        self.backbone, self.point = backbone, point
        self.multi = isinstance(backbone.point(point), MultiPathwayPoint)
        self.clip = backbone.preprocess.num_frames
        self.frames = list(backbone.point(point).pathway_frames)

    def forward(self, *pathways):
        if self.clip > 1:
            pathways = tuple(self._video_layout(f, t) for f, t in zip(pathways, self.frames))
        features = list(pathways) if self.multi else pathways[0]
        if self.backbone.task == "captioning":  # up to the vision tower's output; the text loop is the runtime's
            return self.backbone.vision_embeds(features, self.point)
        out = self.backbone.suffix(features, self.point)
        return tuple(out) if isinstance(out, (tuple, list)) else out

    def _video_layout(self, x: torch.Tensor, frames: int | None) -> torch.Tensor:
        if frames is not None and frames != self.clip:
            x = x.index_select(1, temporal_indices(self.clip, frames))
        return x.transpose(1, 2)


class _ImageEmbeds(nn.Module):
    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels):
        return self.backbone.image_embeds(pixels)


class _TextStep(nn.Module):
    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids, embeds):
        return self.backbone.text_step(input_ids, embeds)


def _describe(backbone: Backbone, outputs: list[str]) -> dict:
    pre = backbone.preprocess
    return {
        "name": backbone.name,
        "task": backbone.task,
        "labels": list(backbone.labels),
        "outputs": outputs,
        "preprocess": {
            "input_size": list(pre.input_size),
            "mean": list(pre.mean),
            "std": list(pre.std),
            "num_frames": pre.num_frames,
        },
        "points": {p.name: [list(s) for s in p.pathway_shapes] for p in backbone.injection_points},
        "pretrained": backbone.pretrained,
        "weights_note": backbone.weights_note,
        **_postprocess_settings(backbone),
    }


def _postprocess_settings(backbone: Backbone) -> dict:
    """Defaults of the preset's own post-processing that the runtime must apply the same way."""
    if backbone.task == "captioning":
        return {"caption": backbone.caption_settings()}
    threshold = inspect.signature(backbone.postprocess).parameters.get("threshold")
    return {} if threshold is None else {"threshold": threshold.default}


def export_backbone_graphs(
    backbone: Backbone, points: Sequence[str], store: ModelStore, progress=None, full: bool = False
) -> str:
    """The description, the suffix graph from each of ``points`` and, if ``full``, the whole backbone's graph
    (only the pixel pipelines ``nvp bench`` compares against run it: a route never does); returns the key."""
    if backbone.task not in OUTPUT_NAMES:
        raise ValueError(
            f"{backbone.name}: {backbone.task} backbones cannot be exported to ONNX yet "
            f"(exportable: {', '.join(OUTPUT_NAMES)})"
        )
    key = backbone_key(backbone)
    outputs = OUTPUT_NAMES[backbone.task]
    h, w = backbone.preprocess.input_size
    t = backbone.preprocess.num_frames
    pixels = torch.zeros((2, 3, h, w) if t == 1 else (2, 3, t, h, w))
    if full and ("backbone", key) not in store:
        model = _ImageEmbeds(backbone) if backbone.task == "captioning" else backbone
        store.put("backbone", key, _to_onnx(model, (pixels,), [STAGE_INPUT], outputs).SerializeToString())
        if progress:
            progress(f"{backbone.name} full graph")
    if backbone.task == "captioning" and ("decoder", key) not in store:
        ids = torch.full((2, 2), backbone.caption_settings()["bos"], dtype=torch.long)
        with torch.no_grad():
            embeds = backbone.image_embeds(backbone.preprocess(torch.rand(2, 3, h, w)))
        step = _to_onnx(
            _TextStep(backbone), (ids, embeds), ["input_ids", "image_embeds"], ["logits"], dynamic_dims=[(0, 1), (0,)]
        )
        store.put("decoder", key, step.SerializeToString())
    store.put("backbone", key, json.dumps(_describe(backbone, outputs), indent=1).encode(), suffix=".json")
    for point in points:
        if ("suffix", f"{key}@{point}") in store:
            continue
        shapes = backbone.point(point).pathway_shapes
        if t > 1:  # frame-major, full clip rate: see _Suffix
            shapes = tuple((t, s[0], *s[2:]) for s in shapes)
        example = tuple(torch.randn(2, *s) for s in shapes)
        names = ["features"] if len(shapes) == 1 else [f"features{i}" for i in range(len(shapes))]
        model = _to_onnx(_Suffix(backbone, point), example, names, outputs)
        store.put("suffix", f"{key}@{point}", model.SerializeToString())
        if progress:
            progress(f"{backbone.name} suffix from {point}")
    return key


def export_adapter_tail(store: ModelStore) -> None:
    """The stacked adapter's second half, GELU then a 1x1 conv, with the weights as inputs
    ("weight" (C_out, C_hidden), "bias" (C_out,)); the runtime's kernel does the first half."""
    if ("adapter", ADAPTER_TAIL) in store:
        return
    f = onnx.TensorProto.FLOAT
    nodes = [
        onnx.helper.make_node("Gelu", ["input"], ["activated"]),
        onnx.helper.make_node("Constant", [], ["kernel_dims"], value_ints=[1, 1]),
        onnx.helper.make_node("Shape", ["weight"], ["weight_dims"]),
        onnx.helper.make_node("Concat", ["weight_dims", "kernel_dims"], ["kernel_shape"], axis=0),
        onnx.helper.make_node("Reshape", ["weight", "kernel_shape"], ["kernel"]),
        onnx.helper.make_node("Conv", ["activated", "kernel", "bias"], ["output"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "adapter_tail",
        [
            onnx.helper.make_tensor_value_info("input", f, ["N", "C_hidden", "H", "W"]),
            onnx.helper.make_tensor_value_info("weight", f, ["C_out", "C_hidden"]),
            onnx.helper.make_tensor_value_info("bias", f, ["C_out"]),
        ],
        [onnx.helper.make_tensor_value_info("output", f, ["N", "C_out", "H", "W"])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    onnx.checker.check_model(model, full_check=True)
    store.put("adapter", ADAPTER_TAIL, model.SerializeToString())


def export_route_graphs(
    inr: INR | SegmentedVideo,
    backbone: Backbone,
    point: str,
    store: ModelStore,
    stacked: bool = False,
    progress=None,
    full: bool = False,
) -> str:
    """Everything a route of ``inr`` into ``backbone`` at ``point`` needs in the store (and, if ``full``, the
    whole backbone's graph for the pixel pipelines); returns the backbone key."""
    export_inr_graphs(inr, store, progress)
    if stacked:
        export_adapter_tail(store)
    return export_backbone_graphs(backbone, [point], store, progress, full)
