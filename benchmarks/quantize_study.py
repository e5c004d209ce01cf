"""What costs INT8 agreement: each quantization recipe of a model, calibrated on one folder, evaluated on photos
that were never calibrated on.

    python -m benchmarks.quantize_study --model efficientnet-lite0:1 --held-out 300

Held-out photos come from real photos bundled offline that are *not* the demo photos (scikit-learn's china and
flower, matplotlib's grace_hopper, scikit-image's hubble, immunohistochemistry, retina, the stereo motorcycle
pair and its greyscale camera and coins): random crops, flips and sizes, as ImageNet-sized JPEGs. They are
checked disjoint from the calibration set by content hash. Each recipe is calibrated, then both versions score
the held-out set in one run (``pipeline.models.quantize.compare``): top-1 agreement, fp32's top-1 within the
INT8 top-5, images/s on one ONNX Runtime thread, size. The table goes to ``docs/benchmarks/``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import REPO
from pipeline.models.quantize import Recipe, compare, image_files, model_inputs, quantize_onnx
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository, ModelVersion

DEMO = REPO / "jobs" / "demo_images"
RECIPES = {
    "minmax (shipped before)": Recipe(),
    "percentile 99.999": Recipe(method="percentile", percentile=99.999),
    "percentile 99.99": Recipe(method="percentile", percentile=99.99),
    "entropy": Recipe(method="entropy"),
    "minmax, symmetric int8 activations": Recipe(symmetric_activations=True),
    "minmax, per-tensor weights": Recipe(per_channel=False),
    "minmax, stem and classifier in float": Recipe(keep_float=("/_conv_stem/Conv", "/_fc/Gemm")),
    "percentile 99.999, stem and classifier in float": Recipe(
        method="percentile", percentile=99.999, keep_float=("/_conv_stem/Conv", "/_fc/Gemm")
    ),
}


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


def study(
    model: ModelVersion, calibrations: dict[str, list[Path]], held_out: list[Path], recipes: dict[str, Recipe]
) -> list[dict]:
    """Each recipe on each calibration set (name -> files), evaluated on ``held_out``."""
    for files in calibrations.values():
        overlap = content_hashes(files) & content_hashes(held_out)
        assert not overlap, f"{len(overlap)} held-out images are calibration images"
    evaluation = model_inputs(model, held_out)
    rows = []
    for (name, recipe), (calibration_name, files) in itertools.product(recipes.items(), calibrations.items()):
        calibration_inputs = model_inputs(model, files)
        with tempfile.TemporaryDirectory(prefix="quantize-study-") as scratch:
            folder = Path(scratch)
            target = folder / "model.onnx"
            started = time.perf_counter()
            quantize_onnx(Path(model.model_uri), target, model.manifest.input.name, calibration_inputs, None, recipe)
            quantized = ModelVersion(model.manifest, model.labels, str(target))
            result = compare(model, quantized, evaluation, threads=1)
            rows.append(
                {
                    "recipe": name,
                    "calibration": f"{calibration_name} ({len(calibration_inputs)} images)",
                    "method": recipe.describe(),
                    "top1_agreement": result.top1_agreement,
                    "top5_hits": result.top5_hits,
                    "fp32_images_per_s": result.fp32_images_per_s,
                    "int8_images_per_s": result.int8_images_per_s,
                    "speedup": result.int8_images_per_s / result.fp32_images_per_s,
                    "int8_mb": target.stat().st_size / 1e6,
                    "quantize_s": time.perf_counter() - started,
                }
            )
            logging.getLogger(__name__).info("%s: %s", name, rows[-1])
    return rows


def render(rows: list[dict], images: int) -> str:
    lines = [
        f"Held-out photos: {images}, none from a photo calibrated on (disjoint by content hash, and by source).",
        "",
        "| recipe | calibration | top-1 agreement | fp32 top-1 in INT8 top-5 | fp32 img/s | INT8 img/s | speed-up "
        "| INT8 MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['calibration']} | {r['top1_agreement']:.1%} | {r['top5_hits']:.1%} | {r['fp32_images_per_s']:.1f} "
            f"| {r['int8_images_per_s']:.1f} | {r['speedup']:.2f}x | {r['int8_mb']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-lite0:1")
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--recipes", help="comma-separated recipe names (default: all)")
    parser.add_argument("--augment", type=int, default=0, help="also calibrate on this many crops of the demo photos")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "quantize-efficientnet-lite0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = ModelRepository(str(REPO / "models")).load(ModelRef.parse(args.model))
    chosen = {k: v for k, v in RECIPES.items() if not args.recipes or k in args.recipes.split(",")}
    with tempfile.TemporaryDirectory(prefix="held-out-") as scratch:
        held_out = write_held_out(Path(scratch), args.held_out)
        calibration = image_files([DEMO])
        calibrations = {"demo photos": calibration}
        if args.augment:
            augmented = write_augmented(calibration, Path(scratch) / "augmented", args.augment)
            calibrations[f"{args.augment} crops of the demo photos"] = augmented
        rows = study(model, calibrations, held_out, chosen)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    table = render(rows, args.held_out)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
