"""The shadow's cost in requests/s and p50: the Serve app on EfficientNet-Lite0 (fused, the CPU default) with no
shadow, a shadow version on every request and on 10 %, and a 10 % guarded canary (the stable version scored in the
shadow on its requests), in two interleaved rounds (in order, then reversed), at 1 and 16 closed-loop clients.

    python -m benchmarks.shadow_cost --json docs/benchmarks/shadow-cost-efficientnet-lite0.json

Version 2 is a copy of version 1, so the shadow does the same work as the answer. One local Ray instance, the
app redeployed per variant on the same port; a 3 s warm-up per variant loads both versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.gpu_check import _photos

REPO = Path(__file__).resolve().parent.parent


def _repository() -> Path:
    root = Path(tempfile.mkdtemp())
    shutil.copytree(
        REPO / "models" / "efficientnet-lite0" / "1",
        root / "efficientnet-lite0" / "1",
        ignore=shutil.ignore_patterns("calibration"),
    )
    shutil.copytree(root / "efficientnet-lite0" / "1", root / "efficientnet-lite0" / "2")
    manifest = json.loads((root / "efficientnet-lite0" / "2" / "manifest.json").read_text())
    (root / "efficientnet-lite0" / "2" / "manifest.json").write_text(json.dumps(manifest | {"version": "2"}))
    return root


VARIANTS = {
    "none": {"efficientnet-lite0": {"weights": {"1": 100}}},
    "shadow 100%": {"efficientnet-lite0": {"weights": {"1": 100}, "shadow": {"version": "2", "fraction": 1.0}}},
    "shadow 10%": {"efficientnet-lite0": {"weights": {"1": 100}, "shadow": {"version": "2", "fraction": 0.1}}},
    "guarded canary 10%": {
        "efficientnet-lite0": {
            "weights": {"1": 90, "2": 10},
            "guard": {
                "min_agreement": 0.97,
                "max_error_rate": 0.01,
                "max_p99_ratio": 2.0,
                "min_requests": 100000,
                "window_s": 60,
            },
        }
    },
}


async def load(url: str, images: list[bytes], clients: int, seconds: float) -> tuple[float, float]:
    """Requests/s and p50 ms of ``clients`` closed-loop clients over ``seconds``."""
    lat: list[float] = []
    done = 0
    async with aiohttp.ClientSession() as session:
        stop = time.perf_counter() + seconds

        async def client(i: int) -> None:
            nonlocal done
            k = i
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with session.post(url, data=images[k % len(images)]) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                lat.append(time.perf_counter() - t)
                done += 1
                k += 1

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return done / (time.perf_counter() - start), statistics.median(lat) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    from jobs.ingress import free_app_port, use_fast_ingress

    use_fast_ingress()
    from pipeline.serving.app import deploy
    from pipeline.serving.config import ServeConfig

    root, images = _repository(), _photos(12)
    ray.init(num_cpus=2, log_to_driver=False)
    port = free_app_port()
    results: dict[str, dict[int, list[tuple[float, float]]]] = {name: {} for name in VARIANTS}
    for round_ in range(2):
        for name, routing in VARIANTS.items() if round_ == 0 else reversed(VARIANTS.items()):
            deploy(ServeConfig(models_dir=str(root), routing=routing), "127.0.0.1", port, None)
            url = f"http://127.0.0.1:{port}/predict/efficientnet-lite0"
            asyncio.run(load(url, images, 4, 3))  # warm-up: both versions loaded, pools filled
            for clients in (1, 16):
                results[name].setdefault(clients, []).append(asyncio.run(load(url, images, clients, args.seconds)))
            print(name, {c: v[-1] for c, v in results[name].items()}, flush=True)
            serve.delete("streamscore")
    serve.shutdown()
    ray.shutdown()
    summary = {
        name: {
            str(c): {
                "requests_per_s": round(statistics.median(r for r, _ in runs), 1),
                "p50_ms": round(statistics.median(p for _, p in runs), 1),
            }
            for c, runs in by_clients.items()
        }
        for name, by_clients in results.items()
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
