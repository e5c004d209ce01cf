"""Shadow scoring: a second version scores a request the client already has its answer for, and the two answers
are compared. Nothing of it reaches the client: the work waits in a bounded queue that one task per gateway
replica drains, and what does not fit is dropped and counted, never waited for.

What it bounds: at most ``max_requests`` requests and ``max_bytes`` of their encoded images wait per replica, and
one is scored at a time (in its own thread, apart from the decoders clients wait on), so shadowing costs at most
one core's share per replica however heavy the traffic; under load the shadow sees a sample, not every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.models.ref import ModelRef
from pipeline.serving.traffic import PairCounts

logger = logging.getLogger(__name__)
TOP_K_COMPARED = 5


@dataclass(frozen=True)
class ShadowWork:
    """One request to score again: ``shadow`` on ``images``, compared with ``answer`` (what ``answered`` gave)."""

    answered: ModelRef
    shadow: ModelRef
    images: list[bytes]
    answer: pa.Table

    @property
    def size_bytes(self) -> int:
        return sum(len(image) for image in self.images)


def compare(answer: pa.Table, shadow: pa.Table) -> PairCounts:
    """How far ``shadow``'s rows agree with ``answer``'s, as one compared request (its images averaged)."""
    if answer.num_rows != shadow.num_rows or answer.num_rows == 0:
        raise ValueError(f"cannot compare {answer.num_rows} rows with {shadow.num_rows}")
    n = answer.num_rows
    if "embedding" in answer.column_names:
        a = np.asarray(answer.column("embedding").to_pylist(), np.float64)
        b = np.asarray(shadow.column("embedding").to_pylist(), np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines = np.einsum("ij,ij->i", a, b) / np.where(norms > 0, norms, 1.0)
        cosine = float(np.mean(np.where(np.isfinite(cosines), cosines, 0.0)))  # a non-finite vector agrees with none
        return PairCounts(compared=1, agreement=cosine, cosine=cosine, embeddings=1)
    equal = sum(
        x == y for x, y in zip(answer.column("label").to_pylist(), shadow.column("label").to_pylist(), strict=True)
    )
    overlap = 0.0
    for mine, theirs in zip(answer.column("top_k").to_pylist(), shadow.column("top_k").to_pylist(), strict=True):
        first = {item["label"] for item in (mine or [])[:TOP_K_COMPARED]}
        second = {item["label"] for item in (theirs or [])[:TOP_K_COMPARED]}
        overlap += len(first & second) / max(1, len(first), len(second))
    return PairCounts(compared=1, agreement=equal / n, top1_equal=int(equal == n), top5_overlap=overlap / n)


class ShadowQueue:
    """Shadow work waiting for the one task that scores it; ``offer`` never waits."""

    def __init__(
        self,
        score: Callable[[ModelRef, list[bytes]], Awaitable[pa.Table]],
        record: Callable[[ShadowWork, PairCounts], None],
        max_requests: int,
        max_bytes: int,
        timeout_s: float,
    ) -> None:
        """``score``: the shadow version's table for the images (raises when it cannot); ``record``: what to
        do with each outcome (a comparison, an error or a drop, as ``PairCounts``). Shadow work that takes
        longer than ``timeout_s`` is given up and counted as a shadow error: it holds up no other."""
        self._score, self._record = score, record
        self._max_requests, self._max_bytes, self._timeout_s = max_requests, max_bytes, timeout_s
        self._waiting: asyncio.Queue[ShadowWork] = asyncio.Queue()
        self._bytes = 0
        self._worker: asyncio.Task[None] | None = None

    def offer(self, work: ShadowWork) -> bool:
        """Queue ``work`` if there is room (else count it dropped); False when dropped."""
        if self._waiting.qsize() >= self._max_requests or self._bytes + work.size_bytes > self._max_bytes:
            self._record(work, PairCounts(dropped=1))
            return False
        self._bytes += work.size_bytes
        self._waiting.put_nowait(work)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def _drain(self) -> None:
        while True:
            work = await self._waiting.get()
            start = time.perf_counter()
            try:
                async with asyncio.timeout(self._timeout_s):
                    table = await self._score(work.shadow, work.images)
                outcome = compare(work.answer, table)
                outcome.shadow_latency.observe((time.perf_counter() - start) * 1e3, failed=False)
            except Exception as exc:  # noqa: BLE001 - any failure of the shadow is its own, counted, never raised
                logger.info("shadow %s failed on a request %s answered: %r", work.shadow, work.answered, exc)
                outcome = PairCounts(errors=1)
            finally:
                self._bytes -= work.size_bytes
            self._record(work, outcome)
