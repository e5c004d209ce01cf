"""Build the ``digits`` model: a small CNN on scikit-learn's bundled 8x8 handwritten digits.

Why this model exists: it is the smallest real classifier we can ship and rebuild anywhere without a download
(the data set is inside scikit-learn), so tests can run the whole pipeline on real PNG files and demand a real
accuracy instead of checking shapes against a mock.

The pipeline feeds the model ``p / 255`` for 8-bit pixels ``p`` (manifest mean 0, std 255). The data set's
values are 0..16, so training uses ``X / 16``, and :func:`write_heldout_images` writes pixels as
``round(v * 255 / 16)``: both sides see the same 0..1 scale.

Run ``python -m builders digits --models-dir models --version 1`` to rebuild
``models/digits/1/``. torch is an optional extra, so it is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from builders._registry import register_builder
from pipeline.models.manifest import InputSpec, ModelManifest, OutputSpec, PreprocessSpec

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NAME = "digits"
LABELS = tuple(str(d) for d in range(10))
SIDE_PX = 8
# The data set stores ink as 0..16; dividing by this maps it to 0..1, the scale the pipeline produces.
DATA_MAX = 16.0
SEED = 0
TEST_SIZE = 0.25
EPOCHS = 40
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
OPSET = 17


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/held-out split, shared by training and :func:`write_heldout_images`.

    Returns ``(x_train, x_test, y_train, y_test, idx_train, idx_test)``; ``x`` is float32 in 0..16 with shape
    ``(n, 8, 8)`` and ``idx`` are the row numbers in ``load_digits()`` (so held-out files can be traced back).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)
    labels = data.target.astype(np.int64)
    indices = np.arange(len(labels))
    x_train, x_test, y_train, y_test, idx_train, idx_test = train_test_split(
        images, labels, indices, test_size=TEST_SIZE, random_state=SEED, stratify=labels
    )
    return x_train, x_test, y_train, y_test, idx_train, idx_test


def _network() -> torch.nn.Module:
    """Two 3x3 convolutions and a small head: about 40k parameters, enough for ~98% on this data."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, len(LABELS)),
    )


