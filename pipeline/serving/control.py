"""The control plane: routing policies and version states that the admin API changes while the app runs.

One small replica holds the truth. Each gateway replica keeps a call to ``changed_since`` waiting there, which
is answered the moment something changes (or after ``WATCH_TIMEOUT_S`` with nothing new), so a change reaches
every gateway at once and an app with no changes makes no calls; a gateway also reads it at once after its own
admin calls. A version is routable unless it failed its check or was retired; a routing change naming one that
is not routable is refused, so a bad version never takes traffic and the previous routing stays.

The control plane also runs the guards (``guard.py``): gateways report what they saw of guarded and shadowed
models (``report``), and after each report every watched canary is reviewed over its window. A rolled-back
canary is ``halted``: routing may not name it again until an operator releases it. Guard state lives here, not in
gateways, so every gateway replica follows the same decision and a gateway's restart loses none of it; with
``control_state_uri`` it is saved after each change and outlives this replica too (``control_store.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from common.errors import ConfigError
from pipeline.models.ref import ModelRef
from pipeline.serving import guard
from pipeline.serving.control_store import (
    ControlState,
    ControlStore,
    SavedControl,
    VersionState,
    new_deploy_id,
    restore,
)
from pipeline.serving.guard import GuardEvent
from pipeline.serving.routing import RoutingPolicy, check_fits_cache
from pipeline.serving.traffic import TrafficCounts, TrafficWindow

logger = logging.getLogger(__name__)
# A waiting ``changed_since`` call is answered after this long even when nothing changed: how soon a gateway
# notices that its call was lost (the control plane replaced) and makes another.
WATCH_TIMEOUT_S = 10.0
STALE_READ_WAIT_S = 1.0
SAVE_RETRY_S = 5.0


READY = VersionState()


class ControlSnapshot(ControlState):
    """The control plane's state at one revision, as gateways cache it."""

    epoch: str = ""  # the control plane replica that made it: revisions count from 0 again in a new one
    revision: int = 0

    def decided(self) -> ControlState:
        """This snapshot less its revision: what is saved."""
        return ControlState(**{k: getattr(self, k) for k in ControlState.model_fields})

    def observed(self, name: str) -> bool:
        """Whether gateways count ``name``'s traffic for the control plane (it has a guard or a shadow)."""
        policy = self.routing.get(name)
        return policy is not None and (policy.guard is not None or policy.shadow is not None)

    def state_of(self, ref: ModelRef) -> VersionState:
        return self.states.get(ref, READY)

    def states_of(self, name: str) -> dict[str, VersionState]:
        """Version -> state, for the versions of ``name`` that have one."""
        return {ref.version: s for ref, s in self.states.items() if ref.name == name and ref.version}

    def is_newer_than(self, other: ControlSnapshot) -> bool:
        """Whether a gateway holding ``other`` should take this one: a later revision, or another epoch."""
        return self.epoch != other.epoch or self.revision > other.revision


