"""A run's frozen input set cut into fixed shards, and the scored rows gathered per shard as they arrive.

Shards are cut by position in id order, so the same frozen set always gives the same shards: a resumed run
knows which shard files it may reuse. Rows arrive from the actors in any order; a shard is complete, and
written, once every one of its rows has come back.
"""

from __future__ import annotations

import posixpath
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc


def shard_path(shard_dir: str, index: int) -> str:
    return posixpath.join(shard_dir, f"shard-{index:05d}.parquet")


class Shards:
    """The frozen set cut into fixed shards (by position in id order), and the scored rows gathered per shard."""

    def __init__(self, frozen: pa.Table, shard_rows: int) -> None:
        self.frozen, self.shard_rows = frozen, shard_rows
        self.count = -(-frozen.num_rows // shard_rows)
        self._position = {row_id: i for i, row_id in enumerate(frozen.column("id").to_pylist())}
        self._waiting: dict[int, list[pa.Table]] = {}
        self._arrived: list[str] = []
        self._missing = Counter(i // shard_rows for i in range(frozen.num_rows))

    def arrived(self) -> pa.Array:
        """Ids scored so far in this attempt (complete shards and the ones still gathering)."""
        return pa.array(self._arrived, pa.string())

    def rows_of(self, shards: list[int]) -> pa.Table:
        wanted = set(shards)
        mask = [i // self.shard_rows in wanted for i in range(self.frozen.num_rows)]
        return self.frozen.filter(pa.array(mask, pa.bool_()))

    def add(self, scored: pa.Table) -> list[tuple[int, pa.Table]]:
        """Take scored rows; return the shards this completes, each with its rows and input columns."""
        ids = scored.column("id").to_pylist()
        self._arrived += ids
        shard_ids = pa.array([self._position[i] // self.shard_rows for i in ids], pa.int64())
        complete = []
        for index in pc.unique(shard_ids).to_pylist():
            part = scored.filter(pc.equal(shard_ids, index))
            self._waiting.setdefault(index, []).append(part)
            self._missing[index] -= part.num_rows
            if self._missing[index] == 0:
                rows = pa.concat_tables(self._waiting.pop(index)).sort_by("id")
                where = pa.array([self._position[i] for i in rows.column("id").to_pylist()], pa.int64())
                for name in ("uri", "fingerprint"):
                    rows = rows.append_column(name, self.frozen.column(name).take(where))
                complete.append((index, rows))
        return complete
