"""Writing one output part: duplicates, the layout, rejects, temporary names and atomic renames.

A ``PartSink`` receives the core's result batches of one input part, in order, and writes

- ``DIR/<part name>``: scored users (a part in a subfolder of a directory input, ``dt=2026-12-01/part-0.parquet``,
  at that path: its folders are made here), ``--layout list`` (``user_id``, ``items``, ``scores``) or
  ``--layout long`` (``user_id``, ``rank`` from 1, ``item_id``, ``score``), rows in input order;
- ``DIR/_rejects.parts/<part name>``: rejected rows (``part``, ``row``, ``user_id``, ``reason``),
  merged into ``DIR/_rejects.parquet`` when the job ends.

Both are written under a temporary name (``.<file name>.inprogress``, in the part's own folder), flushed
to disk, then renamed into place, so a reader (or a restarted job) sees a whole part or none of it.

**Duplicate users.** Within a part, the first row of a user wins, whatever it holds; every later
row of that user is rejected (even when the first row was itself rejected, say for an empty
history), as ``duplicate_user`` or, when the row has a fault of its own (an empty history, say),
for that fault: a user id is scored at most once per part. Parts are expected to
hold disjoint users (as a partitioned export does); users are not compared across parts, which
would need memory for every user of the input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec.batchinfer.preprocess import DUPLICATE_USER

REJECTS_DIR = "_rejects.parts"
REJECTS_FILE = "_rejects.parquet"
TEMP_SUFFIX = ".inprogress"


def output_schema(layout: str, user_type: pa.DataType, item_type: pa.DataType) -> pa.Schema:
    if layout == "list":
        return pa.schema([("user_id", user_type), ("items", pa.list_(item_type)), ("scores", pa.list_(pa.float32()))])
    return pa.schema([("user_id", user_type), ("rank", pa.int32()), ("item_id", item_type), ("score", pa.float32())])


def rejects_schema(user_type: pa.DataType) -> pa.Schema:
    return pa.schema([("part", pa.string()), ("row", pa.int64()), ("user_id", user_type), ("reason", pa.string())])


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def commit_file(temp: Path, final: Path) -> None:
    """fsync ``temp``, rename it to ``final`` (atomic on POSIX), fsync the directory."""
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, final)
    fsync_directory(final.parent)


def make_folders(directory: Path, path: Path) -> None:
    """The folders between ``directory`` and the file ``path`` below it, made where missing, each new one's
    entry fsynced in its parent, so a part committed in a subfolder survives a crash as a top-level one does."""
    for folder in reversed(path.relative_to(directory).parents[:-1]):  # outermost first, ``directory`` itself left out
        if not (directory / folder).is_dir():
            (directory / folder).mkdir()
            fsync_directory((directory / folder).parent)


def fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class FirstSeen:
    """Which user ids of a part appear for the first time (the duplicate-user policy above)."""

    def __init__(self) -> None:
        self.seen: set = set()

    def mask(self, users: pa.Array) -> np.ndarray:
        """(R,) bool: True where a non-null id is new to the part; remembers them."""
        ids = users.to_pylist()
        fresh = set(ids)
        if len(fresh) == len(ids) and None not in fresh and self.seen.isdisjoint(fresh):
            self.seen |= fresh  # the usual batch: no repeat, no Python loop per user
            return np.ones(len(ids), dtype=bool)
        first = np.zeros(len(ids), dtype=bool)
        for row, user in enumerate(ids):
            if user is not None and user not in self.seen:
                self.seen.add(user)
                first[row] = True
        return first


class PartSink:
    """Writes one output part and its rejects; ``commit()`` puts both in place and returns the counts."""

    def __init__(self, directory: Path, name: str, layout: str, user_type: pa.DataType,
                 item_type: pa.DataType) -> None:
        self.name, self.layout, self.user_type = name, layout, user_type
        self.final = directory / name
        self.rejects_final = directory / REJECTS_DIR / name
        make_folders(directory, self.final)
        make_folders(directory, self.rejects_final)
        self.rejects_final.unlink(missing_ok=True)  # a stale one from an attempt that did not commit
        self.writer = pq.ParquetWriter(temp_path(self.final), output_schema(layout, user_type, item_type))
        self.rejects_writer: pq.ParquetWriter | None = None
        self.first_seen = FirstSeen()
        self.rows = 0
        self.counts: dict = {"users_scored": 0, "rejected": {}, "unknown_items_dropped": 0, "users_without_items": 0}

    def write(self, result: pa.RecordBatch) -> None:
        users = result.column("user_id").cast(self.user_type)
        reasons = result.column("reject_reason")
        duplicate = ~self.first_seen.mask(users) & reasons.is_null().to_numpy(zero_copy_only=False) \
            & users.is_valid().to_numpy(zero_copy_only=False)
        reasons = pc.if_else(pa.array(duplicate), pa.scalar(DUPLICATE_USER), reasons)
        scored = reasons.is_null()
        rows = (result.column("row").to_numpy() if "row" in result.schema.names
                else self.rows + np.arange(result.num_rows, dtype=np.int64))
        self.rows += result.num_rows
        self._write_scored(users.filter(scored), result.filter(scored))
        rejected = pc.invert(scored)
        if pc.any(rejected).as_py():
            self._write_rejects(pa.array(rows).filter(rejected), users.filter(rejected), reasons.filter(rejected))

    def commit(self) -> dict:
        self.writer.close()
        if self.rejects_writer is not None:
            self.rejects_writer.close()
            commit_file(temp_path(self.rejects_final), self.rejects_final)
        commit_file(temp_path(self.final), self.final)
        return self.counts

    def abort(self) -> None:
        """Close and remove the half-written files (the part stays unfinished: a resume scores it again). A
        close that fails (the disk that stopped the part is still full) does not keep them from going."""
        for writer in (self.writer, self.rejects_writer):
            try:
                if writer is not None:
                    writer.close()
            except OSError:
                pass  # the file is removed next; the error that stopped the part is the one raised
        temp_path(self.final).unlink(missing_ok=True)
        temp_path(self.rejects_final).unlink(missing_ok=True)

    def _write_scored(self, users: pa.Array, result: pa.RecordBatch) -> None:
        items, scores = result.column("items"), result.column("scores")
        self.counts["users_scored"] += len(users)
        self.counts["unknown_items_dropped"] += int(pc.sum(result.column("unknown_items")).as_py() or 0)
        # scored, but nothing left to recommend (--exclude-seen, a window holding the whole catalog): an empty
        # list, and no row at all in the long layout, so the summary counts them
        self.counts["users_without_items"] += int(pc.sum(pc.equal(pc.list_value_length(items), 0)).as_py() or 0)
        if self.layout == "list":
            columns = [users, items, scores]
        else:
            lengths = pc.list_value_length(items).to_numpy()  # (U,) K each
            total = int(lengths.sum())
            rank = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1
            columns = [users.take(pa.array(np.repeat(np.arange(len(users)), lengths))), pa.array(rank, pa.int32()),
                       pc.list_flatten(items), pc.list_flatten(scores)]
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.writer.schema))

    def _write_rejects(self, rows: pa.Array, users: pa.Array, reasons: pa.Array) -> None:
        if self.rejects_writer is None:
            self.rejects_writer = pq.ParquetWriter(temp_path(self.rejects_final), rejects_schema(self.user_type))
        for reason, count in zip(*np.unique(reasons.to_numpy(zero_copy_only=False), return_counts=True)):
            self.counts["rejected"][str(reason)] = self.counts["rejected"].get(str(reason), 0) + int(count)
        part = pa.array([self.name] * len(rows), pa.string())
        self.rejects_writer.write_batch(pa.RecordBatch.from_arrays([part, rows, users, reasons],
                                                                   schema=self.rejects_writer.schema))


def merge_rejects(directory: Path, names: list[str], user_type: pa.DataType) -> Path:
    """Stream every part's rejects, in part order, into ``DIR/_rejects.parquet`` (written even when empty)."""
    final = directory / REJECTS_FILE
    with pq.ParquetWriter(temp_path(final), rejects_schema(user_type)) as writer:
        for name in names:
            path = directory / REJECTS_DIR / name
            if path.is_file():
                for batch in pq.ParquetFile(path).iter_batches():
                    writer.write_batch(batch)
    commit_file(temp_path(final), final)
    return final
