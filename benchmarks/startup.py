"""Time to first prediction, cold and warm: what a user waits before the first rows exist.

    python -m benchmarks.startup --model efficientnet-lite0 --images 200 --rounds 3 \
        --json docs/benchmarks/startup.json

``streamscore score`` is run as a user runs it (a fresh process each time) with each executor, and its summary
gives the first predictions' time and the wall time, both counted from the process's start (interpreter,
imports, any Ray start-up included). Cold: the page cache is dropped first (``sync; echo 3 >
/proc/sys/vm/drop_caches``, root only), so Python, the libraries, the model and the images come from disk, as
after a reboot. Warm: the same command again at once. Rounds interleave cold and warm; medians reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXECUTORS = ("local", "ray")


def drop_page_cache() -> None:
    """Empty the page cache (root only), so the next process reads everything from disk."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_once(images_dir: Path, model: str, models_dir: Path, executor: str, out: Path) -> dict[str, Any]:
    summary_path = out / "summary.json"
    cli = Path(sys.executable).with_name("streamscore")
    command = [str(cli), "score", str(images_dir), str(out / "predictions"), "--model", model]
    command += ["--models-dir", str(models_dir), "--overwrite", "--quiet", "--executor", executor]
    start = time.perf_counter()
    subprocess.run([*command, "--summary-json", str(summary_path)], check=True, cwd=REPO)
    process_s = time.perf_counter() - start
    summary = json.loads(summary_path.read_text())
    return {"first_predictions_s": summary["first_predictions_s"], "wall_s": summary["wall_s"], "process_s": process_s}


def startup_report(model: str, images: int, rounds: int, models_dir: Path) -> dict[str, Any]:
    from benchmarks.data import make_benchmark_images

    images_dir = REPO / "bench" / "images" / str(images)
    make_benchmark_images(images_dir, images)
    out = REPO / "bench" / "out" / "startup"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {f"{e}_{t}": [] for e in EXECUTORS for t in ("cold", "warm")}
    for r in range(rounds):
        for executor in EXECUTORS if r % 2 == 0 else EXECUTORS[::-1]:
            drop_page_cache()
            runs[f"{executor}_cold"].append(run_once(images_dir, model, models_dir, executor, out))
            runs[f"{executor}_warm"].append(run_once(images_dir, model, models_dir, executor, out))
            print(f"round {r + 1} {executor}: {runs[f'{executor}_cold'][-1]} / {runs[f'{executor}_warm'][-1]}")
    medians = {
        name: {key: statistics.median(run[key] for run in done) for key in done[0]} for name, done in runs.items()
    }
    return {"kind": "startup", "model": model, "images": images, "rounds": rounds, "medians": medians, "runs": runs}


def startup_table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']}, {report['images']} images, `streamscore score` in a fresh process, medians of "
        f"{report['rounds']} rounds; seconds from the process's start",
        "",
        "| executor | start | first predictions s | wall s (all rows written) |",
        "|---|---|---|---|",
    ]
    for name, m in report["medians"].items():
        executor, temperature = name.split("_")
        lines.append(f"| {executor} | {temperature} | {m['first_predictions_s']:.2f} | {m['wall_s']:.2f} |")
    if command := report.get("command"):
        lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0:1")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("a cold start drops the page cache, which needs root")
    report = startup_report(args.model, args.images, args.rounds, args.models_dir)
    report["command"] = "python -m benchmarks.startup " + " ".join(sys.argv[1:] if argv is None else argv)
    print(startup_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(startup_table(report) + "\n")


if __name__ == "__main__":
    main()
