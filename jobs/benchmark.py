"""How close does scoring get to what this machine can do? Images/s and peak memory of five ways to score.

    python jobs/benchmark.py --model mobilenetv2-shaped --images 400 --json bench/mobilenetv2.json

Scenarios, each run in its own subprocess so its peak memory is its own (the RSS of the subprocess's whole
process tree, Ray's gcs, raylet and workers included, sampled every 0.1 s from /proc):

- ``plain_loop``: the glue a user writes by hand: one process, Pillow decode, resize, crop, normalize,
  ONNX Runtime on batches of 32 with one thread per CPU.
- ``ray_data_textbook``: what Ray's batch-inference docs teach: ``read_images`` + a task ``map_batches`` to
  preprocess + an ORT actor class in ``map_batches``, predictions written with ``write_parquet``. Setup: a
  fixed pool of 1 actor holding 1 CPU and running cpu_count-1 ORT threads, batches of 32, default
  ``ray.init`` (dashboard included). Note that Ray fuses the preprocessing ``map_batches`` into the actor's
  operator (see ``ray_plan`` in the report), so resizing runs inside the one actor: the textbook gets that.
- ``preprocess_only`` and ``inference_only``: each stage alone on all cores, in steady state (pools and
  sessions are warmed before the clock starts). Together they give the machine limit
  ``1 / (1/preprocess + 1/inference)``: all cores busy with useful work and nothing else.
- ``streamscore``: ``streamscore score INPUT OUTPUT --model NAME:VERSION --models-dir DIR``, timed from
  outside.

``images_per_s`` is over the scenario's timed section (after interpreter start, imports and ``ray.init``,
but including model loading and writing predictions); ``end_to_end_images_per_s`` is over the subprocess's
whole wall time. For ``streamscore`` only the latter exists, so both are the wall-clock figure (the tool's
own ``images/s:`` line, if printed, goes in ``tool_images_per_s``). Compare streamscore against the others'
``end_to_end`` figures too, not only their ``images_per_s``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `pipeline` and `jobs` importable
    sys.path.insert(0, str(REPO))

BENCH = REPO / "bench"
SHAPED_MODELS = ("resnet50-shaped", "mobilenetv2-shaped")
SCENARIOS = ("plain_loop", "ray_data_textbook", "preprocess_only", "inference_only", "streamscore")
BATCH_SIZE = 32
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------- shared by the scenarios
def _preprocess_params(model_dir: str) -> dict[str, Any]:
    """The manifest's preprocessing as plain values, so it can travel to Ray tasks and pool workers."""
    from pipeline.manifest import ModelManifest

    m = ModelManifest.model_validate_json((Path(model_dir) / "manifest.json").read_text())
    return {
        "resize": m.preprocess.resize_shorter,
        "interpolation": m.preprocess.interpolation,
        "height": m.input.height,
        "width": m.input.width,
        "mean": m.preprocess.mean,
        "std": m.preprocess.std,
    }


def _preprocess(image: Any, p: dict[str, Any]) -> Any:
    """PIL image -> CHW float32: resize the shorter side, centre-crop, ``(x - mean) / std``."""
    import numpy as np
    from PIL import Image

    resample = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "area": Image.Resampling.BOX,
        "lanczos": Image.Resampling.LANCZOS,
    }[p["interpolation"]]
    w, h = image.size
    scale = p["resize"] / min(w, h)
    w, h = max(p["width"], round(w * scale)), max(p["height"], round(h * scale))
    image = image.resize((w, h), resample)
    left, top = (w - p["width"]) // 2, (h - p["height"]) // 2
    image = image.crop((left, top, left + p["width"], top + p["height"]))
    x = (np.asarray(image, np.float32) - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _decode(source: str | bytes) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source).convert("RGB")


