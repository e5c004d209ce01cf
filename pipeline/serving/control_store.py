"""The control plane's decisions kept in a file, so that they outlive its replica (``control_state_uri``).

Serve restarts a control plane whose process died, and a cluster may lose the node it ran on; without this
file the new replica would start from the config, routing traffic again to a canary its guard had rolled back.
Two rules decide what a new replica takes from the file:

- **The same deploy** (Serve restarted the replica; the app was not deployed again): everything, as it was
  last saved: routing set through the admin API, guards where they had got to (their step, their events), the
  versions' states, halts and rollback counts. Traffic counts start again (the guard waits for its
  ``min_requests`` anew).
- **A new deploy** (``streamscore serve`` again, ``serve deploy``, KubeRay redeploying): the config's routing,
  as a deploy is an operator's statement of it, but **halts carry over**: only ``admin release`` lifts one, so a
  config naming a rolled-back version sends its traffic to the stable version (logged) until an operator
  releases it. Rollback counts carry over too.

The file is JSON, replaced atomically after each change (``common.atomic_write``), on any filesystem pyarrow
or fsspec reads (a local path, ``s3://``, ``gs://``...). One file per app: two apps sharing one would take each
other's halts for their own. During a redeploy the old control plane may decide for a moment longer; it never
writes over the state of a later deploy (``ControlStore.newer_deploy``).
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.atomic_write import replace_file
from common.errors import ConfigError, StreamScoreError
from common.filesystems import resolve
from pipeline.models.ref import ModelRef
from pipeline.serving import guard
from pipeline.serving.guard import GuardEvent, GuardStatus
from pipeline.serving.routing import RoutingPolicy

logger = logging.getLogger(__name__)


class VersionState(BaseModel):
    """What the admin API last decided about a version; a version with no state is ``ready``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["ready", "failed", "retired"] = "ready"
    error: str | None = None

    @property
    def routable(self) -> bool:
        return self.state == "ready"


class ControlState(BaseModel):
    """The part of the control plane's state that is decided, not counted: what is saved and restored."""

    model_config = ConfigDict(frozen=True)

    routing: dict[str, RoutingPolicy] = Field(default_factory=dict)
    states: dict[ModelRef, VersionState] = Field(default_factory=dict)
    guards: dict[str, GuardStatus] = Field(default_factory=dict)  # per guarded model
    halted: dict[ModelRef, GuardEvent] = Field(default_factory=dict)  # canaries rolled back, until released
    rollbacks: dict[ModelRef, int] = Field(default_factory=dict)  # guard rollbacks, per version


