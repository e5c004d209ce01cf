"""What costs INT8 agreement: each quantization recipe of a model, calibrated on one folder, evaluated on photos
that were never calibrated on.

    python -m benchmarks.quantize_study --model efficientnet-lite0:1 --held-out 300 --benchmark-images 200

Held-out photos come from real photos bundled offline that are *not* the demo photos (scikit-learn's china and
flower, matplotlib's grace_hopper, scikit-image's hubble, immunohistochemistry, retina, the stereo motorcycle
pair and its greyscale camera and coins): random crops, flips and sizes, as ImageNet-sized JPEGs. They are
checked disjoint from the calibration set by content hash. Each recipe is calibrated, then both versions score
the held-out set in one run (``pipeline.models.quantize.compare``): top-1 agreement, fp32's top-1 within the
INT8 top-5, images/s on one ONNX Runtime thread, size, and the RMS error of the logits (a less noisy figure
than agreement on a few hundred photos). Agreement is also given on benchmark-style images
(``benchmarks/data.py``: crops of the demo photos among others, so closer to the calibration set). Rows marked
"weights only" put the INT8 weights back into the float model: what rounding the weights alone costs; rows
marked "activations only" feed the INT8 model its float weights: what the activation ranges alone cost, a
ceiling for any weight rounding. The table goes to ``docs/benchmarks/``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import REPO
from pipeline.models.quantize import Recipe, compare, image_files, model_inputs, quantize_onnx
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository, ModelVersion

DEMO = REPO / "jobs" / "demo_images"
_STEM_B0 = ("/_conv_stem/Conv", "/_blocks.0/_depthwise_conv/Conv", "/_blocks.0/_project_conv/Conv")
_B1 = tuple(f"/_blocks.1/_{k}_conv/Conv" for k in ("expand", "depthwise", "project"))


def _before(**changes: Any) -> Recipe:
    """The recipe shipped before this study (nearest rounding, quantized outputs), with ``changes``."""
    return Recipe(weight_rounding="nearest", float_outputs=False, **changes)


RECIPES = {
    "minmax (shipped before)": _before(),
    "percentile 99.999": _before(method="percentile", percentile=99.999),
    "percentile 99.99": _before(method="percentile", percentile=99.99),
    "entropy": _before(method="entropy"),
    "minmax, moving average": _before(extra_options={"CalibMovingAverage": True}),
    "minmax, symmetric int8 activations": _before(symmetric_activations=True),
    "minmax, per-tensor weights": _before(per_channel=False),
    "minmax, bias not quantized": _before(extra_options={"QuantizeBias": False}),
    "minmax, only Conv quantized": _before(op_types=("Conv",)),
    "minmax, stem and classifier in float": _before(keep_float=("/_conv_stem/Conv", "/_fc/Gemm")),
    "minmax, stem and block 0 in float": _before(keep_float=_STEM_B0),
    "minmax, float logits": Recipe(weight_rounding="nearest"),
    "minmax, GPTQ weights": Recipe(float_outputs=False),
    "minmax, GPTQ weights, float logits (default)": Recipe(),
    "minmax, GPTQ without act-order, float logits (default before)": Recipe(gptq_act_order=False),
    "percentile 99.99, GPTQ weights, float logits": Recipe(method="percentile", percentile=99.99),
    "entropy, GPTQ weights, float logits": Recipe(method="entropy"),
    "minmax, GPTQ, float logits, stem and block 0 in float": Recipe(keep_float=_STEM_B0),
    "minmax, GPTQ, float logits, stem, blocks 0-1 in float": Recipe(keep_float=_STEM_B0 + _B1),
}
# Diagnostics: the INT8 weights of a recipe in the float model (activations float), and the recipe's quantized
# activations with the float weights: what each half costs alone.
WEIGHTS_ONLY = {
    "weights only, nearest": _before(),
    "weights only, GPTQ": Recipe(),
    "activations only (float weights), minmax": Recipe(weight_rounding="nearest"),
    "activations only (float weights), percentile 99.99": Recipe(
        weight_rounding="nearest", method="percentile", percentile=99.99
    ),
}
AUGMENTED = ("minmax (shipped before)", "minmax, GPTQ weights, float logits (default)")


def held_out_sources() -> list[np.ndarray]:
    """Real photos shipped inside installed packages, none of them a demo photo (HxWx3 uint8)."""
    import matplotlib
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg") as hopper:
        photos.append(np.asarray(hopper.convert("RGB")))
    photos += [data.hubble_deep_field(), data.immunohistochemistry(), data.retina()[..., :3]]
    left, right, _ = data.stereo_motorcycle()
    photos += [left, right]
    photos += [np.repeat(gray[..., None], 3, axis=2) for gray in (data.camera(), data.coins())]
    return [np.ascontiguousarray(p[..., :3]) for p in photos]


def _jpeg(array: np.ndarray, rng: np.random.Generator) -> bytes:
    from PIL import Image

    h, w = array.shape[:2]
    fraction = rng.uniform(0.4, 1.0)
    ch, cw = max(64, int(h * fraction)), max(64, int(w * fraction * rng.uniform(0.75, 1.33)))
    ch, cw = min(ch, h), min(cw, w)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(array[top : top + ch, left : left + cw])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    shorter = int(rng.integers(256, 420))
    scale = shorter / min(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=int(rng.integers(85, 96)))
    return buffer.getvalue()


def write_held_out(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs cropped from ``held_out_sources``, deterministic in ``seed``."""
    folder.mkdir(parents=True, exist_ok=True)
    sources, rng = held_out_sources(), np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"held_out_{i:04d}.jpg"
        path.write_bytes(_jpeg(sources[i % len(sources)], rng))
        paths.append(path)
    return paths