# Every gateway replica keeps one ``changed_since`` call waiting here: room for that many, and admin calls.
# Checked every 2 s (Serve's default: 10) so that a dead control plane is replaced within seconds: until then no
# guard reviews and no admin call lands (the health check is a no-op call).
@serve.deployment(
    num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000, health_check_period_s=2
)
class ControlPlane:
    # Methods are coroutines so that they all run on the replica's event loop, where the event lives.
    def __init__(
        self, routing: dict[str, RoutingPolicy], state_uri: str | None = None, deploy_id: str | None = None
    ) -> None:
        """``routing``: as the app was deployed. With ``state_uri`` the state is saved there after each change
        and restored from it when Serve restarts this replica, or the app is deployed again
        (``control_store``'s rules; ``deploy_id`` tells the two apart)."""
        self._store = ControlStore(state_uri) if state_uri else None
        self._deploy_id = deploy_id or new_deploy_id()
        # A store that cannot be read fails this replica (Serve starts it again): starting from the config instead
        # could route to a version rolled back before. One that cannot be written is logged, and written at the
        # next change (unwritten, a restart would take the deploy as new: its config's routing, the halts kept).
        saved = self._store.load() if self._store is not None else None
        state = restore(routing, self._deploy_id, saved, time.time())
        self._snapshot = ControlSnapshot(epoch=uuid.uuid4().hex, **dict(state))
        self._saved_revision = -1
        self._saving = asyncio.Lock()
        self._retrying: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # set, then replaced, at each change
        self._traffic = TrafficWindow()
        if self._store is not None:
            logger.info("control plane state in %s (%s)", state_uri, "restored" if saved else "new")
            self._write(self._snapshot)

    async def snapshot(self) -> ControlSnapshot:
        return self._snapshot

    async def changed_since(self, epoch: str, revision: int, timeout_s: float = WATCH_TIMEOUT_S) -> ControlSnapshot:
        """The snapshot once it is not ``(epoch, revision)`` any more: at once if it is not now, else when it
        changes, or as it is after ``timeout_s``."""
        if (self._snapshot.epoch, self._snapshot.revision) == (epoch, revision):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self._snapshot

    async def set_state(self, ref: ModelRef, state: VersionState) -> int:
        return await self._update(states={**self._snapshot.states, ref: state})

    async def set_routing(
        self,
        name: str,
        policy: RoutingPolicy,
        max_cached_versions: int | None = None,
        present: set[str] | None = None,
    ) -> int:
        """Refused where it names a version that cannot take traffic or was halted, or (with
        ``max_cached_versions``) where a replica would score more versions than it holds, counting the
        models in ``present`` (those still in the repository). Checked here, where changes are taken one at a
        time, so that two admin calls through two gateways cannot pass it together."""
        if max_cached_versions is not None:
            routing = {**self._snapshot.routing, name: policy}
            check_fits_cache({n: p for n, p in routing.items() if present is None or n in present}, max_cached_versions)
        named = policy.versions() | ({policy.shadow.version} if policy.shadow else set())
        blocked = {
            v: s.state
            for v in sorted(named)
            if not (s := self._snapshot.state_of(ModelRef(name=name, version=v))).routable
        }
        if blocked:
            raise ConfigError(f"routing for {name!r} names versions that cannot take traffic: {blocked}")
        shadow = {policy.shadow.version} if policy.shadow else set()
        for version in sorted(policy.named_versions() - shadow):  # routed to, or the stable version
            if (halt := self._snapshot.halted.get(ModelRef(name=name, version=version))) is not None:
                raise ConfigError(
                    f"version {version} of {name!r} was rolled back by its guard at {_when(halt.at)}: {halt.reason}."
                    f" Release it first: streamscore admin release {name} {version}"
                )
        guards = {k: v for k, v in self._snapshot.guards.items() if k != name}
        if policy.guard is not None:
            policy, guards[name] = guard.start(policy)
        return await self._update(routing={**self._snapshot.routing, name: policy}, guards=guards)

    async def release(self, ref: ModelRef) -> int:
        """An operator's word that a rolled-back version may be routed again (it takes no traffic until then)."""
        if ref not in self._snapshot.halted:
            raise ConfigError(f"version {ref.version} of {ref.name!r} was not rolled back")
        halted = {k: v for k, v in self._snapshot.halted.items() if k != ref}
        guards = dict(self._snapshot.guards)
        if ref.name in guards:
            event = GuardEvent(at=time.time(), by="operator", action="released", version=str(ref.version), reason="")
            guards[ref.name] = guards[ref.name].with_event(event)
        return await self._update(halted=halted, guards=guards)

    async def report(self, counts: TrafficCounts) -> None:
        """What a gateway counted since its last report; then every watched canary is reviewed."""
        now = time.time()
        windows = [p.guard.window_s for p in self._snapshot.routing.values() if p.guard is not None]
        self._traffic.add(now, counts, horizon_s=max([60.0, *windows]))
        routing, guards, halted = dict(self._snapshot.routing), dict(self._snapshot.guards), dict(self._snapshot.halted)
        rollbacks = dict(self._snapshot.rollbacks)
        for name, status in self._snapshot.guards.items():
            policy = routing.get(name)
            if policy is None or policy.guard is None:
                continue
            try:
                window = self._traffic.since(max(now - policy.guard.window_s, status.started_at), name)
                if not guard.enough(policy, window, name):  # a slow canary: judged on all it did since it started
                    window = self._traffic.since(status.started_at, name)
                step = self._traffic.since(status.step_since or now, name)
                decided = guard.review(name, policy, status, window, step, now)
            except Exception:  # noqa: BLE001 - one model's guard failing must not stop the others'
                logger.exception("reviewing the guard of %s failed", name)
                continue
            if decided is None:
                continue
            routing[name], guards[name] = decided.policy, decided.status
            event = decided.status.events[-1]
            if decided.rolled_back is not None:
                ref = ModelRef(name=name, version=decided.rolled_back)
                halted[ref], rollbacks[ref] = event, rollbacks.get(ref, 0) + 1
                logger.warning("guard rolled back version %s of %s: %s", event.version, name, event.reason)
            else:
                logger.info("guard %s version %s of %s: %s", event.action, event.version, name, event.reason)
        if guards != self._snapshot.guards:
            await self._update(routing=routing, guards=guards, halted=halted, rollbacks=rollbacks)

    async def traffic(self, name: str, window_s: float = 60.0) -> dict[str, Any]:
        """What the gateways reported of ``name``: the last ``window_s`` and everything since this replica began,
        per version and per (answering version, shadow version) pair."""

        def summary(counts: TrafficCounts) -> dict[str, Any]:
            return {
                "versions": {v: c.summary() for (_, v), c in sorted(counts.versions.items())},
                "shadow": {f"{v} vs {s}": c.summary() for (_, v, s), c in sorted(counts.pairs.items())},
            }

        recent = self._traffic.since(time.time() - window_s, name)
        return {"window_s": window_s, "recent": summary(recent), "total": summary(self._traffic.total.of_model(name))}

    async def retire(self, ref: ModelRef) -> int:
        policy = self._snapshot.routing.get(ref.name)
        if policy is not None and ref.version in policy.named_versions():
            raise ConfigError(
                f"routing for {ref.name!r} still sends traffic to version {ref.version!r} (or scores it as its"
                " shadow or stable version); change it first"
            )
        return await self._update(states={**self._snapshot.states, ref: VersionState(state="retired")})

    async def _update(self, **changes: object) -> int:
        """Take the change, save it, then wake every waiting ``changed_since``: a decision gateways act on is one
        a restarted control plane still knows (unless the save failed: then it holds in memory, and is tried
        again)."""
        self._snapshot = self._snapshot.model_copy(update={**changes, "revision": self._snapshot.revision + 1})
        revision = self._snapshot.revision
        await asyncio.shield(self._save())  # a caller given up does not stop a write half done
        self._changed.set()
        self._changed = asyncio.Event()
        return revision

    async def _save(self) -> None:
        """Write the newest state unless a later call already did; one write at a time, so an older revision
        never lands after a newer one. Should it fail, again every ``SAVE_RETRY_S``: a decision made while the
        store is out is written once it is back, even if nothing else changes."""
        if self._store is None:
            return
        async with self._saving:
            snapshot = self._snapshot
            if snapshot.revision <= self._saved_revision or await asyncio.to_thread(self._write, snapshot):
                return
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._save_later())

    async def _save_later(self) -> None:
        await asyncio.sleep(SAVE_RETRY_S)
        await self._save()

    def _write(self, snapshot: ControlSnapshot) -> bool:
        """Save ``snapshot``; whether it was saved (a failure is logged)."""
        assert self._store is not None
        try:
            if (newer := self._store.newer_deploy(self._deploy_id)) is not None:
                logger.warning("not saving: a later deploy (%s) keeps its state in %s", newer, self._store.uri)
                return True  # nothing to try again
            self._store.save(SavedControl.of(snapshot.decided(), self._deploy_id))
        except Exception:  # noqa: BLE001 - any store error (network, permissions) must not undo the decision
            logger.exception("saving the control plane's state to %s failed", self._store.uri)
            return False
        self._saved_revision = max(self._saved_revision, snapshot.revision)
        return True


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


