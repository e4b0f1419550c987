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
from seqrec.data.parts import directory_parts
from seqrec.errors import DataError, SchemaError, received_expected

ID_COLUMNS = ("user_id", "item_id")
TIMESTAMP = "timestamp"
CANONICAL_COLUMNS = ("user_id", "item_id", "timestamp")

_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def validate_interactions(table: pa.Table, source: str = "input") -> pa.Table:
    """Check ``table`` and return its canonical form (user_id, item_id, timestamp int64).

    Integer ids become ``int64`` (user ids of type ``uint64`` stay ``uint64``: they only group
    rows, and above 2**63 - 1 they have no int64); string, large_string and dictionary-encoded ids
    become ``string``. Extra columns are dropped. Rows whose timestamps differ within a second
    are put in time order before the timestamps are floored to seconds, so the order survives.
    Raises SchemaError for a missing, mistyped or null-holding column, DataError for a table
    without rows.
    """
    for name in ID_COLUMNS:
        _require_column(table, name, source)
    if table.num_rows == 0:
        raise DataError(received_expected(source, "0 rows", "at least one interaction"))
    timestamps = None
    if TIMESTAMP in table.column_names:
        _check_nulls(table.column(TIMESTAMP), TIMESTAMP, source)
        table = _in_sub_second_order(table)
        timestamps = _timestamp_column(table.column(TIMESTAMP), source)
    ids = {name: _id_column(table.column(name), name, source) for name in ID_COLUMNS}
    if timestamps is None:
        positions = group_positions(group_codes(ids["user_id"]))
        timestamps = pa.chunked_array([pa.array(positions, pa.int64())])
    return pa.table(
        {"user_id": ids["user_id"], "item_id": ids["item_id"], TIMESTAMP: timestamps}
    )


def read_interactions(path: str | Path) -> pa.Table:
    """Read a Parquet file, or a directory of parts (``*.parquet`` at any depth, names starting with
    ``_`` or ``.`` skipped, read in path order), and validate it.

    Every part is read with its own schema and must agree with the first on the id types and on
    having a timestamp; folder names are not read as columns (no Hive partitioning), so a part
    without ``user_id`` is refused rather than given ids parsed from a folder name.
    """
    path = Path(path)
    if path.is_dir():
        return validate_interactions(_read_parts(path), source=f"parquet input '{path}'")
    return validate_interactions(_read_parquet(path), source=f"parquet input '{path}'")


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path, partitioning=None)
    except (OSError, pa.ArrowException, ValueError) as err:
        text_formats = ",".join(fmt for fmt in IMPORT_FORMATS if fmt != "parquet")
        raise DataError(
            received_expected(f"parquet input '{path}'", f"an unreadable path ({err})",
                              "a Parquet file or a directory of Parquet parts (text logs convert with "
                              f"`seqrec data import SRC DST --format {{{text_formats}}}`)")
        ) from err


def _read_parts(directory: Path) -> pa.Table:
    """The parts of ``directory`` in one table, each column in one type; SchemaError naming a part that
    differs from the first in its columns' kinds."""
    paths = [Path(path) for path, _ in directory_parts(directory, f"parquet input '{directory}'", "every part named "
                                                       "*.parquet (files and folders starting with _ or . are skipped)")]
    if not paths:
        raise DataError(received_expected(f"parquet input '{directory}'", "a directory without *.parquet parts",
                                          "a Parquet file or a directory of Parquet parts"))
    tables = [(part, _read_parquet(part)) for part in paths]
    kinds = [(part, _column_kinds(table, f"parquet part '{part}'")) for part, table in tables]
    first_part, first = kinds[0]
    for part, kind in kinds[1:]:
        if kind != first:
            raise SchemaError(received_expected(f"parquet part '{part}'", _describe(kind),
                                                f"{_describe(first)}, as in '{first_part}'"))
    unit = _finest_time_unit([table for _, table in tables]) if first.get(TIMESTAMP) == "timestamp" else "ns"
    return pa.concat_tables([_unified(part, table, first, unit) for part, table in tables])


