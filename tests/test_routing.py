"""Routing policies alone: validation, rule precedence, weighted and sticky splits (no Ray needed)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from common.errors import ConfigError
from pipeline.serving.routing import RoutingPolicy, check_fits_cache, scored_versions


def test_weights_must_be_non_negative_and_not_all_zero() -> None:
    with pytest.raises(ValidationError, match="negative"):
        RoutingPolicy(weights={"1": -1, "2": 2})
    with pytest.raises(ValidationError, match="positive weight"):
        RoutingPolicy(weights={"1": 0})


def test_split_follows_weights_and_zero_weight_gets_nothing() -> None:
    policy = RoutingPolicy(weights={"1": 95, "2": 5, "3": 0})
    rng = random.Random(7)
    picks = [policy.choose({}, rng) for _ in range(20_000)]
    assert picks.count("3") == 0
    # 5% expected; 4 standard deviations of a binomial(20000, 0.05) is 0.0062.
    assert abs(picks.count("2") / len(picks) - 0.05) < 0.0062


def test_rules_win_over_weights_and_headers_match_case_insensitively() -> None:
    policy = RoutingPolicy(weights={"1": 100}, rules=[{"header": "X-Region", "equals": "cn", "version": "2"}])
    assert policy.choose({"x-region": "cn"}, random.Random(0)) == "2"
    assert policy.choose({"X-Region": "eu"}, random.Random(0)) == "1"
    assert RoutingPolicy().choose({}, random.Random(0)) is None  # no policy: the latest version


def test_sticky_key_keeps_one_version_and_still_splits_users() -> None:
    policy = RoutingPolicy(weights={"1": 50, "2": 50}, sticky_header="X-User")
    rng = random.Random(1)
    per_user = {u: {policy.choose({"X-User": f"user-{u}"}, rng) for _ in range(5)} for u in range(400)}
    assert all(len(versions) == 1 for versions in per_user.values())
    share = sum(versions == {"1"} for versions in per_user.values()) / len(per_user)
    assert abs(share - 0.5) < 0.1  # 4 standard deviations of a binomial(400, 0.5)


def test_the_versions_a_replica_scores_count_shadow_and_stable_ones() -> None:
    guarded = RoutingPolicy.model_validate(
        {"weights": {"1": 100}, "rules": [{"header": "X-Beta", "equals": "1", "version": "2"}],
         "guard": {"min_agreement": 0.9}, "shadow": {"version": "3", "fraction": 0.1}}
    )  # fmt: skip
    routing = {"m": guarded, "n": RoutingPolicy(weights={"1": 0, "2": 100})}
    assert [str(ref) for ref in scored_versions(routing)] == ["m:1", "m:2", "m:3", "n:2"]
    check_fits_cache(routing, 4)
    with pytest.raises(ConfigError, match=r"sends traffic to 4 versions \(m:1, m:2, m:3, n:2\) .*=3; raise it"):
        check_fits_cache(routing, 3)
