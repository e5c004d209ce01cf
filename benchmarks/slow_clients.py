"""Slow clients against a real Serve app: do they hold off a good client, and are they cut off?

    python -m benchmarks.slow_clients --connections 140

Starts a local Ray and the app (HAProxy ingress, two fused gateway replicas, the bundled models), opens
``--connections`` connections that each declare a 100 kB body and send it at 1 byte/s (``--part headers``:
trickle a header instead; ``stall``: stop in the middle of one), and meanwhile sends 20 good requests, one
every 0.5 s. Prints the good requests' statuses and latencies and how the slow
connections ended.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.measure import REPO


async def _trickle(port: int, ended: list[str], part: str) -> None:
    """``part``: "body" trickles a body byte a second; "headers" trickles header bytes; "stall" sends half a
    header line and then nothing."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = b"POST /predict/digits HTTP/1.1\r\nHost: x\r\n"
        writer.write(start + (b"Content-Length: 100000\r\n\r\n" if part == "body" else b"X-Slow: "))
        for _ in range(60):
            if part != "stall":
                writer.write(b"x")
                await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(100), 1.0)
            except TimeoutError:
                continue
            ended.append(answer[:12].decode(errors="replace") or "closed")
            return
        ended.append("still open after 60 s")
    except OSError as exc:
        ended.append(type(exc).__name__)


def _post(url: str, body: bytes) -> tuple[Any, float]:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
            return response.status, time.perf_counter() - start
    except urllib.error.HTTPError as error:
        return error.code, time.perf_counter() - start
    except OSError as exc:
        return type(exc).__name__, time.perf_counter() - start


async def _probe(port: int, connections: int, part: str) -> dict[str, Any]:
    png = io.BytesIO()
    Image.fromarray(np.full((32, 32), 100, dtype=np.uint8)).save(png, "PNG")
    ended: list[str] = []
    started = time.perf_counter()
    slow = [asyncio.create_task(_trickle(port, ended, part)) for _ in range(connections)]
    await asyncio.sleep(2)
    good = []
    for _ in range(20):
        good.append(await asyncio.to_thread(_post, f"http://127.0.0.1:{port}/predict/digits", png.getvalue()))
        await asyncio.sleep(0.5)
    await asyncio.gather(*slow)
    slow_ended_s = time.perf_counter() - started
    statuses = [str(s) for s, _ in good]
    latencies = sorted(t for _, t in good)
    return {
        "slow_connections": connections,
        "slow_part": part,
        "slow_all_ended_after_s": round(slow_ended_s, 1),
        "good_statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "good_latency_median_s": round(latencies[len(latencies) // 2], 3),
        "good_latency_max_s": round(latencies[-1], 3),
        "slow_endings": {e: ended.count(e) for e in sorted(set(ended))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=140)
    parser.add_argument("--part", choices=["body", "headers", "stall"], default="body", help="what is slow")
    args = parser.parse_args()
    import ray

    from jobs.ingress import free_app_port, use_fast_ingress
    from pipeline.serving.app import deploy
    from pipeline.serving.config import ServeConfig

    use_fast_ingress()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    port = free_app_port()
    deploy(ServeConfig(models_dir=str(REPO / "models"), replicas=2), "127.0.0.1", port)
    print(json.dumps(asyncio.run(_probe(port, args.connections, args.part))))
    ray.shutdown()


if __name__ == "__main__":
    main()
