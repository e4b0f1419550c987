"""Checks that turn a user's interaction table into the canonical one.

The canonical table has exactly three columns: ``user_id`` and ``item_id`` (``int64`` or
``string``) and ``timestamp`` (``int64``, seconds since the epoch when the input had real times,
else the position of the row within its user's rows in file order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec.config import IMPORT_FORMATS
from seqrec.errors import DataError, SchemaError, received_expected

ID_COLUMNS = ("user_id", "item_id")
TIMESTAMP = "timestamp"
CANONICAL_COLUMNS = ("user_id", "item_id", "timestamp")

_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def validate_interactions(table: pa.Table, source: str = "input") -> pa.Table:
    """Check ``table`` and return its canonical form (user_id, item_id, timestamp int64).

    Integer ids become ``int64``; string, large_string and dictionary-encoded ids become
    ``string``. Extra columns are dropped. Raises SchemaError for a missing, mistyped or
    null-holding column, DataError for a table without rows.
    """
    for name in ID_COLUMNS:
        _require_column(table, name, source)
    ids = {name: _id_column(table.column(name), name, source) for name in ID_COLUMNS}
    timestamps = None
    if TIMESTAMP in table.column_names:
        timestamps = _timestamp_column(table.column(TIMESTAMP), source)
    if table.num_rows == 0:
        raise DataError(received_expected(source, "0 rows", "at least one interaction"))
    if timestamps is None:
        positions = group_positions(group_codes(ids["user_id"]))
        timestamps = pa.chunked_array([pa.array(positions, pa.int64())])
    return pa.table(
        {"user_id": ids["user_id"], "item_id": ids["item_id"], TIMESTAMP: timestamps}
    )


def read_interactions(path: str | Path) -> pa.Table:
    """Read a Parquet file (or a directory of parts) and validate it."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError) as err:
        text_formats = ",".join(fmt for fmt in IMPORT_FORMATS if fmt != "parquet")
        raise DataError(
            received_expected(f"parquet input '{path}'", f"an unreadable path ({err})",
                              "a Parquet file or a directory of Parquet parts (text logs convert with "
                              f"`seqrec data import SRC DST --format {{{text_formats}}}`)")
        ) from err
    return validate_interactions(table, source=f"parquet input '{path}'")


def group_codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Dense integer code per row, equal for equal values (in order of first appearance)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)


def group_positions(codes: np.ndarray) -> np.ndarray:
    """Position (0-based) of each row among the rows sharing its code, in row order."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    group_start = np.cumsum(counts) - counts
    positions = np.empty(codes.size, dtype=np.int64)
    positions[order] = np.arange(codes.size, dtype=np.int64) - group_start[codes[order]]
    return positions


def _require_column(table: pa.Table, name: str, source: str) -> None:
    """Raise SchemaError naming ``name`` and the columns present when it is absent."""
    if name not in table.column_names:
        raise SchemaError(
            received_expected(f"{source}: column '{name}'", f"columns {table.column_names}",
                              f"a column named '{name}'")
        )


def _check_nulls(column: pa.ChunkedArray, name: str, source: str) -> None:
    """Raise SchemaError when ``column`` holds nulls."""
    if column.null_count:
        raise SchemaError(
            received_expected(f"{source}: column '{name}'", f"{column.null_count} nulls",
                              "no nulls")
        )


def _id_column(column: pa.ChunkedArray, name: str, source: str) -> pa.ChunkedArray:
    """Return an id column as int64 or string; SchemaError for any other type or nulls."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind)):
        raise SchemaError(
            received_expected(f"{source}: column '{name}'", kind, "an integer or string type")
        )
    _check_nulls(column, name, source)
    target = pa.int64() if pa.types.is_integer(kind) else pa.string()
    return _cast(column, target, name, source)


def _timestamp_column(column: pa.ChunkedArray, source: str) -> pa.ChunkedArray:
    """Return the timestamp column as int64 (seconds for timestamp types)."""
    kind = column.type
    _check_nulls(column, TIMESTAMP, source)
    if pa.types.is_integer(kind):
        return _cast(column, pa.int64(), TIMESTAMP, source)
    if pa.types.is_timestamp(kind):
        return pa.chunked_array([floor_seconds(column.combine_chunks())])
    if pa.types.is_floating(kind):
        return _whole_floats(column, source)
    raise SchemaError(
        received_expected(f"{source}: column '{TIMESTAMP}'", kind,
                          "an integer, timestamp or whole-valued float type")
    )


def floor_seconds(values: pa.Array) -> pa.Array:
    """A timestamp-typed array as int64 seconds, floored (-1.5 s is -2): how training and batch
    scoring both read times. Nulls stay null."""
    raw = values.cast(pa.int64())
    floored = np.floor_divide(pc.fill_null(raw, 0).to_numpy(), _UNIT_PER_SECOND[values.type.unit])
    return pa.array(floored, pa.int64(), mask=raw.is_null().to_numpy(zero_copy_only=False))


def _whole_floats(column: pa.ChunkedArray, source: str) -> pa.ChunkedArray:
    """Cast a float timestamp column to int64 when every value is a whole number."""
    values = column.to_numpy()
    bad = ~np.isfinite(values) | (np.floor(values) != values)
    if bad.any():
        first = float(values[bad][0])
        raise SchemaError(
            received_expected(
                f"{source}: column '{TIMESTAMP}'",
                f"{int(bad.sum())} values that are not whole numbers (first: {first})",
                "integers, e.g. seconds since the epoch",
            )
        )
    return _cast(column, pa.int64(), TIMESTAMP, source)


def _cast(column: pa.ChunkedArray, target: pa.DataType, name: str,
          source: str) -> pa.ChunkedArray:
    """Cast safely; a value out of range for ``target`` becomes a SchemaError."""
    if column.type == target:
        return column
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise SchemaError(
            received_expected(f"{source}: column '{name}'", f"{column.type} ({err})",
                              f"values that fit {target}")
        ) from err
