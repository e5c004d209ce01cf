"""The serving benchmark: the Serve app beside the app a user would write instead, in the same run.

    python -m benchmarks --serving --model efficientnet-lite0 --images 400 --rounds 4 --seconds 15 \
        --json docs/benchmarks/serving-efficientnet-lite0.json

The apps below, on the same model and images, each started as its user starts it, in its own processes:

- ``streamscore``: ``streamscore serve`` (Ray Serve, HAProxy, the gateway; its own local Ray instance);
- ``peer``: the FastAPI + ONNX Runtime app of ``benchmarks/serving_peer.py`` under ``uvicorn --workers N``
  (N = the machine's cores), Pillow preprocessing, one session per process;
- ``peer_on_serve``: the peer's own endpoint as a Serve app behind the same ingress as ``streamscore serve``
  (``benchmarks/serving_peer_on_serve.py``): what Serve's HTTP path costs before any of our code;
- ``peer_on_serve_bare``: the same function in a plain ``__call__`` deployment, without FastAPI (``--bare``):
  the leanest HTTP endpoint Serve can host, Serve's floor;
- ``streamscore_grpc``: ``streamscore serve --grpc-port``, driven over gRPC (V2 ``ModelInfer``, one image per
  call, grpc.aio with the open-inference stubs) instead of HTTP ``/predict``: what the other door costs.

A Ray-based app may also run with settings of its own, ``streamscore@RAY_SERVE_HAPROXY_NBTHREAD=1`` (see
``benchmarks/serving_apps.py``): one run then compares Ray's per-request settings side by side.

A closed-loop load generator (aiohttp in this process; each of C clients posts its next JPEG when the last is
answered) drives each app at every concurrency for ``seconds`` after a 2 s warm-up. Rounds interleave the
apps (in order, then reversed, each app started afresh per round, the others stopped) and the report gives medians
over rounds, latency histograms per concurrency (all rounds), and each app's p50 at concurrency 1 over its
own code called in-process on one image (what HTTP and the framework add; measured at the start of each round).
Also, as before, requests/s at 64 clients over the batch pipeline's images/s on the same images.

For every app and window, CPU-ms per request: the CPU time of the app's whole process tree over the window
(``benchmarks/process_cpu.py``) over the requests it answered, by process too; the tree's CPU use over 3 s
without load (Ray's fixed background); and the cores that other work on the machine kept busy meanwhile. Each
app starts once the machine is quiet (or after ``quiet_wait_s``): this machine is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import process_cpu
from benchmarks.serving_apps import BASE_APPS, AppSpec, apps_section, summarise_cpu
from benchmarks.serving_load import EDGES_MS, load, percentiles

REPO = Path(__file__).resolve().parent.parent
APPS = BASE_APPS
IDLE_S = 3.0  # each app's CPU use without load, measured once it is warm


def in_process(cfg: dict[str, Any], images: list[bytes], rounds: int) -> dict[str, dict[str, Any]]:
    """Each app's own code called in this process on one image at a time: the floor HTTP adds its cost to."""
    from pipeline.graph import build_graph
    from pipeline.models.repository import ModelRepository

    graph = build_graph(f"{cfg['model']}:{cfg['version']}", ModelRepository(cfg["models_dir"]))
    os.environ["STREAMSCORE_PEER_MODEL_DIR"] = cfg["model_dir"]
    from benchmarks import serving_peer

    calls = {"streamscore": lambda data: graph.run([data]), "peer": serving_peer.score_image}
    result = {}
    for app, call in calls.items():
        call(images[0])  # warm-up: sessions and allocations
        latencies = []
        for i in range(rounds):
            start = time.perf_counter()
            call(images[i % len(images)])
            latencies.append(time.perf_counter() - start)
        result[app] = {"requests": rounds, **percentiles(latencies)}
    result["peer_on_serve"] = result["peer_on_serve_bare"] = result["peer"]  # the same function
    result["streamscore_grpc"] = result["streamscore"]
    return result


