"""Rewrites of the QDQ model ONNX Runtime's ``quantize_static`` writes, for ``pipeline.models.quantize``: GPTQ
weight rounding (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") and float outputs.

Why GPTQ: on EfficientNet-Lite0, rounding each weight to its nearest int8 step costs more agreement with fp32
than all activation ranges together (docs/quantize.md). GPTQ rounds a layer's weights one input at a time and
pushes each rounding error, through the inverse of the Gram matrix of the layer's inputs on the calibration
images, onto the weights not rounded yet, so the layer's outputs stay close; inputs in act-order (largest Hessian
diagonal first: lower logits error on both evaluation sets, docs/quantize.md). It keeps ONNX Runtime's per-channel
scales (so the int32 biases and the integer kernels are unchanged) and only rewrites the int8 values. Why float
outputs: ORT puts a Q/DQ pair on the graph's output, and 256 steps across the logits' range turn near-ties into
ties.

Measured and left out, no better than the noise of rounding choices (docs/quantize.md, "Second round"): Hessians
from 64-256 augmented crops (and 10-40x slower), Hessians from the quantized model's own inputs (sequential GPTQ),
other damping, empirical bias correction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def unquantize_outputs(model: Any) -> None:
    """Drop the QuantizeLinear/DequantizeLinear pair in front of each graph output (it buys no speed: the last
    Gemm still runs as an integer QGemm)."""
    producer = {name: node for node in model.graph.node for name in node.output}
    for output in model.graph.output:
        dq = producer.get(output.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in producer:
            continue
        source = producer[q.input[0]]
        source.output[list(source.output).index(q.input[0])] = output.name
        model.graph.node.remove(dq)
        model.graph.node.remove(q)
    used = {name for node in model.graph.node for name in node.input}
    for unused in [i for i in model.graph.initializer if i.name not in used]:  # the pairs' scales and zero points
        model.graph.initializer.remove(unused)


def _layers(model: Any) -> dict[str, tuple[Any, np.ndarray, dict[str, Any]]]:
    """The layers GPTQ rounds: Conv with groups 1 or depthwise, Gemm with ``transB``: name -> (node, weight
    (out, ...), attributes). Others (MatMul, grouped Conv) keep ONNX Runtime's nearest rounding."""
    from onnx import helper, numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    layers = {}
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        group = attributes.get("group", 1)
        if node.op_type == "Gemm" and (not attributes.get("transB") or attributes.get("transA")):
            continue
        if node.op_type == "Conv" and not (group == 1 or (weight.shape[1] == 1 and group == weight.shape[0])):
            continue
        layers[node.name] = (node, weight, attributes)
    return layers


def _patches(x: np.ndarray, attributes: dict[str, Any], weight_shape: tuple[int, ...]) -> np.ndarray:
    """A Conv's input as the rows its weights multiply: (1, positions, in*kh*kw), or per channel for a depthwise
    Conv (channels, positions, kh*kw); ordered as the weights flatten."""
    if x.ndim == 2:
        return x[None]
    kh, kw = weight_shape[2:]
    sh, sw = attributes.get("strides", [1, 1])
    top, left, bottom, right = attributes.get("pads", [0, 0, 0, 0])
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    n, c, h, w = windows.shape[:4]
    if weight_shape[1] == 1 and c > 1:  # depthwise: every channel has its own weights and its own inputs
        return windows.transpose(1, 0, 2, 3, 4, 5).reshape(c, n * h * w, kh * kw)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(1, n * h * w, c * kh * kw)


