"""Serving settings without a running app: the version cache, layouts settled from the cluster, ports."""

from __future__ import annotations

from typing import Any

import pytest

from tests.serving import MODEL


def test_graph_cache_holds_the_least_recently_used_versions_up_to_its_capacity(repository) -> None:  # type: ignore[no-untyped-def]
    from pipeline.models.ref import ModelRef
    from pipeline.serving.config import ServeConfig
    from pipeline.serving.scorer import GraphCache

    digits, lite0 = ModelRef(name="digits", version="1"), ModelRef(name=MODEL, version="1")
    cache = GraphCache(ServeConfig(models_dir=repository.root, max_cached_versions=2), "inference")
    first, _ = cache.get(digits)
    cache.get(lite0)
    assert cache.cached() == [digits, lite0]
    assert cache.get(digits)[0] is first  # a hit reuses the built graph and becomes most recent
    assert cache.cached() == [lite0, digits]
    small = GraphCache(ServeConfig(models_dir=repository.root, max_cached_versions=1), "preprocess")
    small.get(digits)
    small.get(lite0)
    assert small.cached() == [lite0]  # the least recently used went


def test_cluster_nodes_start_ray_with_the_fast_ingress_switches() -> None:
    """Ray reads them at `ray start`: cluster.yaml must set every one on the head and on the workers."""
    import yaml

    from jobs.ingress import FAST_INGRESS
    from tests.conftest import REPO

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert all(f"{name}={value}" in start for name, value in FAST_INGRESS.items()), start


def test_layout_is_settled_from_the_cluster_and_what_the_user_set_wins() -> None:
    from common.errors import ConfigError
    from pipeline.serving.config import ServeConfig

    def settled(resources: dict[str, float], **settings: Any) -> tuple:
        c = ServeConfig(models_dir="models", **settings).for_cluster(resources)
        return c.topology, c.scorer_gpus, c.replicas, c.scorer_replicas, c.max_batch_size

    # Fused on CPUs: one replica per CPU, as batch actors, each request scored where it was decoded (no batches).
    assert settled({"CPU": 2.0}) == ("fused", 0.0, 2, None, 1)
    assert settled({"CPU": 2.0}, max_batch_size=8) == ("fused", 0.0, 2, None, 8)
    assert settled({"CPU": 16.0, "GPU": 2.0}) == ("split", 1.0, 15, 2, 16)  # a scorer per GPU, gateways on the rest
    assert settled({"CPU": 8.0, "GPU": 1.0}, scorer_gpus=0.5) == ("split", 0.5, 7, 2, 16)
    assert settled({"CPU": 8.0, "GPU": 1.0}, scorer_gpus=0) == ("fused", 0, 8, None, 1)  # GPUs left alone
    assert settled({"CPU": 8.0}, topology="split", replicas=3) == ("split", 0.0, 3, 1, 16)
    assert settled({"CPU": 8.0}, preprocess_cpus=1, scorer_cpus=1) == ("fused", 0.0, 4, None, 1)
    assert settled({"CPU": 8.0}, scorer_replicas=2) == ("split", 0.0, 7, 2, 16)  # a scorer sized apart: split
    with pytest.raises(ConfigError, match="split topology"):
        ServeConfig(models_dir="models", topology="fused", scorer_autoscaling={"min_replicas": 1, "max_replicas": 4})


def test_app_ports_that_serve_takes_for_itself_are_refused() -> None:
    from common.errors import ConfigError
    from jobs.ingress import check_port, free_app_port

    check_port(8000)
    with pytest.raises(ConfigError, match="fallback HTTP proxy"):
        check_port(8500)
    with pytest.raises(ConfigError, match="ports 30000-31000"):
        check_port(30500)
    check_port(free_app_port())


def test_the_app_is_refused_on_the_driver_when_its_routing_cannot_work(ray_cluster, served_repository) -> None:  # type: ignore[no-untyped-def]
    """Before any replica starts: routed versions that a replica cannot hold all at once, or that do not exist."""
    from common.errors import ConfigError
    from pipeline.serving.app import build_app
    from pipeline.serving.config import ServeConfig
    from tests.serving import ROUTING

    with pytest.raises(ConfigError, match="sends traffic to 4 versions .* max_cached_versions=2"):
        build_app(ServeConfig(models_dir=str(served_repository), routing=ROUTING, max_cached_versions=2))
    with pytest.raises(ConfigError, match=r"routing for 'digits' names versions \['9'\]"):
        build_app(ServeConfig(models_dir=str(served_repository), routing={"digits": {"weights": {"9": 1}}}))
