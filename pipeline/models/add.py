"""Bring your own model: an ONNX file becomes a checked version of the repository (``streamscore models add``).

The manifest is built from the graph (input name, layout, size, channels, fixed or dynamic batch, output width)
and from a preprocessing *preset* (the convention the model was trained with), each field overridable. The
version folder is written under a hidden name and renamed into place only after the new version has loaded
and scored a warm-up image, so a failed add never leaves a version that looks complete.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from common.errors import ConfigError, ModelLoadError, StreamScoreError
from operators.resize import Interpolation
from pipeline.models._onnx_graph import GraphSignature, inspect_graph
from pipeline.models.manifest import InputSpec, ModelManifest, OutputSpec, PreprocessSpec
from pipeline.models.ref import ModelRef
from pipeline.models.repository import MANIFEST_FILE, MODEL_FILE, ModelRepository, ModelVersion

logger = logging.getLogger(__name__)

# The eval crop of torchvision's and timm's ImageNet models: resize the shorter side to size / 0.875 (256 for
# 224), centre-crop to size. Inception-style exports (Keras, TF-slim) crop the same central 87.5 %.
CROP_FRACTION = 0.875


class Preset(BaseModel):
    """A preprocessing convention: how the shorter side relates to the input size, the filter, mean and std
    (pixel units, 0-255, per RGB channel)."""

    model_config = ConfigDict(frozen=True)

    description: str
    crop_fraction: float = Field(gt=0, le=1)
    interpolation: Interpolation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


PRESETS: dict[str, Preset] = {
    "imagenet": Preset(
        description="torchvision/timm ImageNet eval: shorter side size/0.875 bilinear, centre crop, ImageNet mean/std",
        crop_fraction=CROP_FRACTION,
        interpolation="bilinear",
        mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
        std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
    ),
    "inception": Preset(
        description="Inception style (Keras, TF-slim): shorter side size/0.875 bilinear, centre crop, pixels to [-1, 1]",
        crop_fraction=CROP_FRACTION,
        interpolation="bilinear",
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
    ),
    "unit": Preset(
        description="shorter side to the input size, centre crop, pixels to [0, 1]",
        crop_fraction=1.0,
        interpolation="bilinear",
        mean=(0.0, 0.0, 0.0),
        std=(255.0, 255.0, 255.0),
    ),
    "raw": Preset(
        description="shorter side to the input size, centre crop, raw pixels 0-255",
        crop_fraction=1.0,
        interpolation="bilinear",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    ),
}


class AddRequest(BaseModel):
    """What ``models add`` was asked: the preset, and any field set by hand (None: from the graph or preset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str
    task: Literal["classification", "embedding"] = "classification"
    input_name: str | None = None
    output_name: str | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    height: int | None = Field(default=None, gt=0)
    width: int | None = Field(default=None, gt=0)
    color: Literal["RGB", "L"] | None = None
    resize_shorter: int | None = Field(default=None, gt=0)
    interpolation: Interpolation | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output_kind: Literal["logits", "probabilities"] | None = None
    l2_normalize: bool = False
    source: str = ""


def _preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def build_manifest(
    ref: ModelRef, signature: GraphSignature, request: AddRequest, labels: list[str] | None
) -> ModelManifest:
    """The manifest for ``signature`` under ``request``; refuses what the graph cannot serve, naming why."""
    assert ref.version is not None
    preset = _preset(request.preset)
    if request.input_name not in (None, signature.input.name):
        raise ModelLoadError(f"no input {request.input_name!r}: the graph's one input is {signature.input.name!r}")
    layout = request.layout or signature.layout()
    shape = signature.input.shape
    channels_axis, (h_axis, w_axis) = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    graph_channels = shape[channels_axis]
    if graph_channels not in (None, 1, 3):
        raise ModelLoadError(
            f"input {signature.input.name!r} has {graph_channels} channels at axis {channels_axis} ({layout}); images have 1 or 3"
        )
    color = request.color or ("L" if graph_channels == 1 else "RGB")
    if graph_channels is not None and (graph_channels == 1) != (color == "L"):
        raise ModelLoadError(
            f"--color {color} does not fit input {signature.input.name!r} with {graph_channels} channel(s)"
        )
    height, width = request.height or shape[h_axis], request.width or shape[w_axis]
    for axis, given, graph_size in ((h_axis, request.height, shape[h_axis]), (w_axis, request.width, shape[w_axis])):
        if given is not None and graph_size is not None and given != graph_size:
            raise ModelLoadError(f"input {signature.input.name!r} is fixed at {graph_size} on axis {axis}, not {given}")
    if height is None or width is None:
        raise ModelLoadError(f"input {signature.input.name!r} has a symbolic image size; pass --size HxW")
    channels = 1 if color == "L" else 3

    def per_channel(values: tuple[float, ...] | None, preset_values: tuple[float, ...], what: str) -> tuple[float, ...]:
        if values is None:
            return (sum(preset_values) / 3,) if channels == 1 else preset_values
        if len(values) == 1:
            return values * channels
        if len(values) != channels:
            raise ConfigError(f"--{what} has {len(values)} values; the input has {channels} channel(s)")
        return values

    output = signature.output(request.output_name)
    graph_width = output.width
    if request.task == "classification":
        if labels is not None and graph_width is not None and len(labels) != graph_width:
            raise ModelLoadError(
                f"output {output.name!r} gives {graph_width} values per image but the labels file has {len(labels)} labels"
            )
        kind = request.output_kind or ("probabilities" if output.from_softmax else "logits")
        out_spec = OutputSpec(name=output.name, kind=kind)
    else:
        if graph_width is None:
            raise ModelLoadError(
                f"output {output.name!r} has a symbolic width {output.shape}; an embedding needs a fixed one"
            )
        out_spec = OutputSpec(name=output.name, kind="embedding", width=graph_width, l2_normalize=request.l2_normalize)
    resize_shorter = request.resize_shorter or round(max(height, width) / preset.crop_fraction)
    return ModelManifest(
        name=ref.name,
        version=ref.version,
        task=request.task,
        input=InputSpec(
            name=signature.input.name, layout=layout, height=height, width=width, color=color, batch=signature.batch
        ),
        preprocess=PreprocessSpec(
            resize_shorter=resize_shorter,
            interpolation=request.interpolation or preset.interpolation,
            mean=per_channel(request.mean, preset.mean, "mean"),
            std=per_channel(request.std, preset.std, "std"),
        ),
        output=out_spec,
        labels_file="labels.txt" if request.task == "classification" else None,
        source=request.source or f"added by streamscore models add (preset {request.preset})",
    )


def read_labels(path: Path) -> list[str]:
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise ConfigError(f"labels file {path} holds no labels")
    return labels


def next_version(repository: ModelRepository, name: str) -> str:
    """One above the highest numeric version of ``name`` ("1" for a new model)."""
    numbers = [int(v) for v in repository.versions(name) if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def warm_up_image(height: int, width: int) -> bytes:
    """A PNG with structure (gradients, an edge), so a graph that breaks on real pixels shows it here."""
    from PIL import Image

    y, x = np.mgrid[0 : 2 * height, 0 : 2 * width]
    pixels = np.stack([x * 255 // max(1, 2 * width - 1), y * 255 // max(1, 2 * height - 1), ((x + y) % 64) * 4], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def add_model(
    repository_root: Path,
    ref: ModelRef,
    onnx_path: Path,
    request: AddRequest,
    labels_path: Path | None = None,
    promote: bool = False,
) -> ModelVersion:
    """Add ``onnx_path`` as ``ref`` (the next version when ``ref`` names none) and return the checked version;
    it becomes the model's default only with ``promote`` (see ``publish_version``)."""
    started = time.perf_counter()
    if not onnx_path.is_file():
        raise ConfigError(f"no ONNX file at {onnx_path}")
    ref = new_version_ref(repository_root, ref)
    signature = inspect_graph(onnx_path)
    labels = read_labels(labels_path) if labels_path is not None else None
    spec = build_manifest(ref, signature, request, labels)
    if spec.task == "classification" and labels is None:
        width = signature.output(request.output_name).width
        if width is None:
            raise ModelLoadError(f"output {spec.output.name!r} has a symbolic width; pass --labels FILE")
        labels = [str(i) for i in range(width)]  # class indices, for a model shipped without names

    def write(folder: Path) -> None:
        shutil.copyfile(onnx_path, folder / MODEL_FILE)
        for relative in signature.external_data:
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(onnx_path.parent / relative, folder / relative)
        if labels is not None and spec.labels_file:
            (folder / spec.labels_file).write_text("\n".join(labels) + "\n", encoding="utf-8")
        (folder / MANIFEST_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")

    added = publish_version(repository_root, ref, write, promote)
    logger.info("added %s from %s in %.1f s", ref, onnx_path, time.perf_counter() - started)
    return added


def new_version_ref(repository_root: Path, ref: ModelRef) -> ModelRef:
    """``ref`` with its version (the next one when it names none), refused if that version exists."""
    version = ref.version or next_version(ModelRepository(str(repository_root)), ref.name)
    if (repository_root / ref.name / version).exists():
        raise ConfigError(f"{ref.name}:{version} exists in {repository_root}; versions are immutable, add a new one")
    return ModelRef(name=ref.name, version=version)


def publish_version(
    repository_root: Path, ref: ModelRef, write: Callable[[Path], None], promote: bool = False
) -> ModelVersion:
    """Have ``write`` fill a hidden staging folder, load what it wrote as ``ref`` and score a warm-up image,
    then rename the folder into place. Anything failing leaves no version (nor a new, empty model) behind.

    A new version does not change what ``NAME`` means unless ``promote``: where the model has no default yet,
    the version ``NAME`` meant until now is pinned as its default before the new one appears (else a new "2"
    would become the highest numeric version, and batch, nightly and Serve would score it unasked).
    """
    from pipeline.graph import graph_for_model
    from pipeline.options import ScoringOptions

    assert ref.version is not None
    final = repository_root / ref.name / ref.version
    new_model = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{ref.version}.adding-", dir=final.parent))  # hidden: not a version
    staging.chmod(0o755)  # mkdtemp's 0700 would keep the version from a Ray worker running as another user
    repository = ModelRepository(str(repository_root))
    try:
        write(staging)
        model = repository.load_folder(str(staging), ref)
        spec = model.manifest.input
        table = graph_for_model(model, ScoringOptions()).run([warm_up_image(spec.height, spec.width)])
        error = table.column("error")[0].as_py()
        answer = table.column("embedding" if model.manifest.task == "embedding" else "top_k").to_pylist()[0]
        values = [v if isinstance(v, float) else v["score"] for v in answer] if answer else []
        if error is not None or not np.isfinite(values).all():
            raise ModelLoadError(f"{ref} failed on its warm-up image: {error or 'non-finite outputs'}")
        if not new_model and not promote:
            _pin_current_default(repository, ref.name)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if new_model:  # a first version that failed leaves no empty model behind
            shutil.rmtree(final.parent, ignore_errors=True)
        raise
    return repository.promote(ref) if promote else repository.load(ref)


def _pin_current_default(repository: ModelRepository, name: str) -> None:
    """Record what ``name`` means now as its default, if nothing was promoted: written only where no pointer
    exists when it lands, so a ``models promote`` made meanwhile wins. Nothing to pin when the model has
    several named versions and no default, or a damaged pointer (``models promote`` mends it)."""
    try:
        if repository.default_version(name, fresh=True) is not None:
            return
        current = repository.resolve_version(name, None)
    except StreamScoreError:
        return
    repository.pin_default(ModelRef(name=name, version=current))
