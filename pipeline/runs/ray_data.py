"""The batch runner: turn a graph, a source and a resource plan into a Ray Data pipeline, and run it.

Only ids and paths (or, for Parquet input, the encoded bytes) enter Ray Data; decoding happens inside the
actors. In the split layout the preprocess actors emit ``pixels`` as a dense uint8 ``(N, H, W, C)`` array,
which Ray Data stores as an Arrow fixed-shape tensor column and hands to the inference actors as a
zero-copy numpy view: H*W*C bytes per image cross the object store, no per-row Python objects.
Predictions stream back to the driver, which writes Parquet and keeps the tally (rows, errors by reason).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common.errors import ModelLoadError, WorkerCrashedError
from operators._rows import object_array
from operators.base import ERROR, Batch, OperatorSpec
from pipeline.crash_isolation import forget_fault_reports
from pipeline.graph import Graph, Stage
from pipeline.models.repository import ModelVersion
from pipeline.output import predictions_table
from pipeline.runs._isolation import MAX_TASK_RETRIES, IsolatingStage, start_journal
from pipeline.runs.planner import ResourcePlan
from pipeline.runs.publish import publish_run
from pipeline.runs.sources import FileListing, ParquetSource, Source
from pipeline.runs.summary import RunSummary

logger = logging.getLogger(__name__)


def _check_assigned_gpus(device: str) -> None:
    """A CUDA stage must have been given a GPU by Ray; otherwise fail loudly, never run on CPU quietly."""
    import ray

    if device == "cuda" and not ray.get_gpu_ids():
        raise ModelLoadError("inference was planned on CUDA but Ray assigned this actor no GPU")


def _as_source_batch(batch: Batch, rename: dict[str, str]) -> Batch:
    out = {rename.get(k, k): v for k, v in batch.items()}
    if out["id"].dtype != object:
        out["id"] = out["id"].astype(str).astype(object)
    return out


# Where placement labels live: cluster.yaml and the deploy/ manifests give decode (CPU) nodes and inference
# (GPU) nodes this Ray node label.
ROLE_LABEL = "streamscore.io/role"


def _this_node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


class PreprocessActor:
    """Split layout, CPU side: source rows -> uint8 pixels (+ id, error; + the node, when recording)."""

    def __init__(
        self, specs: tuple[OperatorSpec, ...], rename: dict[str, str], journal: Any, record_node: bool
    ) -> None:
        self._stage = IsolatingStage(Stage(preprocess=specs), journal, "preprocess")
        self._rename = rename
        self._node = _this_node() if record_node else None

    def __call__(self, batch: Batch) -> Batch:
        out = self._stage(_as_source_batch(batch, self._rename))
        kept = {"id": out["id"], "pixels": out["pixels"], ERROR: out[ERROR]}
        if self._node is not None:
            kept["decode_node_id"] = object_array([self._node] * len(out["id"]))
        return kept


def _node_columns(table: pa.Table, batch: Batch, record_node: bool) -> pa.Table:
    """The table with ``node_id`` (the Ray node that ran the model) and ``decode_node_id`` (the one that
    decoded), when asked: the nightly job records both."""
    if not record_node:
        return table
    node = _this_node()
    decoded = list(batch["decode_node_id"]) if "decode_node_id" in batch else [node] * table.num_rows
    table = table.append_column("node_id", pa.array([node] * table.num_rows, pa.string()))
    return table.append_column("decode_node_id", pa.array(decoded, pa.string()))


def role_placement(role: str) -> dict[str, Any]:
    """A ``label_selector`` that keeps actors of ``role`` ("decode", "inference") on the nodes labelled for it,
    when the cluster labels any; nothing otherwise (an unlabelled cluster places by resources alone)."""
    import ray

    labelled = any(node.get("Alive") and (node.get("Labels") or {}).get(ROLE_LABEL) == role for node in ray.nodes())
    return {"label_selector": {ROLE_LABEL: role}} if labelled else {}


class InferenceActor:
    """Split layout, model side: pixels -> prediction table."""

    def __init__(
        self, specs: tuple[OperatorSpec, ...], model: ModelVersion, device: str, journal: Any, record_node: bool
    ) -> None:
        _check_assigned_gpus(device)
        self._stage = IsolatingStage(Stage(inference=specs), journal, "inference")
        self._model = model
        self._record_node = record_node

    def __call__(self, batch: Batch) -> pa.Table:
        return _node_columns(predictions_table(self._stage(batch), self._model), batch, self._record_node)


class FusedActor:
    """Fused layout: source rows -> prediction table in one process (read, decode, preprocess, infer)."""

    def __init__(self, graph: Graph, device: str, rename: dict[str, str], journal: Any, record_node: bool) -> None:
        _check_assigned_gpus(device)
        self._stage = IsolatingStage(Stage(graph.preprocess, graph.inference), journal, "fused")
        self._model = graph.model
        self._rename = rename
        self._record_node = record_node

    def __call__(self, batch: Batch) -> pa.Table:
        table = predictions_table(self._stage(_as_source_batch(batch, self._rename)), self._model)
        return _node_columns(table, batch, self._record_node)


# Ray Data restarts a dead actor and retries its task forever by default: a row that kills its worker (OOM kill,
# crash in a native decoder) would loop without end. Tasks are retried a bounded number of times instead, which
# is what pipeline.runs._isolation needs to find such a row; a block that kills its worker more often than that ends
# the run with WorkerCrashedError. Ray 2.60 takes these only through ray_remote_args, which it warns is
# deprecated (no named parameter replaces them yet), hence _map_batches.
ACTOR_FAULT_POLICY: dict[str, Any] = {"max_restarts": -1, "max_task_retries": MAX_TASK_RETRIES}


def _map_batches(dataset: Any, fn: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        return dataset.map_batches(fn, **kwargs, **ACTOR_FAULT_POLICY)


def tune_data_context() -> None:
    """Turn off Ray Data bookkeeping that costs CPU on every task and buys a batch job nothing.

    Measured on 2 cores: a USS-polling thread started per map task and the progress bars took CPU from the
    actors that do the work. Everything else keeps Ray's defaults.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.memory_usage_poll_interval_s = None
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False


