"""Decode alone, in this process: milliseconds per image for each back end, with and without DCT downscaling.

    python -m benchmarks.decode --images 300

Runs the ``decode`` operator on the benchmark's ImageNet-sized JPEGs (``bench/images/N``, written if absent),
one batch per setting after a warm-up; every image must decode.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.data import make_benchmark_images
from benchmarks.measure import REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    import operators
    from operators._rows import object_array
    from operators.base import ERROR, OperatorSpec

    paths = make_benchmark_images(REPO / "bench" / "images" / str(args.images), args.images)
    data = object_array([p.read_bytes() for p in paths])
    for backend in ("pillow", "opencv"):
        for target in (None, 256):
            op = operators.create(OperatorSpec(name="decode", params={"backend": backend, "target_shorter": target}))
            op({"bytes": data[:10]})
            start = time.perf_counter()
            out = op({"bytes": data})
            per_image_ms = (time.perf_counter() - start) / len(data) * 1000
            failed = sum(e is not None for e in out[ERROR])
            print(f"{backend:7s} target_shorter={target}: {per_image_ms:.2f} ms/image ({failed} failed)")


if __name__ == "__main__":
    main()