class SavedControl(BaseModel):
    """The file's content. Maps keyed by a version are lists of pairs: JSON keys can only be strings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    deploy_id: str  # the deploy that wrote it (``new_deploy_id``): later deploys sort after earlier ones
    saved_at: float
    routing: dict[str, RoutingPolicy]
    states: list[tuple[ModelRef, VersionState]]
    guards: dict[str, GuardStatus]
    halted: list[tuple[ModelRef, GuardEvent]]
    rollbacks: list[tuple[ModelRef, int]]

    @classmethod
    def of(cls, state: ControlState, deploy_id: str) -> SavedControl:
        return cls(
            deploy_id=deploy_id,
            saved_at=time.time(),
            routing=state.routing,
            states=list(state.states.items()),
            guards=state.guards,
            halted=list(state.halted.items()),
            rollbacks=list(state.rollbacks.items()),
        )

    def state(self) -> ControlState:
        return ControlState(
            routing=self.routing,
            states=dict(self.states),
            guards=self.guards,
            halted=dict(self.halted),
            rollbacks=dict(self.rollbacks),
        )


class ControlStore:
    """Reads and replaces one app's state file."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs, self._path = resolve(uri)
        self._folder_made = False

    def load(self) -> SavedControl | None:
        """The saved state; None where there is none yet. A file that cannot be read as one (damaged, or written
        by another StreamScore) is moved aside, logged, and None returned: the app starts from its config rather
        than not at all, and the file stays for a person to look at. Errors reaching the store are raised."""
        try:
            with self._fs.open_input_stream(self._path) as stream:
                text = stream.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None
        try:
            return SavedControl.model_validate(json.loads(text))
        except (ValueError, StreamScoreError) as exc:  # pydantic's and json's errors are ValueErrors; ids: ours
            aside = f"{self._path}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
            self._fs.move(self._path, aside)
            logger.error("the control plane's state in %s is unreadable (kept as %s); starting from the config: %s",
                         self.uri, aside, exc)  # fmt: skip
            return None

    def newer_deploy(self, deploy_id: str) -> str | None:
        """The deploy that saved the file, where it is a later one than ``deploy_id``: the file is then that
        deploy's. (During a redeploy the old control plane may still decide for a moment; it must not write
        over the new one's state.) A file that cannot be read names none."""
        try:
            with self._fs.open_input_stream(self._path) as stream:
                other = json.loads(stream.read()).get("deploy_id")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return other if isinstance(other, str) and other > deploy_id else None

    def save(self, saved: SavedControl) -> None:
        if not self._folder_made:
            self._fs.create_dir(posixpath.dirname(self._path), recursive=True)
            self._folder_made = True
        replace_file(self._fs, self._path, (saved.model_dump_json(indent=1) + "\n").encode("utf-8"))


def new_deploy_id() -> str:
    """An id for one deploy of the app; ids of later deploys sort after those of earlier ones."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def restore(deployed: dict[str, RoutingPolicy], deploy_id: str, saved: SavedControl | None, now: float) -> ControlState:
    """The state a control plane starts with, for the routing it was deployed with (see the module's rules)."""
    if saved is not None and saved.deploy_id == deploy_id:
        return saved.state()
    halted = saved.state().halted if saved is not None else {}
    routing: dict[str, RoutingPolicy] = {}
    guards: dict[str, GuardStatus] = {}
    for name, policy in deployed.items():
        policy = without_halted(name, policy, halted)
        if policy.guard is not None:
            policy, guards[name] = guard.start(policy, now)
        routing[name] = policy
    return ControlState(
        routing=routing, guards=guards, halted=halted, rollbacks=saved.state().rollbacks if saved else {}
    )


def without_halted(name: str, policy: RoutingPolicy, halted: dict[ModelRef, GuardEvent]) -> RoutingPolicy:
    """``policy`` with the traffic of its halted versions sent to its stable version (logged); a ConfigError
    where a halted version is that stable version, or there is none to send it to: only a release lifts a
    halt, and a deploy that cannot keep to that is refused (``check_deployable`` says so before it starts)."""
    stopped = sorted(v for v in policy.versions() if ModelRef(name=name, version=v) in halted)
    if not stopped:
        return policy
    stable = policy.stable_version()
    if stable is None or stable in stopped:
        raise ConfigError(
            f"the routing of {name!r} sends traffic to version(s) {', '.join(stopped)}, rolled back by its guard"
            f" ({halted[ModelRef(name=name, version=stopped[0])].reason}), with no other stable version to send it"
            f" to. Release it first (streamscore admin release {name} {stopped[0]}) or route {name!r} elsewhere"
        )
    for version in stopped:
        logger.warning(
            "the config routes to version %s of %s, which its guard rolled back; its traffic goes to version %s"
            " until: streamscore admin release %s %s", version, name, stable, name, version,
        )  # fmt: skip
        policy = policy.without(version)
    return policy


def check_deployable(deployed: dict[str, RoutingPolicy], uri: str) -> None:
    """Refuse, before anything is deployed, routing that the saved halts would leave without a version to
    answer; and a state file that cannot be reached fails here rather than in the control plane's replica."""
    saved = ControlStore(uri).load()
    halted = saved.state().halted if saved is not None else {}
    for name, policy in deployed.items():
        without_halted(name, policy, halted)
