"""Resource plans derived from cluster sizes: never starve read tasks, never oversubscribe, overridable."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from pipeline.runs.planner import ResourceOverrides, plan_resources

CLUSTERS = [{"CPU": 1.0}, {"CPU": 2.0}, {"CPU": 8.0}, {"CPU": 16.0, "GPU": 1.0}, {"CPU": 64.0, "GPU": 8.0}]


def _actor_cpus(plan) -> float:  # type: ignore[no-untyped-def]
    return (
        plan.preprocess_actors * plan.cpus_per_preprocess_actor + plan.inference_actors * plan.cpus_per_inference_actor
    )


@pytest.mark.parametrize("cluster", CLUSTERS, ids=str)
@pytest.mark.parametrize("layout", ["auto", "fused", "split"])
def test_actors_always_leave_room_for_read_and_write_tasks(cluster: dict[str, float], layout: str) -> None:
    plan = plan_resources(cluster, ResourceOverrides(layout=layout))
    free = cluster["CPU"] - _actor_cpus(plan)
    assert free >= plan.io_task_cpus > 0, plan
    assert plan.inference_actors * plan.gpus_per_inference_actor <= cluster.get("GPU", 0)


@pytest.mark.parametrize("cluster", CLUSTERS, ids=str)
def test_ort_threads_never_exceed_the_cpus_an_actor_holds(cluster: dict[str, float]) -> None:
    plan = plan_resources(cluster)
    if plan.device == "cpu":
        assert plan.ort_threads <= max(1, plan.cpus_per_inference_actor + 1e-9)


def test_gpus_choose_split_and_cuda_cpu_only_chooses_fused() -> None:
    assert plan_resources({"CPU": 16, "GPU": 2}).layout == "split"
    assert plan_resources({"CPU": 16, "GPU": 2}).device == "cuda"
    assert plan_resources({"CPU": 16, "GPU": 2}).inference_actors == 2
    cpu = plan_resources({"CPU": 2})
    assert (cpu.layout, cpu.device, cpu.inference_actors, cpu.ort_threads) == ("fused", "cpu", 2, 1)


def test_overrides_win_and_impossible_ones_are_refused() -> None:
    plan = plan_resources({"CPU": 8}, ResourceOverrides(batch_size=7, inference_actors=3, ort_threads=2))
    assert (plan.batch_size, plan.inference_actors, plan.ort_threads) == (7, 3, 2)
    with pytest.raises(ConfigError, match="usable"):
        plan_resources({"CPU": 2}, ResourceOverrides(inference_actors=2, cpus_per_inference_actor=1.0))
    with pytest.raises(ConfigError, match="GPUs"):
        plan_resources({"CPU": 8}, ResourceOverrides(layout="split", gpus_per_inference_actor=1.0))
