"""Static INT8 versions of a model (``streamscore models quantize``): ONNX Runtime's QDQ quantization.

Why static and per-channel: measured on this 2-core CPU (AVX-512 VNNI), dynamic quantization made CNNs 7-8x
*slower* (it quantizes activations on every call and leaves convolutions in float), while static INT8 with
per-channel weights runs the convolutions as integer kernels (ResNet-50: 3.2x faster). Dynamic quantization is
therefore not offered. Calibration images go through the model's own preprocessing (its manifest), so the
activation ranges are those that scoring will see.

Why the weights are then rounded by GPTQ and the outputs stay float: see ``_qdq`` and docs/quantize.md. A
version is only published when it agrees with its source on held-out images (``min_agreement``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from common.errors import ConfigError, ModelLoadError, StreamScoreError
from operators._rows import object_array
from pipeline.graph import Stage, graph_for_model
from pipeline.models._qdq import hessians, round_weights, unquantize_outputs
from pipeline.models.add import new_version_ref, publish_version
from pipeline.models.manifest import QuantizationSpec
from pipeline.models.ref import ModelRef
from pipeline.models.repository import MANIFEST_FILE, MODEL_FILE, ModelRepository, ModelVersion
from pipeline.options import ScoringOptions

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
_CALIBRATION_BATCH = 8
DEFAULT_MIN_AGREEMENT = 0.97  # top-1 agreement for classifiers, the lowest cosine for embeddings
_SPEED_ROUNDS = 3  # fp32 and int8 timed alternately, best of each: the same images, the same moment


def image_files(folders: Sequence[Path], limit: int | None = None) -> list[Path]:
    """Image files under ``folders`` (recursively, sorted, by suffix), at most ``limit``."""
    files: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"no folder {folder}")
        files.extend(sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
    return files[:limit] if limit else files


def model_inputs(model: ModelVersion, files: Sequence[Path]) -> np.ndarray:
    """``files`` through the model's own preprocessing and normalisation: the float32 tensors it is fed.
    Images that fail to decode are left out (a damaged file must not skew the ranges)."""
    graph = graph_for_model(model, ScoringOptions())
    normalize = next(spec for spec in graph.inference if spec.name == "normalize")
    stage = Stage(preprocess=graph.preprocess, inference=(normalize,))
    tensors = []
    for start in range(0, len(files), 32):  # a few batches: memory bounded by 32 decoded images
        chunk = files[start : start + 32]
        batch = stage(
            {"id": object_array([str(p) for p in chunk]), "bytes": object_array([p.read_bytes() for p in chunk])}
        )
        ok = np.array([e is None for e in batch["error"]], dtype=bool)
        tensors.append(batch["input"][ok])
    inputs = np.concatenate(tensors) if tensors else np.zeros((0,), np.float32)
    if not len(inputs):
        raise ConfigError(f"none of the {len(files)} images could be decoded")
    return inputs


def _batches(inputs: np.ndarray, fixed: int | None) -> Iterator[np.ndarray]:
    step = fixed or _CALIBRATION_BATCH
    for start in range(0, len(inputs), step):
        chunk = inputs[start : start + step]
        if fixed and len(chunk) < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
        yield np.ascontiguousarray(chunk)


class Recipe(BaseModel):
    """How to quantize: the calibration method, how weights are rounded and what stays in float.
    ``benchmarks/quantize_study.py`` measures each choice; the defaults are the measured best (docs/quantize.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = Field(default=99.999, gt=90, le=100)  # for "percentile"
    per_channel: bool = True
    symmetric_activations: bool = False
    keep_float: tuple[str, ...] = ()  # node names left in float (e.g. the stem conv, the classifier)
    weight_rounding: Literal["nearest", "gptq"] = "gptq"
    gptq_act_order: bool = True  # GPTQ rounds the inputs with the largest Hessian diagonal first
    float_outputs: bool = True  # the graph's outputs (logits, embeddings) are not quantized
    op_types: tuple[str, ...] = ()  # ONNX Runtime's op_types_to_quantize (empty: all it can)
    extra_options: dict[str, bool | int | float] = Field(default_factory=dict)  # more of quantize_static's

    def describe(self) -> str:
        calibration = f"{self.method} calibration" + (f" at {self.percentile}" if self.method == "percentile" else "")
        weights = "per-channel" if self.per_channel else "per-tensor"
        order = " (act-order)" if self.gptq_act_order else ""
        rounding = f", rounded by GPTQ{order} on the calibration images" if self.weight_rounding == "gptq" else ""
        activations = "symmetric int8" if self.symmetric_activations else "uint8"
        outputs = ", float outputs" if self.float_outputs else ""
        kept = f", {', '.join(self.keep_float)} kept in float" if self.keep_float else ""
        only = f", only {', '.join(self.op_types)}" if self.op_types else ""
        extra = "".join(f", {k}={v}" for k, v in sorted(self.extra_options.items()))
        return (
            f"static INT8, QDQ, {weights} int8 weights{rounding}, {activations} activations, {calibration}"
            f"{outputs}{kept}{only}{extra} (onnxruntime.quantization)"
        )


METHOD = Recipe().describe()


def quantize_onnx(
    source: Path,
    target: Path,
    input_name: str,
    calibration: np.ndarray,
    fixed_batch: int | None,
    recipe: Recipe | None = None,
) -> None:
    """Write the static INT8 QDQ model of ``source`` to ``target``, calibrated on ``calibration``."""
    recipe = recipe or Recipe()
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = _batches(calibration, fixed_batch)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="streamscore-quantize-") as scratch:
        prepared, quantized = Path(scratch) / "prepared.onnx", Path(scratch) / "quantized.onnx"
        # ORT's recommended first step: shape inference and graph fusions (BatchNorm into Conv...), so the
        # quantizer sees the graph the runtime will run.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            activation_type=QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy,
            }[recipe.method],
            nodes_to_exclude=list(recipe.keep_float),
            op_types_to_quantize=list(recipe.op_types) or None,
            extra_options={
                "ActivationSymmetric": recipe.symmetric_activations,
                "CalibPercentile": recipe.percentile,
                **recipe.extra_options,
            },
        )
        model = onnx.load(str(quantized))
        if recipe.float_outputs:
            unquantize_outputs(model)
        if recipe.weight_rounding == "gptq":
            float_model = onnx.load(str(prepared))
            batches = _batches(calibration, fixed_batch or 1)  # one image at a time: memory of one's activations
            round_weights(model, float_model, hessians(float_model, batches, input_name), recipe.gptq_act_order)
        onnx.save(model, str(target))


