"""Scaling study: ``streamscore score`` on 1,000, 10,000 and 50,000 images, as a user runs it.

    python -m benchmarks.scaling --model efficientnet-lite0 --sizes 1000,10000,50000 --json docs/benchmarks/scaling.json

The images are generated once (``bench/images/scaling``, the largest size; a smaller run scores the first N
of them through a URI list), so every size sees the same kind of photos. Each run is a fresh process, measured
from outside: wall time, and the peak memory of its process tree. What should hold: images/s once running flat
across sizes (within 10 %), and peak memory not growing with the input (the pipeline streams).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.data import make_benchmark_images
from benchmarks.measure import REPO, measure
from benchmarks.run import BENCH

_CHUNK = 1000


def _make_chunk(folder: str, start: int, stop: int) -> None:
    make_benchmark_images(Path(folder), stop, first=start)


def make_images(folder: Path, n: int, processes: int = 2) -> list[Path]:
    """The first ``n`` benchmark images in ``folder``, written in parallel where missing."""
    with ProcessPoolExecutor(processes) as pool:
        for start in range(0, n, _CHUNK * processes):
            chunks = [(s, min(n, s + _CHUNK)) for s in range(start, min(n, start + _CHUNK * processes), _CHUNK)]
            list(pool.map(_make_chunk, [str(folder)] * len(chunks), *zip(*chunks, strict=True)))
    return [folder / f"img_{i:06d}.jpg" for i in range(n)]


def run_size(images: list[Path], model: str, models_dir: Path, timeout_s: float, flags: list[str]) -> dict[str, Any]:
    work = BENCH / "out" / f"scaling-{len(images)}"
    work.mkdir(parents=True, exist_ok=True)
    listing = work / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    summary_path = work / "summary.json"
    command = [
        sys.executable,
        "-m",
        "jobs.cli",
        "score",
        str(listing),
        str(work / "predictions"),
        "--model",
        model,
        "--models-dir",
        str(models_dir),
        "--overwrite",
        "--quiet",
        "--summary-json",
        str(summary_path),
        *flags,
    ]
    measured = measure(command, BENCH / "logs" / f"scaling-{len(images)}.log", timeout_s)
    if "error" in measured:
        return {"images": len(images)} | measured
    summary = json.loads(summary_path.read_text())
    return {
        "images": len(images),
        **measured,
        "end_to_end_images_per_s": len(images) / measured["wall_s"],
        "steady_images_per_s": summary["images_per_s_running"],
        "first_predictions_s": summary["first_predictions_s"],
        "error_rows": summary["error_rows"],
        "plan": summary["plan"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--executor", default="auto", help="passed to streamscore score")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    folder = BENCH / "images" / "scaling"
    print(f"making {sizes[-1]} images in {folder} (kept for later runs) ...", file=sys.stderr, flush=True)
    images = make_images(folder, sizes[-1])
    runs = []
    for n in sizes:
        print(f"scoring {n} images ...", file=sys.stderr, flush=True)
        runs.append(run_size(images[:n], args.model, args.models_dir, args.timeout_s, ["--executor", args.executor]))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    steady = [r["steady_images_per_s"] for r in runs if r.get("steady_images_per_s")]
    report = {
        "command": "python -m benchmarks.scaling " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "runs": runs,
        "steady_spread": (max(steady) / min(steady) - 1) if steady else None,  # target: <= 0.10
        "peak_pss_growth_mb": runs[-1].get("peak_pss_mb", 0) - runs[0].get("peak_pss_mb", 0),
    }
    for r in runs:
        print(
            f"{r['images']:>7} images: wall {r.get('wall_s', 0):7.1f} s, end to end {r.get('end_to_end_images_per_s', 0):6.1f} "
            f"images/s, once running {r.get('steady_images_per_s') or 0:6.1f}, peak tree PSS {r.get('peak_pss_mb', 0):6.0f} MB"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
