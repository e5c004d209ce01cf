"""The operator graph: one ordered list of operators, built from a model version's manifest and ScoringOptions.

The graph has two stages. ``preprocess`` (bytes -> uint8 pixels) is CPU work; ``inference`` (pixels ->
predictions) runs where the model is. The batch job, the Serve app and in-process callers all run these same
two lists of operator specs, so preprocessing cannot drift between them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

import operators
from common.errors import ContractError
from operators._rows import batch_length, concatenate, errors_of, object_array, one_row
from operators.base import ERROR, ERROR_COLUMN, Batch, Column, Operator, OperatorSpec
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository, ModelVersion
from pipeline.options import ScoringOptions
from pipeline.output import predictions_table


@dataclass(frozen=True)
class Graph:
    """Operator specs for both stages plus the model version they serve (all picklable, nothing heavy)."""

    model: ModelVersion
    preprocess: tuple[OperatorSpec, ...]
    inference: tuple[OperatorSpec, ...]

    def on_device(
        self, device: str, device_id: int = 0, intra_op_threads: int = 1, max_rows_per_call: int | None = None
    ) -> Graph:
        """The same graph with inference placed on ``device`` ("cpu" or "cuda") with the given threads."""
        return self.with_infer_params(
            device=device, device_id=device_id, intra_op_threads=intra_op_threads, max_rows_per_call=max_rows_per_call
        )

    def with_infer_params(self, **params: Any) -> Graph:
        """The same graph with ``params`` set on its infer operator (placement, threads, ``on_error``)."""
        inference = tuple(
            OperatorSpec(name=s.name, params={**s.params, **params}) if s.name == "infer" else s for s in self.inference
        )
        return replace(self, inference=inference)

    def run(self, images: Sequence[bytes | None], ids: Sequence[str] | None = None) -> pa.Table:
        """Score encoded images in this process (tests, notebooks, Serve) and return the prediction table."""
        ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
        batch = {"id": object_array(list(ids)), "bytes": object_array(list(images))}
        return predictions_table(self._in_process_stage(batch), self.model)

    @functools.cached_property
    def _in_process_stage(self) -> Stage:
        # Built once per graph: building operators opens the ONNX Runtime session, tens of milliseconds.
        return Stage(self.preprocess, self.inference)


class Abandoned(Exception):
    """The caller of a stage stopped waiting for it."""


class Stage:
    """Operators built from specs, run in order; built where it runs (a Ray actor or this process).

    ``preprocess`` operators run on one row at a time, so a worker holds at most one full-size decoded image
    (plus its resize) however large the batch; what they hand on is model-sized. ``inference`` operators then
    run on the whole batch, which is what the model wants.
    """

    def __init__(self, preprocess: Sequence[OperatorSpec] = (), inference: Sequence[OperatorSpec] = ()) -> None:
        self._per_row = [operators.create(s) for s in preprocess]
        self._per_batch = [operators.create(s) for s in inference]
        for op in self._per_row + self._per_batch:
            op.setup()

    def __call__(self, batch: Batch, before_row: Callable[[int], None] | None = None) -> Batch:
        """Run the stage. ``before_row(i)`` is called before preprocessing row ``i``; it may raise (``Abandoned``:
        the caller gave up on the batch, e.g. a request past its time) to start no more rows."""
        batch = {**batch, ERROR: errors_of(batch)}
        rows = batch_length(batch)
        if self._per_row and (rows > 1 or before_row is not None):
            done = []
            for i in range(rows):
                if before_row is not None:
                    before_row(i)
                done.append(self._run(self._per_row, one_row(batch, i)))
            batch = concatenate(done) if done else batch
        else:
            batch = self._run(self._per_row, batch)
        return self._run(self._per_batch, batch)

    @staticmethod
    def _run(ops: Sequence[Operator], batch: Batch) -> Batch:
        for op in ops:
            batch = op(batch)
        return batch


SOURCE_SCHEMA = {
    "id": Column("id", "str"),
    "bytes": Column("bytes", "bytes"),
    "uri": Column("uri", "str"),
    ERROR: ERROR_COLUMN,
}


def check_contract(ops: Sequence[Operator], available: Sequence[Column]) -> None:
    """Each operator's inputs are written upstream with the dtype, rank and raggedness it expects.

    Fails when the graph is built, naming the operator, the column, what it expects and what it would get.
    """
    columns: dict[str, tuple[Column, str]] = {c.name: (c, "the source") for c in available}
    for op in ops:
        for wanted in op.inputs():
            if wanted.name not in columns:
                raise ContractError(f"operator {op.name!r} reads [{wanted.name!r}], which no earlier operator writes")
            given, producer = columns[wanted.name]
            ranks_differ = None not in (wanted.rank, given.rank) and wanted.rank != given.rank
            if given.dtype != wanted.dtype or given.ragged != wanted.ragged or ranks_differ:
                raise ContractError(
                    f"operator {op.name!r} reads {wanted.name!r} as {wanted.describe()}, but {producer} "
                    f"writes it as {given.describe()}"
                )
        for dropped in op.drops:
            columns.pop(dropped, None)
        for written in op.outputs():
            columns[written.name] = (written, f"operator {op.name!r}")


def build_graph(
    model: ModelRef | str,
    repository: ModelRepository,
    options: ScoringOptions | None = None,
    *,
    read_files: bool = False,
) -> Graph:
    """The graph for ``model`` (a reference, or ``"name[:version]"`` text) with ``options`` on top of its manifest.

    ``read_files`` adds a read step for rows that carry a ``uri`` instead of the image bytes.
    """
    return graph_for_model(repository.load(model), options or ScoringOptions(), read_files=read_files)


def graph_for_model(model: ModelVersion, options: ScoringOptions, *, read_files: bool = False) -> Graph:
    """The graph for a loaded model version: preprocessing from its manifest, choices from ``options``."""
    m = model.manifest
    decode: dict[str, Any] = {
        "backend": options.decode_backend,
        "color": m.input.color,
        "formats": options.formats,
        "max_pixels": options.max_pixels,
        "background": options.background,
        "target_shorter": m.preprocess.resize_shorter if options.dct_downscale else None,
        "max_bytes": options.max_file_bytes,
    }
    preprocess = [
        OperatorSpec(name="decode", params=decode),
        OperatorSpec(
            name="resize",
            params={
                "shorter": m.preprocess.resize_shorter,
                "interpolation": m.preprocess.interpolation,
                "backend": options.resize_backend,
                "crop": (m.input.height, m.input.width),
            },
        ),
        OperatorSpec(
            name="center_crop",
            params={"height": m.input.height, "width": m.input.width, "channels": m.input.channels},
        ),
        *m.preprocess.operators,
    ]
    if read_files:
        preprocess.insert(0, OperatorSpec(name="read_bytes", params={"max_file_bytes": options.max_file_bytes}))
    inference = [
        OperatorSpec(
            name="normalize", params={"mean": m.preprocess.mean, "std": m.preprocess.std, "layout": m.input.layout}
        ),
        OperatorSpec(
            name="infer",
            params={
                "model_uri": model.model_uri,
                "input_name": m.input.name,
                "output_name": m.output.name,
                "output_width": model.output_width,
                "fixed_batch": m.input.batch,
            },
        ),
        _answer_operator(model, options),
    ]
    # Parameters are validated now, on the driver, not on the first batch of a worker.
    built = [operators.create(s) for s in preprocess + inference]
    source = ("id", "uri", ERROR) if read_files else ("id", "bytes", ERROR)
    check_contract(built, [SOURCE_SCHEMA[name] for name in source])
    return Graph(model=model, preprocess=tuple(preprocess), inference=tuple(inference))


def _answer_operator(model: ModelVersion, options: ScoringOptions) -> OperatorSpec:
    """What turns the model's output into a row's answer: top-k labels, or the embedding vector."""
    output = model.manifest.output
    if model.manifest.task == "embedding":
        return OperatorSpec(name="embed", params={"l2_normalize": output.l2_normalize})
    params = {
        "labels": model.labels,
        "top_k": options.top_k,
        "softmax": output.kind == "logits",
        "keep_output": options.raw_outputs,
    }
    return OperatorSpec(name="postprocess", params=params)