def write_augmented(calibration: list[Path], folder: Path, count: int, seed: int = 1) -> list[Path]:
    """``count`` random crops, flips and sizes of the calibration photos (more activations seen, still only
    the demo photos' content): what the "augmented" recipes calibrate on."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for path in calibration:
        try:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        except (OSError, UnidentifiedImageError):
            continue  # the demo folder's truncated JPEG
    folder.mkdir(parents=True, exist_ok=True)
    rng, paths = np.random.default_rng(seed), []
    for i in range(count):
        path = folder / f"augmented_{i:04d}.jpg"
        path.write_bytes(_jpeg(arrays[i % len(arrays)], rng))
        paths.append(path)
    return paths


def content_hashes(paths: list[Path]) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _outputs(path: Path, model: ModelVersion, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = model.manifest.input.name
    return np.concatenate([session.run(None, {name: inputs[i : i + 8]})[0] for i in range(0, len(inputs), 8)])


def _agreement(fp32: np.ndarray, int8: np.ndarray) -> tuple[float, float, float]:
    """Top-1 agreement, fp32's top-1 within the INT8 top-5, RMS error of the logits."""
    top1 = fp32.argmax(axis=1)
    top5 = np.argsort(-int8, axis=1)[:, :5]
    rmse = float(np.sqrt(np.mean((fp32 - int8) ** 2)))
    return float((int8.argmax(axis=1) == top1).mean()), float((top5 == top1[:, None]).any(axis=1).mean()), rmse


def _weights_into_float(quantized: Path, source: Path, target: Path) -> None:
    """The float model with the INT8 model's weights (dequantized): what rounding the weights alone costs."""
    import onnx
    from onnx import numpy_helper

    int8 = onnx.load(str(quantized))
    values = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    float_weights = {}
    for node in int8.graph.node:
        if node.op_type == "DequantizeLinear" and values.get(node.input[0], np.zeros(0)).dtype == np.int8:
            q, scale = values[node.input[0]].astype(np.float32), values[node.input[1]]
            float_weights[node.input[0].removesuffix("_quantized")] = q * scale.reshape(-1, *[1] * (q.ndim - 1))
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(target), skip_symbolic_shape=False)
    model = onnx.load(str(target))
    for init in model.graph.initializer:
        if init.name in float_weights:
            init.CopyFrom(numpy_helper.from_array(float_weights[init.name].astype(np.float32), init.name))
    onnx.save(model, str(target))


