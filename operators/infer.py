"""infer: run an ONNX model with ONNX Runtime on the rows that have not failed.

The device is decided by the caller from the resources Ray actually assigned, never from
``get_available_providers()`` (the GPU wheel lists CUDA even on machines without a GPU). A session asked to
run on CUDA that comes up without the CUDA provider is an error, not a silent CPU fallback. On CUDA, inputs
and outputs go through IOBinding so ORT does not allocate and copy per call behind our back.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np
import pyarrow.fs as pafs
from pydantic import Field

from common.errors import InferenceError, ModelLoadError
from common.filesystems import resolve
from operators._registry import register
from operators._rows import errors_of, ok_mask, with_errors
from operators.base import ERROR_COLUMN, Batch, Column, Operator, Params
from operators.reasons import Reason

logger = logging.getLogger(__name__)


class InferParams(Params):
    model_uri: str
    input_name: str
    output_name: str
    device: Literal["cpu", "cuda"] = "cpu"
    device_id: int = Field(default=0, ge=0)
    intra_op_threads: int = Field(default=1, ge=1)
    # None: IOBinding on CUDA only. Settable so the binding path can be checked against plain run() on CPU.
    io_binding: bool | None = None
    # ORT is called on at most this many rows at a time. On CPU a single thread runs small batches a few
    # percent faster per image (measured: MobileNetV2 7.2 ms/img at 4 rows, 7.6 at 16, 7.9 at 32), while
    # Ray wants larger blocks; None: the whole block in one call (what a GPU wants).
    max_rows_per_call: int | None = Field(default=None, ge=1)
    # What a failed ONNX Runtime call becomes. "rows": an inference_failed error on each row of the batch, which
    # a batch job keeps (every input comes out); "raise": an InferenceError, for callers that answer one
    # request and must not answer it with rows that hold no prediction (the Serve scorer).
    on_error: Literal["rows", "raise"] = "rows"
    # The graph's fixed batch size (None: dynamic). Calls then take exactly this many rows, the last one
    # padded with zeros whose outputs are dropped.
    fixed_batch: int | None = Field(default=None, ge=1)
    # Width of the output vector, for batches where no row reaches the model (the graph knows it from the
    # labels; a symbolic class axis in the ONNX graph would leave it unknown).
    output_width: int | None = Field(default=None, ge=1)


def read_model_bytes(uri: str) -> bytes:
    """Read a model file from a local path or any pyarrow/fsspec URI."""
    filesystem, path = resolve(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def session_source(uri: str) -> str | bytes:
    """What to hand ONNX Runtime for ``uri``: a local file's path, so that external data beside it is found
    (checked to stay in the version's folder by ``pipeline.models._onnx_graph`` when it is loaded and added);
    the bytes of a remote one, which must then hold all its weights."""
    filesystem, path = resolve(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return path
    return read_model_bytes(uri)


def make_session(params: InferParams) -> Any:
    """Build the ONNX Runtime session with exactly the threads and provider the caller asked for."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT otherwise sizes its pools from the machine, oversubscribing the cores Ray gave other actors.
    options.intra_op_num_threads = params.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if params.device == "cuda":
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": params.device_id}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    start = time.perf_counter()
    try:
        session = ort.InferenceSession(session_source(params.model_uri), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many types for a bad file; all mean "cannot load"
        raise ModelLoadError(f"could not load {params.model_uri}: {exc}") from exc
    if params.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise ModelLoadError(
            f"asked for CUDA (device {params.device_id}) but ONNX Runtime created the session with "
            f"{session.get_providers()}; check the CUDA/cuDNN libraries visible to this worker"
        )
    logger.info(
        "loaded %s on %s in %.1f ms (%d intra-op threads)",
        params.model_uri,
        session.get_providers()[0],
        (time.perf_counter() - start) * 1e3,
        params.intra_op_threads,
    )
    return session


@register("infer")
class Infer(Operator):
    Params = InferParams
    reads = (Column("input", "float32", ("N", "...")),)
    writes = (Column("output", "float32", ("N", "K")), ERROR_COLUMN)
    drops = ("input",)
    params: InferParams

    def __init__(self, params: InferParams) -> None:
        super().__init__(params)
        self._session: Any = None

    def setup(self) -> None:
        if self._session is None:
            self._session = make_session(self.params)

    def __getstate__(self) -> dict[str, Any]:
        # Sessions do not pickle; a copy shipped to another worker rebuilds its own in setup().
        return {"params": self.params, "_session": None}

    @property
    def providers(self) -> list[str]:
        self.setup()
        return list(self._session.get_providers())

    def __call__(self, batch: Batch) -> Batch:
        self.setup()
        x = batch["input"]
        ok = ok_mask(batch)
        errors = errors_of(batch).copy()
        outputs: np.ndarray | None = None
        if ok.any():
            try:
                valid = self._run_in_chunks(x if ok.all() else x[ok])
                outputs = np.full((len(x), *valid.shape[1:]), np.nan, dtype=np.float32)
                outputs[ok] = valid
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many types; each becomes our policy
                detail = f"{type(exc).__name__}: {exc}"
                if self.params.on_error == "raise":
                    raise InferenceError(f"{self.params.model_uri}: {detail}"[:500]) from exc
                logger.exception("inference failed on a batch of %d rows", int(ok.sum()))
                errors[ok] = Reason.INFERENCE_FAILED.row_error(detail)
        if outputs is None:
            outputs = np.full((len(x), self._num_outputs()), np.nan, dtype=np.float32)
        return with_errors(batch, errors, self.drops, output=outputs)

    def _run_in_chunks(self, x: np.ndarray) -> np.ndarray:
        fixed = self.params.fixed_batch
        step = fixed or self.params.max_rows_per_call or len(x)
        parts = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            if fixed and len(chunk) < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            # ascontiguousarray: ORT reads a non-contiguous numpy input wrongly (seen with sliced batches).
            parts.append(self._run(np.ascontiguousarray(chunk))[: min(step, len(x) - i)])
        outputs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return outputs.reshape(len(x), int(np.prod(outputs.shape[1:])))  # (N, K, 1, 1) or (N, 1, K) -> (N, K)

    def _run(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        if not (p.io_binding if p.io_binding is not None else p.device == "cuda"):
            return self._session.run([p.output_name], {p.input_name: x})[0]
        import onnxruntime as ort

        # The input is copied to the device once; the output stays there until the one copy back.
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(p.input_name, ort.OrtValue.ortvalue_from_numpy(x, p.device, p.device_id))
        binding.bind_output(p.output_name, p.device, p.device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _num_outputs(self) -> int:
        if self.params.output_width is not None:
            return self.params.output_width
        for output in self._session.get_outputs():
            if output.name == self.params.output_name and isinstance(output.shape[-1], int):
                return int(output.shape[-1])
        return 0
