"""``ServeConfig``: what ``streamscore serve``, a Serve config file's ``args`` and the tests set.

Everything has a working default except where the models are. ``options`` is the same ``ScoringOptions``
object the batch job takes, so an image scored online is decoded, resized and answered as its batch row is.
Library code takes the admin token from here; entry points (``jobs/serve.py``, ``app_builder``) read it from
the environment.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import ConfigError
from pipeline.options import ScoringOptions
from pipeline.serving.http_body import BodyLimits
from pipeline.serving.routing import RoutingPolicy


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models_dir: str
    options: ScoringOptions = ScoringOptions()
    # Requests scored together in one ONNX Runtime call (``@serve.batch``). None: settled by ``for_cluster``,
    # 16 where a scorer deployment or a GPU is there to fill, and 1 in the fused topology on CPUs, where each
    # request is then scored in the thread that decoded it, with no queue and no thread hand-off between the
    # halves. On CPUs a batch scores no faster per image (the batch benchmark's ORT calls of 1 row were its
    # fastest), and on 2 cores the hand-offs cost 10 requests/s at concurrency 1 and 20 at 64 (measured).
    max_batch_size: int | None = Field(default=None, ge=1)
    # 0: score what has arrived without waiting for more. Under load requests queue while a batch runs, so
    # batches fill anyway; any wait is added to every request when load is light.
    batch_wait_timeout_s: float = Field(default=0.0, ge=0)
    # Large enough that @serve.batch can fill a batch from concurrent requests.
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_request_bytes: int = Field(default=20_000_000, ge=1)
    # Images in one request (V2 or multipart): each is decoded at full size before it is cropped, so a
    # request's memory grows with this count (413 past it).
    max_images_per_request: int = Field(default=64, ge=1)
    # Pixels the images of one request declare together (413 past it): what bounds a request's decode memory.
    max_pixels_per_request: int = Field(default=200_000_000, ge=1)
    # A request's whole body must arrive within this, and after its first second at min_body_bytes_per_s (408
    # otherwise): slow or stalled clients give their slot back. At most max_concurrent_body_reads bodies are
    # read at once per gateway replica, so bodies in memory stay under that many max_request_bytes. Each of
    # them is cut within about a second when it trickles, so a lower cap only makes good clients wait in line
    # behind slow ones (140 clients trickling 1 byte/s held a good request up to 6.2 s with 16; 0.02 s with 64).
    body_timeout_s: float = Field(default=10.0, gt=0)
    min_body_bytes_per_s: float = Field(default=65_536, gt=0)
    max_concurrent_body_reads: int = Field(default=64, ge=1)
    # Requests preprocessed at once per gateway replica (threads; decoders release the GIL). Each holds one
    # decoded image at a time, so decoding memory per replica stays under decode_threads such images.
    decode_threads: int = Field(default=4, ge=1)
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
    # Per model; models without a policy send all traffic to their default version at deploy time.
    routing: dict[str, RoutingPolicy] = Field(default_factory=dict)
    # Shadow work (a policy's shadow version, or the stable version beside a guarded canary) waiting per gateway
    # replica: past either bound a request is not shadowed (counted as dropped), so shadowing never delays or
    # fails a client and holds at most this many encoded bytes.
    max_shadow_requests: int = Field(default=16, ge=1)
    max_shadow_bytes: int = Field(default=32_000_000, ge=1)
    # Where the control plane keeps its decisions (routing set through the admin API, guards, halts): a file
    # on any filesystem pyarrow reads, one per app. They then outlive its replica, and a guard's halt outlives
    # a new deploy (pipeline/serving/control_store.py). None: in the replica's memory only.
    control_state_uri: str | None = None
    # Admin API bearer token. None: the admin API answers 403.
    admin_token: str | None = None
    # Serve's access log line per request, from every gateway replica. Off by default: the app's own
    # /metrics count every request by model, version, route and status, and formatting a log record on the
    # replica's event loop for each request cost about 4 % of its time there (profiled under load).
    access_log: bool = False

    @model_validator(mode="after")
    def _scorer_settings_need_a_scorer(self) -> ServeConfig:
        if self.topology == "fused" and (self.scorer_replicas or self.scorer_autoscaling):
            raise ConfigError("scorer_replicas and scorer_autoscaling size the Scorer of the split topology")
        return self

    def body_limits(self) -> BodyLimits:
        return BodyLimits(
            max_bytes=self.max_request_bytes, timeout_s=self.body_timeout_s, min_bytes_per_s=self.min_body_bytes_per_s
        )

    def for_cluster(self, resources: dict[str, float]) -> ServeConfig:
        """This config with GPUs, topology and replica counts settled for a cluster's ``resources`` (as
        ``ray.cluster_resources()`` gives them); what the user set wins.

        Auto picks split when the cluster has GPUs or the scorer is sized on its own (and batches of up to 16
        requests; fused on CPUs, none). Fused: one replica per
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
        max_batch_size = self.max_batch_size or (16 if topology == "split" or scorer_gpus > 0 else 1)
        settled = {
            "scorer_gpus": scorer_gpus,
            "topology": topology,
            "replicas": replicas,
            "max_batch_size": max_batch_size,
        }
        return self.model_copy(update=settled | {"scorer_replicas": scorer_replicas})