def _grpc_port(port: int) -> int:
    return port + 1  # beside the HTTP port; _free_port leaves it free


def _command(spec: AppSpec, cfg: dict[str, Any], port: int) -> tuple[list[str], dict[str, str]]:
    # This checkout's code in the app and in Ray's workers, whichever checkout pip's editable install names.
    env = dict(os.environ) | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env |= dict(spec.env)
    app = spec.base
    if app.startswith("streamscore"):  # the `streamscore` command's own entry point
        command = [sys.executable, "-m", "jobs.cli", "serve", "--models-dir", cfg["models_dir"], "--port", str(port)]
        return [*command, *(["--grpc-port", str(_grpc_port(port))] if app == "streamscore_grpc" else [])], env
    if app.startswith("peer_on_serve"):
        command = [sys.executable, "-m", "benchmarks.serving_peer_on_serve", "--model-dir", cfg["model_dir"]]
        return [*command, "--port", str(port), *(["--bare"] if app == "peer_on_serve_bare" else [])], env
    env["STREAMSCORE_PEER_MODEL_DIR"] = cfg["model_dir"]
    workers = str(os.cpu_count() or 1)
    uvicorn = [sys.executable, "-m", "uvicorn", "benchmarks.serving_peer:app", "--log-level", "warning"]
    return [*uvicorn, "--workers", workers, "--port", str(port)], env


def _url(app: str, cfg: dict[str, Any], port: int) -> str:
    query = f"?version={cfg['version']}" if app.startswith("streamscore") else ""
    return f"http://127.0.0.1:{port}/predict/{cfg['model']}{query}"


