"""The Serve app's Kubernetes manifests, checked offline against what reads them, and the dashboard against the app.

deploy/rayservice.yaml goes through KubeRay v1.7.0's RayService CRD (tests/schemas/) with the validators of
tests/test_deploy_manifests.py; its serveConfigV2 through Ray Serve's own schema, ``ServeConfig`` and a diff
against jobs/serve_config.yaml; its ports and env against jobs/ingress.py. deploy/prometheus.yaml is checked
against the labels and port names KubeRay puts on the RayService's pods and Services, and every metric that
deploy/grafana-dashboard.json queries is looked up in the live app's ``/metrics`` (the session's ``server``).
"""

from __future__ import annotations

import copy
import functools
import json
import operator
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import REPO, wait_for
from tests.test_deploy_manifests import ROLE, check_kuberay, check_kubernetes, check_labels, load

RAYSERVICE = "deploy/rayservice.yaml"
# KubeRay v1.7.0 (controllers/ray/utils/constant.go): the cluster is <name>-<5 chars> in at most 53 characters.
MAX_RAYSERVICE_NAME = 47
# The labels KubeRay v1.7.0 puts on every Ray pod (common/pod.go, labelPod) and on the serve Service
# (common/service.go, BuildServeService: ray.io/serve=<RayService name>-serve).
KUBERAY_POD_LABELS = {"ray.io/cluster", "ray.io/node-type", "ray.io/group", "ray.io/is-ray-node"}
KUBERAY_SERVICE_LABELS = {"ray.io/serve", "ray.io/originated-from-cr-name", "ray.io/originated-from-crd"}
# What serveConfigV2 adds to jobs/serve_config.yaml: the models baked into the image, and the deployments sized
# up front (KubeRay deploys before the workers join; test_the_app_is_sized_for_the_whole_cluster).
IMAGE_MODELS_DIR = "/app/models"
SIZES = ("topology", "scorer_gpus", "scorer_replicas", "replicas")
GRPC_PORT = 9000
# Metrics the dashboard reads from Ray's metrics agent (every Ray pod's "metrics" port; Ray adds the ray_
# prefix), not from the app's /metrics: where Ray defines each, to be found in the installed Ray.
RAY_AGENT_METRICS = {
    "ray_serve_deployment_replica_healthy": "ray/serve/_private/deployment_state.py",
    "ray_serve_replica_processing_queries": "ray/serve/_private/replica.py",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def serve_config(doc: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def app_args(doc: dict[str, Any]) -> dict[str, Any]:
    [app] = serve_config(doc)["applications"]
    return dict(app["args"])


def ray_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = doc["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [group["template"]["spec"]["containers"][0] for group in groups]  # KubeRay's Ray container: the first


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def cluster_resources(doc: dict[str, Any]) -> dict[str, float]:
    """What ``ray.cluster_resources()`` shows once every pod has joined: Ray counts CPUs from the limit (or
    num-cpus) and GPUs from nvidia.com/gpu."""
    cluster = doc["spec"]["rayClusterConfig"]
    head_cpus = float(cluster["headGroupSpec"]["rayStartParams"].get("num-cpus", "nan"))
    cpus, gpus = head_cpus, 0.0
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus += group["replicas"] * float(limits["cpu"])
        gpus += group["replicas"] * float(limits.get("nvidia.com/gpu", 0))
    return {"CPU": cpus, "GPU": gpus}


def settled(config: Any, resources: dict[str, float]) -> dict[str, Any]:
    return config.for_cluster(resources).model_dump(include={*SIZES, "max_batch_size"})


# ---------------------------------------------------------------- the checks (each raises on a broken manifest)
def check_ports(doc: dict[str, Any]) -> None:
    """serveConfigV2's HTTP and gRPC ports are the ports named serve and serve-grpc on every Ray container (KubeRay
    puts the head's on the serve Service and probes the workers' serve port) and on the serve Service, and no
    port Serve keeps for itself in HAProxy mode."""
    from jobs.ingress import check_port

    config = serve_config(doc)
    wanted = {"serve": config["http_options"]["port"], "serve-grpc": config["grpc_options"]["port"]}
    for container in ray_containers(doc):
        found = ports(container)
        assert {name: found.get(name) for name in wanted} == wanted, (container["name"], found)
        assert found.get("metrics") == 8080, container["name"]  # KubeRay's --metrics-export-port
    head = ports(ray_containers(doc)[0])
    assert {"gcs-server", "dashboard", "client"} <= set(head), "given ports replace KubeRay's defaults"
    service_ports = {p["name"]: p["port"] for p in doc["spec"]["serveService"]["spec"]["ports"]}
    assert service_ports == wanted, service_ports
    for port in wanted.values():
        check_port(port)


def check_env(doc: dict[str, Any]) -> None:
    """Every Ray container starts Ray with jobs/ingress.py's settings, as cluster.yaml's start commands do."""
    import os

    from jobs.ingress import FAST_INGRESS, limit_grpc_messages
    from jobs.serve import ADMIN_TOKEN_ENV
    from pipeline.serving.config import ServeConfig

    max_request_bytes = ServeConfig(**app_args(doc)).max_request_bytes
    saved = os.environ.pop("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", None)
    try:
        limit_grpc_messages(max_request_bytes)
        grpc_limit = os.environ["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"]
    finally:
        os.environ.pop("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE")
        if saved is not None:
            os.environ["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] = saved
    wanted = FAST_INGRESS | {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": grpc_limit}
    for container in ray_containers(doc):
        env = {e["name"]: e for e in container["env"]}
        assert {name: env.get(name, {}).get("value") for name in wanted} == wanted, container["name"]
        assert env[ADMIN_TOKEN_ENV]["valueFrom"]["secretKeyRef"]["key"], "the admin token comes from a Secret"


# ---------------------------------------------------------------- the RayService
def test_rayservice_matches_kuberays_crd() -> None:
    doc = load(RAYSERVICE)
    check_kuberay(doc)
    name = doc["metadata"]["name"]
    assert len(name) <= MAX_RAYSERVICE_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    check_kubernetes(  # the serve Service KubeRay builds from serveService, as the API server will take it
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"{name}-serve-svc"},
            **doc["spec"]["serveService"],
        }
    )


def test_serve_config_is_jobs_serve_config_plus_what_kubernetes_needs() -> None:
    """serveConfigV2 is jobs/serve_config.yaml with gRPC on (unless that file has it already), the image's models
    and the deployments' sizes: nothing else may drift between them."""
    from ray._common.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    from pipeline.serving.app import APP_NAME
    from pipeline.serving.config import ServeConfig
    from pipeline.serving.grpc_v2 import SERVICER

    config = serve_config(load(RAYSERVICE))
    ServeDeploySchema.model_validate(config)
    expected = load("jobs/serve_config.yaml")
    expected.setdefault("grpc_options", {"port": GRPC_PORT, "grpc_servicer_functions": [SERVICER]})
    [app] = expected["applications"]
    app["args"] = (
        app["args"]
        | {"models_dir": IMAGE_MODELS_DIR}
        | {k: v for k, v in app_args(load(RAYSERVICE)).items() if k in SIZES}
    )
    assert config == expected
    assert config["grpc_options"]["grpc_servicer_functions"] == [SERVICER]  # what `streamscore serve` registers
    assert app["name"] == APP_NAME and callable(import_attr(app["import_path"]))
    assert set(SIZES) <= set(app["args"])
    ServeConfig(**app["args"])  # extra="forbid": a misspelt argument fails here, not in a replica


def test_the_app_is_sized_for_the_whole_cluster_whatever_has_joined() -> None:
    """KubeRay deploys the app once the head pod is ready; sized from the cluster it would see the head alone. The
    sizes in serveConfigV2 are what the app derives for the whole cluster, and hold whatever has joined."""
    from pipeline.serving.config import ServeConfig

    doc = load(RAYSERVICE)
    args, resources = app_args(doc), cluster_resources(doc)
    derived = ServeConfig(**{k: v for k, v in args.items() if k not in SIZES})
    assert settled(ServeConfig(**args), {"CPU": 0.0}) == settled(derived, resources)
    assert args["scorer_replicas"] * args["scorer_gpus"] == resources["GPU"] >= 1


def test_ports_and_env_are_the_ones_serve_needs() -> None:
    doc = load(RAYSERVICE)
    check_ports(doc)
    check_env(doc)
    rayjob_image = load("deploy/nightly-rayjob.yaml")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {c["image"] for c in ray_containers(doc)} == {rayjob_image["containers"][0]["image"]}  # one image name


def test_a_cpu_and_a_gpu_worker_group_of_fixed_size() -> None:
    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # replicas stay off the head
    groups = cluster["workerGroupSpecs"]
    assert sorted(g["labels"][ROLE] for g in groups) == ["decode", "inference"]
    assert not cluster["enableInTreeAutoscaling"]
    for group in groups:
        check_labels(group["labels"])
        assert "labels" not in group["rayStartParams"]  # KubeRay refuses them there
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"] >= 1, group["groupName"]
        spec = group["template"]["spec"]
        gpus = int(spec["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        assert (gpus >= 1) == (group["labels"][ROLE] == "inference"), (group["groupName"], gpus)
        tolerated = {t["key"] for t in spec.get("tolerations", [])}
        assert ("nvidia.com/gpu" in tolerated) == (gpus >= 1), group["groupName"]


def test_upgrades_bring_up_a_new_cluster_and_let_the_old_one_finish() -> None:
    from pipeline.serving.config import ServeConfig

    spec = load(RAYSERVICE)["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}  # the reason is in the manifest
    assert spec["rayClusterDeletionDelaySeconds"] > ServeConfig(**app_args(load(RAYSERVICE))).request_timeout_s


def _wrong_port(doc: dict[str, Any]) -> None:
    ray_containers(doc)[2]["ports"] = [
        {**p, "containerPort": 8001} if p["name"] == "serve" else p for p in ray_containers(doc)[2]["ports"]
    ]


@pytest.mark.parametrize(
    ("check", "field"),
    [
        (check_kuberay, ["spec", "upgradeStrategy"]),
        (check_kuberay, ["spec", "rayClusterConfig", "workerGroupSpecs", 1, "template", "spec", "tolerations"]),
        (check_kuberay, ["spec", "serveService", "spec", "ports", 1, "appProtocol"]),
    ],
)
def test_a_misspelt_field_fails_validation(check: Any, field: list[Any]) -> None:
    doc = load(RAYSERVICE)
    *parents, key = field
    parent = functools.reduce(operator.getitem, parents, doc)
    parent[key[:-1]] = parent.pop(key)
    with pytest.raises(jsonschema.ValidationError, match=rf"\b{key[:-1]}\b"):
        check(doc)


@pytest.mark.parametrize(
    ("check", "breaks"),
    [
        (check_ports, _wrong_port),
        (
            check_ports,
            lambda doc: doc["spec"].update(serveConfigV2=doc["spec"]["serveConfigV2"].replace("9000", "9001")),
        ),
        (check_env, lambda doc: ray_containers(doc)[1]["env"].pop(0)),
    ],
)
def test_a_wrong_port_or_a_missing_setting_fails(check: Any, breaks: Any) -> None:
    doc = copy.deepcopy(load(RAYSERVICE))
    breaks(doc)
    with pytest.raises(AssertionError):
        check(doc)


# ---------------------------------------------------------------- Prometheus
def test_prometheus_finds_the_serve_service_and_the_ray_pods_by_kuberays_labels() -> None:
    doc, config = load(RAYSERVICE), load("deploy/prometheus.yaml")
    name = doc["metadata"]["name"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sanitized = {re.sub(r"[^A-Za-z0-9_]", "_", key) for key in KUBERAY_POD_LABELS | KUBERAY_SERVICE_LABELS}
    for job in jobs.values():
        for rule in job["relabel_configs"]:
            for source in rule["source_labels"]:
                label = re.fullmatch(r"__meta_kubernetes_(?:pod|service)_label_(\w+)", source)
                assert label is None or label[1] in sanitized, source  # a label KubeRay really sets
            re.compile(rule.get("regex", "(.*)"))

    def kept(job: dict[str, Any], source: str, value: str) -> bool:
        rules = [r for r in job["relabel_configs"] if r.get("action") == "keep" and r["source_labels"] == [source]]
        assert rules, (job["job_name"], source)
        return all(re.fullmatch(r["regex"], value) for r in rules)  # Prometheus anchors its regexes

    app, ray = jobs["streamscore-app"], jobs["streamscore-ray"]
    assert [sd["role"] for sd in app["kubernetes_sd_configs"]] == ["service"]  # one target: the totals are app-wide
    assert kept(app, "__meta_kubernetes_service_label_ray_io_serve", f"{name}-serve")
    assert kept(app, "__meta_kubernetes_service_port_name", "serve") and app["metrics_path"] == "/metrics"
    assert [sd["role"] for sd in ray["kubernetes_sd_configs"]] == ["pod"]
    assert kept(ray, "__meta_kubernetes_pod_label_ray_io_cluster", f"{name}-x7k2q")
    assert not kept(ray, "__meta_kubernetes_pod_label_ray_io_cluster", "streamscore-nightly-29500000")
    assert all(
        kept(ray, "__meta_kubernetes_pod_container_port_name", n) == (n == "metrics")
        for n in ports(ray_containers(doc)[0])
    )


# ---------------------------------------------------------------- Grafana
def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values query) reads."""
    expr = re.sub(r"label_values\(\s*([^,{)]+)[^)]*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings, e.g. label values
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", "", expr)  # label matchers, ranges, Grafana variables
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    functions = set(re.findall(r"([A-Za-z_]\w*)\s*\(", expr))
    return set(re.findall(r"[A-Za-z_:][\w:]*", expr)) - functions - PROMQL_WORDS


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return set().union(*map(metric_names, queries))


def exposed_series(text: str) -> set[str]:
    """Series names that a scrape of ``text`` stores: each sample's, and those its declared families give."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"]}
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples} | {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_metric_names_reads_promql() -> None:
    expr = 'histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="y"}[5m]))) / ignoring (s) group_left sum(b_total)'
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert metric_names('label_values(c_total{model=~"$model"}, version)') == {"c_total"}


def test_the_dashboard_has_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads((REPO / "deploy/grafana-dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 39  # Grafana 11 and newer
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


@pytest.mark.parametrize("topology", ["split"], indirect=True)  # the layout the RayService runs (GPU)
def test_every_dashboard_metric_is_in_the_apps_metrics(server: str, photo_jpegs: dict[str, bytes]) -> None:
    """Real requests (one refused) to the live app, then every metric a panel queries is in its /metrics, but for
    the few that Ray's metrics agent exports, each of which the installed Ray must still define."""
    import urllib.request

    import ray

    from tests.serving import MODEL, request_json

    assert request_json(f"{server}/predict/{MODEL}", photo_jpegs["coffee"])[0] == 200
    assert request_json(f"{server}/predict/{MODEL}", b"this is not an image")[0] == 400
    assert request_json(f"{server}/predict/no-such-model", photo_jpegs["coffee"])[0] == 404

    def scrape() -> str:
        with urllib.request.urlopen(f"{server}/metrics", timeout=30) as response:
            return str(response.read().decode())

    wait_for(lambda: 'status="400"' in scrape() and "streamscore_batch_requests_bucket" in scrape(), 30, 0.3)
    exposed = exposed_series(scrape())
    used = dashboard_metrics(json.loads((REPO / "deploy/grafana-dashboard.json").read_text()))
    assert used - set(RAY_AGENT_METRICS) <= exposed, used - set(RAY_AGENT_METRICS) - exposed
    assert set(RAY_AGENT_METRICS) <= used, "list only the Ray metrics the dashboard reads"
    ray_root = Path(ray.__file__).parent.parent
    for name, source in RAY_AGENT_METRICS.items():
        assert f'"{name.removeprefix("ray_")}"' in (ray_root / source).read_text(), (name, source)
    renamed = {n.replace("streamscore_images_total", "streamscore_image_total") for n in used}
    assert renamed - set(RAY_AGENT_METRICS) - exposed == {"streamscore_image_total"}  # the check sees a rename
