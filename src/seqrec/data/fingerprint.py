"""Content hash of an Arrow table, stable across runs and chunk layouts."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

_ROWS_PER_BATCH = 1 << 16


class _HashSink:
    """A write-only file object that feeds every byte into a hash."""

    def __init__(self) -> None:
        """Start an empty sha256."""
        self.hash = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> int:
        """Hash ``data``."""
        self.hash.update(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Mark closed."""
        self.closed = True


def table_fingerprint(table: pa.Table) -> str:
    """sha256 hex of ``table``'s schema and content in row order (metadata ignored).

    The table is re-batched into fixed-size record batches, each copied into fresh buffers, before it is
    written as an Arrow IPC stream, so the same content gives the same hash however it is chunked (a
    sliced string array keeps its parent's offsets, which the IPC writer writes as they are).
    """
    table = table.replace_schema_metadata(None)
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        for start in range(0, table.num_rows, _ROWS_PER_BATCH):
            batch = table.slice(start, _ROWS_PER_BATCH)
            writer.write_table(batch.take(np.arange(batch.num_rows)))  # fresh buffers, offsets from 0
    return sink.hash.hexdigest()
