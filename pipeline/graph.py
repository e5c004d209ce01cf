"""The operator graph: one ordered list of operators, built from a GraphSpec and a model version's manifest.

The graph has two stages. ``preprocess`` (bytes -> uint8 pixels) is CPU work; ``inference`` (pixels ->
predictions) runs where the model is. The batch job, the Serve app and in-process callers all run these same
two lists of operator specs, so preprocessing cannot drift between them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

import operators
from operators.base import ERROR, Batch, Operator, OperatorSpec, errors_of, object_array
from pipeline.errors import ConfigError
from pipeline.models import ModelRepository, ModelVersion
from pipeline.output import predictions_table
from pipeline.spec import GraphSpec

SOURCE_COLUMNS = ("id", "bytes", "uri", ERROR)


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
        placement = {
            "device": device,
            "device_id": device_id,
            "intra_op_threads": intra_op_threads,
            "max_rows_per_call": max_rows_per_call,
        }
        inference = tuple(
            OperatorSpec(name=s.name, params={**s.params, **placement}) if s.name == "infer" else s
            for s in self.inference
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
        return Stage(self.preprocess + self.inference)


class Stage:
    """Operators built from specs, run in order; built where it runs (a Ray actor or this process)."""

    def __init__(self, specs: Sequence[OperatorSpec]) -> None:
        self.operators: list[Operator] = [operators.create(s) for s in specs]
        for op in self.operators:
            op.setup()

    def __call__(self, batch: Batch) -> Batch:
        batch = {**batch, ERROR: errors_of(batch)}
        for op in self.operators:
            batch = op(batch)
        return batch


def check_contract(specs: Sequence[OperatorSpec], available: Sequence[str]) -> None:
    """Every operator's inputs are produced upstream; fails at build time, naming the operator and column."""
    columns = set(available)
    for spec in specs:
        cls = operators.operator_class(spec.name)
        missing = [c.name for c in cls.reads if c.name not in columns]
        if missing:
            raise ConfigError(f"operator {spec.name!r} reads {missing}, which no earlier operator writes")
        columns |= {c.name for c in cls.writes}
        columns -= set(cls.drops)


def build_graph(spec: GraphSpec, repository: ModelRepository, *, read_files: bool = False) -> Graph:
    """Build the graph for ``spec`` from the model's manifest. ``read_files`` adds a read step for URI rows."""
    model = repository.load(spec.model)
    return graph_for_model(spec, model, read_files=read_files)


def graph_for_model(spec: GraphSpec, model: ModelVersion, *, read_files: bool = False) -> Graph:
    m = model.manifest
    decode: dict[str, Any] = {
        "backend": spec.decode.backend,
        "color": m.input.color,
        "formats": spec.decode.formats,
        "max_pixels": spec.decode.max_pixels,
        "background": spec.decode.background,
        "target_shorter": m.preprocess.resize_shorter if spec.decode.dct_downscale else None,
    }
    preprocess = [
        OperatorSpec(name="decode", params=decode),
        OperatorSpec(
            name="resize",
            params={
                "shorter": m.preprocess.resize_shorter,
                "interpolation": m.preprocess.interpolation,
                "backend": spec.resize_backend,
            },
        ),
        OperatorSpec(
            name="center_crop",
            params={"height": m.input.height, "width": m.input.width, "channels": m.input.channels},
        ),
    ]
    if read_files:
        preprocess.insert(0, OperatorSpec(name="read_bytes"))
    inference = [
        OperatorSpec(
            name="normalize", params={"mean": m.preprocess.mean, "std": m.preprocess.std, "layout": m.input.layout}
        ),
        OperatorSpec(
            name="infer",
            params={"model_uri": model.model_uri, "input_name": m.input.name, "output_name": m.output.name},
        ),
        OperatorSpec(
            name="postprocess",
            params={
                "labels": model.labels,
                "top_k": spec.top_k,
                "softmax": m.output.kind == "logits",
                "keep_output": spec.keep_raw_output,
            },
        ),
    ]
    all_specs = preprocess + inference
    for s in all_specs:  # validate parameters now, on the driver, not on the first batch of a worker
        operators.create(s)
    check_contract(all_specs, ("id", "uri", ERROR) if read_files else ("id", "bytes", ERROR))
    return Graph(model=model, preprocess=tuple(preprocess), inference=tuple(inference))
