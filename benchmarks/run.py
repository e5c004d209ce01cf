"""How close does scoring get to what this machine can do? Images/s and peak memory of five ways to score.

    python -m benchmarks --model mobilenetv2-shaped --images 2000 --json bench/mobilenetv2.json
    python -m benchmarks --serving --model efficientnet-lite0 --images 400 --json bench/serving.json

The scenarios (``benchmarks/scenarios.py``) run one by one, each in a fresh subprocess so that its peak
memory is its own (``benchmarks/measure.py``), on the same images and model. ``images_per_s`` is over
each scenario's timed section: after interpreter start, imports and ``ray.init``, but including model
loading, actor start-up and writing predictions. ``end_to_end_images_per_s`` is over the subprocess's whole
wall time. The machine limit is ``1 / (1/preprocess_only + 1/inference_only)``. ``--serving`` measures the
Serve app instead (``benchmarks/serving.py``), next to the batch pipeline on the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import peers, scenarios
from benchmarks.measure import REPO, measure

BENCH = REPO / "bench"
SHAPED_MODELS = ("resnet50-shaped", "mobilenetv2-shaped")
SCENARIOS = (
    "plain_loop",
    "ray_data_textbook",
    "daft",
    "preprocess_only",
    "inference_only",
    "streamscore",
    "streamscore_ray",
)
PEER_SCENARIOS = ("daft",)  # benchmarks/peers.py


def run_scenario(name: str, cfg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one scenario once in a fresh subprocess and return its figures (or an ``error`` entry)."""
    work_dir = BENCH / "out" / name
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    cfg = cfg | {"out_dir": str(work_dir / "predictions")}  # streamscore creates it; our scenarios below
    log = BENCH / "logs" / f"{name}{'-' + cfg['variant'] if cfg.get('variant') else ''}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    Path(cfg["out_dir"]).mkdir()
    config_path, result_path = work_dir / "config.json", work_dir / "result.json"
    config_path.write_text(json.dumps(cfg))
    measured = measure(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--run-scenario",
            name,
            "--config",
            str(config_path),
            "--result",
            str(result_path),
        ],
        log,
        timeout_s,
    )
    if "error" in measured:
        return measured
    inner = json.loads(result_path.read_text())
    if inner["images"] != cfg["n_images"]:
        return {"error": f"scored {inner['images']} of {cfg['n_images']} images"}
    if plan := re.search(r"Execution plan of Dataset \S+: (.*)", log.read_text(errors="replace")):
        inner["ray_plan"] = plan.group(1).strip()  # shows which map_batches Ray fused into one operator
    return measured | inner | {"images_per_s": inner["images"] / inner["work_s"]}


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if errors := [r for r in runs if "error" in r]:
        return errors[0]
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            merged[key] = statistics.median(r[key] for r in runs)
    return merged | {"runs": len(runs), "images_per_s_each_run": [r.get("images_per_s") for r in runs]}


