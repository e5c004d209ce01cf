"""The serving benchmark's load: a closed loop of C clients, each sending its next image when the last is answered,
over HTTP (aiohttp) or gRPC (grpc.aio, V2 ``ModelInfer``); latencies as percentiles and a log-spaced histogram."""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any

# Latency histogram bins: log-spaced from 1 ms to 10 s.
EDGES_MS = [round(10 ** (i / 20), 3) for i in range(0, 81)]


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_s) or [float("nan")]

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


def _histogram(latencies_s: list[float]) -> list[int]:
    counts = [0] * (len(EDGES_MS) - 1)
    for latency in latencies_s:
        counts[min(len(counts) - 1, max(0, bisect.bisect_right(EDGES_MS, latency * 1e3) - 1))] += 1
    return counts


async def load(url: str, images: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    if url.startswith("grpc://"):
        return await _load_grpc(url, images, concurrency, seconds)
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
    return _result(concurrency, latencies, failures, elapsed)


async def _load_grpc(url: str, images: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    """``_load`` over gRPC: ``grpc://HOST:PORT/MODEL/VERSION``, one channel, C clients each awaiting its call."""
    import grpc
    from open_inference.grpc import protocol as pb
    from open_inference.grpc.service import GRPCInferenceServiceStub

    target, model, version = url.removeprefix("grpc://").split("/")
    latencies: list[float] = []
    failures: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(stub: GRPCInferenceServiceStub, offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            contents = pb.InferTensorContents(bytes_contents=[images[i % len(images)]])
            tensor = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1], contents=contents)
            request = pb.ModelInferRequest(model_name=model, model_version=version, inputs=[tensor])
            start = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=120)
                latencies.append(time.perf_counter() - start)
            except grpc.aio.AioRpcError as error:
                code = error.code().value[0]
                failures[code] = failures.get(code, 0) + 1
            i += concurrency

    async with grpc.aio.insecure_channel(target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        start = time.perf_counter()
        await asyncio.gather(*(client(stub, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    return _result(concurrency, latencies, failures, elapsed)  # failures by gRPC status code number


def _result(concurrency: int, latencies: list[float], failures: dict[int, int], elapsed: float) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": len(latencies) / elapsed,
        **percentiles(latencies),
        "histogram": _histogram(latencies),
    }
