"""The guard's decisions (``pipeline/serving/guard.py``) over traffic counts, and the policies that carry it."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from pipeline.serving import guard
from pipeline.serving.routing import Guard, RoutingPolicy
from pipeline.serving.traffic import PairCounts, TrafficCounts, TrafficWindow

MODEL = "m"
GUARD = Guard(min_agreement=0.9, max_error_rate=0.05, max_p99_ratio=3.0, min_requests=20, window_s=30)


def traffic(
    canary: tuple[int, int, float] = (40, 0, 5.0),
    stable: tuple[int, int, float] = (100, 0, 5.0),
    agreeing: tuple[int, int] | None = (40, 40),
) -> TrafficCounts:
    """(requests, errors, latency ms of each) for version 2 (the canary) and 1; (compared, agreeing) of 2 vs 1."""
    counts = TrafficCounts()
    for version, (requests, errors, latency_ms) in (("2", canary), ("1", stable)):
        for i in range(requests):
            counts.version(MODEL, version).observe(latency_ms, failed=i < errors)
    if agreeing is not None:
        compared, agreed = agreeing
        counts.pair(MODEL, "2", "1").add(PairCounts(compared=compared, agreement=agreed, top1_equal=agreed))
    return counts


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        (traffic(), None),
        (traffic(agreeing=(40, 30)), r"agreement with version 1 75.0% < 90.0% over 40 requests"),
        (traffic(canary=(40, 4, 5.0)), r"error rate 10.0% > 5.0% \(4 of 40 requests failed\)"),
        # Latencies are counted in buckets 9 % wide: figures within that.
        (traffic(canary=(40, 0, 40.0)), r"p99 4\d ms is [78]\.\dx the stable version's 5 ms \(> 3x\)"),
        # Too few requests to tell, whatever they show.
        (traffic(canary=(19, 19, 900.0), agreeing=(19, 0)), None),
        # Agreement needs as many comparisons (the stable version scored in the shadow) as requests.
        (traffic(agreeing=(19, 0)), None),
        # A ratio needs the stable version's own p99 over enough requests.
        (traffic(canary=(40, 0, 40.0), stable=(5, 0, 5.0)), None),
    ],
)
def test_breach_names_the_limit_and_its_figures(counts: TrafficCounts, reason: str | None) -> None:
    found = guard.breach(GUARD, counts, MODEL, "1", "2")
    if reason is None:
        assert found is None
    else:
        assert found is not None and re.fullmatch(reason, found), found


def test_a_fixed_p99_bound() -> None:
    bounded = GUARD.model_copy(update={"max_p99_ms": 20.0, "max_p99_ratio": None})
    assert guard.breach(bounded, traffic(canary=(40, 0, 15.0)), MODEL, "1", "2") is None
    assert re.fullmatch(
        r"p99 (28|29|30) ms > 20 ms over 40 requests",
        str(guard.breach(bounded, traffic(canary=(40, 0, 28.0)), MODEL, "1", "2")),
    )


def test_a_breach_rolls_the_canary_back_to_the_stable_version_and_says_why() -> None:
    policy, status = guard.start(RoutingPolicy(weights={"1": 90, "2": 10}, guard=GUARD), now=100.0)
    decided = guard.review(MODEL, policy, status, traffic(agreeing=(40, 10)), TrafficCounts(), now=103.0)
    assert decided is not None and decided.rolled_back == "2"
    assert decided.policy.weights == {"1": 90} and decided.policy.versions() == {"1"}
    assert decided.status.state == "rolled_back"
    event = decided.status.events[-1]
    assert (event.by, event.action, event.version, event.at) == ("guard", "rolled_back", "2", 103.0)
    assert "agreement" in event.reason
    # A rolled-back guard decides nothing more.
    assert guard.review(MODEL, decided.policy, decided.status, traffic(agreeing=(40, 0)), TrafficCounts(), 104) is None


def test_header_rule_canaries_are_watched_and_removed() -> None:
    policy = RoutingPolicy(rules=[{"header": "x-beta", "equals": "1", "version": "2"}], stable="1", guard=GUARD)
    assert policy.canaries() == {"2"}
    _, status = guard.start(policy, now=0.0)
    decided = guard.review(MODEL, policy, status, traffic(canary=(40, 10, 5.0)), TrafficCounts(), now=1.0)
    # Rules only: the rule goes, and the rest of the traffic stays with the default version, as before.
    assert decided is not None and decided.policy.rules == [] and decided.policy.weights == {}


def test_steps_advance_only_after_the_interval_with_enough_requests_then_promote() -> None:
    asked = RoutingPolicy(weights={"1": 95, "2": 5}, guard=GUARD, steps=[5, 50, 100], interval_s=10)
    policy, status = guard.start(asked, now=0.0)
    assert policy.weights == {"1": 95, "2": 5} and policy.stable == "1" and status.step == 0
    healthy = traffic()
    assert guard.review(MODEL, policy, status, healthy, healthy, now=9.0) is None  # the interval has not passed
    assert guard.review(MODEL, policy, status, healthy, traffic(canary=(5, 0, 5.0)), now=11.0) is None  # too few
    decided = guard.review(MODEL, policy, status, healthy, healthy, now=11.0)
    assert decided is not None and decided.policy.weights == {"1": 50, "2": 50} and decided.status.step == 1
    assert decided.status.events[-1].action == "advanced"
    promoted = guard.review(MODEL, decided.policy, decided.status, healthy, healthy, now=22.0)
    assert promoted is not None and promoted.status.state == "promoted"
    assert promoted.policy.weights == {"2": 100} and promoted.policy.canaries() == set()
    assert [e.action for e in promoted.status.events] == ["started", "advanced", "promoted"]


def test_a_breach_during_the_steps_rolls_back() -> None:
    asked = RoutingPolicy(weights={"1": 95, "2": 5}, guard=GUARD, steps=[5, 50, 100], interval_s=10)
    policy, status = guard.start(asked, now=0.0)
    decided = guard.review(MODEL, policy, status, traffic(canary=(40, 9, 5.0)), traffic(), now=11.0)
    assert decided is not None and decided.rolled_back == "2" and decided.policy.weights == {"1": 95}


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"guard": {"min_requests": 5}}, "a guard needs a limit"),
        ({"weights": {"1": 50, "2": 50}, "guard": {"max_error_rate": 0.1}}, "name it in 'stable'"),
        ({"weights": {"1": 95, "2": 5}, "steps": [5, 100]}, "add a guard"),
        ({"weights": {"1": 95, "2": 5}, "guard": {"max_error_rate": 0.1}, "steps": [50, 5, 100]}, "must rise"),
        ({"weights": {"1": 95, "2": 5}, "guard": {"max_error_rate": 0.1}, "steps": [5, 50]}, "end at 100"),
        (
            {"weights": {"1": 90, "2": 5, "3": 5}, "guard": {"max_error_rate": 0.1}, "steps": [5, 100]},
            "one canary",
        ),
        ({"shadow": {"version": "2", "fraction": 1.5}}, "less than or equal to 1"),
        ({"weights": {"1": 95, "2": 5}, "guard": {"max_error_rate": 0.1}, "steps": [100]}, "after one below it"),
        ({"weights": {"1": 95, "2": 5}, "guard": {"max_error_rate": 0.1}, "interval_s": "Infinity"}, "finite"),
        ({"weights": {"1": "NaN", "2": 5}}, "finite"),
    ],
)
def test_policies_that_cannot_work_are_refused(policy: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RoutingPolicy.model_validate(policy)


def test_the_window_sums_only_recent_reports_and_keeps_totals() -> None:
    window = TrafficWindow()
    for at in (0.0, 10.0, 20.0):
        counts = TrafficCounts()
        counts.version(MODEL, "2").observe(5.0, failed=at == 0.0)
        window.add(at, counts, horizon_s=15.0)
    assert window.since(5.0).versions[(MODEL, "2")].requests == 2
    assert window.since(5.0).versions[(MODEL, "2")].errors == 0
    assert window.since(0.0).versions[(MODEL, "2")].requests == 2  # the first fell out of the 15 s horizon
    assert window.total.versions[(MODEL, "2")].requests == 3


def test_the_window_is_widened_only_for_a_canary_short_of_requests() -> None:
    policy = RoutingPolicy(weights={"1": 90, "2": 10}, guard=GUARD)
    assert guard.enough(policy, traffic(), MODEL)
    assert not guard.enough(policy, traffic(canary=(19, 0, 5.0)), MODEL)
    assert not guard.enough(policy, TrafficCounts(), MODEL)


def test_the_config_files_commented_routing_example_is_a_valid_policy() -> None:
    import yaml

    from tests.conftest import REPO

    lines = (REPO / "jobs" / "serve_config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# routing:"))
    example = "\n".join(line.replace("# ", "", 1) for line in lines[start:] if line.strip().startswith("#"))
    for policy in yaml.safe_load(example)["routing"].values():
        assert RoutingPolicy.model_validate(policy).canaries() == {"2"}


def test_a_second_canary_stays_watched_after_the_first_is_rolled_back() -> None:
    policy, status = guard.start(RoutingPolicy(weights={"1": 80, "2": 10, "3": 10}, guard=GUARD), now=0.0)
    first = guard.review(MODEL, policy, status, traffic(canary=(40, 10, 5.0)), TrafficCounts(), now=1.0)
    assert first is not None and first.rolled_back == "2" and first.status.state == "watching"
    assert first.policy.canaries() == {"3"}
    failing = TrafficCounts()
    for _ in range(40):
        failing.version(MODEL, "3").observe(5.0, failed=True)
    second = guard.review(MODEL, first.policy, first.status, failing, TrafficCounts(), now=2.0)
    assert second is not None and second.rolled_back == "3" and second.status.state == "rolled_back"
    assert second.policy.weights == {"1": 80}


def test_no_step_is_taken_without_evidence_for_every_limit() -> None:
    """Shadow work dropped (too few comparisons) or too little of the stable version for the p99 ratio: the
    guard cannot tell, so the canary waits at its step rather than walking up unchecked."""
    asked = RoutingPolicy(weights={"1": 95, "2": 5}, guard=GUARD, steps=[5, 50, 100], interval_s=10)
    policy, status = guard.start(asked, now=0.0)
    for thin in (traffic(agreeing=(19, 19)), traffic(agreeing=None), traffic(stable=(5, 0, 5.0))):
        assert guard.review(MODEL, policy, status, thin, thin, now=11.0) is None
    assert "comparisons" in str(guard.evidence_missing(GUARD, traffic(agreeing=None), MODEL, "1", "2"))
    assert guard.evidence_missing(GUARD, traffic(), MODEL, "1", "2") is None


def test_a_nan_agreement_breaks_the_guard() -> None:
    counts = traffic(agreeing=None)
    counts.pair(MODEL, "2", "1").add(PairCounts(compared=40, agreement=float("nan")))
    assert "agreement" in str(guard.breach(GUARD, counts, MODEL, "1", "2"))
