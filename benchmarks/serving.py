"""The serving benchmark: latency percentiles and requests/s of the Serve app at several concurrencies.

    python -m benchmarks --serving --model efficientnet-lite0 --images 400 --json bench/serving.json

A closed-loop load generator (aiohttp; each of C clients sends its next request when the last is answered)
posts benchmark JPEGs to ``/predict/{model}`` on a local app started as ``streamscore serve`` starts it.
Also measured: the same graph called in-process on one image (the floor Serve adds its cost to), and (by
``benchmarks/run.py``) the batch pipeline on the same images. Report: p50/p95/p99 latency and requests/s per
concurrency, Serve's p50 overhead at concurrency 1, and requests/s at 64 clients over the batch images/s.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any


def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_s)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


def in_process(model: str, models_dir: str, images: list[bytes], rounds: int) -> dict[str, Any]:
    """The graph called directly on one image at a time: what a request costs without Serve."""
    from pipeline.graph import build_graph
    from pipeline.models import ModelRepository

    graph = build_graph(model, ModelRepository(models_dir))
    graph.run(images[:1])  # warm-up: sessions and allocations
    latencies = []
    for i in range(rounds):
        start = time.perf_counter()
        graph.run([images[i % len(images)]])
        latencies.append(time.perf_counter() - start)
    return {"requests": rounds, **_percentiles(latencies)}


async def _load(url: str, images: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    failures: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            async with session.post(url, data=images[i % len(images)]) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures[response.status] = failures.get(response.status, 0) + 1
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": len(latencies) / elapsed,
        **_percentiles(latencies or [float("nan")]),
    }


def served(
    model: str, version: str, models_dir: str, images: list[bytes], concurrencies: list[int], seconds: float
) -> list[dict]:
    import urllib.request

    from ray import serve

    from jobs.console import connect_ray
    from jobs.ingress import free_app_port, use_fast_ingress
    from pipeline.serving.app import deploy
    from pipeline.serving.config import ServeConfig

    port = free_app_port()
    use_fast_ingress()
    connect_ray(None, num_cpus=os.cpu_count())
    deploy(ServeConfig(models_dir=models_dir), "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/predict/{model}?version={version}"
    for data in images[:8]:  # warm-up: every replica loads the model
        urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=120).read()
    try:
        return [asyncio.run(_load(url, images, c, seconds)) for c in concurrencies]
    finally:
        serve.shutdown()


def serving_report(cfg: dict[str, Any], concurrencies: list[int], seconds: float, batch: dict[str, Any]) -> dict:
    """Serving figures for ``cfg``'s model and images, next to the batch pipeline's (``batch``) on the same images."""
    images = [Path(p).read_bytes() for p in cfg["images"]]
    model = f"{cfg['model']}:{cfg['version']}"
    baseline = in_process(model, cfg["models_dir"], images, rounds=200)
    levels = served(cfg["model"], cfg["version"], cfg["models_dir"], images, concurrencies, seconds)
    by_concurrency = {r["concurrency"]: r for r in levels}
    return {
        "model": model,
        "cpu_count": os.cpu_count(),
        "in_process_batch_1": baseline,
        "served": levels,
        "batch_pipeline_images_per_s": batch.get("images_per_s"),
        "batch_pipeline_steady_images_per_s": batch.get("steady_images_per_s"),
        # The targets: <= 5 ms at concurrency 1, >= 0.7x the batch pipeline at concurrency 64.
        "p50_overhead_ms_at_concurrency_1": by_concurrency[1]["p50_ms"] - baseline["p50_ms"]
        if 1 in by_concurrency
        else None,
        "requests_per_s_at_64_vs_batch": {
            basis: by_concurrency[64]["requests_per_s"] / batch[basis]
            for basis in ("images_per_s", "steady_images_per_s")
            if 64 in by_concurrency and batch.get(basis)
        },
    }


def serving_table(report: dict[str, Any]) -> str:
    baseline = report["in_process_batch_1"]
    lines = [
        f"in-process, one image: p50 {baseline['p50_ms']:.1f} ms, p95 {baseline['p95_ms']:.1f} ms",
        f"batch pipeline on the same images: {report['batch_pipeline_images_per_s'] or float('nan'):.1f} images/s "
        f"({report['batch_pipeline_steady_images_per_s'] or float('nan'):.1f} once running)",
        f"{'concurrency':>11} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  failures",
    ]
    for r in report["served"]:
        lines.append(
            f"{r['concurrency']:>11} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f}  {r['failures'] or 'none'}"
        )
    if report["p50_overhead_ms_at_concurrency_1"] is not None:
        lines.append(f"Serve's p50 overhead at concurrency 1: {report['p50_overhead_ms_at_concurrency_1']:.1f} ms")
    for basis, ratio in report["requests_per_s_at_64_vs_batch"].items():
        lines.append(f"requests/s at concurrency 64 / batch {basis}: {ratio:.2f}")
    return "\n".join(lines)
