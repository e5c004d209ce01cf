"""The Serve app: a gateway that takes HTTP and preprocesses (CPU), and a scorer that runs the model.

The two halves of the batch job's graph run in separate deployments so each scales on its own: the gateway
decodes and crops (``graph.preprocess``, uint8 pixels out) next to the HTTP parsing it already does, the scorer
batches concurrent requests with ``@serve.batch`` and runs ``graph.inference`` (normalize, ONNX Runtime, top-k).
One hop per request: a separate preprocessing deployment between them cost 3 ms more per request, measured.
Graphs are built from the same model repository and ``GraphSpec`` as the batch job, so the same image gives the
same answer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from operators.base import ERROR, object_array
from pipeline.graph import Graph, Stage, graph_for_model
from pipeline.models import ModelRepository
from pipeline.output import predictions_table
from pipeline.serving.routing import RoutingPolicy
from pipeline.spec import GraphSpec

logger = logging.getLogger(__name__)


class ServeConfig(BaseModel):
    """What ``streamscore serve`` and the Serve config file set; everything has a working default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models_dir: str = "models"
    top_k: int = Field(default=5, ge=1)
    max_batch_size: int = Field(default=16, ge=1)
    # 0: score what has arrived without waiting for more. Under load requests queue while a batch runs, so
    # batches fill anyway; any wait is added to every request when load is light.
    batch_wait_timeout_s: float = Field(default=0.0, ge=0)
    # Large enough that @serve.batch can fill a batch from concurrent requests.
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_request_bytes: int = Field(default=20_000_000, ge=1)
    # Past this many waiting requests a deployment refuses more (503 + Retry-After), instead of queueing
    # without bound; each request may also take at most request_timeout_s (504).
    max_queued_requests: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_cached_versions: int = Field(default=4, ge=1)
    # The gateway's CPUs, replicas and autoscaling are preprocessing's: it decodes and crops.
    preprocess_cpus: float = Field(default=0.5, gt=0)
    scorer_cpus: float = Field(default=0.5, gt=0)
    # None: one GPU per scorer replica when the cluster has GPUs, else none.
    scorer_gpus: float | None = Field(default=None, ge=0)
    # "split": preprocessing (in the gateway) and scoring in separate deployments, each scaling on its own;
    # "fused": one deployment does both, saving a hop between replicas (3-5 ms a request, measured on 2 cores).
    # "auto": split when the scorer takes GPUs, fused on CPUs only (where both halves share the same cores
    # anyway), as the batch planner does.
    topology: Literal["auto", "split", "fused"] = "auto"
    # Replicas when there is no autoscaling config. None: derived from the cluster by ``for_cluster``.
    replicas: int | None = Field(default=None, ge=1)  # the gateway's
    scorer_replicas: int | None = Field(default=None, ge=1)  # split only
    # Serve autoscaling_config dicts (min_replicas, max_replicas, target_ongoing_requests, ...) per deployment;
    # they replace the replica counts. Preprocessing and scoring scale apart, e.g. CPUs for decoding, GPUs for
    # the model.
    preprocess_autoscaling: dict[str, Any] | None = None
    scorer_autoscaling: dict[str, Any] | None = None
    # Per model; models without a policy get their latest version.
    routing: dict[str, RoutingPolicy] = Field(default_factory=dict)
    # Admin API bearer token; STREAMSCORE_ADMIN_TOKEN in the gateway's environment wins. None: admin disabled.
    admin_token: str | None = None

    @model_validator(mode="after")
    def _scorer_settings_need_a_scorer(self) -> ServeConfig:
        if self.topology == "fused" and (self.scorer_replicas or self.scorer_autoscaling):
            raise ValueError("scorer_replicas and scorer_autoscaling size the Scorer of the split topology")
        return self

    def for_cluster(self, resources: dict[str, float]) -> ServeConfig:
        """This config with GPUs, topology and replica counts settled for a cluster's ``resources`` (as
        ``ray.cluster_resources()`` gives them); what the user set wins.

        Auto picks split when the cluster has GPUs or the scorer is sized on its own. Fused: one replica per
        ``preprocess_cpus + scorer_cpus`` CPUs, each running one ONNX Runtime thread as a
        batch actor does (on 2 cores two replicas answered 98 requests/s where one answered 67). Split: one
        scorer per ``scorer_gpus`` GPUs (one on CPUs only) and one gateway per CPU the scorers leave.
        """
        cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
        scorer_gpus = self.scorer_gpus if self.scorer_gpus is not None else (1.0 if gpus >= 1 else 0.0)
        wants_split = scorer_gpus > 0 or self.scorer_replicas or self.scorer_autoscaling  # a scorer to size
        topology = self.topology if self.topology != "auto" else ("split" if wants_split else "fused")
        if topology == "fused":
            replicas = self.replicas or max(1, int(cpus // (self.preprocess_cpus + self.scorer_cpus)))
            if scorer_gpus > 0 and not self.replicas:  # each replica also holds its share of a GPU
                replicas = max(1, min(replicas, int(gpus // scorer_gpus)))
            scorer_replicas = None
        else:
            scorer_replicas = self.scorer_replicas or (max(1, int(gpus // scorer_gpus)) if scorer_gpus > 0 else 1)
            replicas = self.replicas or max(1, int(cpus - scorer_replicas * self.scorer_cpus))
        settled = {"scorer_gpus": scorer_gpus, "topology": topology, "replicas": replicas}
        return self.model_copy(update=settled | {"scorer_replicas": scorer_replicas})


class GraphCache:
    """One half of the graph (``"preprocess"`` or ``"inference"``) per ``name:version``, built on first use;
    the least recently used go past ``capacity``. Each deployment builds only its half: the gateway reads the
    manifest and labels but never opens an ONNX Runtime session (the scorer checks the graph). Thread-safe:
    the gateway preprocesses in worker threads; a version being built never holds up the others."""

    def __init__(self, config: ServeConfig, half: str, device: str = "cpu") -> None:
        self._repository = ModelRepository(config.models_dir)
        self._spec = GraphSpec(model="unused", top_k=config.top_k)
        self._half, self._device = half, device
        self._capacity = config.max_cached_versions
        self._entries: collections.OrderedDict[str, tuple[Graph, Stage]] = collections.OrderedDict()
        self._lock = threading.Lock()  # guards _entries and _building, held only briefly
        self._building: dict[str, threading.Lock] = {}

    def get(self, model_ref: str) -> tuple[Graph, Stage]:
        with self._lock:
            if model_ref in self._entries:
                self._entries.move_to_end(model_ref)
                return self._entries[model_ref]
            building = self._building.setdefault(model_ref, threading.Lock())
        with building:  # one build per version; requests for it wait, the rest go on
            with self._lock:
                if model_ref in self._entries:
                    return self._entries[model_ref]
            entry = self._build(model_ref)
            with self._lock:
                self._entries[model_ref] = entry
                self._building.pop(model_ref, None)
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
            return entry

    def _build(self, model_ref: str) -> tuple[Graph, Stage]:
        model = self._repository.load(model_ref, check_graph=self._half == "inference")
        graph = graph_for_model(self._spec.model_copy(update={"model": model_ref}), model).on_device(self._device)
        return graph, Stage(getattr(graph, self._half))

    def cached(self) -> list[str]:
        """The versions held now, least recently used first."""
        with self._lock:
            return list(self._entries)


# (rows of the prediction table or None, requests that shared the batch, error or None)
Scored = tuple[pa.Table | None, int, str | None]


class ModelScorer:
    """Pixels -> prediction tables; concurrent requests are scored together, grouped by model version.

    ``Scorer`` is this class as a deployment (split topology); a fused gateway holds one in its own replica.
    """

    def __init__(self, config: ServeConfig) -> None:
        self._graphs = GraphCache(config, "inference", "cuda" if config.scorer_gpus else "cpu")
        # Ray's stubs for @serve.batch know one-argument methods only, hence the ignores below.
        self.score.set_max_batch_size(config.max_batch_size)  # type: ignore[misc, attr-defined]
        self.score.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[misc, attr-defined]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)  # type: ignore[arg-type]
    async def score(self, model_refs: list[str], pixels: list[np.ndarray]) -> list[Scored]:  # type: ignore[misc]
        """Each request gets its rows of the prediction table, how many requests shared its batch, and an error
        (None when scored). A version that fails fails only its own requests, not the batch."""
        results: list[Scored] = [(None, len(model_refs), None)] * len(model_refs)
        for ref in dict.fromkeys(model_refs):
            members = [i for i, r in enumerate(model_refs) if r == ref]
            try:
                table = await asyncio.to_thread(self._run, ref, np.concatenate([pixels[i] for i in members]))
            except Exception as exc:  # noqa: BLE001 - reported to each of this version's requests
                logger.exception("scoring %s failed", ref)
                for i in members:
                    results[i] = (None, len(model_refs), f"{type(exc).__name__}: {exc}"[:500])
                continue
            offset = 0
            for i in members:
                results[i] = (table.slice(offset, len(pixels[i])), len(model_refs), None)
                offset += len(pixels[i])
        return results

    def check(self, model_ref: str) -> None:
        """Load ``model_ref`` and score a warm-up batch; raise unless every output is finite."""
        graph, _ = self._graphs.get(model_ref)
        spec = graph.model.manifest.input
        warm_up = np.random.default_rng(0).integers(0, 256, (2, spec.height, spec.width, spec.channels), np.uint8)
        scores = self._run(model_ref, warm_up).column("score").to_numpy(zero_copy_only=False)
        if not np.isfinite(scores).all():
            raise ValueError(f"{model_ref} gave non-finite scores on its warm-up batch")

    def loaded(self) -> list[str]:
        """The versions this replica holds (least recently used first); at most ``max_cached_versions``."""
        return self._graphs.cached()

    def _run(self, model_ref: str, pixels: np.ndarray) -> pa.Table:
        """Score ``pixels``; raise if any row failed (the infer operator turns a failed ONNX Runtime call into
        error rows, which a batch job keeps and a request must not answer with)."""
        graph, inference = self._graphs.get(model_ref)
        n = len(pixels)
        batch = {"id": object_array([str(i) for i in range(n)]), "pixels": pixels, ERROR: np.full(n, None, object)}
        table = predictions_table(inference(batch), graph.model)
        errors = table.column(ERROR).drop_null()
        if len(errors):
            raise RuntimeError(errors[0].as_py())
        return table


Scorer = serve.deployment(ModelScorer, name="Scorer")


def build_app(config: ServeConfig) -> Any:
    """The application graph: gateway (HTTP + preprocessing) -> scorer, or one fused gateway, settled for the
    connected cluster (``ServeConfig.for_cluster``); bind only, ``serve.run`` deploys it."""
    import ray
    from ray.serve.config import BackpressureConfig

    from pipeline.serving.control import ControlPlane
    from pipeline.serving.gateway import Gateway

    config = config.for_cluster(ray.cluster_resources())

    def scaling(autoscaling: dict[str, Any] | None, replicas: int | None) -> dict[str, Any]:
        return {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": replicas}

    limits = {
        "max_ongoing_requests": config.max_ongoing_requests,
        "max_queued_requests": config.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=1),
    }
    control = ControlPlane.bind(_routing_with_latest_pinned(config))  # type: ignore[attr-defined]
    gateway = Gateway.options(**limits, **scaling(config.preprocess_autoscaling, config.replicas))  # type: ignore[attr-defined]
    if config.topology == "fused":  # the gateway scores in its own replica
        resources = {"num_cpus": config.preprocess_cpus + config.scorer_cpus, "num_gpus": config.scorer_gpus}
        return gateway.options(ray_actor_options=resources).bind(config, None, control)
    scorer = Scorer.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": config.scorer_cpus, "num_gpus": config.scorer_gpus},
        **limits,
        **scaling(config.scorer_autoscaling, config.scorer_replicas),
    ).bind(config)
    return gateway.options(ray_actor_options={"num_cpus": config.preprocess_cpus}).bind(config, scorer, control)


def _routing_with_latest_pinned(config: ServeConfig) -> dict[str, RoutingPolicy]:
    """The configured routing, plus each other model's latest version at deploy time taking all its traffic.

    Pinned, a version added to the repository later takes traffic only after ``admin load`` has checked it
    and the routing names it (an explicit version in the request still reaches it).
    """
    repository = ModelRepository(config.models_dir)
    pinned = {
        name: RoutingPolicy(weights={repository.resolve_version(name, None): 100})
        for name in repository.names()
        if name not in config.routing
    }
    return pinned | dict(config.routing)


def deploy(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start Serve's HTTP ingress (HAProxy where ``use_fast_ingress`` set it up) on ``host:port`` and deploy
    the app at ``/`` (Ray must be connected)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name="streamscore", route_prefix="/")


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve run pipeline.serving.app:app_builder models_dir=models`` and Serve config files."""
    return build_app(ServeConfig(**args))
