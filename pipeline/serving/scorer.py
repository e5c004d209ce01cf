"""Scoring in the Serve app: the version cache, the batching scorer, its deployment, and how a gateway calls it.

The gateway preprocesses (uint8 pixels out); a scorer batches concurrent requests with ``@serve.batch`` and
runs the inference half of the graph (normalize, ONNX Runtime, top-k). In the split topology the scorer is
its own deployment (``Scorer``) and the gateway holds a ``RemoteScorer``; fused, each gateway replica holds a
``LocalScorer`` over a ``ModelScorer`` in its own process. Both speak ``ScorerClient``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
from ray import serve

from common.errors import InferenceError, StreamScoreError
from operators._rows import object_array
from operators.base import ERROR
from pipeline.graph import Graph, Stage, graph_for_model
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from pipeline.output import predictions_table
from pipeline.serving.config import ServeConfig

logger = logging.getLogger(__name__)
Half = Literal["preprocess", "inference"]


class GraphCache:
    """One half of the graph per model version, built on first use; the least recently used go past
    ``capacity``. Each deployment builds only its half: the gateway reads the manifest and labels but never
    opens an ONNX Runtime session. Thread-safe (the gateway preprocesses in worker threads); a version being
    built never holds up the others."""

    def __init__(self, config: ServeConfig, half: Half, device: str = "cpu") -> None:
        self._repository = ModelRepository(config.models_dir)
        self._options = config.options
        self._half, self._device = half, device
        self._capacity = config.max_cached_versions
        self._entries: collections.OrderedDict[ModelRef, tuple[Graph, Stage]] = collections.OrderedDict()
        self._lock = threading.Lock()  # guards _entries and _building, held only briefly
        self._building: dict[ModelRef, threading.Lock] = {}

    def get(self, ref: ModelRef) -> tuple[Graph, Stage]:
        """The graph and built stage for ``ref`` (a pinned version)."""
        with self._lock:
            if ref in self._entries:
                self._entries.move_to_end(ref)
                return self._entries[ref]
            building = self._building.setdefault(ref, threading.Lock())
        with building:  # one build per version; requests for it wait, the rest go on
            with self._lock:
                if ref in self._entries:
                    return self._entries[ref]
            entry = self._build(ref)
            with self._lock:
                self._entries[ref] = entry
                self._building.pop(ref, None)
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
            return entry

    def _build(self, ref: ModelRef) -> tuple[Graph, Stage]:
        model = self._repository.load(ref, check_graph=self._half == "inference")
        graph = graph_for_model(model, self._options).on_device(self._device)
        if self._half == "inference":  # a request is answered whole or refused, never with rows of errors
            graph = graph.with_infer_params(on_error="raise")
        if self._half == "preprocess":
            return graph, Stage(preprocess=graph.preprocess)
        return graph, Stage(inference=graph.inference)

    def cached(self) -> list[ModelRef]:
        """The versions held now, least recently used first."""
        with self._lock:
            return list(self._entries)


@dataclass(frozen=True)
class Scored:
    """A request's share of a scored batch: its prediction rows, or the error that kept it from them."""

    table: pa.Table | None
    batch_requests: int  # requests that shared the batch
    error: str | None = None
    seconds: float = 0.0  # the inference of this request's version in the batch (its group), without waits


