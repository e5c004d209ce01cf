"""What an input looks like now, in one string: a changed fingerprint means the input must be scored again.

``metadata`` (the default) comes from the listing: size and modification time, so listing 100,000 files costs
what listing them costs and nothing is read. A URI list is not listed, so its files are asked for their
metadata (one ``get_file_info`` call per filesystem). ``content`` hashes the bytes (SHA-256): a file rewritten
with the same bytes is not scored again, at the price of reading everything on every run. Rows of a Parquet
input have no metadata of their own: their fingerprint is always the hash of their image bytes, read one record
batch at a time.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from common.errors import InputError
from common.filesystems import resolve
from pipeline.runs.sources import FileListing, ParquetSource

FingerprintMode = Literal["metadata", "content"]
_HASH_THREADS = 8  # reading is I/O-bound and hashlib releases the GIL
_CHUNK = 1 << 20


def fingerprinted(source: FileListing | ParquetSource, mode: FingerprintMode = "metadata") -> pa.Table:
    """``(id, uri, fingerprint)`` for every input, one row per id. A file that cannot be stat'ed or read gets
    a fingerprint naming that (``missing``), so it is still scored and fails with its own reason."""
    if isinstance(source, ParquetSource):
        return _unique(_parquet_fingerprints(source), source.path)
    table = source.table
    uris = table.column("uri").to_pylist()
    if mode == "content":
        with ThreadPoolExecutor(_HASH_THREADS) as pool:
            prints = list(pool.map(_content_hash, uris))
    else:
        sizes, mtimes = table.column("size").to_pylist(), table.column("mtime_ns").to_pylist()
        unknown = [i for i, size in enumerate(sizes) if size is None]
        for i, info in zip(unknown, _file_infos([uris[i] for i in unknown]), strict=True):
            sizes[i], mtimes[i] = (info.size, info.mtime_ns) if info.type == pafs.FileType.File else (None, None)
        prints = [f"size={s}:mtime_ns={m}" if s is not None else "missing" for s, m in zip(sizes, mtimes, strict=True)]
    return pa.table(
        {"id": table.column("id"), "uri": table.column("uri"), "fingerprint": pa.array(prints, pa.string())}
    )


def _parquet_fingerprints(source: ParquetSource) -> pa.Table:
    import pyarrow.dataset as pads

    dataset = pads.dataset(source.path, filesystem=source.filesystem, format="parquet")
    ids, uris, prints = [], [], []
    for fragment in dataset.get_fragments():
        for batch in fragment.to_batches(columns=[source.id_column, source.bytes_column], batch_size=1024):
            ids += [str(i) for i in batch.column(0).to_pylist()]
            for data in batch.column(1).to_pylist():
                prints.append(f"sha256={hashlib.sha256(data).hexdigest()}" if data is not None else "missing")
            uris += [fragment.path] * batch.num_rows
    return pa.table({"id": pa.array(ids, pa.string()), "uri": pa.array(uris, pa.string()), "fingerprint": prints})


def _unique(table: pa.Table, where: str) -> pa.Table:
    counts = pc.value_counts(table.column("id"))
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        examples = ", ".join(repr(v) for v in repeated.field("values")[:3].to_pylist())
        raise InputError(
            f"{where} holds {len(repeated)} ids more than once (e.g. {examples}); nightly needs one row per id"
        )
    return table


def _file_infos(uris: list[str]) -> list[pafs.FileInfo]:
    """File infos in the order of ``uris``, asked in one call per filesystem."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, uri in enumerate(uris):
        groups["/".join(uri.split("/", 3)[:3]) if "://" in uri else ""].append(i)  # scheme://authority
    infos: list[pafs.FileInfo | None] = [None] * len(uris)
    for members in groups.values():
        fs, _ = resolve(uris[members[0]])
        paths = [resolve(uris[i])[1] for i in members]
        for i, info in zip(members, fs.get_file_info(paths), strict=True):
            infos[i] = info
    return [info for info in infos if info is not None]


def _content_hash(uri: str) -> str:
    try:
        fs, path = resolve(uri)
        digest = hashlib.sha256()
        with fs.open_input_stream(path) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    except (OSError, ValueError):
        return "missing"
    return f"sha256={digest.hexdigest()}"


def frozen_set_digest(frozen: pa.Table) -> str:
    """A short digest naming a frozen set: its ids and fingerprints, in order."""
    digest = hashlib.sha256()
    lines = pc.binary_join_element_wise(frozen.column("id"), frozen.column("fingerprint"), "\t")
    for chunk in lines.chunks:
        for value in chunk.to_pylist():
            digest.update(value.encode() + b"\n")
    return digest.hexdigest()[:16]
