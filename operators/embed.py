"""embed: the model's output vector as the row's embedding, optionally scaled to unit length (L2).

Why an operator of its own: an embedding model's output is the answer, not scores to rank. Failed rows keep
NaN vectors (the table masks them); a zero vector stays zero rather than becoming NaN under normalisation.
"""

from __future__ import annotations

import numpy as np

from operators._registry import register
from operators._rows import ok_mask, with_columns
from operators.base import Batch, Column, Operator, Params


class EmbedParams(Params):
    l2_normalize: bool = False


def l2_normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


@register("embed")
class Embed(Operator):
    Params = EmbedParams
    reads = (Column("output", "float32", ("N", "K")),)
    writes = (Column("embedding", "float32", ("N", "K")),)
    drops = ("output",)
    params: EmbedParams

    def __call__(self, batch: Batch) -> Batch:
        vectors = batch["output"].astype(np.float32, copy=False)  # (N, K): infer flattens pooled outputs
        embedding = np.full(vectors.shape, np.nan, dtype=np.float32)
        ok = ok_mask(batch)
        if ok.any():
            embedding[ok] = l2_normalized(vectors[ok]) if self.params.l2_normalize else vectors[ok]
        return with_columns(batch, self.drops, embedding=embedding)
