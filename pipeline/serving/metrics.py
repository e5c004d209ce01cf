"""Prometheus metrics of the app: requests, latency, images, batch sizes and version checks, app-wide.

Each gateway replica counts into its own registry (no remote call on the request path) and sends a snapshot
of it to the ``MetricsHub`` deployment every ``PUSH_INTERVAL_S`` when it changed, and before it answers a
scrape. The hub
sums the latest snapshot of every replica it has heard from, so ``/metrics`` gives the same totals whichever
replica takes the scrape, and counts never go back when a replica is replaced (its last snapshot stays).
Counters, histogram buckets, sums and counts are additive; ``_created`` timestamps are not and are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from ray import serve
from ray.exceptions import RayError

from pipeline.serving.traffic import PairCounts

logger = logging.getLogger(__name__)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Each push is a remote call on both sides: replicas push only when their counts changed (the pushes of two
# idle replicas took 10 % of a core here when they pushed regardless).
PUSH_INTERVAL_S = 0.5

# (family name, documentation, type, [(sample name, labels, value)])
Family = tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]


class GatewayMetrics:
    """One replica's counts."""

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

        pair = ["model", "version", "shadow_version"]
        self.shadow_requests = Counter(
            "streamscore_shadow_requests",
            "Requests also given to a shadow version, by outcome: compared, error (the shadow failed), dropped "
            "(its queue was full)",
            [*pair, "outcome"],
            registry=self.registry,
        )
        self.shadow_agreement = Counter(
            "streamscore_shadow_agreement",
            "Sum over compared requests of their agreement (top-1 equal, or the embeddings' cosine similarity); "
            "divide by the compared requests",
            pair,
            registry=self.registry,
        )
        self.shadow_top5_overlap = Counter(
            "streamscore_shadow_top5_overlap",
            "Sum over compared requests of the share of top-5 labels both versions gave",
            pair,
            registry=self.registry,
        )

    def observe_shadow(self, model: str, version: str, shadow: str, outcome: PairCounts) -> None:
        for name, count in (("compared", outcome.compared), ("error", outcome.errors), ("dropped", outcome.dropped)):
            if count:
                self.shadow_requests.labels(model, version, shadow, name).inc(count)
        if outcome.compared:
            self.shadow_agreement.labels(model, version, shadow).inc(outcome.agreement)
            self.shadow_top5_overlap.labels(model, version, shadow).inc(outcome.top5_overlap)

    def observe(self, model: str, version: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, version, endpoint, str(status)).inc()
        self.latency.labels(model, version, endpoint).observe(seconds)

    def snapshot(self) -> list[Family]:
        """Plain values (picklable) of every additive sample."""
        return [
            (
                family.name,
                family.documentation,
                family.type,
                [
                    (s.name, tuple(sorted(s.labels.items())), s.value)
                    for s in family.samples
                    if not s.name.endswith("_created")
                ],
            )
            for family in self.registry.collect()
        ]


def merge(snapshots: Iterable[list[Family]]) -> list[Metric]:
    """Sum samples with the same name and labels across snapshots, family by family."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for snapshot in snapshots:
        for name, documentation, kind, samples in snapshot:
            families.setdefault(name, Metric(name, documentation, kind))
            totals = sums.setdefault(name, {})
            for sample_name, labels, value in samples:
                totals[(sample_name, labels)] = totals.get((sample_name, labels), 0.0) + value
    for name, metric in families.items():
        for (sample_name, labels), value in sums[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(families.values())


def guard_metrics(
    routing: dict[str, Any], halted: Iterable[tuple[str, str]], rollbacks: dict[tuple[str, str], int]
) -> list[Metric]:
    """The control plane's state as metrics (every replica holds the same): each routed version's share of its
    model's split traffic, the versions rolled back and not released, and rollbacks so far."""
    weight = Metric("streamscore_routing_weight_percent", "A version's share of its model's weighted traffic", "gauge")
    for model, policy in sorted(routing.items()):
        total = sum(w for w in policy.weights.values() if w > 0)
        for version, w in sorted(policy.weights.items()):
            weight.add_sample(weight.name, {"model": model, "version": version}, 100 * w / total if total else 0.0)
    held = Metric("streamscore_guard_halted", "1 for a version its guard rolled back, until released", "gauge")
    for model, version in sorted(halted):
        held.add_sample(held.name, {"model": model, "version": version}, 1.0)
    rolled = Metric("streamscore_guard_rollbacks", "Canaries rolled back by their guard", "counter")
    for (model, version), count in sorted(rollbacks.items()):
        rolled.add_sample(rolled.name + "_total", {"model": model, "version": version}, float(count))
    return [weight, held, rolled]


class _Collected:
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics


def render(metrics: list[Metric]) -> bytes:
    """Prometheus text format of ``metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(metrics))
    return generate_latest(registry)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class MetricsHub:
    """The latest snapshot of every gateway replica, summed on request."""

    def __init__(self) -> None:
        self._snapshots: dict[str, list[Family]] = {}

    def push(self, replica: str, snapshot: list[Family]) -> None:
        self._snapshots[replica] = snapshot

    def render(self) -> bytes:
        return render(merge(self._snapshots.values()))


async def push_forever(hub: Any, replica: str, metrics: GatewayMetrics) -> None:
    """Send ``metrics`` to the hub (its handle) every ``PUSH_INTERVAL_S`` when they changed."""
    pushed, pushed_at = None, 0.0
    while True:
        await asyncio.sleep(PUSH_INTERVAL_S)
        snapshot = metrics.snapshot()
        # Nothing new (an idle replica): no call, but for one now and then, for a hub that was replaced.
        if snapshot == pushed and time.monotonic() - pushed_at < 30:
            continue
        try:
            await hub.push.remote(replica, snapshot)
            pushed, pushed_at = snapshot, time.monotonic()
        except RayError as exc:  # the hub is being replaced; the next push catches up
            logger.warning("could not push metrics: %s", exc)
