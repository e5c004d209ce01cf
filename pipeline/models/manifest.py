"""The model manifest: what a model version needs to be run correctly.

A model carries its own preprocessing (as in timm): input size, colour, resize, crop, mean and std live in
``models/<name>/<version>/manifest.json`` next to ``model.onnx``, so training, batch scoring and serving
cannot drift apart. Mean and std are in pixel units (0-255), applied as ``(x - mean) / std``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.base import OperatorSpec
from operators.resize import Interpolation


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Frozen):
    """The single image input of the ONNX graph."""

    name: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    color: Literal["RGB", "L"] = "RGB"
    dtype: Literal["float32"] = "float32"
    # The batch size the graph is fixed at (exports without a dynamic batch axis often take exactly 1); None:
    # any. Inference then runs in calls of this many rows, the last one padded.
    batch: int | None = Field(default=None, gt=0)

    @property
    def channels(self) -> int:
        return 3 if self.color == "RGB" else 1


class PreprocessSpec(_Frozen):
    """Resize the shorter side (aspect kept), centre-crop to the input size, then normalize.

    ``operators`` are a model's own steps, run in order on the cropped uint8 ``pixels`` before normalize
    (registered operators; ``module`` imports one from the user's package).
    """

    resize_shorter: int = Field(gt=0)
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    operators: tuple[OperatorSpec, ...] = ()

    @model_validator(mode="after")
    def _std_positive(self) -> PreprocessSpec:
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length")
        return self


class OutputSpec(_Frozen):
    """The output of the ONNX graph that a row reports: class scores, or an embedding vector."""

    name: str
    kind: Literal["logits", "probabilities", "embedding"] = "logits"
    # Embeddings only: scale each vector to unit length (cosine similarity becomes a dot product).
    l2_normalize: bool = False
    # The output vector's width. Classification takes it from the labels; an embedding states it, so that a
    # batch in which no row reaches the model still has the right shape (graphs may leave the axis symbolic).
    width: int | None = Field(default=None, gt=0)


class QuantizationSpec(_Frozen):
    """How a quantized version was made from another: what ``streamscore models quantize`` records."""

    source_version: str
    method: str
    calibration_images: int = Field(gt=0)
    calibration_sources: tuple[str, ...]


class ModelManifest(_Frozen):
    """Everything about a model version except its weights."""

    name: str
    version: str
    task: Literal["classification", "embedding"] = "classification"
    input: InputSpec
    preprocess: PreprocessSpec
    output: OutputSpec
    # Class names, one per line, in output order; an embedding model has none.
    labels_file: str | None = "labels.txt"
    source: str = ""
    quantization: QuantizationSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if self.task == "embedding" and (self.output.kind != "embedding" or self.output.width is None):
            raise ValueError("task 'embedding' needs output.kind 'embedding' and output.width (the vector's length)")
        if self.task == "classification" and (self.output.kind == "embedding" or not self.labels_file):
            raise ValueError("task 'classification' needs output.kind 'logits' or 'probabilities' and a labels_file")
        channels = self.input.channels
        if len(self.preprocess.mean) != channels:
            raise ValueError(
                f"preprocess.mean has {len(self.preprocess.mean)} values but input.color "
                f"{self.input.color!r} has {channels} channel(s)"
            )
        if self.preprocess.resize_shorter < max(self.input.height, self.input.width):
            raise ValueError(
                f"preprocess.resize_shorter={self.preprocess.resize_shorter} is smaller than the "
                f"{self.input.height}x{self.input.width} input, so the centre crop would not fit"
            )
        return self
