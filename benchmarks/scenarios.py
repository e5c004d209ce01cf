"""The benchmark's scenarios, each run by ``benchmarks/run.py`` in its own subprocess.

- ``plain_loop``: the glue a user writes by hand: one process, Pillow decode, resize, crop, normalize,
  ONNX Runtime on batches of 32 with one thread per CPU.
- ``ray_data_textbook``: what Ray's batch-inference docs teach: ``read_images`` + a task ``map_batches`` to
  preprocess + an ORT actor class in ``map_batches``, predictions written with ``write_parquet``. Setup: a
  fixed pool of 1 actor holding 1 CPU and running cpu_count-1 ORT threads, batches of 32, default
  ``ray.init``. Ray fuses the preprocessing ``map_batches`` into the actor's operator (see ``ray_plan`` in
  the report), so resizing runs inside the one actor: the textbook gets that.
- ``preprocess_only`` and ``inference_only``: each stage alone on all cores, in steady state (pools and
  sessions are warmed before the clock starts). Together they give the machine limit
  ``1 / (1/preprocess + 1/inference)``: all cores busy with useful work and nothing else.
- ``streamscore``: ``streamscore score`` itself, with its defaults (the local executor here);
  ``streamscore_ray``: the same command with ``--executor ray`` (Ray Data on a local Ray it starts).
- ``daft`` (``benchmarks/peers.py``): Daft's documented pipeline on its native runner.

Each returns ``work_s`` and the number of images scored. For the hand-written scenarios ``work_s`` is the
timed section (after interpreter start and imports, including model loading and writing predictions); for
``streamscore`` it is the command's own wall time, from its process start (what ``summary.json`` says). The
subprocess's whole wall time (``wall_s``, measured from outside) is comparable across all of them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

BATCH_SIZE = 32


def _preprocess_params(model_dir: str) -> dict[str, Any]:
    """The manifest's preprocessing as plain values, so it can travel to Ray tasks and pool workers."""
    from pipeline.models.manifest import ModelManifest

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
    """``threads``: one session, one intra-op thread per CPU, batches of 32; ``processes``: one 1-thread session
    per CPU, batches of 32; ``processes_rows1``: the same, one image per call (on this CPU a 1-thread session
    runs EfficientNet-Lite0 10-20 % faster one image at a time than 32 at a time). The fastest is the limit."""
    import multiprocessing as mp

    n, total = cfg["cpu_count"], cfg["n_images"]
    step = 1 if cfg["variant"] == "processes_rows1" else BATCH_SIZE
    sizes = [min(step, total - i) for i in range(0, total, step)]
    if cfg["variant"] == "threads":
        _init_inference_worker(cfg["model_dir"], n, mp.Barrier(1))
        start = time.perf_counter()
        done = sum(_infer(rows) for rows in sizes)
        return {"work_s": time.perf_counter() - start, "images": done}
    barrier = mp.Barrier(n + 1)
    with mp.Pool(n, _init_inference_worker, (cfg["model_dir"], 1, barrier)) as pool:
        barrier.wait()
        start = time.perf_counter()
        done = sum(pool.imap_unordered(_infer, sizes, chunksize=max(1, 8 // step)))
        work_s = time.perf_counter() - start
    return {"work_s": work_s, "images": done}


def _run_cli(cfg: dict[str, Any], *flags: str) -> dict[str, Any]:
    """``streamscore score`` as a user runs it, in this (fresh) process: its summary's wall time counts from
    the process's start, so interpreter start, imports and any Ray start-up are in it."""
    import json

    from jobs.cli import main

    summary_path = Path(cfg["out_dir"]).parent / "summary.json"
    source = cfg["images_dir"] if cfg["input_format"] == "files" else cfg["parquet"]
    model = f"{cfg['model']}:{cfg['version']}"
    args = ["score", source, cfg["out_dir"], "--model", model, "--models-dir", cfg["models_dir"], "--overwrite"]
    code = main([*args, "--quiet", "--summary-json", str(summary_path), *flags])
    if code != 0:
        raise RuntimeError(f"streamscore score exited {code}")
    summary = json.loads(summary_path.read_text())
    return {
        "work_s": summary["wall_s"],
        "first_predictions_s": summary["first_predictions_s"],
        "steady_images_per_s": summary["images_per_s_running"],
        "images": summary["rows"] - summary["error_rows"],
        "plan": summary["plan"],
    }


def run_streamscore(cfg: dict[str, Any]) -> dict[str, Any]:
    """``streamscore score`` with its defaults: on this machine (no cluster, no GPU), the local executor."""
    return _run_cli(cfg)


def run_streamscore_ray(cfg: dict[str, Any]) -> dict[str, Any]:
    """``streamscore score --executor ray``: Ray Data on a local Ray instance that the command starts."""
    return _run_cli(cfg, "--executor", "ray")