def hessians(float_model: Any, batches: Iterable[np.ndarray], input_name: str) -> dict[str, np.ndarray]:
    """Per layer, the Gram matrix of its inputs on the calibration images (GPTQ's Hessian), summed one batch at a
    time so memory stays that of one batch's activations."""
    import onnx
    import onnxruntime as ort

    layers = _layers(float_model)
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    known = {o.name for o in model.graph.output}
    inputs = sorted({node.input[0] for node, _, _ in layers.values()} - known)
    model.graph.output.extend(onnx.helper.make_value_info(name, onnx.TypeProto()) for name in inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [node.input[0] for node, _, _ in layers.values()]
    grams: dict[str, np.ndarray] = {}
    for batch in batches:
        activations = dict(zip(names, session.run(names, {input_name: batch}), strict=True))
        for name, (node, weight, attributes) in layers.items():
            x = activations[node.input[0]]
            rows = _patches(x.reshape(len(x), -1) if node.op_type == "Gemm" else x, attributes, weight.shape)
            gram = np.einsum("cmk,cml->ckl", rows, rows).astype(np.float64)
            grams[name] = grams[name] + gram if name in grams else gram
    return grams


def round_weights(model: Any, float_model: Any, grams: dict[str, np.ndarray], act_order: bool = True) -> None:
    """Replace the int8 weights ONNX Runtime rounded to nearest by GPTQ's (Frantar et al. 2022), on the same
    per-channel scales (so the int32 biases stay right): each weight's rounding error is pushed, through the
    inverse Hessian, onto the weights of its row not rounded yet. ``act_order`` rounds the inputs with the largest
    Hessian diagonal (the most energetic) first, while many weights are left to absorb their errors."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    producer = {name: node for node in model.graph.node for name in node.output}
    for name, (_, weight, _) in _layers(float_model).items():
        quantized = next((n for n in model.graph.node if n.name == name), None)
        dq = producer.get(quantized.input[1]) if quantized is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers:
            continue  # kept in float
        scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float64).reshape(-1)
        zero = numpy_helper.to_array(initializers[dq.input[2]])
        if np.any(zero != 0) or len(scale) != weight.shape[0]:
            continue  # per-tensor or asymmetric weights: not what GPTQ here assumes
        rounded = _gptq(weight.reshape(weight.shape[0], -1).astype(np.float64), grams[name], scale, act_order)
        initializers[dq.input[0]].CopyFrom(numpy_helper.from_array(rounded.reshape(weight.shape), dq.input[0]))


def _gptq(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, act_order: bool, damp: float = 0.01) -> np.ndarray:
    """Rows of ``w`` (out, k) rounded to int8 steps of ``scale`` (out,), with one Hessian (1, k, k) for all rows
    or one per row (out, k, k). Damping 1 % of the mean diagonal: 0.1 % and 5-10 % were measured worse
    (docs/quantize.md)."""
    h, k = hessian.copy(), w.shape[1]
    diagonal = np.einsum("gii->gi", h)
    dead = diagonal == 0  # inputs that were always zero: any weight does, so no error to spread
    h[:, np.arange(k), np.arange(k)] += damp * np.maximum(diagonal.mean(axis=1, keepdims=True), 1e-12) + dead
    # Act-order (GPTQ's "descending diagonal"): columns permuted per Hessian, un-permuted at the end.
    order = np.argsort(-diagonal, axis=1, kind="stable") if act_order else np.tile(np.arange(k), (len(h), 1))
    h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], 1), order[:, None, :], 2)
    w = np.take_along_axis(w, np.broadcast_to(order, w.shape), 1).copy()
    upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    q = np.zeros(w.shape, np.int8)
    for start in range(0, k, 128):  # GPTQ's lazy batches: the columns after a block are updated once per block
        end = min(start + 128, k)
        block, errors = w[:, start:end], np.zeros((len(w), end - start))
        for i in range(start, end):
            q[:, i] = np.clip(np.round(block[:, i - start] / scale), -128, 127)
            errors[:, i - start] = (block[:, i - start] - q[:, i] * scale) / upper[:, i, i]
            block[:, i - start :] -= errors[:, i - start, None] * upper[:, i, i:end]
        if end < k:
            w[:, end:] -= (
                np.einsum("rj,rjk->rk", errors, upper[:, start:end, end:])
                if len(upper) > 1
                else (errors @ upper[0, start:end, end:])
            )
    rounded = np.zeros_like(q)
    np.put_along_axis(rounded, np.broadcast_to(order, q.shape), q, 1)
    return rounded
