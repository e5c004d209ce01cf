"""cluster.yaml and deploy/, checked offline by the validators of the tools that will read them.

cluster.yaml goes through Ray's own cluster-config validation (what `ray up` runs before it calls AWS), the
CronJob through Kubernetes' OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), the RayJob and
RayCronJob through KubeRay v1.7.0's CRD schemas (tests/schemas/) plus a check for fields those schemas do not
name, and every command line through the parser that will read it: jobs/nightly.py's own arguments and
`ray job submit`'s click command.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import operator
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
CRDS = Path(__file__).parent / "schemas" / "kuberay-v1.7.0"
ROLE = "streamscore.io/role"  # the Ray node label naming a worker's part: decode or inference
DAY_S = 24 * 3600
# KubeRay v1.7.0 (controllers/ray/utils/constant.go): a RayJob's cluster is <name>-<5 chars> in at most 53
# characters, and a RayCronJob's RayJobs are <name>-<minutes since 1970>.
MAX_RAYJOB_NAME = 47
MAX_RAYCRONJOB_NAME = 36
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))  # minute, hour, day of month, month, day of week
# ObjectMeta is checked by the API server itself; a CRD's schema leaves it as a bare object.
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def load(path: str) -> Any:
    return yaml.safe_load((REPO / path).read_text())


# ---------------------------------------------------------------- the validators
def check_cluster(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it calls the cloud: Ray's defaults filled in, then its JSON schema (node types
    refuse unknown fields) and its cross-field rules. Returns the filled-in config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def check_kubernetes(doc: dict[str, Any]) -> None:
    """Against Kubernetes 1.30's schemas (CronJob's timeZone is GA since 1.27) and the newest bundled ones."""
    import kubernetes_validate

    for version in ("1.30", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(doc, version, strict=True)


@functools.cache
def crd_validator(group: str, kind: str, version: str) -> jsonschema.Draft4Validator:
    """The schema a Kubernetes API server with KubeRay checks ``kind`` objects of ``version`` against.

    Draft 4: the JSON Schema draft closest to a CRD's OpenAPI v3.0 schemas. Built once per kind: reading the
    CRD and checking its schema take most of a second.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 0.6 s instead of 2.6 s for RayJob's
    crd = yaml.load((CRDS / f"{group}_{kind.lower()}s.yaml").read_text(), Loader=loader)
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = served["schema"]["openAPIV3Schema"]
    schema = {**schema, "properties": {**schema["properties"], "metadata": OBJECT_META}}
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in ``value`` that ``schema`` does not name. CRD schemas leave out additionalProperties: false and the
    API server prunes what they do not name without a word, so a misspelt field would just be ignored."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        named, free = schema.get("properties", {}), schema.get("additionalProperties")
        found = []
        for key, item in value.items():
            if key in named:
                found += unknown_fields(item, named[key], f"{path}.{key}")
            elif isinstance(free, dict):  # a map (labels, rayStartParams): any key, values of this schema
                found += unknown_fields(item, free, f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
        return found
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def check_kuberay(doc: dict[str, Any]) -> None:
    """Against the CRD of the object's kind and served version: types, enums and required fields, then names."""
    group, _, version = doc["apiVersion"].partition("/")
    validator = crd_validator(group, doc["kind"], version)
    validator.validate(doc)
    unknown = unknown_fields(doc, validator.schema)
    if unknown:
        raise jsonschema.ValidationError(f"fields that KubeRay's {doc['kind']} CRD does not name: {unknown}")


# ---------------------------------------------------------------- the command lines
class _Refusing(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print the usage and exit the test run
        raise ValueError(message)


def nightly_args(args: Sequence[str]) -> argparse.Namespace:
    """``args`` parsed by jobs/nightly.py's own argument definitions; the model must be one in models/."""
    from jobs.nightly import add_arguments

    parser = _Refusing(prog="nightly")
    add_arguments(parser)
    parsed = parser.parse_args(list(args))
    assert (REPO / "models" / parsed.model.partition(":")[0]).is_dir(), parsed.model
    return parsed


def nightly_script_args(argv: Sequence[str]) -> argparse.Namespace:
    python, script, *args = argv
    assert python == "python" and script.endswith("jobs/nightly.py"), argv
    return nightly_args(args)


def ray_job_submit(argv: Sequence[str]) -> dict[str, Any]:
    """The options of a `ray job submit` command line, parsed by Ray's own click command (nothing runs)."""
    from ray.dashboard.modules.job.cli import submit

    assert list(argv[:3]) == ["ray", "job", "submit"], argv
    return submit.make_context("submit", list(argv[3:])).params


def check_labels(labels: dict[str, str]) -> None:
    """Ray's rules for node labels: Kubernetes label syntax, and no ray.io/ prefix (Ray's own)."""
    from ray._private.label_utils import validate_node_label_syntax, validate_node_labels

    validate_node_label_syntax(labels)
    validate_node_labels(labels)


def cron_entries(text: str) -> list[tuple[list[str], str]]:
    """(the five schedule fields, the command) of each job line; comments, blank and VAR=value lines skipped."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"[A-Za-z_]\w*\s*=", line):
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, f"not five schedule fields and a command: {line!r}"
        entries.append((fields[:5], fields[5]))
    return entries


def valid_cron_field(field: str, low: int, high: int) -> bool:
    for part in field.split(","):
        values, _, step = part.partition("/")
        if step and not step.isdigit():
            return False
        bounds = [] if values == "*" else values.split("-")
        if len(bounds) > 2 or not all(b.isdigit() and low <= int(b) <= high for b in bounds):
            return False
    return True


def once_a_day(fields: list[str]) -> bool:
    return len(fields) == 5 and fields[0].isdigit() and fields[1].isdigit() and fields[2:] == ["*", "*", "*"]


# ---------------------------------------------------------------- the tests
def test_cluster_yaml_passes_rays_validation_with_a_decode_and_an_inference_node_type() -> None:
    config = check_cluster(load("cluster.yaml"))
    types = dict(config["available_node_types"])
    head = types.pop(config["head_node_type"])
    assert head["resources"]["CPU"] == 0 and ROLE not in head.get("labels", {})
    assert sorted(t.get("labels", {}).get(ROLE, "") for t in types.values()) == ["decode", "inference"]
    for name, node_type in types.items():
        check_labels(node_type["labels"])
        gpus = node_type["resources"].get("GPU", 0)
        assert (gpus >= 1) == (node_type["labels"][ROLE] == "inference"), (name, gpus)
        assert node_type["resources"]["CPU"] >= 1, name
        # The planner sizes a job from the nodes up when it starts, and a job never grows: a type with no node
        # then gets no work.
        assert node_type["min_workers"] >= 1, name


def test_cronjob_submits_the_nightly_job_to_a_ray_cluster_and_never_overlaps() -> None:
    doc = load("deploy/nightly-cronjob.yaml")
    check_kubernetes(doc)
    spec = doc["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < DAY_S
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] < DAY_S
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    [container] = job["template"]["spec"]["containers"]
    submit = ray_job_submit(container["command"])
    assert re.fullmatch(r"https?://[\w.-]+:8265", submit["address"]), submit["address"]
    assert submit["working_dir"] and not submit["no_wait"]  # waiting is what gives the pod the job's outcome
    nightly_script_args(submit["entrypoint"])
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert "value" not in env["RAY_AUTH_TOKEN"] and env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    assert set(container["resources"]) == {"requests", "limits"}


@pytest.mark.parametrize("path", ["deploy/nightly-rayjob.yaml", "deploy/nightly-raycronjob.yaml"])
def test_kuberay_manifests_match_the_kuberay_crds(path: str) -> None:
    check_kuberay(load(path))


def test_rayjob_runs_the_nightly_job_on_a_decode_and_an_inference_group() -> None:
    doc = load("deploy/nightly-rayjob.yaml")
    assert len(doc["metadata"]["name"]) <= MAX_RAYJOB_NAME
    spec = doc["spec"]
    nightly_script_args(shlex.split(spec["entrypoint"]))
    assert spec["shutdownAfterJobFinishes"] and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode"}  # InteractiveMode waits for a person
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # as cluster.yaml: the head only drives
    groups = cluster["workerGroupSpecs"]
    assert sorted(g.get("labels", {}).get(ROLE, "") for g in groups) == ["decode", "inference"]
    for group in groups:
        check_labels(group["labels"])
        assert "labels" not in group["rayStartParams"]  # KubeRay refuses them there: the group's labels field
        [container] = group["template"]["spec"]["containers"]
        gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
        assert (gpus >= 1) == (group["labels"][ROLE] == "inference"), (group["groupName"], gpus)


def test_raycronjob_runs_the_same_rayjob_every_night_without_overlapping_itself() -> None:
    doc, rayjob = load("deploy/nightly-raycronjob.yaml"), load("deploy/nightly-rayjob.yaml")
    assert len(doc["metadata"]["name"]) <= MAX_RAYCRONJOB_NAME
    assert doc["spec"]["jobTemplate"] == rayjob["spec"]  # one RayJob spec in two files: they must not drift
    assert once_a_day(doc["spec"]["schedule"].split())
    # KubeRay v1.7.0's RayCronJob has no concurrencyPolicy: it makes a RayJob at every tick. The deadline, per
    # attempt, over every attempt keeps one night's RayJob out of the next night.
    spec_fields = crd_validator("ray.io", "RayCronJob", "v1").schema["properties"]["spec"]["properties"]
    assert "concurrencyPolicy" not in spec_fields, "KubeRay has one now: set it to Forbid"
    job = doc["spec"]["jobTemplate"]
    assert (job["backoffLimit"] + 1) * job["activeDeadlineSeconds"] < DAY_S


def test_crontab_runs_the_nightly_job_under_flock_when_the_kubernetes_schedules_do() -> None:
    [(fields, command)] = cron_entries((DEPLOY / "crontab").read_text())
    for schedule in (fields, load("deploy/nightly-cronjob.yaml")["spec"]["schedule"].split()):
        ranges = zip(schedule, CRON_RANGES, strict=True)  # five fields, or a ValueError
        assert all(valid_cron_field(field, low, high) for field, (low, high) in ranges), schedule
    assert once_a_day(fields)
    for path in ("deploy/nightly-cronjob.yaml", "deploy/nightly-raycronjob.yaml"):
        assert load(path)["spec"]["schedule"].split() == fields, path
    assert not re.search(r"(?<!\\)%", command), "cron turns % into a line break"
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True  # words end at blanks and operators only: s3://... stays one
    tokens = list(lexer)
    first = list(itertools.takewhile(lambda t: not set(t) <= set("();<>|&"), tokens))
    assert first[0] == "flock" and "-n" in first, first  # -n: a second run leaves at once instead of queueing
    at = next((i for i, t in enumerate(first) if t.endswith("/streamscore") and first[i + 1 : i + 2] == ["nightly"]), 0)
    assert at > 1 and first[at - 1].startswith("/"), "flock LOCKFILE /path/to/streamscore nightly ..."
    nightly_args(first[at + 2 :])
    assert ">>" in tokens[len(first) :], "the output goes to a log file"


@pytest.mark.parametrize(
    ("check", "path", "field"),
    [
        (check_cluster, "cluster.yaml", ["available_node_types", "gpu_worker", "labels"]),
        (check_kubernetes, "deploy/nightly-cronjob.yaml", ["spec", "jobTemplate", "spec", "backoffLimit"]),
        (check_kuberay, "deploy/nightly-rayjob.yaml", ["spec", "rayClusterSpec", "workerGroupSpecs", 1, "labels"]),
        (check_kuberay, "deploy/nightly-raycronjob.yaml", ["spec", "jobTemplate", "shutdownAfterJobFinishes"]),
    ],
)
def test_a_misspelt_field_fails_validation(check: Callable[[Any], object], path: str, field: list[Any]) -> None:
    """The validators above are strict: each refuses its manifest with one field's last letter dropped."""
    doc = load(path)
    *parents, key = field
    parent = functools.reduce(operator.getitem, parents, doc)
    parent[key[:-1]] = parent.pop(key)  # "labels" -> "label"
    with pytest.raises(jsonschema.ValidationError, match=rf"\b{key[:-1]}\b"):
        check(doc)