class ControlView:
    """A gateway replica's copy of the control plane's state, kept current by one waiting call at a time."""

    def __init__(self, control: Any, routing: dict[str, RoutingPolicy]) -> None:
        self._control = control  # the ControlPlane deployment's handle
        self.snapshot = ControlSnapshot(routing=dict(routing))
        self._answered_at = 0.0  # when the control plane last answered
        self._fetch: asyncio.Future[None] | None = None  # the one read in flight, shared by requests
        self._stale_since: float | None = None  # requests began waiting for a quiet control plane
        self._follower: asyncio.Task[None] | None = None

    async def refresh(self, force: bool = False) -> None:
        """Make sure ``snapshot`` is current. The waiting call (started here, on the replica's loop) keeps it
        so; it is read afresh with ``force`` (after this replica's own admin calls), at the first request, and
        should the waiting call have gone quiet (requests that find it so share one read). A control plane
        being replaced holds requests up at most ``STALE_READ_WAIT_S`` in all, however many reads fail: they
        are routed as before (only a replica's first request, which has nothing else to go by, waits for the
        answer)."""
        if self._follower is None or self._follower.done():
            self._follower = asyncio.get_running_loop().create_task(self._follow())
        if force:
            await self._read()
        elif time.monotonic() - self._answered_at > WATCH_TIMEOUT_S + 5:
            if self._fetch is None or self._fetch.done():
                self._fetch = asyncio.ensure_future(self._read())
                self._fetch.add_done_callback(_retrieved)
            first = self._answered_at == 0.0
            now = time.monotonic()
            self._stale_since = self._stale_since or now
            left = max(0.0, STALE_READ_WAIT_S - (now - self._stale_since))
            try:  # shielded: a request given up does not cancel the others' read
                await asyncio.wait_for(asyncio.shield(self._fetch), None if first else left)
            except (TimeoutError, RayError, RayServeException):
                if first:
                    raise

    async def _read(self) -> None:
        answer: ControlSnapshot = await self._control.snapshot.remote()
        self._take(answer)

    def _take(self, answer: ControlSnapshot) -> None:
        if answer.is_newer_than(self.snapshot):  # a read that took longer may bring an older one
            self.snapshot = answer
        self._answered_at, self._stale_since = time.monotonic(), None

    async def _follow(self) -> None:
        """Take each change of the control plane as it happens."""
        while True:
            held = self.snapshot
            try:
                answer: ControlSnapshot = await self._control.changed_since.remote(held.epoch, held.revision)
            except (RayError, RayServeException) as exc:  # being replaced: ask the new one shortly
                logger.warning("waiting on the control plane failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self._take(answer)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Take a shared read's error, which every request may have stopped waiting for (else asyncio logs it as
    never retrieved)."""
    if not future.cancelled():
        future.exception()
