"""Where an image's time goes: milliseconds per image in each stage of the graph, one image at a time.

Run in one process on one core (ONNX Runtime with one intra-op thread, as each scoring worker runs it), with
the very operators the pipeline builds for the model (``pipeline.graph``): read (the file's bytes), decode,
resize (with the crop box, as the pipeline does it), the rest of the crop, normalize, infer, postprocess
(softmax and top-k), write (the prediction rows made, then all written to one Parquet file, per image). The sum is what one core spends on
an image; the pipeline's job is to keep every core on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def stage_times(cfg: dict[str, Any], n: int = 200) -> dict[str, float]:
    """Milliseconds per image of each stage over the first ``n`` benchmark images (after one warm-up)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import operators
    from operators._rows import object_array
    from operators.base import ERROR
    from pipeline.graph import build_graph
    from pipeline.models.repository import ModelRepository
    from pipeline.output import predictions_table

    graph = build_graph(f"{cfg['model']}:{cfg['version']}", ModelRepository(cfg["models_dir"]))
    ops = [operators.create(spec) for spec in (*graph.preprocess, *graph.inference)]
    for op in ops:
        op.setup()
    paths = [Path(p) for p in cfg["images"][:n]]
    totals = {"read": 0.0, **{spec.name: 0.0 for spec in (*graph.preprocess, *graph.inference)}, "write": 0.0}
    out = Path(cfg["out_dir"]) / "stages.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    tables = []
    for i, path in enumerate([paths[0], *paths]):  # the first image warms up sessions and caches
        clock = time.perf_counter()
        data = path.read_bytes()
        times = {"read": time.perf_counter() - clock}
        batch: dict[str, Any] = {"id": object_array([path.stem]), "bytes": object_array([data])}
        batch[ERROR] = np.full(1, None, object)
        for op, spec in zip(ops, (*graph.preprocess, *graph.inference), strict=True):
            clock = time.perf_counter()
            batch = op(batch)
            times[spec.name] = time.perf_counter() - clock
        clock = time.perf_counter()
        table = predictions_table(batch, graph.model)  # the rows as the writer takes them
        times["write"] = time.perf_counter() - clock
        if i:
            tables.append(table)
            for name, seconds in times.items():
                totals[name] += seconds
    clock = time.perf_counter()  # and written as the pipeline writes them: many rows to a file
    pq.write_table(pa.concat_tables(tables), out)
    totals["write"] += time.perf_counter() - clock
    return {name: seconds / len(paths) * 1e3 for name, seconds in totals.items()}