def run_benchmark(cfg: dict[str, Any], only: list[str], repeat: int, timeout_s: float) -> dict[str, Any]:
    """Each scenario ``repeat`` times, interleaved (round 1 of every scenario, then round 2, ...), so that a
    drift of the machine during the run touches them all alike; medians reported."""
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in only}
    variants: dict[str, list[dict[str, Any]]] = {"threads": [], "processes": [], "processes_rows1": []}
    for round_ in range(repeat):
        for name in only:
            print(f"running {name} (round {round_ + 1} of {repeat}) ...", file=sys.stderr, flush=True)
            if name == "inference_only":
                for variant in variants:
                    variants[variant].append(run_scenario(name, cfg | {"variant": variant}, timeout_s))
            else:
                runs[name].append(run_scenario(name, cfg, timeout_s))
    results = []
    for name in only:
        if name == "inference_only":
            medians = {v: _median_of(r) for v, r in variants.items()}
            ok = {v: r for v, r in medians.items() if "error" not in r}
            best = max(ok, key=lambda v: ok[v]["images_per_s"]) if ok else "threads"
            result = medians[best] | {
                "variant": best,
                "variants": {v: r.get("images_per_s") for v, r in medians.items()},
            }
        else:
            result = _median_of(runs[name])
        if "wall_s" in result:
            result["end_to_end_images_per_s"] = cfg["n_images"] / result["wall_s"]
        results.append({"name": name} | result)
    by_name = {r["name"]: r for r in results}
    limit = None
    if all("images_per_s" in by_name.get(k, {}) for k in ("preprocess_only", "inference_only")):
        limit = 1 / (1 / by_name["preprocess_only"]["images_per_s"] + 1 / by_name["inference_only"]["images_per_s"])
    for r in results:
        r["ratio_to_machine_limit"] = r["images_per_s"] / limit if limit and "images_per_s" in r else None
    from benchmarks.stages import stage_times

    print("timing each stage on one core ...", file=sys.stderr, flush=True)
    stages = stage_times(cfg | {"out_dir": str(BENCH / "out" / "stages")})
    return {
        "model": f"{cfg['model']}:{cfg['version']}",
        "images": cfg["n_images"],
        "input_format": cfg["input_format"],
        "stages_ms_per_image": stages,
        "cpu_count": cfg["cpu_count"],
        # Other work on the machine skews every figure: keep the evidence next to them.
        "load_avg_1m_before_after": [load_before, os.getloadavg()[0]],
        "results": results,
        "machine_limit_images_per_s": limit,
        # The targets: >= 0.85x the limit, >= 1.4x plain_loop (MobileNetV2), >= 1.5x the textbook.
        # End to end (each subprocess's whole wall time: what a user waits), as the start-up target reads.
        "streamscore_vs": {
            other: by_name["streamscore"]["end_to_end_images_per_s"] / by_name[other]["end_to_end_images_per_s"]
            for other in ("plain_loop", "ray_data_textbook", "daft", "streamscore_ray")
            if "end_to_end_images_per_s" in by_name.get("streamscore", {})
            and "end_to_end_images_per_s" in by_name.get(other, {})
        },
    }


def _table(report: dict[str, Any]) -> str:
    def num(value: float | None, width: int, digits: int) -> str:
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"

    limit = num(report["machine_limit_images_per_s"], 0, 1)
    limit_value = report["machine_limit_images_per_s"]
    lines = [
        f"model {report['model']}, {report['images']} images ({report['input_format']}), "
        f"{report['cpu_count']} CPUs, machine limit {limit} images/s, load average before/after "
        f"{report['load_avg_1m_before_after'][0]:.2f}/{report['load_avg_1m_before_after'][1]:.2f}",
        f"{'scenario':<18} {'images/s':>9} {'end-to-end':>10} {'peak RSS MB':>11} {'peak PSS MB':>11} "
        f"{'x limit':>7}  note",
    ]
    for r in report["results"]:
        note = r.get("error") or (f"fastest variant: {r['variant']} {r['variants']}" if "variant" in r else "")
        if r.get("plan"):
            note = (
                f"first predictions after {r['first_predictions_s']:.1f} s, then "
                f"{r['steady_images_per_s']:.1f} images/s ({r['steady_images_per_s'] / limit_value:.2f}x limit); "
                if limit_value
                else ""
            ) + r["plan"]
        lines.append(
            f"{r['name']:<18} {num(r.get('images_per_s'), 9, 1)} "
            f"{num(r.get('end_to_end_images_per_s'), 10, 1)} "
            f"{num(r.get('peak_rss_mb'), 11, 0)} {num(r.get('peak_pss_mb'), 11, 0)} "
            f"{num(r.get('ratio_to_machine_limit'), 7, 2)}  {note}"
        )
    if report.get("streamscore_vs"):
        lines.append("streamscore vs " + ", ".join(f"{k}: {v:.2f}x" for k, v in report["streamscore_vs"].items()))
    return "\n".join(lines)


