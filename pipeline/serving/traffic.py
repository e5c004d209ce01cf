"""What the gateways saw of guarded and shadowed models: counts per version and per (answer, shadow) pair.

Each gateway replica adds up its requests in a ``TrafficCounts`` and sends what it gathered to the control plane
every ``REPORT_INTERVAL_S`` (only models with a guard or a shadow are counted). The control plane keeps the
reports of the last minutes in a ``TrafficWindow`` and sums those inside a guard's ``window_s``: every replica's
requests count, whichever replica a canary's failures landed on. Latencies are kept as counts per fixed
log-spaced bucket, so a report is small whatever the traffic and a p99 over many reports is one merged
histogram.
"""

from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass, field

# Each report is a remote call from every replica: at most this often, and only when something was counted.
REPORT_INTERVAL_S = 0.5
# Latency bucket upper bounds in ms: 0.5 ms to ~120 s, 8 per doubling (a p99 is within 9 % of the truth).
LATENCY_EDGES_MS = tuple(0.5 * 2 ** (i / 8) for i in range(144))


@dataclass
class VersionCounts:
    """One version's routed requests: those answered, those that failed (``errors``), their latencies."""

    requests: int = 0
    errors: int = 0
    latency_buckets: dict[int, int] = field(default_factory=dict)  # bucket index -> requests (sparse)

    def observe(self, latency_ms: float, failed: bool) -> None:
        self.requests += 1
        self.errors += failed
        bucket = bisect.bisect_left(LATENCY_EDGES_MS, latency_ms)
        self.latency_buckets[bucket] = self.latency_buckets.get(bucket, 0) + 1

    def add(self, other: VersionCounts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for bucket, count in other.latency_buckets.items():
            self.latency_buckets[bucket] = self.latency_buckets.get(bucket, 0) + count

    def p99_ms(self) -> float:
        """The bucket bound under which 99 % of the latencies fall (NaN with no requests)."""
        total = sum(self.latency_buckets.values())
        if not total:
            return math.nan
        rank, seen = math.ceil(0.99 * total), 0
        for bucket in sorted(self.latency_buckets):
            seen += self.latency_buckets[bucket]
            if seen >= rank:
                return LATENCY_EDGES_MS[min(bucket, len(LATENCY_EDGES_MS) - 1)]
        return LATENCY_EDGES_MS[-1]

    def summary(self) -> dict[str, float | int | None]:
        p99 = self.p99_ms()
        return {"requests": self.requests, "errors": self.errors, "p99_ms": None if math.isnan(p99) else p99}


@dataclass
class PairCounts:
    """A shadow version scored on the requests another version answered, and how their answers compared."""

    compared: int = 0  # requests whose answers were compared
    agreement: float = 0.0  # sum over compared requests: top-1 equal (1 or 0) or, for embeddings, the cosine
    top1_equal: int = 0  # classifiers: the same best label
    top5_overlap: float = 0.0  # sum over compared requests of |top-5 ∩ top-5| / 5 (classifiers)
    cosine: float = 0.0  # sum over compared requests of the mean cosine similarity (embeddings)
    embeddings: int = 0  # compared requests of an embedding model (the rest are a classifier's)
    errors: int = 0  # the shadow failed where the answer did not
    dropped: int = 0  # shadow work not done: its queue was full
    shadow_latency: VersionCounts = field(default_factory=VersionCounts)  # the shadow version's own time

    def add(self, other: PairCounts) -> None:
        for name in (
            "compared",
            "agreement",
            "top1_equal",
            "top5_overlap",
            "cosine",
            "embeddings",
            "errors",
            "dropped",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.shadow_latency.add(other.shadow_latency)

    def summary(self) -> dict[str, float | int | None]:
        n, classified = self.compared, self.compared - self.embeddings
        answer: dict[str, float | int | None] = {"compared": n, "agreement": self.agreement / n if n else None}
        if classified:
            answer |= {"top1_agreement": self.top1_equal / classified, "top5_overlap": self.top5_overlap / classified}
        if self.embeddings:
            answer["cosine_similarity"] = self.cosine / self.embeddings
        p99 = self.shadow_latency.p99_ms()
        answer |= {"shadow_p99_ms": None if math.isnan(p99) else p99}
        return answer | {"shadow_errors": self.errors, "dropped": self.dropped}


VersionKey = tuple[str, str]  # (model, version)
PairKey = tuple[str, str, str]  # (model, version that answered, shadow version)


@dataclass
class TrafficCounts:
    """Counts gathered since the last report (a gateway's), or summed over reports (the control plane's)."""

    versions: dict[VersionKey, VersionCounts] = field(default_factory=dict)
    pairs: dict[PairKey, PairCounts] = field(default_factory=dict)

    def version(self, model: str, version: str) -> VersionCounts:
        return self.versions.setdefault((model, version), VersionCounts())

    def pair(self, model: str, version: str, shadow: str) -> PairCounts:
        return self.pairs.setdefault((model, version, shadow), PairCounts())

    def add(self, other: TrafficCounts) -> None:
        for key, counts in other.versions.items():
            self.versions.setdefault(key, VersionCounts()).add(counts)
        for pair_key, pair in other.pairs.items():
            self.pairs.setdefault(pair_key, PairCounts()).add(pair)

    def __bool__(self) -> bool:
        return bool(self.versions or self.pairs)

    def of_model(self, model: str) -> TrafficCounts:
        return TrafficCounts(
            {k: v for k, v in self.versions.items() if k[0] == model},
            {k: v for k, v in self.pairs.items() if k[0] == model},
        )


class TrafficWindow:
    """Reports received in the last ``horizon_s`` (the longest guard window), each stamped with when it arrived,
    summed on demand."""

    def __init__(self) -> None:
        self._reports: collections.deque[tuple[float, TrafficCounts]] = collections.deque()
        self.total = TrafficCounts()  # every report since the start, for ``admin routing``

    def add(self, at: float, counts: TrafficCounts, horizon_s: float) -> None:
        self._reports.append((at, counts))
        self.total.add(counts)
        while self._reports and self._reports[0][0] < at - horizon_s:
            self._reports.popleft()

    def since(self, start: float, model: str | None = None) -> TrafficCounts:
        """The sum of the reports that arrived at ``start`` or later (of ``model`` only, if given)."""
        summed = TrafficCounts()
        for at, counts in reversed(self._reports):
            if at < start:
                break
            summed.add(counts.of_model(model) if model is not None else counts)
        return summed
