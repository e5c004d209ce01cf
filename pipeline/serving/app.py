"""The Serve app, built from a ``ServeConfig``: gateway (HTTP + preprocessing) -> scorer, or one fused gateway.

The two halves of the batch job's graph run where they fit: the gateway decodes and crops (``graph.preprocess``,
uint8 pixels out) next to the HTTP parsing it already does; the scorer batches concurrent requests and runs
``graph.inference``. Split, they are separate deployments that scale apart (GPUs); fused, each gateway replica
scores in its own process (CPUs only, one hop fewer). Two small deployments hold app-wide state: the control
plane (routing, version states) and the metrics hub. Graphs are built from the same model repository and
``ScoringOptions`` as the batch job, so the same image gives the same answer.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from common.errors import ConfigError, StreamScoreError
from pipeline.models.repository import ModelRepository
from pipeline.serving.config import ServeConfig
from pipeline.serving.control import ControlPlane
from pipeline.serving.control_store import check_deployable, new_deploy_id
from pipeline.serving.gateway import Gateway
from pipeline.serving.grpc_v2 import SERVICER
from pipeline.serving.metrics import MetricsHub
from pipeline.serving.routing import RoutingPolicy, check_fits_cache, scored_versions
from pipeline.serving.scorer import Scorer

logger = logging.getLogger(__name__)
APP_NAME = "streamscore"  # the Serve application's name, as `serve status` shows it


def build_app(config: ServeConfig) -> Any:
    """The application, settled for the connected cluster (``ServeConfig.for_cluster``); bind only,
    ``serve.run`` deploys it."""
    import ray
    from ray.serve.config import BackpressureConfig

    config = config.for_cluster(ray.cluster_resources())

    def scaling(autoscaling: dict[str, Any] | None, replicas: int | None) -> dict[str, Any]:
        return {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": replicas}

    limits = {
        "max_ongoing_requests": config.max_ongoing_requests,
        "max_queued_requests": config.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=1),
    }
    routing = routing_with_defaults_pinned(config)
    check_fits_cache(routing, config.max_cached_versions)  # shadow and stable versions count
    if config.control_state_uri:  # the guard's halts outlive deploys: refused here what they would leave unserved
        check_deployable(routing, config.control_state_uri)
    warm = scored_versions(routing)
    # One id per deploy: a control plane that Serve restarts gets the same and restores all it had saved.
    control = ControlPlane.bind(routing, config.control_state_uri, new_deploy_id())  # type: ignore[attr-defined]
    hub = MetricsHub.bind()  # type: ignore[attr-defined]
    logging = {"logging_config": {"enable_access_log": config.access_log}}
    gateway = Gateway.options(**limits, **logging, **scaling(config.preprocess_autoscaling, config.replicas))  # type: ignore[attr-defined]
    if config.topology == "fused":  # the gateway scores in its own replica
        resources = {"num_cpus": config.preprocess_cpus + config.scorer_cpus, "num_gpus": config.scorer_gpus}
        return gateway.options(ray_actor_options=resources).bind(config, None, control, hub, warm)
    scorer = Scorer.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": config.scorer_cpus, "num_gpus": config.scorer_gpus},
        **limits,
        **scaling(config.scorer_autoscaling, config.scorer_replicas),
    ).bind(config, warm)
    return gateway.options(ray_actor_options={"num_cpus": config.preprocess_cpus}).bind(
        config, scorer, control, hub, warm
    )


def routing_with_defaults_pinned(config: ServeConfig) -> dict[str, RoutingPolicy]:
    """The configured routing, plus each other model's default version at deploy time (what ``NAME`` means for
    every command: ``ModelRepository.resolve_version``) taking all its traffic.

    Pinned, a version added to the repository later takes traffic only after ``admin load`` has checked it
    and the routing names it (an explicit version in the request still reaches it).
    """
    repository = ModelRepository(config.models_dir)
    for name, policy in config.routing.items():  # checked here, on the driver, not in a replica at deploy
        missing = sorted(policy.versions() - set(repository.versions(name)))
        if missing:
            raise ConfigError(f"routing for {name!r} names versions {missing} that are not in {config.models_dir}")
    pinned = {}
    for name in repository.names():
        if name in config.routing:
            continue
        try:
            pinned[name] = RoutingPolicy(weights={repository.resolve_version(name, None): 100})
        except StreamScoreError as exc:  # several named versions and no default, or a damaged pointer
            logger.warning("%s is served only where a request names its version: %s", name, exc)
    return pinned | dict(config.routing)


def deploy(config: ServeConfig, host: str, port: int, grpc_port: int | None = None) -> None:
    """Start Serve's HTTP ingress (HAProxy where ``use_fast_ingress`` set it up) on ``host:port``, and its gRPC
    ingress with the V2 service on ``grpc_port`` when given, and deploy the app at ``/`` (Ray must be
    connected)."""
    from ray.serve.config import gRPCOptions

    grpc = gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER]) if grpc_port is not None else None
    serve.start(http_options={"host": host, "port": port}, grpc_options=grpc)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
