"""ResNet-50- and MobileNetV2-shaped ImageNet classifiers with random weights, built as ONNX from code.

Why: benchmarks need models with the *cost* of the real architectures (layer shapes, FLOPs, parameter
count, memory traffic) without downloading weights or installing torch. Accuracy is irrelevant there, so the
weights are random but deterministic (fixed seed) and scaled so that activations stay O(1): a model whose
activations overflow to inf or collapse to 0 would time differently (denormals) and produce useless logits.

BatchNorm is folded into each convolution's bias, as an exporter does for inference, so the graphs contain
only Conv / Relu / Clip / Add / MaxPool / GlobalAveragePool / Flatten / Gemm. Depthwise convolutions are
``Conv`` with ``group == channels``. These models are big (ResNet-50 is ~100 MB) and are never committed:
``benchmarks/run.py`` builds them into a git-ignored cache folder when missing.

Run ``python -m builders.zoo OUT_DIR`` to build both, check them and time them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from builders._registry import builder, register_builder
from pipeline.models.manifest import InputSpec, ModelManifest, OutputSpec, PreprocessSpec

logger = logging.getLogger(__name__)

OPSET = 17
NUM_CLASSES = 1000
IMAGE_SIZE = 224
# Residual branches are scaled down at their last conv so that adding 16 (ResNet-50) or 10 (MobileNetV2)
# branches onto the identity path does not grow activations geometrically, the role zero-init-gamma plays.
_RESIDUAL_GAIN = 0.5
# Folded BatchNorm biases: small, so ReLUs neither die nor saturate, but non-zero so the Add isn't free.
_BIAS_STD = 0.05
SOURCE = "random weights, built by builders/zoo.py for benchmarks"


@dataclass
class _GraphBuilder:
    """Accumulates nodes and initializers while tracking the current tensor's channels and spatial size."""

    seed: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    params: int = 0
    macs: int = 0
    _counter: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def _name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def _constant(self, prefix: str, array: np.ndarray) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def conv(
        self,
        x: str,
        hw: int,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        group: int = 1,
        gain: float = 2.0,
        scale: float = 1.0,
    ) -> tuple[str, int]:
        """A conv with BatchNorm folded into its bias; returns the output name and its spatial size.

        ``gain`` is 2 for a conv followed by ReLU (He init keeps the second moment) and 1 for a linear conv;
        ``scale`` shrinks residual branches.
        """
        fan_in = (cin // group) * kernel * kernel
        std = scale * np.sqrt(gain / fan_in)
        weight = (self.rng.standard_normal((cout, cin // group, kernel, kernel)) * std).astype(np.float32)
        bias = (self.rng.standard_normal(cout) * _BIAS_STD).astype(np.float32)
        pad = kernel // 2
        out_hw = (hw + 2 * pad - kernel) // stride + 1
        out = self._name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self._constant("w", weight), self._constant("b", bias)],
                [out],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
                group=group,
            )
        )
        self.params += weight.size + bias.size
        self.macs += cout * out_hw * out_hw * fan_in
        return out, out_hw

    def relu(self, x: str) -> str:
        out = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    def relu6(self, x: str) -> str:
        # Opset >= 11 takes Clip's bounds as inputs, not attributes.
        out = self._name("relu6")
        lo = self._constant("zero", np.array(0.0, dtype=np.float32))
        hi = self._constant("six", np.array(6.0, dtype=np.float32))
        self.nodes.append(helper.make_node("Clip", [x, lo, hi], [out]))
        return out

    def add(self, a: str, b: str) -> str:
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out]))
        return out

    def max_pool(self, x: str, hw: int) -> tuple[str, int]:
        out = self._name("maxpool")
        self.nodes.append(
            helper.make_node("MaxPool", [x], [out], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        )
        return out, (hw + 2 - 3) // 2 + 1

    def classifier(self, x: str, channels: int, output: str) -> None:
        """Global average pool, flatten, then a linear layer to ``NUM_CLASSES`` logits."""
        pooled = self._name("gap")
        flat = self._name("flatten")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
        weight = (self.rng.standard_normal((NUM_CLASSES, channels)) / np.sqrt(channels)).astype(np.float32)
        bias = np.zeros(NUM_CLASSES, dtype=np.float32)
        self.nodes.append(
            helper.make_node(
                "Gemm",
                [flat, self._constant("fc_w", weight), self._constant("fc_b", bias)],
                [output],
                transB=1,
            )
        )
        self.params += weight.size + bias.size
        self.macs += channels * NUM_CLASSES

    def model(self, graph_name: str, input_name: str, output_name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", NUM_CLASSES])],
            self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="streamscore-zoo"
        )
        model.ir_version = 8  # the IR version that goes with opset 17; older runtimes refuse newer ones
        return model


def _resnet50_graph(seed: int) -> _GraphBuilder:
    """torchvision's ResNet-50 v1.5 (stride on the 3x3 conv of each bottleneck): ~4.1 GMACs, ~25.5M params."""
    g = _GraphBuilder(seed)
    x, hw = g.conv("input", IMAGE_SIZE, 3, 64, 7, stride=2)
    x = g.relu(x)
    x, hw = g.max_pool(x, hw)
    cin = 64
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            cout = width * 4
            y, _ = g.conv(x, hw, cin, width, 1)
            y = g.relu(y)
            y, out_hw = g.conv(y, hw, width, width, 3, stride=stride)
            y = g.relu(y)
            y, _ = g.conv(y, out_hw, width, cout, 1, gain=1.0, scale=_RESIDUAL_GAIN)
            shortcut = x
            if block == 0:
                shortcut, _ = g.conv(x, hw, cin, cout, 1, stride=stride, gain=1.0)
            x = g.relu(g.add(y, shortcut))
            cin, hw = cout, out_hw
    g.classifier(x, cin, "logits")
    return g


def _mobilenetv2_graph(seed: int) -> _GraphBuilder:
    """torchvision's MobileNetV2 (width 1.0): ~300 MMACs, ~3.5M params, ReLU6, linear bottlenecks."""
    g = _GraphBuilder(seed)
    x, hw = g.conv("input", IMAGE_SIZE, 3, 32, 3, stride=2)
    x = g.relu6(x)
    cin = 32
    # (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
    for t, c, n, s in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            residual = stride == 1 and cin == c
            y = x
            if t != 1:
                y, _ = g.conv(y, hw, cin, hidden, 1)
                y = g.relu6(y)
            y, out_hw = g.conv(y, hw, hidden, hidden, 3, stride=stride, group=hidden)
            y = g.relu6(y)
            y, _ = g.conv(y, out_hw, hidden, c, 1, gain=1.0, scale=_RESIDUAL_GAIN if residual else 1.0)
            x = g.add(x, y) if residual else y
            cin, hw = c, out_hw
    x, hw = g.conv(x, hw, cin, 1280, 1)
    x = g.relu6(x)
    g.classifier(x, 1280, "logits")
    return g


def _write(repository: Path, name: str, version: str, g: _GraphBuilder) -> Path:
    """Write model.onnx, manifest.json and labels.txt; the manifest is validated by constructing it."""
    folder = repository / name / version
    folder.mkdir(parents=True, exist_ok=True)
    model = g.model(name.replace("-", "_"), "input", "logits")
    onnx.checker.check_model(model)
    onnx.save_model(model, str(folder / "model.onnx"))
    manifest = ModelManifest(
        name=name,
        version=version,
        input=InputSpec(name="input", layout="NCHW", height=IMAGE_SIZE, width=IMAGE_SIZE, color="RGB"),
        preprocess=PreprocessSpec(
            resize_shorter=256,
            interpolation="bilinear",
            mean=(123.675, 116.28, 103.53),
            std=(58.395, 57.12, 57.375),
        ),
        output=OutputSpec(name="logits", kind="logits"),
        labels_file="labels.txt",
        source=SOURCE,
    )
    (folder / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    (folder / "labels.txt").write_text("".join(f"class_{i}\n" for i in range(NUM_CLASSES)))
    logger.info(
        "built %s:%s in %s: %.2fM params, %.0f MMACs (%.2f GFLOPs as multiply-adds)",
        name,
        version,
        folder,
        g.params / 1e6,
        g.macs / 1e6,
        g.macs / 1e9,
    )
    return folder


@register_builder("resnet50-shaped")
def build_resnet50(repository: Path, version: str = "1", seed: int = 50) -> Path:
    """Build ``resnet50-shaped`` into ``<repository>/resnet50-shaped/<version>/`` and return that folder."""
    return _write(Path(repository), "resnet50-shaped", version, _resnet50_graph(seed))


@register_builder("mobilenetv2-shaped")
def build_mobilenetv2(repository: Path, version: str = "1", seed: int = 2) -> Path:
    """Build ``mobilenetv2-shaped`` into ``<repository>/mobilenetv2-shaped/<version>/``; return the folder."""
    return _write(Path(repository), "mobilenetv2-shaped", version, _mobilenetv2_graph(seed))


def check_and_time(folder: Path, batch_size: int = 8, runs: int = 5) -> dict[str, float]:
    """Check the graph, run it in ONNX Runtime on one thread, and return logit statistics and ms per image.

    Checks that logits are finite and O(1) on a normalized-image-like input, which is what the weight scaling
    promises; the timing is the single-thread cost per image that benchmark ratios are read against.
    """
    import onnxruntime as ort

    onnx.checker.check_model(str(folder / "model.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    (logits,) = session.run(["logits"], {"input": x})
    if logits.shape != (batch_size, NUM_CLASSES) or not np.isfinite(logits).all():
        raise RuntimeError(f"{folder}: bad logits, shape {logits.shape}, finite {np.isfinite(logits).all()}")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(["logits"], {"input": x})
        times.append(time.perf_counter() - start)
    return {
        "logits_std": float(logits.std()),
        "logits_abs_max": float(np.abs(logits).max()),
        "ms_per_image_1_thread": 1000 * float(np.median(times)) / batch_size,
    }


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path, help="folder to build into, e.g. bench/models")
    names = ["resnet50-shaped", "mobilenetv2-shaped"]
    parser.add_argument("--only", choices=names, action="append", help="build just these")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.only or names:
        folder = builder(name)(args.repository, "1")
        logger.info("%s: %s", name, check_and_time(folder))


if __name__ == "__main__":
    _main()
