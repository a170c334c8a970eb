"""Multiply-accumulates of an ONNX graph, counted from its nodes and inferred shapes (1 MAC = 1 FLOP, as the paper).

Counted: Conv / ConvTranspose (output elements x input channels per group x kernel
size), Gemm and MatMul (batched: output elements x the reduced dimension), and
Resize in linear mode (4 MACs per output element for bilinear on (N, C, H, W), 8 for
trilinear: fvcore's rule) or cubic (16). Everything else (norms, activations, elementwise,
softmax, pooling, nearest resize) counts 0, as torch's and fvcore's counters do.
Shapes come from ``onnx.shape_inference`` after the graph's dynamic input dims are
fixed to the given shapes.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

__all__ = ["GraphMacs", "graph_macs", "resize_conv_graph"]


class GraphMacs(dict):
    """MACs per op type; ``total`` sums them."""

    @property
    def total(self) -> int:
        return int(sum(self.values()))


def _load(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    return onnx.load(str(model), load_external_data=False)


def _fix_inputs(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], batch: int | None = None) -> None:
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if value.name in shapes:
            wanted = list(shapes[value.name])
            if len(wanted) != len(dims):
                raise ValueError(f"input {value.name!r} has rank {len(dims)}; shape {wanted} given")
            for d, size in zip(dims, wanted):
                d.Clear()
                d.dim_value = int(size)
        elif batch is not None and len(dims) and all(d.HasField("dim_value") for d in dims[1:]):
            dims[0].Clear()
            dims[0].dim_value = batch
        elif any(not d.HasField("dim_value") for d in dims):
            raise ValueError(f"input {value.name!r} has dynamic dims; give its shape")


def _known(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    g = model.graph
    out = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[v.name] = tuple(d.dim_value for d in t.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value: ONNX's inference, then, for what it leaves open (DETR's attention reshapes),
    ONNX Runtime's symbolic shape inference, which propagates shape-computing subgraphs further."""
    shapes = _known(shape_inference.infer_shapes(model, data_prop=True))
    needed = {
        n for node in model.graph.node if node.op_type in _COUNTED for n in (*node.input[:2], node.output[0]) if n
    }
    if needed - set(shapes):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        shapes.update(_known(SymbolicShapeInference.infer_shapes(model, auto_merge=True)))
    return shapes


_COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Resize")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(f"{node.op_type} node {node.name!r}: no inferred shape for {name!r}")
        return shapes[name]

    op = node.op_type
    if op == "Conv":
        w, y = shape(node.input[1]), shape(node.output[0])
        return math.prod(y) * math.prod(w[1:])  # each output: C_in/groups x kernel MACs
    if op == "ConvTranspose":
        x, w = shape(node.input[0]), shape(node.input[1])
        return math.prod(x) * math.prod(w[1:])  # each input element scatters into C_out/groups x kernel outputs
    if op == "Gemm":
        a, y = shape(node.input[0]), shape(node.output[0])
        return math.prod(y) * (a[0] if _attr(node, "transA", 0) else a[1])
    if op == "MatMul":
        a, y = shape(node.input[0]), shape(node.output[0])
        return math.prod(y) * a[-1]
    if op == "Resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        y = shape(node.output[0])
        spatial = max(len(y) - 2, 1)  # (N, C, *spatial): bilinear on 4-D, trilinear on 5-D, whatever the scales
        per_output = {"linear": 2**spatial, "cubic": 4**spatial}.get(mode, 0)
        return math.prod(y) * per_output
    return 0


def graph_macs(
    model: onnx.ModelProto | str | os.PathLike, input_shapes: Mapping[str, Sequence[int]] = {}, batch: int | None = None
) -> GraphMacs:
    """MACs of one run of ``model`` with its inputs of ``input_shapes``; inputs not given whose only dynamic dim
    is the leading one get ``batch`` there (None: every dynamic input must be given)."""
    model = _load(model)
    _fix_inputs(model, input_shapes, batch)
    shapes = _shapes(model)
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("If", "Loop", "Scan"):
            raise ValueError(f"graph_macs does not count control flow ({node.op_type} node {node.name!r})")
        macs = _node_macs(node, shapes)
        if macs:
            counts[node.op_type] += macs
    return GraphMacs(counts)


def resize_conv_graph(
    channels: int, in_size: Sequence[int], out_size: Sequence[int], out_channels: int | None = None, batch: int = 1
) -> onnx.ModelProto:
    """A bilinear resize (N, C, *in_size) -> out_size, then a 1x1 conv to ``out_channels`` (None: no conv).

    The two operations NVP's micro adapter fuses, and the pixel path's preprocessing resize, as a graph,
    so their cost is counted by the same rules as the backbones'.
    """
    f = TensorProto.FLOAT
    in_size, out_size = [int(v) for v in in_size], [int(v) for v in out_size]
    x = helper.make_tensor_value_info("input", f, [batch, channels, *in_size])
    sizes = numpy_helper.from_array(np.array([batch, channels, *out_size], np.int64), "sizes")
    nodes = [
        helper.make_node(
            "Resize",
            ["input", "", "", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        )
    ]
    inits, out, c = [sizes], "resized", channels
    if out_channels is not None:
        weight = numpy_helper.from_array(np.zeros((out_channels, channels, 1, 1), np.float32), "weight")
        bias = numpy_helper.from_array(np.zeros(out_channels, np.float32), "bias")
        nodes.append(helper.make_node("Conv", ["resized", "weight", "bias"], ["output"]))
        inits += [weight, bias]
        out, c = "output", out_channels
    y = helper.make_tensor_value_info(out, f, [batch, c, *out_size])
    graph = helper.make_graph(nodes, "resize_conv1x1", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