@dataclass(frozen=True)
class Comparison:
    """Both versions on the same images, in one run."""

    images: int
    fp32_images_per_s: float
    int8_images_per_s: float
    top1_agreement: float | None  # classifiers: share of images whose top label is the same
    top5_hits: float | None  # classifiers: share whose fp32 top label is in the int8 top 5
    cosine_mean: float | None  # embeddings: mean cosine similarity of the two vectors
    cosine_min: float | None

    @property
    def agreement(self) -> tuple[str, float]:
        """The figure ``min_agreement`` is checked against: top-1 agreement, or the lowest cosine."""
        if self.top1_agreement is not None:
            return "top-1 agreement", self.top1_agreement
        assert self.cosine_min is not None
        return "lowest cosine(fp32, int8)", self.cosine_min


class AgreementTooLowError(StreamScoreError):
    """The INT8 version agrees with its source less than ``min_agreement`` allows, so it was not published."""


def _session(model: Path | bytes, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"]
    )


def compare(source: ModelVersion, quantized: ModelVersion, inputs: np.ndarray, threads: int) -> Comparison:
    """Outputs and images/s of both versions on ``inputs`` (timed alternately, best of three rounds each)."""
    m = source.manifest
    sessions = [_session(Path(v.model_uri), threads) for v in (source, quantized)]
    outputs: list[np.ndarray] = [np.zeros(0), np.zeros(0)]
    best = [float("inf"), float("inf")]
    for _ in range(_SPEED_ROUNDS):
        for which, session in enumerate(sessions):
            started = time.perf_counter()
            parts = [session.run([m.output.name], {m.input.name: b})[0] for b in _batches(inputs, m.input.batch)]
            best[which] = min(best[which], time.perf_counter() - started)
            outputs[which] = np.concatenate(parts)[: len(inputs)].reshape(len(inputs), -1)
    fp32, int8 = outputs
    speeds = (len(inputs) / best[0], len(inputs) / best[1])
    if m.task == "embedding":
        cosine = np.sum(fp32 * int8, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1) + 1e-12)
        return Comparison(len(inputs), *speeds, None, None, float(cosine.mean()), float(cosine.min()))
    top1 = fp32.argmax(axis=1)
    top5 = np.argsort(-int8, axis=1)[:, :5]
    return Comparison(
        len(inputs),
        *speeds,
        top1_agreement=float((int8.argmax(axis=1) == top1).mean()),
        top5_hits=float((top5 == top1[:, None]).any(axis=1).mean()),
        cosine_mean=None,
        cosine_min=None,
    )