def _session(model_dir: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # CPU on purpose: this is the CPU benchmark, and onnxruntime-gpu would otherwise try CUDA first.
    return ort.InferenceSession(str(Path(model_dir) / "model.onnx"), options, providers=["CPUExecutionProvider"])


def _inputs(cfg: dict[str, Any]) -> Any:
    """Yield ``(id, path or JPEG bytes)`` in order, from the image folder or the Parquet file."""
    if cfg["input_format"] == "files":
        for path in cfg["images"]:
            yield Path(path).stem, path
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(cfg["parquet"]).iter_batches(batch_size=64):
            yield from zip(batch.column("id").to_pylist(), batch.column("image").to_pylist(), strict=True)


def _write_predictions(out_dir: str, ids: list[str], logits: list[Any]) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    scores = np.concatenate(logits)
    table = pa.table({"id": ids, "label": scores.argmax(1), "score": scores.max(1)})
    pq.write_table(table, Path(out_dir) / "predictions.parquet")


# ---------------------------------------------------------------------------- scenarios (run in subprocesses)
def run_plain_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    start = time.perf_counter()
    p = _preprocess_params(cfg["model_dir"])
    session = _session(cfg["model_dir"], cfg["cpu_count"])
    ids: list[str] = []
    logits: list[Any] = []
    batch: list[Any] = []
    for image_id, source in _inputs(cfg):
        ids.append(image_id)
        batch.append(_preprocess(_decode(source), p))
        if len(batch) == BATCH_SIZE:
            logits.append(session.run(None, {session.get_inputs()[0].name: np.stack(batch)})[0])
            batch = []
    if batch:
        logits.append(session.run(None, {session.get_inputs()[0].name: np.stack(batch)})[0])
    _write_predictions(cfg["out_dir"], ids, logits)
    return {"work_s": time.perf_counter() - start, "images": len(ids)}


class OrtPredictor:
    """The textbook stateful ``map_batches`` class: load the model once per actor, score each batch."""

    def __init__(self, model_dir: str, threads: int) -> None:
        self.session = _session(model_dir, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        logits = self.session.run(None, {self.input_name: batch["input"]})[0]
        return {"id": batch["id"], "label": logits.argmax(1), "score": logits.max(1)}


def _ray_preprocess(batch: dict[str, Any], p: dict[str, Any], decoded: bool) -> dict[str, Any]:
    """``read_images`` gives decoded HxWx3 arrays and paths; Parquet input gives ids and JPEG bytes."""
    import numpy as np
    from PIL import Image

    if decoded:
        images = [Image.fromarray(a) for a in batch["image"]]
        ids = np.array([Path(s).stem for s in batch["path"]])
    else:
        images = [_decode(bytes(b)) for b in batch["image"]]
        ids = batch["id"]
    return {"id": ids, "input": np.stack([_preprocess(i, p) for i in images])}


def run_ray_data_textbook(cfg: dict[str, Any]) -> dict[str, Any]:
    """One fixed-size pool of 1 ORT actor holding 1 CPU with cpu_count-1 threads; the other CPUs are left to
    the read and preprocess tasks, which Ray schedules itself (TaskPoolStrategy, 1 CPU each)."""
    import ray

    cpus = cfg["cpu_count"]
    init_start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus)  # a fresh cluster whose processes are our children
    start = time.perf_counter()
    p = _preprocess_params(cfg["model_dir"])
    if cfg["input_format"] == "files":
        ds = ray.data.read_images(cfg["images_dir"], mode="RGB", include_paths=True)
    else:
        ds = ray.data.read_parquet(cfg["parquet"])
    decoded = cfg["input_format"] == "files"
    # fn_kwargs is how the docs pass parameters; Ray's stubs only know one-argument functions.
    ds = ds.map_batches(
        _ray_preprocess,  # type: ignore[arg-type]
        fn_kwargs={"p": p, "decoded": decoded},
        batch_size=BATCH_SIZE,
    )
    ds = ds.map_batches(
        OrtPredictor,
        fn_constructor_kwargs={"model_dir": cfg["model_dir"], "threads": max(1, cpus - 1)},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=BATCH_SIZE,
        num_cpus=1,
    )
    ds.write_parquet(cfg["out_dir"])
    work_s = time.perf_counter() - start
    images = ray.data.read_parquet(cfg["out_dir"]).count()
    ray.shutdown()
    return {"work_s": work_s, "startup_s": start - init_start, "images": images}


_worker_state: dict[str, Any] = {}


def _init_preprocess_worker(model_dir: str, barrier: Any) -> None:
    _worker_state["p"] = _preprocess_params(model_dir)
    barrier.wait()


def _preprocess_one(source: str | bytes) -> float:
    return float(_preprocess(_decode(source), _worker_state["p"])[0, 0, 0])  # a scalar: no pickling cost


def run_preprocess_only(cfg: dict[str, Any]) -> dict[str, Any]:
    import multiprocessing as mp

    sources = [s for _, s in _inputs(cfg)]
    n = cfg["cpu_count"]
    barrier = mp.Barrier(n + 1)
    with mp.Pool(n, _init_preprocess_worker, (cfg["model_dir"], barrier)) as pool:
        barrier.wait()  # every worker has started and imported what it needs
        start = time.perf_counter()
        done = sum(1 for _ in pool.imap_unordered(_preprocess_one, sources, chunksize=8))
        work_s = time.perf_counter() - start
    return {"work_s": work_s, "images": done}


def _init_inference_worker(model_dir: str, threads: int, barrier: Any) -> None:
    import numpy as np

    session = _session(model_dir, threads)
    p = _preprocess_params(model_dir)
    x = np.random.default_rng(os.getpid()).standard_normal((BATCH_SIZE, 3, p["height"], p["width"]))
    _worker_state.update(session=session, x=x.astype(np.float32), name=session.get_inputs()[0].name)
    session.run(None, {_worker_state["name"]: _worker_state["x"]})  # warm-up: first run allocates
    barrier.wait()


def _infer(rows: int) -> int:
    s = _worker_state
    s["session"].run(None, {s["name"]: s["x"][:rows]})
    return rows


def run_inference_only(cfg: dict[str, Any]) -> dict[str, Any]:
    """``threads``: one session, one intra-op thread per CPU; ``processes``: one 1-thread session per CPU."""
    import multiprocessing as mp

    n, total = cfg["cpu_count"], cfg["n_images"]
    sizes = [min(BATCH_SIZE, total - i) for i in range(0, total, BATCH_SIZE)]
    if cfg["variant"] == "threads":
        _init_inference_worker(cfg["model_dir"], n, mp.Barrier(1))
        start = time.perf_counter()
        done = sum(_infer(rows) for rows in sizes)
        return {"work_s": time.perf_counter() - start, "images": done}
    barrier = mp.Barrier(n + 1)
    with mp.Pool(n, _init_inference_worker, (cfg["model_dir"], 1, barrier)) as pool:
        barrier.wait()
        start = time.perf_counter()
        done = sum(pool.imap_unordered(_infer, sizes))
        work_s = time.perf_counter() - start
    return {"work_s": work_s, "images": done}


# ---------------------------------------------------------------------------- measuring from outside
def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # comm may hold spaces and ')'
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _tree_rss_mb(pids: list[int]) -> float:
    rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return rss / 2**20


def _tree_pss_mb(pids: list[int]) -> float:
    """Summed PSS: RSS double-counts shared pages (Ray's object store is mapped into every worker, forked
    workers share libraries), PSS splits them, so PSS sums to the tree's real footprint. Reading
    smaps_rollup walks page tables (~35 ms for a 20-process Ray tree), so it is sampled sparingly."""
    pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return pss / 2**20


def _measure(cmd: list[str], log: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``cmd`` in its own session, sampling its tree's RSS every 0.1 s; return wall time and peaks."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    peak_rss = peak_pss = 0.0
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        last_pss, pss_due = 0.0, False
        while proc.poll() is None:
            pids = _process_tree(proc.pid)
            rss = _tree_rss_mb(pids)  # ~2 ms per sample: cheap enough to take every 0.1 s
            # PSS after each new RSS peak (+1%), at most every 0.2 s: the peaks coincide, and the
            # steady state, when RSS stops rising, costs nothing.
            pss_due = pss_due or rss > peak_rss * 1.01
            peak_rss = max(peak_rss, rss)
            if pss_due and time.perf_counter() - last_pss > 0.2:
                peak_pss, last_pss, pss_due = max(peak_pss, _tree_pss_mb(pids)), time.perf_counter(), False
            if time.perf_counter() - start > timeout_s:
                for pid in _process_tree(proc.pid):  # Ray workers get their own process groups
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
                return {"error": f"timed out after {timeout_s:.0f} s; log in {log}"}
            time.sleep(0.1)
        wall_s = time.perf_counter() - start
    result: dict[str, Any] = {"wall_s": wall_s, "peak_rss_mb": peak_rss, "peak_pss_mb": peak_pss}
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        result["error"] = f"exit code {proc.returncode}: {' | '.join(tail)[-600:]} (log: {log})"
    return result


def _streamscore_cmd(cfg: dict[str, Any]) -> list[str] | None:
    args = [
        "score",
        cfg["images_dir"] if cfg["input_format"] == "files" else cfg["parquet"],
        cfg["out_dir"],
        "--model",
        f"{cfg['model']}:{cfg['version']}",
        "--models-dir",
        cfg["models_dir"],
    ]
    if exe := shutil.which("streamscore"):
        return [exe, *args]
    if (REPO / "jobs" / "cli.py").exists():  # not installed yet: what the console script would run
        return [sys.executable, "-c", "import sys; from jobs.cli import main; sys.exit(main())", *args]
    return None


def run_scenario(name: str, cfg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one scenario once in a fresh subprocess and return its figures (or an ``error`` entry)."""
    work_dir = BENCH / "out" / name
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    cfg = cfg | {"out_dir": str(work_dir / "predictions")}  # streamscore creates it; our scenarios below
    log = BENCH / "logs" / f"{name}{'-' + cfg['variant'] if cfg.get('variant') else ''}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if name == "streamscore":
        cmd = _streamscore_cmd(cfg)
        if cmd is None:
            return {"error": "no `streamscore` command on PATH and no jobs/cli.py yet"}
        measured = _measure(cmd, log, timeout_s)
        if "error" not in measured:
            match = re.search(r"images/s:\s*([0-9.]+)", log.read_text(errors="replace"))
            measured["tool_images_per_s"] = float(match.group(1)) if match else None
            measured["images_per_s"] = cfg["n_images"] / measured["wall_s"]
        return measured | {"command": " ".join(cmd)}
    Path(cfg["out_dir"]).mkdir()
    config_path, result_path = work_dir / "config.json", work_dir / "result.json"
    config_path.write_text(json.dumps(cfg))
    measured = _measure(
        [
            sys.executable,
            str(Path(__file__).resolve()),
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
    load_before = os.getloadavg()[0]
    results = []
    for name in only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if name == "inference_only":
            variants = {
                v: _median_of([run_scenario(name, cfg | {"variant": v}, timeout_s) for _ in range(repeat)])
                for v in ("threads", "processes")
            }
            ok = {v: r for v, r in variants.items() if "error" not in r}
            best = max(ok, key=lambda v: ok[v]["images_per_s"]) if ok else "threads"
            result = variants[best] | {
                "variant": best,
                "variants": {v: r.get("images_per_s") for v, r in variants.items()},
            }
        else:
            result = _median_of([run_scenario(name, cfg, timeout_s) for _ in range(repeat)])
        if "wall_s" in result:
            result["end_to_end_images_per_s"] = cfg["n_images"] / result["wall_s"]
        results.append({"name": name} | result)
    by_name = {r["name"]: r for r in results}
    limit = None
    if all("images_per_s" in by_name.get(k, {}) for k in ("preprocess_only", "inference_only")):
        limit = 1 / (1 / by_name["preprocess_only"]["images_per_s"] + 1 / by_name["inference_only"]["images_per_s"])
    for r in results:
        r["ratio_to_machine_limit"] = r["images_per_s"] / limit if limit and "images_per_s" in r else None
    return {
        "model": f"{cfg['model']}:{cfg['version']}",
        "images": cfg["n_images"],
        "input_format": cfg["input_format"],
        "cpu_count": cfg["cpu_count"],
        # Other work on the machine skews every figure: keep the evidence next to them.
        "load_avg_1m_before_after": [load_before, os.getloadavg()[0]],
        "results": results,
        "machine_limit_images_per_s": limit,
    }


def _table(report: dict[str, Any]) -> str:
    def num(value: float | None, width: int, digits: int) -> str:
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"

    limit = num(report["machine_limit_images_per_s"], 0, 1)
    lines = [
        f"model {report['model']}, {report['images']} images ({report['input_format']}), "
        f"{report['cpu_count']} CPUs, machine limit {limit} images/s, load average before/after "
        f"{report['load_avg_1m_before_after'][0]:.2f}/{report['load_avg_1m_before_after'][1]:.2f}",
        f"{'scenario':<18} {'images/s':>9} {'end-to-end':>10} {'peak RSS MB':>11} {'peak PSS MB':>11} "
        f"{'x limit':>7}  note",
    ]
    for r in report["results"]:
        note = r.get("error") or (f"fastest variant: {r['variant']} {r['variants']}" if "variant" in r else "")
        if r.get("tool_images_per_s") is not None:
            note = f"tool says {r['tool_images_per_s']:.1f} images/s"
        lines.append(
            f"{r['name']:<18} {num(r.get('images_per_s'), 9, 1)} "
            f"{num(r.get('end_to_end_images_per_s'), 10, 1)} "
            f"{num(r.get('peak_rss_mb'), 11, 0)} {num(r.get('peak_pss_mb'), 11, 0)} "
            f"{num(r.get('ratio_to_machine_limit'), 7, 2)}  {note}"
        )
    return "\n".join(lines)


def _resolve_model(spec: str, models_dir: Path) -> tuple[str, str, Path]:
    """``NAME[:VERSION]`` -> (name, version, repository); builds the *-shaped models into bench/models."""
    name, _, version = spec.partition(":")
    if not (models_dir / name).is_dir() and name in SHAPED_MODELS:
        from pipeline.model_builders import zoo

        models_dir = BENCH / "models"
        if not (models_dir / name / (version or "1") / "model.onnx").exists():
            zoo.BUILDERS[name](models_dir, version or "1")
    if not version:
        found = (
            [d.name for d in (models_dir / name).iterdir() if (d / "model.onnx").exists()]
            if (models_dir / name).is_dir()
            else []
        )
        if not found:
            raise SystemExit(f"no versions of {name!r} in {models_dir}; pass --models-dir or one of {SHAPED_MODELS}")
        version = max(found, key=lambda v: (v.isdigit(), int(v) if v.isdigit() else 0, v))
    if not (models_dir / name / version / "model.onnx").exists():
        raise SystemExit(f"{models_dir / name / version / 'model.onnx'} does not exist")
    return name, version, models_dir


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
    parser.add_argument("--run-scenario", help=argparse.SUPPRESS)  # internal: inside a scenario subprocess
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_scenario:
        cfg = json.loads(args.config.read_text())
        result = globals()[f"run_{args.run_scenario}"](cfg)
        args.result.write_text(json.dumps(result))
        return
    if not args.model:
        parser.error("--model is required")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := sorted(set(only) - set(SCENARIOS)):
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    from jobs.benchmark_data import make_benchmark_images, write_parquet_of_images

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
    report = run_benchmark(cfg, only, max(1, args.repeat), args.timeout_s)
    print(_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
