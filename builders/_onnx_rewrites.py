"""Rewrites of exported ONNX graphs that make them plain for every runtime and quantizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def fold_pads_into_convs(path: Path, same_padding: Callable[[int, int, int], tuple[int, int]]) -> None:
    """Rewrite each exported ``Pad -> Conv`` pair as one ``Conv`` with asymmetric ``pads``.

    PyTorch convolutions only pad symmetrically, so the exporter emits a separate ``Pad`` whose amounts are
    computed by a small Slice/Transpose subgraph that it fails to constant-fold. ONNX ``Conv`` takes
    asymmetric pads natively, so the shipped graph is just Conv/Clip/Add, which every runtime and
    quantization tool reads as intended. The pads are recomputed from the Conv's kernel and stride and the
    inferred input size; the builder's parity check afterwards proves the rewrite changed nothing.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {
        info.name: [dim.dim_value for dim in info.type.tensor_type.shape.dim]
        for info in [*inferred.input, *inferred.value_info]
    }
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        (conv,) = consumers[pad.output[0]]
        assert conv.op_type == "Conv", f"{pad.name} feeds {conv.op_type}, not a Conv"
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        assert not any(attrs.get("pads", [])), f"{conv.name} already pads"
        _, _, height, width = shapes[pad.input[0]]
        top, bottom = same_padding(height, attrs["kernel_shape"][0], attrs["strides"][0])
        left, right = same_padding(width, attrs["kernel_shape"][1], attrs["strides"][1])
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, helper.make_attribute("pads", [top, left, bottom, right])])
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)

    # Drop what only fed the Pads (their amount subgraphs), until nothing more is unused.
    while True:
        used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead = [node for node in graph.node if not any(name in used for name in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    produced = {name for node in graph.node for name in node.output}
    stale = [info for info in graph.value_info if info.name not in produced]
    for info in stale:
        graph.value_info.remove(info)

    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