def _seed_everything(seed: int) -> None:
    """Fix every source of randomness so that two builds give the same weights on the same machine."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def train() -> tuple[torch.nn.Module, float]:
    """Train the network on the training split; return it (in eval mode) and its held-out accuracy."""
    import torch
    from torch import nn

    _seed_everything(SEED)
    x_train, x_test, y_train, y_test, _, _ = _split()
    # NCHW, 0..1: the layout and scale the pipeline hands to the ONNX graph.
    xt = torch.from_numpy(x_train / DATA_MAX).unsqueeze(1)
    yt = torch.from_numpy(y_train)
    xv = torch.from_numpy(x_test / DATA_MAX).unsqueeze(1)
    yv = torch.from_numpy(y_test)

    model = _network()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
        logger.debug("epoch %d: last batch loss %.4f", epoch, loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = float((model(xv).argmax(dim=1) == yv).float().mean())
    logger.info(
        "trained %s for %d epochs in %.1f s: held-out accuracy %.4f on %d images",
        NAME,
        EPOCHS,
        time.perf_counter() - started,
        accuracy,
        len(yv),
    )
    return model, accuracy


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """Export to ONNX (opset 17) with input ``input`` [batch,1,8,8] float32 and output ``logits`` [batch,10].

    The TorchScript exporter (``dynamo=False``) is used because the dynamo exporter needs onnxscript, which
    is not a dependency; it also keeps the weights inside the one ``model.onnx`` file.
    """
    import torch

    dummy = torch.zeros(1, 1, SIDE_PX, SIDE_PX, dtype=torch.float32)
    with warnings.catch_warnings():
        # We chose the legacy exporter on purpose (see above); it and its internals announce their own
        # deprecation, which is not actionable here and would fail runs with warnings as errors.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def manifest(version: str) -> ModelManifest:
    """The manifest of this model: the pipeline turns an 8-bit grey image into ``p / 255`` on an 8x8 grid.

    ``area`` interpolation averages whole pixel blocks, so an image upscaled by an integer factor with
    nearest-neighbour comes back to its exact original 8x8 values.
    """
    return ModelManifest(
        name=NAME,
        version=version,
        input=InputSpec(name="input", layout="NCHW", height=SIDE_PX, width=SIDE_PX, color="L"),
        preprocess=PreprocessSpec(resize_shorter=SIDE_PX, interpolation="area", mean=(0.0,), std=(255.0,)),
        output=OutputSpec(name="logits", kind="logits"),
        labels_file="labels.txt",
        source=(
            "Built by builders/digits.py: a small CNN trained with torch on scikit-learn's "
            "load_digits (8x8 handwritten digits), 75% train split (random_state=0, stratified)."
        ),
    )


@register_builder("digits")
def build(repository: Path, version: str = "1") -> Path:
    """Train, export and write ``<repository>/digits/<version>/`` (model.onnx, manifest.json, labels.txt).

    Returns the version folder. Existing files in that folder are overwritten, so a rebuild is one command.
    """
    folder = Path(repository) / NAME / version
    folder.mkdir(parents=True, exist_ok=True)
    model, _ = train()
    export_onnx(model, folder / "model.onnx")
    spec = manifest(version)
    assert spec.labels_file is not None
    (folder / "manifest.json").write_text(spec.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (folder / spec.labels_file).write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    write_calibration_images(folder / CALIBRATION_FOLDER)
    logger.info("wrote %s (model.onnx %d bytes)", folder, (folder / "model.onnx").stat().st_size)
    return folder


def write_heldout_images(folder: Path, size: int = 32) -> list[tuple[Path, int]]:
    """Write the held-out digits as 8-bit grayscale PNGs, ``size`` x ``size``; return (path, label) pairs.

    Pixels are ``round(v * 255 / 16)``, upscaled with nearest-neighbour by an integer factor, so the
    pipeline's area resize back to 8x8 recovers the original values exactly. Files are named
    ``<index>_label<digit>.png`` where ``index`` is the row in ``load_digits()``.

    Raises:
        ValueError: if ``size`` is not a positive multiple of 8 (the round trip would no longer be exact).
    """
    _, x_test, _, y_test, _, idx_test = _split()
    return _write_pngs(Path(folder), x_test, y_test, idx_test, size)


CALIBRATION_FOLDER = "calibration"
CALIBRATION_IMAGES = 100


def write_calibration_images(folder: Path, count: int = CALIBRATION_IMAGES) -> list[tuple[Path, int]]:
    """Write the first ``count`` *training* digits as 8x8 PNGs: what ``streamscore models quantize`` calibrates
    this model on by default (shipped in the version's ``calibration/`` folder; never the held-out digits,
    on which the quantized version's accuracy is measured)."""
    x_train, _, y_train, _, idx_train, _ = _split()
    return _write_pngs(Path(folder), x_train[:count], y_train[:count], idx_train[:count], SIDE_PX)


def _write_pngs(
    folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, size: int
) -> list[tuple[Path, int]]:
    from PIL import Image

    if size <= 0 or size % SIDE_PX:
        raise ValueError(
            f"size must be a positive multiple of {SIDE_PX} so that an area resize recovers the digit; got {size}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.rint(images * (255.0 / DATA_MAX)).astype(np.uint8)
    written: list[tuple[Path, int]] = []
    for image, label, index in zip(pixels, labels, indices, strict=True):
        path = folder / f"{int(index):04d}_label{int(label)}.png"
        grey = Image.fromarray(image)  # a 2-D uint8 array becomes an 8-bit "L" image
        grey.resize((size, size), Image.Resampling.NEAREST).save(path)
        written.append((path, int(label)))
    return written