def _resolve_model(spec: str, models_dir: Path) -> tuple[str, str, Path]:
    """``NAME[:VERSION]`` -> (name, version, repository); the *-shaped models are built into bench/models.

    "Latest" means what it means everywhere: ``ModelRepository.resolve_version``.
    """
    from builders import builder
    from common.errors import StreamScoreError
    from pipeline.models.ref import ModelRef
    from pipeline.models.repository import ModelRepository

    ref = ModelRef.parse(spec)
    if not (models_dir / ref.name).is_dir() and ref.name in SHAPED_MODELS:
        models_dir = BENCH / "models"
        if not (models_dir / ref.name / (ref.version or "1") / "model.onnx").exists():
            builder(ref.name)(models_dir, ref.version or "1")
    try:
        version = ModelRepository(str(models_dir)).resolve_version(ref.name, ref.version)
    except StreamScoreError as exc:
        raise SystemExit(f"{exc}; pass --models-dir or one of {SHAPED_MODELS}") from None
    return ref.name, version, models_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="NAME[:VERSION]; resnet50-shaped and mobilenetv2-shaped are built if absent")
    parser.add_argument("--images", type=int, default=400, help="how many benchmark images (default 400)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--input-format", choices=["files", "parquet"], default="files")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario; the median is reported")
    parser.add_argument("--timeout-s", type=float, default=300, help="per scenario run (default 300)")
    parser.add_argument("--serving", action="store_true", help="benchmark the Serve app (latency, requests/s)")
    parser.add_argument("--concurrency", default="1,16,64", help="--serving: client counts (default 1,16,64)")
    parser.add_argument("--seconds", type=float, default=20, help="--serving: load per client count (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="--serving: interleaved rounds per app (default 4)")
    parser.add_argument(
        "--apps",
        default="streamscore,peer,peer_on_serve,peer_on_serve_bare",
        help="--serving: the apps to run, streamscore and peer among them; APP@NAME=VALUE[+NAME=VALUE] runs a "
        "Ray-based app with those environment variables added (benchmarks/serving_apps.py)",
    )
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=120,
        help="--serving: before each app starts, wait at most this long for other work on the machine to stop",
    )
    parser.add_argument("--run-scenario", help=argparse.SUPPRESS)  # internal: inside a scenario subprocess
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_scenario:
        cfg = json.loads(args.config.read_text())
        module = peers if args.run_scenario in PEER_SCENARIOS else scenarios
        result = getattr(module, f"run_{args.run_scenario}")(cfg)
        args.result.write_text(json.dumps(result))
        return
    if not args.model:
        parser.error("--model is required")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := sorted(set(only) - set(SCENARIOS)):
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    from benchmarks.data import make_benchmark_images, write_parquet_of_images

    name, version, models_dir = _resolve_model(args.model, args.models_dir)
    images_dir = BENCH / "images" / str(args.images)
    images = make_benchmark_images(images_dir, args.images)
    parquet = (
        write_parquet_of_images(images, BENCH / "images" / f"{args.images}.parquet")
        if args.input_format == "parquet"
        else None
    )
    cfg = {
        "model": name,
        "version": version,
        "models_dir": str(models_dir.resolve()),
        "model_dir": str((models_dir / name / version).resolve()),
        "images": [str(p) for p in images],
        "images_dir": str(images_dir),
        "parquet": str(parquet) if parquet else None,
        "n_images": args.images,
        "input_format": args.input_format,
        "cpu_count": os.cpu_count() or 1,
    }
    if args.serving:
        from benchmarks.serving import serving_report, serving_table
        from benchmarks.serving_apps import AppSpec

        apps = tuple(args.apps.split(","))
        try:  # before the batch run: a typo costs seconds, not minutes
            [AppSpec.parse(app) for app in apps]
        except ValueError as exc:
            parser.error(str(exc))
        batch = run_scenario("streamscore", cfg, args.timeout_s)
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        rounds = max(1, args.rounds)
        report = serving_report(cfg, concurrencies, args.seconds, rounds, batch, apps, args.quiet_wait_s)
    else:
        report = run_benchmark(cfg, only, max(1, args.repeat), args.timeout_s)
        print(_table(report))
    report["command"] = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:  # first: a table that fails to print must not lose the run
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.serving:
        print(serving_table(report))
    if args.json:
        from benchmarks.report import write_report

        for path in write_report(args.json, args.json.parent, report["command"]):
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
