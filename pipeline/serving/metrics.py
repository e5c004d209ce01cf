"""Prometheus metrics of the gateway: requests, errors, latency, images and batch sizes by model and version.

Each gateway replica keeps its own registry and ``/metrics`` answers with the replica that takes the scrape;
with one gateway replica (the default) that is the whole app.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version", "endpoint"]
        self.requests = Counter(
            "streamscore_requests", "Scoring requests by outcome", [*labels, "status"], registry=self.registry
        )
        self.latency = Histogram(
            "streamscore_request_latency_seconds",
            "Time from request to answer",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.images = Counter("streamscore_images", "Images scored", ["model", "version"], registry=self.registry)
        self.batch_size = Histogram(
            "streamscore_batch_requests",
            "Requests the scorer ran together in one batch",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

        self.version_checks = Counter(
            "streamscore_version_checks",
            "Admin loads of a version by outcome (ok: it may take traffic; failed: it takes none)",
            ["model", "version", "outcome"],
            registry=self.registry,
        )

    def observe(self, model: str, version: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, version, endpoint, str(status)).inc()
        self.latency.labels(model, version, endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
