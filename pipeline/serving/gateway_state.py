"""What the gateway's route mixins (``admin.py``, ``health.py``) use of the ``Gateway`` deployment's state,
declared once for the reader and for mypy; the gateway sets these attributes and defines ``_resolve``."""

from __future__ import annotations

from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from pipeline.serving.config import ServeConfig
from pipeline.serving.control import ControlSnapshot, ControlView
from pipeline.serving.scorer import GraphCache, ScorerClient


class GatewayState:
    _config: ServeConfig
    _graphs: GraphCache
    _repository: ModelRepository
    _scorer: ScorerClient
    _view: ControlView

    @property
    def _snapshot(self) -> ControlSnapshot:
        """The control plane's state as this replica last heard it."""
        return self._view.snapshot

    def _resolve(self, name: str, version: str | None) -> ModelRef:
        raise NotImplementedError  # the gateway's