def _finest_time_unit(tables: list[pa.Table]) -> str:
    """The finest unit of the parts' timestamp columns: every part casts to it without losing order, and
    parts in one coarser unit keep dates that nanoseconds cannot hold (before 1677, after 2262)."""
    units = {table.schema.field(TIMESTAMP).type.unit for table in tables}
    return max(units, key=list(_UNIT_PER_SECOND).index)


def _column_kinds(table: pa.Table, source: str) -> dict[str, str]:
    """Each column's kind as the canonical table will hold it: int64, uint64, string, timestamp, float."""
    for name in ID_COLUMNS:
        _require_column(table, name, source)
    names = [name for name in CANONICAL_COLUMNS if name in table.column_names]
    return {name: _kind(table.schema.field(name).type) for name in names}


def _kind(kind: pa.DataType) -> str:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if kind == pa.uint64():
        return "uint64"
    if pa.types.is_integer(kind):
        return "int64"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_timestamp(kind):
        return "timestamp"
    return "float" if pa.types.is_floating(kind) else str(kind)  # anything else fails in validation


def _describe(kinds: dict[str, str]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in kinds.items()) + ("" if TIMESTAMP in kinds else ", no timestamp")


def _unified(part: Path, table: pa.Table, kinds: dict[str, str], unit: str) -> pa.Table:
    """The part's columns of ``kinds`` cast to one type per kind (timestamps to ``unit`` since the epoch, UTC);
    SchemaError naming the part when its timestamps do not fit that unit."""
    types = {"int64": pa.int64(), "uint64": pa.uint64(), "string": pa.string(), "timestamp": pa.timestamp(unit),
             "float": pa.float64()}
    try:
        return pa.table({name: table.column(name).cast(types.get(kind, table.schema.field(name).type))
                         for name, kind in kinds.items()})
    except pa.ArrowInvalid as err:
        received = f"{table.schema.field(TIMESTAMP).type} values that {types['timestamp']} cannot hold ({err})"
        raise SchemaError(received_expected(f"parquet part '{part}': column '{TIMESTAMP}'", received,
                                            "timestamps every part can share: write the parts in one unit")) from None


def _in_sub_second_order(table: pa.Table) -> pa.Table:
    """``table`` in the order of its finer-than-second timestamps (stable), or as it is when flooring
    to seconds loses no order (integer or float seconds, or whole seconds in a finer unit)."""
    kind = table.schema.field(TIMESTAMP).type
    if not pa.types.is_timestamp(kind) or kind.unit == "s":
        return table
    raw = table.column(TIMESTAMP).combine_chunks().cast(pa.int64()).to_numpy()
    if not np.any(raw % _UNIT_PER_SECOND[kind.unit]):
        return table
    return table.take(pa.array(np.argsort(raw, kind="stable")))


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
    target = pa.string() if not pa.types.is_integer(kind) else pa.uint64() if (kind, name) == (
        pa.uint64(), "user_id") else pa.int64()
    return _cast(column, target, name, source)


def _timestamp_column(column: pa.ChunkedArray, source: str) -> pa.ChunkedArray:
    """Return the timestamp column as int64 (seconds for timestamp types)."""
    kind = column.type
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


def whole_numbers(values: np.ndarray) -> np.ndarray:
    """(N,) bool: the float is finite and whole, so it reads as integer seconds (NaN, a null, is not). Training
    refuses a timestamp column with any other value; batch scoring rejects the user holding it."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (np.floor(values) == values)


def _whole_floats(column: pa.ChunkedArray, source: str) -> pa.ChunkedArray:
    """Cast a float timestamp column to int64 when every value is a whole number."""
    values = column.to_numpy()
    bad = ~whole_numbers(values)
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
