"""The control plane's state file (``pipeline/serving/control_store.py``): a replica Serve restarts takes up all
it had decided, a new deploy takes its config's routing but keeps the guard's halts, and a store that fails or
a file that cannot be read never takes the app down. Real files; the class Serve runs, without Serve (the
kill of a real replica under load is in ``test_serving_guard.py``)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import pytest

from common.errors import ConfigError
from pipeline.models.ref import ModelRef
from pipeline.serving import control
from pipeline.serving.control import ControlPlane
from pipeline.serving.control_store import ControlStore, VersionState, check_deployable
from pipeline.serving.routing import RoutingPolicy
from tests.test_guard import GUARD, MODEL, traffic

DEPLOYED = {MODEL: RoutingPolicy(weights={"1": 100}), "other": RoutingPolicy(weights={"3": 100})}
CANARY = RoutingPolicy(weights={"1": 70, "2": 30}, guard=GUARD)


def plane(state: Path, deploy_id: str, deployed: dict[str, RoutingPolicy] = DEPLOYED) -> object:
    return ControlPlane.func_or_class(deployed, str(state), deploy_id)  # the class Serve runs


async def rolled_back(state: Path) -> object:
    """A control plane (deploy "a") whose guard rolled version 2 of ``MODEL`` back; ``other`` version 4 retired
    after an operator routed to it."""
    first = plane(state, "a")
    await first.set_routing(MODEL, CANARY)
    await first.report(traffic(agreeing=(40, 30)))  # 75 % agreement: under the guard's 90 %
    await first.set_routing("other", RoutingPolicy(weights={"3": 50, "4": 50}))
    await first.set_routing("other", RoutingPolicy(weights={"3": 100}))
    await first.retire(ModelRef(name="other", version="4"))
    snapshot = await first.snapshot()
    assert snapshot.guards[MODEL].state == "rolled_back" and ModelRef(name=MODEL, version="2") in snapshot.halted
    return snapshot


def test_a_restarted_replica_takes_up_everything_it_had_decided(tmp_path: Path) -> None:
    async def scenario() -> None:
        before = await rolled_back(tmp_path / "state.json")
        after = await plane(tmp_path / "state.json", "a").snapshot()  # Serve's restart: the same deploy's args
        assert after.epoch != before.epoch  # a new replica: gateways take its snapshot whatever its revision
        assert after.decided() == before.decided()
        assert after.routing[MODEL].weights == {"1": 70.0} and after.guards[MODEL].events[-1].action == "rolled_back"
        assert after.state_of(ModelRef(name="other", version="4")).state == "retired"
        assert after.rollbacks == {ModelRef(name=MODEL, version="2"): 1}

    asyncio.run(scenario())


def test_a_new_deploy_takes_its_routing_but_only_a_release_lifts_a_halt(tmp_path: Path) -> None:
    async def scenario() -> None:
        await rolled_back(tmp_path / "state.json")
        # Deployed again with a config that routes to the rolled-back canary: its share goes to the stable
        # version, the halt stays, and routing to it is refused until an operator releases it.
        redeployed = plane(tmp_path / "state.json", "b", {**DEPLOYED, MODEL: CANARY})
        snapshot = await redeployed.snapshot()
        halt = ModelRef(name=MODEL, version="2")
        assert snapshot.routing[MODEL].weights == {"1": 70.0} and halt in snapshot.halted
        assert snapshot.guards[MODEL].state == "watching"  # the config's guard, started afresh
        assert snapshot.routing["other"] == DEPLOYED["other"] and snapshot.states == {}  # the config's, not admin's
        assert snapshot.rollbacks == {halt: 1}
        with pytest.raises(Exception, match="rolled back by its guard"):
            await redeployed.set_routing(MODEL, CANARY)

        await redeployed.release(halt)
        again = await plane(tmp_path / "state.json", "c", {**DEPLOYED, MODEL: CANARY}).snapshot()
        assert again.routing[MODEL].weights == {"1": 70.0, "2": 30.0} and again.halted == {}

    asyncio.run(scenario())


def test_the_file_is_whole_after_every_change_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        state = tmp_path / "nested" / "state.json"  # folders made as needed
        control = plane(state, "a")
        for weight in (10, 20, 30):
            await control.set_routing("other", RoutingPolicy(weights={"3": 100 - weight, "4": weight}))
            saved = json.loads(state.read_text())
            assert saved["routing"]["other"]["weights"] == {"3": 100.0 - weight, "4": float(weight)}
            assert saved["deploy_id"] == "a"
        assert [p.name for p in state.parent.iterdir()] == ["state.json"]  # the staged files were renamed

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "text",
    [
        '{"format": 1, "deploy_id": "a", "routing": {"m": {"weights"',  # cut short
        '{"format": 1, "deploy_id": "a", "saved_at": 0, "routing": {}, "states": [[{"name": "../x"}, {}]],'
        ' "guards": {}, "halted": [], "rollbacks": []}',  # a version id that is not one
        '{"format": 2, "deploy_id": "a", "saved_at": 0}',  # from another StreamScore
    ],
)
def test_an_unreadable_file_is_kept_aside_and_the_app_starts_from_its_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    state = tmp_path / "state.json"
    state.write_text(text)
    with caplog.at_level(logging.ERROR):
        snapshot = asyncio.run(plane(state, "a").snapshot())
    assert snapshot.routing == DEPLOYED
    assert "unreadable" in caplog.text and str(state) in caplog.text
    [aside] = tmp_path.glob("state.json.unreadable-*")
    assert aside.read_text() == text  # for a person to look at
    assert ControlStore(str(state)).load() is not None  # and a good file took its place


def test_a_halt_the_config_cannot_keep_to_refuses_the_deploy(tmp_path: Path) -> None:
    async def scenario() -> None:
        await rolled_back(tmp_path / "state.json")
        halted_stable = {**DEPLOYED, MODEL: RoutingPolicy(weights={"1": 10, "2": 90})}
        with pytest.raises(ConfigError, match=r"version\(s\) 2, rolled back by its guard .* admin release m 2"):
            check_deployable(halted_stable, str(tmp_path / "state.json"))  # what build_app runs before deploying
        with pytest.raises(ConfigError, match="rolled back by its guard"):
            plane(tmp_path / "state.json", "b", halted_stable)
        # Without a guard the halt holds all the same.
        unguarded = {**DEPLOYED, MODEL: RoutingPolicy(weights={"1": 80, "2": 20})}
        check_deployable(unguarded, str(tmp_path / "state.json"))
        snapshot = await plane(tmp_path / "state.json", "c", unguarded).snapshot()
        assert snapshot.routing[MODEL].weights == {"1": 80.0}

    asyncio.run(scenario())


def test_a_store_that_fails_keeps_the_decision_in_memory_and_saves_it_once_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "SAVE_RETRY_S", 0.2)  # instead of 5 s

    async def scenario() -> None:
        folder = tmp_path / "store"
        plane_ = plane(folder / "state.json", "a")
        shutil.rmtree(folder)
        folder.write_text("a file where the folder was: every write fails")
        with caplog.at_level(logging.ERROR):
            await plane_.set_state(ModelRef(name="other", version="4"), VersionState(state="failed", error="x"))
        assert (await plane_.snapshot()).state_of(ModelRef(name="other", version="4")).state == "failed"
        assert "saving the control plane's state" in caplog.text
        folder.unlink()
        folder.mkdir()  # the store is back; nothing else changes
        await asyncio.sleep(1.0)
        saved = ControlStore(str(folder / "state.json")).load()
        assert saved is not None and saved.state().states[ModelRef(name="other", version="4")].state == "failed"

    asyncio.run(scenario())


def test_the_control_plane_of_an_earlier_deploy_never_writes_over_a_later_ones_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        state = tmp_path / "state.json"
        old = plane(state, "a")
        new = plane(state, "b")  # the redeploy's, started while the old one still answers
        with caplog.at_level(logging.WARNING):
            await old.set_routing("other", RoutingPolicy(weights={"3": 50, "4": 50}))
        assert "a later deploy (b)" in caplog.text
        saved = ControlStore(str(state)).load()
        assert saved is not None and saved.deploy_id == "b" and saved.routing["other"] == DEPLOYED["other"]
        await new.set_routing("other", RoutingPolicy(weights={"3": 90, "4": 10}))
        saved = ControlStore(str(state)).load()
        assert saved is not None and saved.routing["other"].weights == {"3": 90.0, "4": 10.0}

    asyncio.run(scenario())