class ModelScorer:
    """Pixels -> prediction tables; concurrent requests are scored together, grouped by model version."""

    def __init__(self, config: ServeConfig, warm: Sequence[ModelRef] = ()) -> None:
        self._graphs = GraphCache(config, "inference", "cuda" if config.scorer_gpus else "cpu")
        # Ray's stubs for @serve.batch know one-argument methods only, hence the ignores below.
        self.score.set_max_batch_size(config.max_batch_size or 1)  # type: ignore[misc, attr-defined]
        self.score.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[misc, attr-defined]
        for ref in warm:  # the routed versions: loaded before the replica takes traffic
            try:
                self.check(ref)
            except StreamScoreError:
                logger.exception("routed version %s failed its warm-up; its requests will fail", ref)

    @serve.batch  # type: ignore[arg-type]  # sized from the config in __init__
    async def score(self, refs: list[ModelRef], pixels: list[np.ndarray]) -> list[Scored]:  # type: ignore[misc]
        """Each request gets its rows, or an error; a version that fails fails only its own requests."""
        n = len(refs)
        results = [Scored(None, n)] * n
        for ref in dict.fromkeys(refs):
            members = [i for i, r in enumerate(refs) if r == ref]
            group = await asyncio.to_thread(self.score_now, ref, np.concatenate([pixels[i] for i in members]), n)
            offset = 0
            for i in members:
                table = group.table.slice(offset, len(pixels[i])) if group.table is not None else None
                results[i] = Scored(table, n, group.error, group.seconds)
                offset += len(pixels[i])
        return results

    def score_now(self, ref: ModelRef, pixels: np.ndarray, batch_requests: int = 1) -> Scored:
        """Score ``pixels`` in the calling thread: unbatched, or one version's share of a batch. A version that
        cannot load or whose inference fails gives an error, for its own requests only."""
        start = time.perf_counter()
        try:
            self._graphs.get(ref)  # a first load is not the version's time on the request: not timed
            start = time.perf_counter()
            return Scored(self._run(ref, pixels), batch_requests, seconds=time.perf_counter() - start)
        except StreamScoreError as exc:
            logger.warning("scoring %s failed: %s", ref, exc)
            error = f"{type(exc).__name__}: {exc}"[:500]
            return Scored(None, batch_requests, error, time.perf_counter() - start)

    async def score_alone(self, ref: ModelRef, pixels: np.ndarray) -> Scored:
        """Score ``pixels`` outside the batches clients' requests share (shadow work: no client waits for it)."""
        return await asyncio.to_thread(self.score_now, ref, pixels)

    def check(self, ref: ModelRef) -> None:
        """Load ``ref`` and score a warm-up batch; an InferenceError unless every output is finite."""
        graph, _ = self._graphs.get(ref)
        spec = graph.model.manifest.input
        warm_up = np.random.default_rng(0).integers(0, 256, (2, spec.height, spec.width, spec.channels), np.uint8)
        table = self._run(ref, warm_up)
        answer = (
            table.column("embedding").combine_chunks().flatten()
            if "embedding" in table.column_names
            else table.column("score")
        )
        if (
            table.column("error").null_count != len(table)
            or not np.isfinite(answer.to_numpy(zero_copy_only=False)).all()
        ):
            raise InferenceError(f"{ref} gave non-finite outputs on its warm-up batch")

    def loaded(self) -> list[ModelRef]:
        """The versions this replica holds (least recently used first); at most ``max_cached_versions``."""
        return self._graphs.cached()

    def _run(self, ref: ModelRef, pixels: np.ndarray) -> pa.Table:
        graph, inference = self._graphs.get(ref)
        n = len(pixels)
        batch = {"id": object_array([str(i) for i in range(n)]), "pixels": pixels, ERROR: np.full(n, None, object)}
        return predictions_table(inference(batch), graph.model)


Scorer = serve.deployment(ModelScorer, name="Scorer")


class ScorerClient(Protocol):
    """How a gateway reaches a scorer, in its own process or in the Scorer deployment."""

    async def score(self, ref: ModelRef, pixels: np.ndarray) -> Scored: ...

    async def score_alone(self, ref: ModelRef, pixels: np.ndarray) -> Scored: ...

    async def check(self, ref: ModelRef) -> None: ...

    async def loaded(self) -> list[ModelRef]: ...


class LocalScorer:
    """Fused topology: a ``ModelScorer`` in this replica (``score`` batched with this replica's requests).

    ``inline`` is the scorer itself when batches are off (``max_batch_size`` 1): the gateway then scores each
    request in the thread that preprocessed it (``ModelScorer.score_now``), with no queue between the halves.
    """

    def __init__(self, scorer: ModelScorer, batching: bool) -> None:
        self._scorer = scorer
        self.inline = None if batching else scorer

    async def score(self, ref: ModelRef, pixels: np.ndarray) -> Scored:
        scored: Scored = await self._scorer.score(ref, pixels)  # type: ignore[misc, call-arg]
        return scored

    async def score_alone(self, ref: ModelRef, pixels: np.ndarray) -> Scored:
        return await self._scorer.score_alone(ref, pixels)

    async def check(self, ref: ModelRef) -> None:
        await asyncio.to_thread(self._scorer.check, ref)

    async def loaded(self) -> list[ModelRef]:
        return self._scorer.loaded()


class RemoteScorer:
    """Split topology: the Scorer deployment, through its handle (``loaded`` is the answering replica's)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def score(self, ref: ModelRef, pixels: np.ndarray) -> Scored:
        scored: Scored = await self._handle.score.remote(ref, pixels)
        return scored

    async def score_alone(self, ref: ModelRef, pixels: np.ndarray) -> Scored:
        scored: Scored = await self._handle.score_alone.remote(ref, pixels)
        return scored

    async def check(self, ref: ModelRef) -> None:
        await self._handle.check.remote(ref)

    async def loaded(self) -> list[ModelRef]:
        refs: list[ModelRef] = await self._handle.loaded.remote()
        return refs