@dataclass(frozen=True)
class QuantizeReport:
    source: ModelVersion
    quantized: ModelVersion
    calibration_images: int
    comparison: Comparison
    seconds: float
    held_out: bool  # compared on --evaluate images (none calibrated on), else on the calibration images
    min_agreement: float

    @property
    def sizes_mb(self) -> tuple[float, float]:
        return tuple(Path(v.model_uri).stat().st_size / 1e6 for v in (self.source, self.quantized))  # type: ignore[return-value]

    def render(self) -> str:
        c, (fp32_mb, int8_mb) = self.comparison, self.sizes_mb
        lines = [
            f"wrote {self.quantized.name}:{self.quantized.version} (static INT8 of version {self.source.version}) "
            f"in {self.seconds:.1f} s, calibrated on {self.calibration_images} images",
            f"  size        {_megabytes(fp32_mb)} -> {_megabytes(int8_mb)} ({int8_mb / fp32_mb:.2f}x)",
            f"  images/s    {c.fp32_images_per_s:.1f} -> {c.int8_images_per_s:.1f} "
            f"({c.int8_images_per_s / c.fp32_images_per_s:.2f}x; {c.images} images, one ONNX Runtime thread, same run)",
        ]
        if c.top1_agreement is not None and c.top5_hits is not None:
            lines.append(f"  agreement   top-1 {c.top1_agreement:.1%}, fp32 top-1 in int8 top-5 {c.top5_hits:.1%}")
        if c.cosine_mean is not None:
            lines.append(f"  agreement   cosine(fp32, int8) mean {c.cosine_mean:.4f}, min {c.cosine_min:.4f}")
        what, figure = c.agreement
        where = (
            f"{c.images} held-out images"
            if self.held_out
            else "the calibration images (a weaker check: give --evaluate DIR of images not calibrated on)"
        )
        verdict = "at least" if figure >= self.min_agreement else "WARNING: kept with --force although under"
        lines.append(f"  check       {what} {figure:.4g} on {where}: {verdict} --min-agreement {self.min_agreement:g}")
        return "\n".join(lines)


def _megabytes(mb: float) -> str:
    return f"{mb:.1f} MB" if mb >= 1 else f"{mb * 1000:.0f} kB"


def held_out_files(evaluation: Sequence[Path], calibration: Sequence[Path]) -> tuple[list[Path], int]:
    """Images under ``evaluation`` whose bytes are not those of a calibration image (sha256), and how many were
    left out: agreement on images calibrated on says little about the photos a user scores."""
    calibrated = {hashlib.sha256(p.read_bytes()).hexdigest() for p in calibration}
    files = image_files(evaluation)
    kept = [p for p in files if hashlib.sha256(p.read_bytes()).hexdigest() not in calibrated]
    return kept, len(files) - len(kept)


