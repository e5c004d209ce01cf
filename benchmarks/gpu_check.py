"""The GPU path checked on a machine with one: the same graph on CUDA (IOBinding) and on the CPU, on real photos.

    python -m benchmarks.gpu_check --images 512 --json out/gpu_check.json

For each bundled model (classifier and embedding model): the provider ONNX Runtime chose (CUDA must be first),
that the CUDA graph went through IOBinding, the largest difference between the CUDA and CPU outputs (top-k
scores or embeddings; must be under 1e-3), top-1 agreement, and images/s of inference alone (pixels already
decoded) at a few batch sizes on each device. No Ray: this is the operator the batch job's GPU actors and the
Serve app's GPU scorer both run (``operators/infer.py``), checked where a CUDA build of ONNX Runtime and a GPU
are; the photos are the demo images.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.graph import Stage, graph_for_model
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from pipeline.options import ScoringOptions

REPO = Path(__file__).resolve().parent.parent
MODELS = ("efficientnet-lite0", "efficientnet-lite0-embed")
TOLERANCE = 1e-3


def _photos(count: int) -> list[bytes]:
    """Real photos as JPEG bytes, repeated to ``count``: the demo images that decode (one is broken on purpose)."""
    from PIL import Image

    found = []
    for path in sorted((REPO / "jobs" / "demo_images").iterdir()):
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError):
            continue
        found.append(path.read_bytes())
    return [found[i % len(found)] for i in range(count)]


def _pixels(graph: Any, images: list[bytes]) -> dict[str, np.ndarray]:
    """The preprocessed batch (uint8 pixels, errors) the inference half takes."""
    stage = Stage(preprocess=graph.preprocess)
    batch = {"id": np.array([str(i) for i in range(len(images))], object), "bytes": np.array(images, object)}
    return stage(batch)


def _answer(table: Any) -> np.ndarray:
    if "embedding" in table.column_names:
        return np.asarray(table.column("embedding").to_pylist(), np.float32)
    return np.asarray([[s["score"] for s in row] for row in table.column("top_k").to_pylist()], np.float32)


def check(model_name: str, images: list[bytes], batch_sizes: list[int], device: str = "cuda") -> dict[str, Any]:
    repository = ModelRepository(str(REPO / "models"))
    model = repository.load(ModelRef(name=model_name))
    cpu = graph_for_model(model, ScoringOptions())
    cuda = cpu.on_device(device, intra_op_threads=4) if device == "cpu" else cpu.on_device(device)
    stages = {"cuda": Stage(inference=cuda.inference), "cpu": Stage(inference=cpu.inference)}
    [infer] = [op for op in stages["cuda"]._per_batch if type(op).__name__ == "Infer"]
    providers = infer.providers
    # Infer binds inputs and outputs on the device when io_binding is None (the default) and device is cuda.
    binding = infer.params.io_binding is not False and infer.params.device == "cuda"
    binding = binding and "CUDAExecutionProvider" in providers
    sample = images[:64]
    cpu_table, cuda_table = cpu.run(sample), cuda.run(sample)
    a, b = _answer(cpu_table), _answer(cuda_table)
    result: dict[str, Any] = {
        "model": model_name,
        "providers": providers,
        "io_binding": binding,
        "rows": len(sample),
        "rows_with_errors": len(sample) - cuda_table.column("error").null_count,
        "max_abs_diff": float(np.max(np.abs(a - b))),
    }
    if "label" in cpu_table.column_names:
        labels = zip(cpu_table.column("label").to_pylist(), cuda_table.column("label").to_pylist(), strict=True)
        result["top1_agreement"] = float(np.mean([x == y for x, y in labels]))
    result["within_tolerance"] = result["max_abs_diff"] <= TOLERANCE
    pixels = _pixels(cpu, images)
    for device, stage in stages.items():
        for size in batch_sizes:
            if device == "cpu" and size > 64:
                continue
            part = {k: v[:size] for k, v in pixels.items()}
            stage(part)  # warm-up (CUDA: kernels, memory arena)
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < 2.0:
                stage(part)
                runs += 1
            result[f"{device}_images_per_s_batch_{size}"] = round(runs * size / (time.perf_counter() - start), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu: the script's own check on a machine without a GPU")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    images = _photos(max(args.images, max(sizes)))
    results = [check(name, images, sizes, args.device) for name in MODELS]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    ok = all(r["providers"][:1] == ["CUDAExecutionProvider"] and r["within_tolerance"] for r in results)
    print("GPU check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