@contextlib.contextmanager
def _running(
    spec: AppSpec, cfg: dict[str, Any], port: int, log: Path, warm_up: list[bytes]
) -> Iterator[tuple[str, int]]:
    """Start the app as its user would, wait until it answers a scoring request, yield its URL and process id,
    stop it."""
    command, env = _command(spec, cfg, port)
    app = spec.base
    url = _url(app, cfg, port)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{app} exited with {process.returncode} before it answered; see {log}")
            try:
                urllib.request.urlopen(urllib.request.Request(url, data=warm_up[0]), timeout=30).read()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not answer within 180 s; see {log}") from None
                time.sleep(0.5)
        for data in warm_up:  # every replica or worker loads the model before the load starts
            urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60).read()
        if app == "streamscore_grpc":  # ready over HTTP; measured over gRPC
            url = f"grpc://127.0.0.1:{_grpc_port(port)}/{cfg['model']}/{cfg['version']}"
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGINT)  # both shut down cleanly on Ctrl-C
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(stack: contextlib.ExitStack, spec: AppSpec, cfg: dict[str, Any], log: Path, warm_up: list[bytes]) -> Any:
    """``_running`` on a free port, entered on ``stack``; on a start that fails (HAProxy found the port taken by
    another process between our check and its bind, on this shared machine), twice more on other ports."""
    for attempt in range(3):
        try:
            return stack.enter_context(_running(spec, cfg, _free_port(), log, warm_up))
        except (RuntimeError, OSError) as exc:  # OSError: urllib's errors during the warm-up
            if attempt == 2:
                raise
            print(f"{spec.name} did not start ({exc}); again on another port", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _free_port() -> int:
    """A free port whose next one is free too (streamscore_grpc's gRPC port)."""
    import socket

    from jobs.ingress import free_app_port

    while True:
        port = free_app_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def serving_report(
    cfg: dict[str, Any],
    concurrencies: list[int],
    seconds: float,
    rounds: int,
    batch: dict[str, Any] | None,
    apps: tuple[str, ...] = APPS,
    quiet_wait_s: float = 120.0,
) -> dict[str, Any]:
    """Every app of ``apps`` (streamscore and the peer among them) at every concurrency, ``rounds`` interleaved
    rounds; medians, histograms, overheads. Fewer apps make shorter rounds, so more of them fit in the time
    the machine stays steady. Each app starts once the machine has been quiet for a second, or after
    ``quiet_wait_s``."""
    specs = [AppSpec.parse(app) for app in apps]
    names = [spec.name for spec in specs]
    if not {"streamscore", "peer"} <= set(names) or len(set(names)) < len(names):
        raise ValueError(f"apps must include streamscore and peer, each app once, from {APPS}; got {apps}")
    images = [Path(p).read_bytes() for p in cfg["images"]]
    floors: list[dict[str, dict[str, Any]]] = []  # in-process, each round, measured when the machine is quiet
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {app: {c: [] for c in concurrencies} for app in names}
    idle: dict[str, list[float]] = {app: [] for app in names}
    log_dir = REPO / "bench" / "logs"
    for r in range(rounds):
        process_cpu.wait_for_quiet(max_wait_s=quiet_wait_s)
        floors.append(in_process(cfg, images, rounds=200))
        for spec in specs if r % 2 == 0 else specs[::-1]:
            app = spec.name
            quiet = process_cpu.wait_for_quiet(max_wait_s=quiet_wait_s)
            load_1m = os.getloadavg()[0]  # other work on the machine: kept beside each figure
            log = log_dir / f"serving-{spec.file_stem}.log"
            with contextlib.ExitStack() as stack:
                url, pid = _start(stack, spec, cfg, log, images[:8])
                idle[app].append(process_cpu.idle_cores(pid, IDLE_S))
                for c in concurrencies:
                    asyncio.run(load(url, images, c, 2.0))  # warm-up at this concurrency, not counted
                    result = process_cpu.measured(pid, lambda c=c, url=url: asyncio.run(load(url, images, c, seconds)))
                    result |= {"load_avg_1m_before": load_1m} | quiet
                    runs[app][c].append(result)
                    print(
                        f"round {r + 1} {app} c={c:<3} {result['requests_per_s']:6.1f} req/s "
                        f"p50 {result['p50_ms']:6.1f} ms, {result['cpu_ms_per_request']:5.1f} CPU-ms/request "
                        f"(other work {result['other_cores']:.2f} cores, load {load_1m:.2f})",
                        file=sys.stderr,
                        flush=True,
                    )
    summary = []
    for c in concurrencies:
        row: dict[str, Any] = {"concurrency": c}
        for app in names:
            rounds_of = runs[app][c]
            row[f"{app}_requests_per_s"] = statistics.median(x["requests_per_s"] for x in rounds_of)
            for p in ("p50_ms", "p95_ms", "p99_ms"):
                row[f"{app}_{p}"] = statistics.median(x[p] for x in rounds_of)
            row[f"{app}_failures"] = sum(sum(x["failures"].values()) for x in rounds_of)
            row |= {f"{app}_{key}": value for key, value in summarise_cpu(rounds_of).items()}
        row["requests_per_s_vs_peer"] = row["streamscore_requests_per_s"] / row["peer_requests_per_s"]
        summary.append(row)
    baseline = {app: {k: statistics.median(f[app][k] for f in floors) for k in floors[0][app]} for app in floors[0]}
    baseline |= {spec.name: baseline[spec.base] for spec in specs}  # a variant runs its base app's code
    by_concurrency = {row["concurrency"]: row for row in summary}
    report: dict[str, Any] = {
        "kind": "serving",
        "model": f"{cfg['model']}:{cfg['version']}",
        "images": len(images),
        "cpu_count": os.cpu_count(),
        "rounds": rounds,
        "seconds": seconds,
        "apps": names,
        "in_process": baseline,
        "summary": summary,
        "idle_cpu_cores": {app: statistics.median(values) for app, values in idle.items()},
        "runs": {app: {str(c): v for c, v in per.items()} for app, per in runs.items()},
        "histogram_edges_ms": EDGES_MS,
        "histograms": {
            app: {str(c): [sum(col) for col in zip(*(x["histogram"] for x in per[c]), strict=True)] for c in per}
            for app, per in runs.items()
        },
    }
    if 1 in by_concurrency:  # the target: <= 3 ms at concurrency 1
        report["p50_overhead_ms_at_concurrency_1"] = {
            app: by_concurrency[1][f"{app}_p50_ms"] - baseline[app]["p50_ms"] for app in names
        }
    if batch and 64 in by_concurrency:
        report["batch_pipeline_images_per_s"] = batch.get("images_per_s")
        report["requests_per_s_at_64_vs_batch"] = {
            basis: by_concurrency[64]["streamscore_requests_per_s"] / batch[basis]
            for basis in ("images_per_s", "steady_images_per_s")
            if batch.get(basis)
        }
    return report


def _versus_peer(row: dict[str, Any], app: str) -> str:
    """``app``'s requests/s and its ratio to the peer's; "-" in a report from before the app was measured."""
    rate = row.get(f"{app}_requests_per_s")
    return f"{rate:.1f} ({rate / row['peer_requests_per_s']:.2f})" if rate else "-"


def serving_table(report: dict[str, Any]) -> str:
    """Markdown: medians per concurrency, every app, the ratios; the in-process floors and overheads."""
    floor = report["in_process"]
    lines = [
        f"{report['model']}, {report['images']} images, {report['cpu_count']} CPUs, {report['rounds']} interleaved "
        f"rounds of {report['seconds']:g} s per concurrency (medians)",
        "",
        "| concurrency | streamscore req/s | peer req/s | ratio | peer on Serve req/s (x peer) | "
        "bare on Serve req/s (x peer) | streamscore gRPC req/s (x peer) | streamscore p50 / p95 / p99 ms | "
        "gRPC p50 / p95 / p99 ms | peer p50 / p95 / p99 ms | failures (ours, peer, on Serve, bare, gRPC) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["summary"]:
        ours = " / ".join(f"{row[f'streamscore_{p}']:.1f}" for p in ("p50_ms", "p95_ms", "p99_ms"))
        theirs = " / ".join(f"{row[f'peer_{p}']:.1f}" for p in ("p50_ms", "p95_ms", "p99_ms"))
        on_serve = [_versus_peer(row, app) for app in ("peer_on_serve", "peer_on_serve_bare", "streamscore_grpc")]
        grpc_ms = (
            " / ".join(f"{row[f'streamscore_grpc_{p}']:.1f}" for p in ("p50_ms", "p95_ms", "p99_ms"))
            if "streamscore_grpc_p50_ms" in row
            else "-"
        )
        failures = ", ".join(str(row.get(f"{app}_failures", "-")) for app in APPS)
        lines.append(
            f"| {row['concurrency']} | {row['streamscore_requests_per_s']:.1f} | {row['peer_requests_per_s']:.1f} | "
            f"{row['requests_per_s_vs_peer']:.2f} | {' | '.join(on_serve)} | {ours} | {grpc_ms} | {theirs} | {failures} |"
        )
    lines.append("")
    lines.append(
        f"In-process on one image, p50: streamscore's graph {floor['streamscore']['p50_ms']:.1f} ms, "
        f"the peer's function {floor['peer']['p50_ms']:.1f} ms."
    )
    if overhead := report.get("p50_overhead_ms_at_concurrency_1"):
        lines.append(
            "p50 at concurrency 1 over in-process: "
            + ", ".join(f"{app} {ms:.1f} ms" for app, ms in overhead.items())
            + "."
        )
    if ratios := report.get("requests_per_s_at_64_vs_batch"):
        lines.append(
            "Requests/s at concurrency 64 over the batch pipeline's images/s: "
            + ", ".join(f"{ratio:.2f} ({basis})" for basis, ratio in ratios.items())
            + "."
        )
    lines += apps_section(report)
    if command := report.get("command"):
        lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)
