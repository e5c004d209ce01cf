"""Bad canaries of the digits model, each a real version folder ONNX Runtime loads and the app's check passes:

- ``broken_preprocessing``: the same weights behind a manifest whose mean is off by one pixel range (a wrong
  normalization constant, the classic porting bug): it answers 200 and disagrees;
- ``fails_on_some_inputs``: the same network plus a lookup that goes out of bounds (an ONNX Runtime error) on
  images with little ink, as a model exported with a shape or range assumption fails on the inputs that break it;
- ``slow``: the same network plus a chain of matrix products that depends on the input (no constant folding).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Mean ink (0..1 after the manifest's scaling) under which ``fails_on_some_inputs`` fails: about half of the
# held-out digits have less; the app's warm-up batch (uniform noise, mean 0.5) has more.
FAIL_BELOW_MEAN_INK = 0.29
SLOW_MATMULS = 24
SLOW_SIDE = 384


def add_version(root: Path, source: Path, version: str) -> Path:
    """``source`` (a digits version folder) copied as version ``version`` of ``root``'s model (the parent
    folder of ``source``), its manifest naming the version."""
    target = root / version
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("calibration"))
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps(manifest | {"name": root.name, "version": version}))
    return target


def broken_preprocessing(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["preprocess"]["mean"] = [255.0]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _rewire(folder: Path, extra_nodes: list[onnx.NodeProto], extra_inits: list[onnx.TensorProto], term: str) -> None:
    """Add ``term`` (a scalar computed from the input by ``extra_nodes``) times zero to the model's output."""
    model = onnx.load(folder / "model.onnx")
    graph = model.graph
    output = graph.output[0].name
    inner = output + "_inner"
    for node in graph.node:
        node.output[:] = [inner if name == output else name for name in node.output]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "canary_zero")
    graph.initializer.extend([*extra_inits, zero])
    graph.node.extend(
        [
            *extra_nodes,
            helper.make_node("Mul", [term, "canary_zero"], ["canary_nothing"]),
            helper.make_node("Add", [inner, "canary_nothing"], [output]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")


def fails_on_some_inputs(folder: Path) -> None:
    """Gather index 0 (in bounds) for images with enough ink, 7 (out of bounds of 2) for the others."""
    input_name = onnx.load(folder / "model.onnx").graph.input[0].name
    inits = [
        numpy_helper.from_array(np.float32(FAIL_BELOW_MEAN_INK), "canary_threshold"),
        numpy_helper.from_array(np.array([0.0, 0.0], np.float32), "canary_table"),
        numpy_helper.from_array(np.int64(7), "canary_seven"),
    ]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["canary_mean"], keepdims=0),
        helper.make_node("Less", ["canary_mean", "canary_threshold"], ["canary_faint"]),
        helper.make_node("Cast", ["canary_faint"], ["canary_faint64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["canary_faint64", "canary_seven"], ["canary_index"]),
        helper.make_node("Gather", ["canary_table", "canary_index"], ["canary_looked_up"]),
    ]
    _rewire(folder, nodes, inits, "canary_looked_up")


def slow(folder: Path) -> None:
    input_name = onnx.load(folder / "model.onnx").graph.input[0].name
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((SLOW_SIDE, SLOW_SIDE)) / SLOW_SIDE).astype(np.float32)
    inits = [numpy_helper.from_array(weights, "canary_w")]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["canary_mean"], keepdims=0),
        helper.make_node("Add", ["canary_w", "canary_mean"], ["canary_m0"]),
    ]
    for i in range(SLOW_MATMULS):
        nodes.append(helper.make_node("MatMul", [f"canary_m{i}", "canary_w"], [f"canary_m{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"canary_m{SLOW_MATMULS}"], ["canary_sum"], keepdims=0))
    _rewire(folder, nodes, inits, "canary_sum")