def _float_weights_into_int8(quantized: Path, source: Path, target: Path) -> None:
    """The INT8 model with each Conv and Gemm fed its float weights (activations still quantized): what the
    activation ranges alone cost, whatever the weights' rounding."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(target), skip_symbolic_shape=False)
    prepared = onnx.load(str(target))
    weights = {i.name: i for i in prepared.graph.initializer}
    float_input = {n.name: n.input[1] for n in prepared.graph.node if n.op_type in ("Conv", "Gemm")}
    model = onnx.load(str(quantized))
    for node in model.graph.node:
        if node.name in float_input and float_input[node.name] in weights:
            name = float_input[node.name] + "_float"
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(weights[name[:-6]]), name))
            node.input[1] = name
    onnx.save(model, str(target))


def study(
    model: ModelVersion,
    calibrations: dict[str, list[Path]],
    evaluations: dict[str, list[Path]],
    recipes: dict[str, Recipe],
    augmented: tuple[str, ...] = (),
) -> list[dict]:
    """Each recipe on the first calibration set (and the others for the recipes named in ``augmented``),
    timed and compared on the first evaluation set, agreement also on the others."""
    for files in calibrations.values():
        for eval_files in evaluations.values():
            overlap = content_hashes(files) & content_hashes(eval_files)
            assert not overlap, f"{len(overlap)} evaluation images are calibration images"
    inputs = {name: model_inputs(model, files) for name, files in evaluations.items()}
    fp32 = {name: _outputs(Path(model.model_uri), model, x) for name, x in inputs.items()}
    first = next(iter(inputs))
    rows = []
    for name, recipe in recipes.items():
        for calibration_name, files in calibrations.items():
            if calibration_name != next(iter(calibrations)) and name not in augmented:
                continue
            calibration_inputs = model_inputs(model, files)
            with tempfile.TemporaryDirectory(prefix="quantize-study-") as scratch:
                target = Path(scratch) / "model.onnx"
                started = time.perf_counter()
                quantize_onnx(
                    Path(model.model_uri), target, model.manifest.input.name, calibration_inputs, None, recipe
                )
                seconds = time.perf_counter() - started
                row: dict = {"recipe": name, "calibration": f"{calibration_name} ({len(calibration_inputs)} images)"}
                row |= {"method": recipe.describe(), "quantize_s": seconds, "int8_mb": target.stat().st_size / 1e6}
                if name.startswith("weights only"):
                    _weights_into_float(target, Path(model.model_uri), Path(scratch) / "weights.onnx")
                    target = Path(scratch) / "weights.onnx"
                elif name.startswith("activations only"):
                    _float_weights_into_int8(target, Path(model.model_uri), Path(scratch) / "activations.onnx")
                    target = Path(scratch) / "activations.onnx"
                else:
                    result = compare(model, ModelVersion(model.manifest, model.labels, str(target)), inputs[first], 1)
                    row |= {
                        "fp32_images_per_s": result.fp32_images_per_s,
                        "int8_images_per_s": result.int8_images_per_s,
                        "speedup": result.int8_images_per_s / result.fp32_images_per_s,
                    }
                for set_name, x in inputs.items():
                    top1, top5, rmse = _agreement(fp32[set_name], _outputs(target, model, x))
                    row[set_name] = {"images": len(x), "top1_agreement": top1, "top5_hits": top5, "logits_rmse": rmse}
            rows.append(row)
            logging.getLogger(__name__).info("%s", row)
    return rows


def render(rows: list[dict], sets: list[str]) -> str:
    first = rows[0][sets[0]]["images"]
    lines = [
        f"Evaluated on {first} held-out photos, none from a photo calibrated on (disjoint by content hash, asserted,"
        " and by source); top-1 agreement, fp32 top-1 in INT8 top-5 and the logits' RMS error on them, then"
        f" top-1 agreement on {sets[1:] and rows[0][sets[1]]['images']} benchmark-style images (crops of the demo"
        " photos among others). One ONNX Runtime thread, fp32 and INT8 timed alternately in the same run.",
        "",
        "| recipe | calibration | top-1 agreement | fp32 top-1 in INT8 top-5 | logits RMSE | top-1, benchmark images "
        "| fp32 img/s | INT8 img/s | speed-up | INT8 MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        held, other = r[sets[0]], r[sets[1]] if len(sets) > 1 else None
        speed = (
            f"{r['fp32_images_per_s']:.1f} | {r['int8_images_per_s']:.1f} | {r['speedup']:.2f}x"
            if "speedup" in r
            else "- | - | -"
        )
        lines.append(
            f"| {r['recipe']} | {r['calibration']} | {held['top1_agreement']:.1%} | {held['top5_hits']:.1%} "
            f"| {held['logits_rmse']:.3f} | {other['top1_agreement']:.1%} | {speed} | {r['int8_mb']:.1f} |"
            if other
            else f"| {r['recipe']} | {r['calibration']} | {held['top1_agreement']:.1%} | {held['top5_hits']:.1%} "
            f"| {held['logits_rmse']:.3f} | - | {speed} | {r['int8_mb']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-lite0:1")
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--benchmark-images", type=int, default=200, help="benchmark-style images (0: none)")
    parser.add_argument("--recipes", help="recipe names separated by ';' (default: all)")
    parser.add_argument("--augment", type=int, default=0, help="also calibrate on this many crops of the demo photos")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "quantize-efficientnet-lite0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from benchmarks.data import make_benchmark_images

    model = ModelRepository(str(REPO / "models")).load(ModelRef.parse(args.model))
    every = RECIPES | WEIGHTS_ONLY
    chosen = {k: v for k, v in every.items() if not args.recipes or k in args.recipes.split(";")}
    with tempfile.TemporaryDirectory(prefix="held-out-") as scratch:
        evaluations = {"held_out": write_held_out(Path(scratch) / "held_out", args.held_out)}
        if args.benchmark_images:
            evaluations["benchmark"] = make_benchmark_images(Path(scratch) / "benchmark", args.benchmark_images)
        calibration = image_files([DEMO])
        calibrations = {"demo photos": calibration}
        if args.augment:
            augmented = write_augmented(calibration, Path(scratch) / "augmented", args.augment)
            calibrations[f"{args.augment} crops of the demo photos"] = augmented
        rows = study(model, calibrations, evaluations, chosen, AUGMENTED)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    table = render(rows, list(evaluations))
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
