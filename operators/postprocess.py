"""postprocess: scores -> probabilities (softmax of logits), the top label and the top-k labels and scores."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from common.errors import ContractError
from operators._registry import register
from operators._rows import object_array, ok_mask, with_columns
from operators.base import Batch, Column, Operator, Params


class PostprocessParams(Params):
    labels: tuple[str, ...]
    top_k: int = Field(default=5, ge=1)
    softmax: bool = True
    keep_output: bool = False


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


@register("postprocess")
class Postprocess(Operator):
    Params = PostprocessParams
    reads = (Column("output", "float32", ("N", "K")),)
    writes = (
        Column("label", "str"),
        Column("score", "float32"),
        Column("top_k_index", "int32", ("N", "k")),
        Column("top_k_score", "float32", ("N", "k")),
    )
    drops = ("output",)
    params: PostprocessParams

    def outputs(self) -> tuple[Column, ...]:
        raw = (Column("raw_output", "float32", ("N", "K")),) if self.params.keep_output else ()
        return self.writes + raw

    def __call__(self, batch: Batch) -> Batch:
        p = self.params
        output = batch["output"].astype(np.float32, copy=False)
        n = len(output)
        k = min(p.top_k, len(p.labels))
        if output.ndim != 2 or (n and output.shape[1] != len(p.labels)):
            raise ContractError(f"model output has shape {output.shape}, expected (N, {len(p.labels)}) for the labels")
        ok = ok_mask(batch)
        probs = np.full((n, len(p.labels)), np.nan, dtype=np.float32)
        if ok.any():
            probs[ok] = softmax(output[ok].copy()) if p.softmax else output[ok]
        top_index = np.full((n, k), -1, dtype=np.int32)
        top_score = np.full((n, k), np.nan, dtype=np.float32)
        if ok.any():
            valid = probs[ok]
            part = np.argpartition(-valid, k - 1, axis=1)[:, :k]
            part_scores = np.take_along_axis(valid, part, axis=1)
            order = np.argsort(-part_scores, axis=1, kind="stable")
            top_index[ok] = np.take_along_axis(part, order, axis=1)
            top_score[ok] = np.take_along_axis(part_scores, order, axis=1)
        labels = object_array([p.labels[i[0]] if i[0] >= 0 else None for i in top_index] if k else [None] * n)
        columns = {"label": labels, "score": top_score[:, 0].copy(), "top_k_index": top_index, "top_k_score": top_score}
        if p.keep_output:
            columns["raw_output"] = output
        return with_columns(batch, self.drops, **columns)