def quantize_model(
    repository_root: Path,
    ref: ModelRef,
    calibration: Sequence[Path],
    max_images: int | None = None,
    evaluation: Sequence[Path] | None = None,
    new_version: str | None = None,
    threads: int = 1,
    promote: bool = False,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    force: bool = False,
    recipe: Recipe | None = None,
) -> QuantizeReport:
    """Write the static INT8 version of ``ref`` (calibrated on images under ``calibration``) and compare it with
    ``ref`` on ``evaluation`` (images that are not calibration images; default: the calibration images, a weaker
    check). A version agreeing less than ``min_agreement`` is never published (``AgreementTooLowError``) unless
    ``force``. The new version becomes what ``NAME`` means only with ``promote``: an INT8 version is a choice,
    never a silent change of every command's answers."""
    started = time.perf_counter()
    recipe = recipe or Recipe()
    repository = ModelRepository(str(repository_root))
    source = repository.load(ref)
    if source.manifest.quantization is not None:
        raise ConfigError(f"{source.name}:{source.version} is already quantized; quantize its fp32 source")
    files = image_files(calibration, max_images)
    if not files:
        raise ConfigError(f"no images under {', '.join(map(str, calibration))}")
    inputs = model_inputs(source, files)
    evaluated = inputs
    if evaluation:
        held_out, dropped = held_out_files(evaluation, files)
        if not held_out:
            raise ConfigError(f"no images under {', '.join(map(str, evaluation))} that are not calibration images")
        if dropped:
            logger.warning("left %d calibration images out of the evaluation images", dropped)
        evaluated = model_inputs(source, held_out)
    target = new_version_ref(repository_root, ModelRef(name=source.name, version=new_version))
    spec = source.manifest.model_copy(
        update={
            "version": target.version,
            "source": f"static INT8 of {source.name}:{source.version} ({source.manifest.source})",
            "quantization": QuantizationSpec(
                source_version=source.version,
                method=recipe.describe(),
                calibration_images=len(inputs),
                calibration_sources=tuple(str(c) for c in calibration),
            ),
        }
    )
    source_folder = Path(source.model_uri).parent
    comparisons: list[Comparison] = []

    def write(folder: Path) -> None:
        quantize_onnx(Path(source.model_uri), folder / MODEL_FILE, spec.input.name, inputs, spec.input.batch, recipe)
        if spec.labels_file:
            shutil.copyfile(source_folder / spec.labels_file, folder / spec.labels_file)
        (folder / MANIFEST_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        # Checked while the version is still staged, so a refused one never appears in the repository.
        comparisons.append(compare(source, repository.load_folder(str(folder), target), evaluated, threads))
        what, figure = comparisons[-1].agreement
        if figure >= min_agreement:
            return
        where = f"{len(evaluated)} held-out images" if evaluation else f"the {len(inputs)} calibration images"
        message = (
            f"{source.name}:{target.version}: {what} with version {source.version} is {figure:.4g} on {where}, "
            f"under --min-agreement {min_agreement:g}"
        )
        if not force:
            raise AgreementTooLowError(
                f"{message}; not written (calibrate on more images like those you score, or keep it with --force)"
            )
        logger.warning("%s; kept because of --force: its answers differ from version %s", message, source.version)

    try:
        quantized = publish_version(repository_root, target, write, promote)
    except StreamScoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types for graphs it cannot handle
        raise ModelLoadError(f"ONNX Runtime could not quantize {source.name}:{source.version}: {exc}") from exc
    report = QuantizeReport(
        source,
        quantized,
        len(inputs),
        comparisons[-1],
        time.perf_counter() - started,
        held_out=bool(evaluation),
        min_agreement=min_agreement,
    )
    logger.info(
        "quantized %s:%s into version %s in %.1f s", source.name, source.version, quantized.version, report.seconds
    )
    return report