def source_dataset(source: Source, plan: ResourcePlan) -> tuple[Any, dict[str, str]]:
    """The input rows as a Ray Dataset, and the renames that turn its columns into ``id`` and ``bytes``."""
    import ray.data

    if isinstance(source, FileListing):
        # One block per batch (finer for small inputs, so every actor gets a share): balanced work.
        rows = source.table.select(["id", "uri"])  # the listing's size and mtime stay here
        workers = plan.inference_actors + plan.preprocess_actors
        block_rows = max(1, min(plan.batch_size, -(-rows.num_rows // workers)))
        # from_blocks keeps our block boundaries and computes block metadata here (from_arrow runs a remote
        # task per block for it: half a second of start-up on a small cluster).
        return ray.data.from_blocks([rows.slice(i, block_rows) for i in range(0, rows.num_rows, block_rows)]), {}
    assert isinstance(source, ParquetSource)
    # Ray 2.60's default (V2) Parquet reader starts with a ListFiles task that always reserves one whole
    # CPU; with the actors holding all but ``reserved_cpus`` it never gets scheduled and the job hangs.
    # The V1 reader honours ``num_cpus``, so this read (and only this read) uses it.
    context = ray.data.DataContext.get_current()
    previous, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        dataset = ray.data.read_parquet(
            source.path,
            filesystem=source.filesystem,
            columns=[source.id_column, source.bytes_column],
            num_cpus=plan.io_task_cpus,
        )
    finally:
        context.use_datasource_v2 = previous
    if source.only_ids is not None:
        keep = _RowsWithIds(ray.put(source.only_ids), source.id_column)
        dataset = dataset.map_batches(keep, batch_format="pyarrow", num_cpus=plan.io_task_cpus)
    return dataset, {source.id_column: "id", source.bytes_column: "bytes"}


class _RowsWithIds:
    """The rows of a Parquet block whose id is in a set (held once in the object store): the rows
    ``ParquetSource.row_filter`` keeps, for a reader that must not carry the set in every read task."""

    def __init__(self, ids: Any, id_column: str) -> None:
        self._ids, self._id_column = ids, id_column

    def __call__(self, table: pa.Table) -> pa.Table:
        import ray

        ids = ray.get(self._ids)
        return table.filter(pc.is_in(table.column(self._id_column).cast(pa.string()), value_set=ids))


def preprocessed_dataset(
    dataset: Any, graph: Graph, plan: ResourcePlan, rename: dict[str, str], journal: Any, record_node: bool = False
) -> Any:
    """Split layout, first half: rows -> ``id``, ``pixels`` (Arrow fixed-shape uint8 tensor), ``error``; on the
    decode nodes when the cluster labels them."""
    import ray.data

    return _map_batches(
        dataset,
        PreprocessActor,
        fn_constructor_args=(graph.preprocess, rename, journal, record_node),
        compute=ray.data.ActorPoolStrategy(min_size=plan.preprocess_actors, max_size=plan.max_preprocess_actors),
        num_cpus=plan.cpus_per_preprocess_actor,
        batch_size=plan.batch_size,
        batch_format="numpy",
        **role_placement("decode"),
    )


def build_dataset(graph: Graph, source: Source, plan: ResourcePlan, journal: Any, record_node: bool = False) -> Any:
    """The Ray Data plan (lazy): source -> actors -> prediction tables; ``journal``: a CrashJournal actor."""
    import ray.data

    tune_data_context()
    dataset, rename = source_dataset(source, plan)
    if isinstance(source, FileListing):  # its blocks are known: an actor without one would only idle
        plan = plan.for_blocks(dataset.num_blocks())
    device_graph = graph.on_device(plan.device, 0, plan.ort_threads, plan.rows_per_ort_call)
    infer_args: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(min_size=plan.inference_actors, max_size=plan.max_inference_actors),
        "num_cpus": plan.cpus_per_inference_actor,
        "batch_size": plan.batch_size,
        "batch_format": "numpy",
    }
    if plan.gpus_per_inference_actor:
        infer_args["num_gpus"] = plan.gpus_per_inference_actor
    if plan.layout == "split" or plan.gpus_per_inference_actor:  # a fused CPU actor decodes as much as it infers
        infer_args |= role_placement("inference")
    if plan.layout == "fused":
        return _map_batches(
            dataset,
            FusedActor,
            fn_constructor_args=(device_graph, plan.device, rename, journal, record_node),
            **infer_args,
        )
    pixels = preprocessed_dataset(dataset, device_graph, plan, rename, journal, record_node)
    infer_actor_args = (device_graph.inference, graph.model, plan.device, journal, record_node)
    return _map_batches(pixels, InferenceActor, fn_constructor_args=infer_actor_args, **infer_args)


def scored_tables(graph: Graph, source: Source, plan: ResourcePlan, *, record_node: bool = False) -> Iterator[pa.Table]:
    """Run the pipeline and yield its prediction tables as they arrive (in no set order); needs a connected
    Ray. ``record_node``: each row also carries the ``node_id`` of the Ray node that scored it.

    A block whose worker died more often than its retries allow raises ``WorkerCrashedError``, naming the
    rows found killing workers.
    """
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    logger.info("scoring with %s", plan.describe())
    journal = start_journal()
    rows = 0
    try:
        dataset = build_dataset(graph, source, plan, journal, record_node=record_node)
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows += table.num_rows
            yield table
    except (ActorDiedError, ActorUnavailableError) as exc:
        deadly = ray.get(journal.deadly_rows.remote())
        unreachable = isinstance(exc, ActorUnavailableError)  # what a lost node looks like before Ray marks it dead
        named = f"; rows a worker died on: {', '.join(deadly[:10])}" if deadly else ""
        raise WorkerCrashedError(
            f"a scoring actor died after {rows} rows, more often than its {MAX_TASK_RETRIES} retries allow "
            f"({type(exc).__name__}{': or its node was lost' if unreachable else ''}){named}: "
            f"{str(exc).strip().splitlines()[0][:300]}"
        ) from exc
    finally:
        ray.kill(journal)
        forget_fault_reports()


def run_batch(
    graph: Graph,
    source: Source,
    output_uri: str,
    plan: ResourcePlan,
    *,
    overwrite: bool = False,
    max_error_fraction: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    started_at: float | None = None,
) -> RunSummary:
    """Score ``source`` into ``output_uri`` with Ray Data; needs a connected Ray (``ray.init`` is the caller's
    business). What is published, and when, is ``pipeline.runs.publish.publish_run``'s: the same for every executor."""
    return publish_run(
        scored_tables(graph, source, plan),
        source,
        output_uri,
        plan.describe(),
        overwrite=overwrite,
        max_error_fraction=max_error_fraction,
        on_progress=on_progress,
        started_at=started_at,
    )
