"""The control plane's waiting call: a change reaches a waiting gateway at once; no change costs no call."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import ConfigError
from pipeline.models.ref import ModelRef
from pipeline.serving.control import ControlPlane, VersionState
from pipeline.serving.routing import RoutingPolicy


def test_a_waiting_call_is_answered_when_the_state_changes_and_not_before() -> None:
    async def scenario() -> None:
        plane = ControlPlane.func_or_class({"m": RoutingPolicy(weights={"1": 100})})  # the class Serve runs
        held = await plane.snapshot()

        # A gateway holding another epoch (a fresh one, or one that outlived a replaced control plane) is
        # answered at once.
        assert (await plane.changed_since("", 0)).epoch == held.epoch

        waiting = asyncio.ensure_future(plane.changed_since(held.epoch, held.revision, timeout_s=30))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await plane.set_state(ModelRef(name="m", version="2"), VersionState(state="failed", error="bad"))
        changed = await asyncio.wait_for(waiting, 2)
        assert changed.revision == held.revision + 1
        assert changed.state_of(ModelRef(name="m", version="2")).state == "failed"
        assert changed.is_newer_than(held) and not held.is_newer_than(changed)

        # A refused change wakes no one and changes nothing.
        waiting = asyncio.ensure_future(plane.changed_since(changed.epoch, changed.revision, timeout_s=0.5))
        with pytest.raises(ConfigError, match="cannot take traffic"):
            await plane.set_routing("m", RoutingPolicy(weights={"2": 100}))
        unchanged = await asyncio.wait_for(waiting, 2)  # answered at its timeout, as it was
        assert unchanged.revision == changed.revision

        # Several gateways waiting: one change answers them all.
        waiters = [asyncio.ensure_future(plane.changed_since(changed.epoch, changed.revision)) for _ in range(5)]
        await asyncio.sleep(0.1)
        await plane.set_routing("m", RoutingPolicy(weights={"1": 50, "3": 50}))
        answers = await asyncio.wait_for(asyncio.gather(*waiters), 2)
        assert {a.routing["m"].weights["3"] for a in answers} == {50}

    asyncio.run(scenario())


def test_routing_a_replica_could_not_hold_at_once_is_refused() -> None:
    async def scenario() -> None:
        # Room for three versions: m's 1 and n's 1 leave one slot, which m's canary may take and a shadow not.
        deployed = {"m": RoutingPolicy(weights={"1": 100}), "n": RoutingPolicy(weights={"1": 100})}
        plane = ControlPlane.func_or_class(deployed)
        await plane.set_routing("m", RoutingPolicy(weights={"1": 90, "2": 10}), 3, {"m", "n"})
        with pytest.raises(ConfigError, match=r"sends traffic to 4 versions .*m:3.* max_cached_versions=3"):
            await plane.set_routing("m", RoutingPolicy(weights={"1": 90, "2": 10}, shadow={"version": "3"}), 3)
        assert (await plane.snapshot()).routing["m"].weights == {"1": 90.0, "2": 10.0}  # the previous routing stays
        # A model no longer in the repository holds no slot.
        await plane.set_routing("m", RoutingPolicy(weights={"1": 90, "2": 10}, shadow={"version": "3"}), 3, {"m"})

    asyncio.run(scenario())
