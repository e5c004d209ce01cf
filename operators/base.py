"""The Operator contract: vectorized, side-effect free steps over a batch of columns.

A batch is ``dict[str, np.ndarray]``, the format Ray Data hands to ``map_batches`` and that converts to
Arrow without per-row Python objects for fixed-shape columns. Every batch carries an ``error`` column (object
array, ``None`` when the row is fine): an operator that cannot handle a row writes a short reason there and
moves on, so no row is ever lost, and later operators skip rows that already failed.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from operators.reasons import Reason

Batch = dict[str, np.ndarray]
# The two image libraries behind decode and resize: Pillow (every format, antialiased resize) and OpenCV (faster).
Backend = Literal["pillow", "opencv"]
ERROR = "error"
logger = logging.getLogger(__name__)


class Params(BaseModel):
    """Base of every operator's parameters: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OperatorSpec(BaseModel):
    """An operator recorded by name and parameters, built later where it runs (on a Ray worker).

    ``module`` names the Python module that registers an operator from outside this library (a model's own
    step); it is imported wherever the spec is built, so Ray workers and Serve replicas find it too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    module: str | None = None


ANY_RANK = "..."


@dataclass(frozen=True)
class Column:
    """A column an operator reads or writes, checked between producer and consumer when a graph is built.

    ``dtype`` is a numpy dtype name for numeric data, or ``"str"`` / ``"bytes"`` for object columns of Python
    strings or bytes (``None`` allowed where a row failed). ``axes`` names every axis, the batch axis ``N``
    first; ``"..."`` stands for any number of trailing axes. ``ragged`` columns are object arrays holding one
    array per row (axes after ``N`` differ between rows), e.g. decoded images of different sizes.
    """

    name: str
    dtype: str
    axes: tuple[str, ...] = ("N",)
    ragged: bool = False

    @property
    def rank(self) -> int | None:
        """Number of axes, or None when ``...`` allows any."""
        return None if ANY_RANK in self.axes else len(self.axes)

    def describe(self) -> str:
        kind = "ragged " if self.ragged else ""
        return f"{kind}{self.dtype}[{', '.join(self.axes)}]"


# Every batch carries this column: None, or "<reason>: <detail>" once the row failed.
ERROR_COLUMN = Column(ERROR, "str")


class RowError(Exception):
    """Raised inside a per-row kernel; becomes ``"<reason>: <detail>"`` in that row's ``error`` column."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason.row_error(detail))
        self.reason = reason


class Operator(ABC):
    """One step of the graph. Subclasses set ``Params``, ``reads``, ``writes`` and implement ``__call__``.

    Operators never mutate their input batch: they return a new dict that shares untouched columns.
    ``setup`` does heavy work (loading a model) and runs once on the worker that will use the operator.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    reads: ClassVar[tuple[Column, ...]] = ()
    writes: ClassVar[tuple[Column, ...]] = ()
    drops: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any) -> None:
        self.params = params

    def inputs(self) -> tuple[Column, ...]:
        """The columns this instance reads (``reads`` unless its parameters change them)."""
        return self.reads

    def outputs(self) -> tuple[Column, ...]:
        """The columns this instance writes (``writes`` unless its parameters change them)."""
        return self.writes

    def setup(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Prepare heavy state; called once on the worker before the first batch."""

    @abstractmethod
    def __call__(self, batch: Batch) -> Batch:
        """Return a new batch with ``writes`` added and ``drops`` removed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"
