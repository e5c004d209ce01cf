"""What an ONNX file asks of us: its image input, its outputs, and the files it reads beside it.

``models add`` builds a manifest from this, so every refusal names the problem in the graph ("2 inputs",
"input is tensor(int64)") rather than failing later inside ONNX Runtime. External data (weights kept in files
next to the ``.onnx``) is checked before anything opens the graph: a tensor whose ``location`` leaves the
model's folder (an absolute path, ``..``, a link) would let a model file read any file on the machine, the
path-traversal class of CVE-2022-25882.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from common.errors import ModelLoadError

Layout = Literal["NCHW", "NHWC"]
# ONNX Runtime's names for the element types a classifier's or embedder's input may have.
_FLOAT = "tensor(float)"


class GraphInput(BaseModel):
    """The image input: its name, and each axis as a size or None (symbolic)."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: str
    shape: tuple[int | None, ...]


class GraphOutput(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    shape: tuple[int | None, ...]
    from_softmax: bool  # produced by a Softmax node: probabilities, not logits

    @property
    def width(self) -> int | None:
        """Values per row (the product of the non-batch axes), None when an axis is symbolic."""
        rest = self.shape[1:]
        return math.prod(d for d in rest if d is not None) if None not in rest else None


class GraphSignature(BaseModel):
    model_config = ConfigDict(frozen=True)

    input: GraphInput
    outputs: tuple[GraphOutput, ...]
    external_data: tuple[str, ...]  # files beside the .onnx that hold tensors, relative to its folder

    @property
    def batch(self) -> int | None:
        """The fixed batch size the graph takes, or None when the batch axis is dynamic."""
        return self.input.shape[0]

    def layout(self) -> Layout:
        """NCHW when axis 1 holds the channels (1 or 3), NHWC when only the last one does."""
        shape = self.input.shape
        if shape[1] in (1, 3):
            return "NCHW"
        if shape[3] in (1, 3):
            return "NHWC"
        raise ModelLoadError(
            f"cannot tell the layout of input {self.input.name!r} with shape {_show(shape)}: neither axis 1 "
            "(NCHW) nor axis 3 (NHWC) is 1 or 3 channels; pass --layout"
        )

    def output(self, name: str | None) -> GraphOutput:
        if name is None:
            return self.outputs[0]
        for output in self.outputs:
            if output.name == name:
                return output
        raise ModelLoadError(f"no output {name!r} in the graph; outputs: {[o.name for o in self.outputs]}")


def _show(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _load_without_external_data(onnx_path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a file that is not ONNX
        raise ModelLoadError(f"{onnx_path} is not an ONNX model: {exc}") from exc


def external_data_files(onnx_path: Path, model: Any = None) -> tuple[str, ...]:
    """The external-data files ``onnx_path`` names, each checked to stay inside its folder (``model``: the file
    already parsed, without its external data)."""
    import onnx

    model = model if model is not None else _load_without_external_data(onnx_path)
    folder = onnx_path.parent.resolve()
    files: set[str] = set()
    tensors = list(model.graph.initializer)
    for node in _all_nodes(model.graph):
        tensors.extend(a.t for a in node.attribute if a.HasField("t"))
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        files.add(_inside(folder, location, tensor.name))
    return tuple(sorted(files))


def _all_nodes(graph: object) -> list:
    """Every node of ``graph`` and of its subgraphs (If/Loop bodies hold initializers of their own)."""
    nodes = []
    for node in graph.node:  # type: ignore[attr-defined]
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.HasField("g"):
                nodes.extend(_all_nodes(attribute.g))
            for sub in attribute.graphs:
                nodes.extend(_all_nodes(sub))
    return nodes


def _inside(folder: Path, location: str, tensor: str) -> str:
    """``location`` relative to ``folder`` if it names a regular file inside it; a ModelLoadError otherwise."""
    if not location or os.path.isabs(location) or Path(location).drive:
        raise ModelLoadError(f"tensor {tensor!r} keeps its data at {location!r}: external data must be a relative path")
    target = (folder / location).resolve()  # resolve(): a symlink pointing out counts as out
    if target != folder and folder not in target.parents:
        raise ModelLoadError(
            f"tensor {tensor!r} keeps its data at {location!r}, outside the model's folder {folder}; refused "
            "(a model file must not read other files: CVE-2022-25882)"
        )
    if not target.is_file():
        raise ModelLoadError(f"tensor {tensor!r} keeps its data in {location!r}, which is not a file in {folder}")
    return target.relative_to(folder).as_posix()


def inspect_graph(onnx_path: Path) -> GraphSignature:
    """The graph's one image input and its outputs, after its external data is checked (before ORT reads it)."""
    import onnxruntime as ort

    parsed = _load_without_external_data(onnx_path)
    external = external_data_files(onnx_path, parsed)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises many types for a graph it cannot load
        raise ModelLoadError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ModelLoadError(f"the graph has {len(inputs)} inputs {names}; StreamScore feeds one image input")
    (given,) = inputs
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in given.shape)
    if len(shape) != 4:
        raise ModelLoadError(
            f"input {given.name!r} has shape {_show(shape)}: an image batch has 4 axes (NCHW or NHWC), "
            f"this graph takes {len(shape)}"
        )
    if given.type != _FLOAT:
        raise ModelLoadError(f"input {given.name!r} is {given.type}; StreamScore feeds float32 (tensor(float))")
    softmax_outputs = {name for node in parsed.graph.node if node.op_type == "Softmax" for name in node.output}
    outputs = tuple(
        GraphOutput(
            name=o.name,
            shape=tuple(d if isinstance(d, int) and d > 0 else None for d in o.shape),
            from_softmax=o.name in softmax_outputs,
        )
        for o in session.get_outputs()
    )
    return GraphSignature(
        input=GraphInput(name=given.name, dtype=given.type, shape=shape), outputs=outputs, external_data=external
    )
