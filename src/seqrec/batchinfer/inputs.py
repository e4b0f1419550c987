"""Scoring input: which parts, which form, checked up front; then streamed (an interleaved log part aside).

``PATH`` is a Parquet file, a directory of parts or a glob. A directory is read at any depth, as Spark,
Hive and ``pyarrow.dataset`` write a nightly history (``DIR/dt=2026-12-01/part-00000.parquet``): every
``*.parquet`` file below it, files and folders whose names start with ``_`` or ``.`` skipped at every level
(``_temporary/``, ``_SUCCESS``, ``.spark-staging``), each part named by its path under ``DIR``, so part files
of one name in two folders are two parts, and its output part lies at that path under the output (a part at
the top keeps its file name). Symlinked folders are followed, a folder or file reached twice refused
(``data.parts``: ``seqrec data import`` finds a directory's parts the same way). Partition values in folder
names (``dt=2026-12-01``) are not read as columns: the output keeps the folders, so they stay recoverable. A file or a glob's parts are named by their file names,
which must then differ. Every part's schema is read from its footer and checked before any work, so a
wrong schema fails in one message naming the part and the column. Two forms (DESIGN.md):

- **list**: one row per user, ``user_id`` and ``history`` (list of raw item ids, oldest first),
  optionally ``timestamps`` (list, aligned with ``history``).
- **long**: an interaction log, ``user_id``, ``item_id``, optionally ``timestamp``, grouped by user
  here (DESIGN.md). A user's rows are ordered by ``timestamp`` when present (ties keep file order),
  else file order. Where each user's rows are contiguous within the part (a log sorted or clustered
  by user, as a ``GROUP BY user`` export or ``seqrec data import`` writes it), grouping streams with one user's rows
  carried between record batches, so memory does not grow with the part. ``plan_input`` reads the
  ``user_id`` column of every long-form part (``first_return``); a part in which a user's rows come
  back after other users' (a log in time order) is read whole and sorted by user before grouping
  (``_sorted_by_user``, stable), so its memory is the part's, as the duplicate-user check's already is.

``read_part`` yields list-form record batches (``user_id``, ``history`` [, ``timestamps``] and, for
the long form, ``row``: the part row of the user's first interaction) whatever the form.

Times are int64 seconds as training reads them (``seconds``): integers, whole-valued floats or a
timestamp type. A value that is no such time (a null, a float that is not whole or not finite, a
uint64 beyond the int64 range) cannot be refused from the footer, so it is read as a null time and
its user is rejected as ``wrong_type`` (``preprocess``), as an item id beyond int64 is: the job goes
on, and no user is scored in an order made up for it. A long-form part with a timestamp column
carries its times whether the model reads them or not (``InputPlan.carries_times``) for that reason.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec.data.parts import directory_parts, refuse_files_reached_twice
from seqrec.data.schema import floor_seconds, whole_numbers
from seqrec.errors import DataError, SchemaError, received_expected

LIST_FORM, LONG_FORM = "list", "long"
FORMS_EXPECTED = ("user_id + history (a list of item ids per user, optionally timestamps), or user_id + item_id "
                  "(+ timestamp) (an interaction log)")
ORIGINAL_ROW = "_part_row"  # a row's number in its part, carried through the sort of an interleaved log
READ_BUFFER = 1 << 20  # bytes; column chunks are streamed through it rather than loaded whole
INT64_MAX = np.iinfo(np.int64).max
TIME_EXPECTED = "integer seconds, whole-valued floats or a timestamp type"


@dataclass(frozen=True)
class InputPart:
    path: str  # absolute
    name: str  # the output part's path under the output: the part's under a directory input, else its file name
    rows: int  # input rows (users in the list form, interactions in the long form)
    fingerprint: str = ""  # size, footer and content sample digests (``part_fingerprint``): a rewritten part is another
    grouped: bool = True  # each user's rows contiguous (always, in the list form); else sorted before grouping


@dataclass(frozen=True)
class InputPlan:
    parts: tuple[InputPart, ...]
    form: str  # LIST_FORM or LONG_FORM
    user_type: pa.DataType  # int64, uint64 or string: the type of user_id in every output
    timestamps: bool  # the graph reads timestamps, so they are read too
    time_order: bool = False  # the long form has a timestamp column: it orders each user's rows, read or not

    @property
    def carries_times(self) -> bool:
        """The grouped rows carry ``timestamps``: the model reads them, or a long-form part orders its users'
        rows by them, and a user with a time that is no time is rejected whether the model reads times or not."""
        return self.timestamps or self.time_order

    def columns(self) -> list[str]:
        if self.form == LIST_FORM:
            return ["user_id", "history"] + (["timestamps"] if self.timestamps else [])
        return ["user_id", "item_id"] + (["timestamp"] if self.timestamps or self.time_order else [])


def plan_input(pattern: str, output: str | Path, needs_timestamps: bool) -> InputPlan:
    """Find the parts of ``pattern`` and check all their schemas; SchemaError / DataError before any work.
    A directory's parts are found at any depth and named by their paths under it; the partition values in
    its folder names (``dt=2026-12-01``) are not read as columns (the output keeps the folders)."""
    found = _resolve(pattern)  # [(path, name)]
    paths = [path for path, _ in found]
    _refuse_clashing_names(pattern, [name for _, name in found])
    _refuse_output_among_inputs(pattern, paths, Path(output).resolve())
    first = _check_part(paths[0], needs_timestamps)
    parts = []
    for path, name in found:
        form, user_type, timed, rows = _check_part(path, needs_timestamps) if path != paths[0] else first
        if (form, user_type, timed) != first[:3]:
            raise SchemaError(received_expected(f"input part '{path}'", _part_kind(form, user_type, timed),
                                                f"{_part_kind(*first[:3])} as '{paths[0]}'"))
        grouped = form == LIST_FORM or first_return(path) is None
        parts.append(InputPart(path, name, rows, part_fingerprint(path), grouped))
    return InputPlan(tuple(parts), first[0], first[1], needs_timestamps, time_order=first[2])


def _refuse_clashing_names(pattern: str, names: list[str]) -> None:
    """A glob's parts are named by their file names (as they always were, so a nightly glob's output keeps
    its names): two of one name would write one output part."""
    if len(set(names)) != len(names):
        clash = sorted({name for name in names if names.count(name) > 1})
        raise DataError(received_expected(f"input '{pattern}'", f"parts sharing the file names {clash[:3]}",
                                          "distinct part names (each names its output part; pass the directory "
                                          "that holds their folders instead: its parts are named by their paths "
                                          "under it)"))


def _refuse_output_among_inputs(pattern: str, paths: list[str], output: Path) -> None:
    """DataError where the output would overwrite the input or be read as input: ``output`` (resolved) is the
    folder of a part, lies anywhere inside a directory input (read at any depth: the next run, or a resume,
    would read the scored parts as input parts), or holds the input (the job writes and cleans up there)."""
    if any(Path(path).parent == output for path in paths):
        raise DataError(received_expected("--output", f"'{output}', the directory of the input parts",
                                          "another directory (output parts take the input parts' names)"))
    root = Path(pattern).resolve() if Path(pattern).is_dir() else None
    read = [root, *{Path(path).resolve().parent for path in paths}] if root is not None else []  # with the
    # targets of its symlinked folders, which lie outside the root
    inside = next((folder for folder in read if output.is_relative_to(folder)), None)
    if inside is not None:
        raise DataError(received_expected("--output", f"'{output}', inside the input directory '{inside}'",
                                          "a directory outside the input (it is read at any depth: a later run "
                                          "would read the output parts as input parts)"))
    held = [Path(path).resolve() for path in paths] + ([root] if root is not None else [])
    if any(path.is_relative_to(output) for path in held):
        raise DataError(received_expected("--output", f"'{output}', a directory that holds the input '{pattern}'",
                                          "a directory outside the input (the job writes its parts and removes "
                                          "its temporary files there)"))


def _part_kind(form: str, user_type: pa.DataType, timed: bool) -> str:
    times = (" and a timestamp column" if timed else " without a timestamp column") if form == LONG_FORM else ""
    return f"the {form} form with {user_type} user ids{times}"


def first_return(path: str, batch_rows: int = 1 << 20) -> tuple[object, int] | None:
    """(user, row) where a user of the long-form part at ``path`` comes back after other users' rows,
    or None when each user's rows are contiguous (null ids aside: they are rejects). Streams the
    ``user_id`` column; holds the part's distinct user ids meanwhile."""
    reader = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
    seen: set = set()
    last, row = None, 0  # the user of the previous row and the part row of the batch's first row
    for batch in readable(reader.iter_batches(batch_size=batch_rows, columns=["user_id"], use_threads=False), path):
        users = batch.column(0)
        starts = group_starts(users)  # (G,)
        for start, user in zip(starts.tolist(), users.take(pa.array(starts)).to_pylist()):
            if user is None or (start == 0 and user == last):
                continue
            if user in seen:
                return user, row + start
            seen.add(user)
        last, row = users[len(users) - 1].as_py() if len(users) else last, row + len(users)
    return None


FINGERPRINT_VERSION = "v2"  # v1, the ledgers written before it: "<size>:<footer digest>"
SAMPLE_BLOCKS, SAMPLE_BLOCK = 16, 4096  # the content sample: 64 KiB read per part, whatever its size


def part_fingerprint(path: str) -> str:
    """``v2:<size>:<footer digest>:<sample digest>``: the file's size, a digest of its Parquet footer (schema,
    row groups, their byte sizes and statistics) and a digest of ``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BLOCK``
    bytes evenly spaced through the file (all of a file smaller than that). So a rewritten part is another
    part where the rewrite changes its size, its footer or a sampled byte: a part rewritten with other users
    changes them all, even one written without compression, dictionary or statistics, whose footer and size
    stay the same (the sample lands in its data pages); copying it changes none. Bounded: at most 64 KiB and
    the footer read per part, so planning a 100 GB input stays fast; a rewrite that changes only bytes
    between the samples, size and footer unchanged, is not seen."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        footer = _footer(handle, size)
        sample = b"".join(_block(handle, offset) for offset in _sample_offsets(size))
    return f"{FINGERPRINT_VERSION}:{size}:{_digest(footer)}:{_digest(sample)}"


def same_part(recorded: str, current: str) -> bool:
    """Whether the fingerprint ``recorded`` in a ledger and the ``current`` one say the part is unchanged. A v1
    fingerprint (size and footer digest, from a ledger written before v2) is compared by its own definition,
    with the same fields of ``current``: upgrading does not make every part of a running job look rewritten."""
    if recorded.startswith(f"{FINGERPRINT_VERSION}:") or not current.startswith(f"{FINGERPRINT_VERSION}:"):
        return recorded == current
    return recorded == ":".join(current.split(":")[1:3])


def _footer(handle, size: int) -> bytes:
    handle.seek(max(size - 8, 0))
    tail = handle.read(8)  # footer length (little-endian uint32) and the magic "PAR1"
    footer_length = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
    handle.seek(max(size - 8 - footer_length, 0))
    return handle.read(footer_length)


def _sample_offsets(size: int) -> list[int]:
    """Where the sampled blocks begin: the first at 0, the last ending at the end of the file."""
    if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK:
        return list(range(0, size, SAMPLE_BLOCK))
    return [(size - SAMPLE_BLOCK) * block // (SAMPLE_BLOCKS - 1) for block in range(SAMPLE_BLOCKS)]


def _block(handle, offset: int) -> bytes:
    handle.seek(offset)
    return handle.read(SAMPLE_BLOCK)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def read_part(part: InputPart, plan: InputPlan, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream one part as list-form record batches of at most ``batch_rows`` input rows."""
    reader = pq.ParquetFile(part.path, buffer_size=READ_BUFFER, pre_buffer=False)
    batches = readable(reader.iter_batches(batch_size=batch_rows, columns=plan.columns(), use_threads=False),
                       part.path)
    if plan.form == LIST_FORM:
        yield from batches
    else:
        yield from group_long(batches if part.grouped else _sorted_by_user(batches, _columns_schema(reader, plan), batch_rows),
                              plan.carries_times, plan.timestamps or plan.time_order)


def readable(batches: Iterator[pa.RecordBatch], path: str, row_group: int | None = None) -> Iterator[pa.RecordBatch]:
    """``batches`` of the Parquet file ``path``; a damaged page is a DataError naming the file, not an
    OSError from deep inside the job (planning read only the files' footers)."""
    try:
        for batch in batches:
            yield _plain_batch(batch)
    except (OSError, pa.ArrowException) as err:
        where = f", row group {row_group}" if row_group is not None else ""
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(received_expected(f"input part '{path}'{where}", f"a damaged file ({cause})",
                                          "a readable Parquet file (write the part again, then run the same command with --resume)")) from err


def _columns_schema(reader: pq.ParquetFile, plan: InputPlan) -> pa.Schema:
    return plain_schema(pa.schema([reader.schema_arrow.field(name) for name in plan.columns()]))


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as ``readable`` gives its batches: view types as their plain forms (``plain_type``)."""
    return pa.schema([field.with_type(plain_type(field.type)) for field in schema])


def plain_type(kind: pa.DataType) -> pa.DataType:
    """The plain form of a view type, which recent pyarrow writes and reads back (``string_view`` -> string,
    ``list_view`` -> list, at any depth): read as those, the job's ids, lists and outputs stay in the types it
    knows; any other type as it is."""
    if pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        return (pa.list_ if pa.types.is_list_view(kind) else pa.large_list)(plain_type(kind.value_type))
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and plain_type(kind.value_type) != kind.value_type:
        return (pa.list_ if pa.types.is_list(kind) else pa.large_list)(plain_type(kind.value_type))
    return kind


def _plain_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    if all(plain_type(field.type) == field.type for field in batch.schema):
        return batch
    return pa.RecordBatch.from_arrays([_plain_array(column) for column in batch.columns],
                                      schema=plain_schema(batch.schema))


def _plain_array(values: pa.Array) -> pa.Array:
    """``values`` in ``plain_type``. A list view is rebuilt from its flattened values: pyarrow 26 casts
    ``list_view`` to ``list`` into an invalid array (an offsets buffer one entry short)."""
    if plain_type(values.type) == values.type:
        return values
    if pa.types.is_list_view(values.type) or pa.types.is_large_list_view(values.type):
        lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy()  # (N,)
        offsets = np.concatenate([[0], np.cumsum(lengths)])  # (N + 1,)
        kind = pa.ListArray if pa.types.is_list_view(values.type) else pa.LargeListArray
        width = pa.int32() if kind is pa.ListArray else pa.int64()
        return kind.from_arrays(pa.array(offsets, width), _plain_array(pc.list_flatten(values)), mask=values.is_null())
    return values.cast(plain_type(values.type))


def _sorted_by_user(batches: Iterator[pa.RecordBatch], schema: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """A long-form part whose users' rows are interleaved (a log in time order), read whole and sorted
    by user (stable: each user's rows keep their order), with each row's part row in ``ORIGINAL_ROW``."""
    table = pa.Table.from_batches(list(batches), schema)
    table = table.append_column(ORIGINAL_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    order = pc.sort_indices(table, [("user_id", "ascending")])  # stable; null ids last
    yield from table.take(order).to_batches(max_chunksize=batch_rows)


def group_long(batches: Iterator[pa.RecordBatch], timestamps: bool,
               by_time: bool | None = None) -> Iterator[pa.RecordBatch]:
    """Contiguous rows of one user -> one list-form row, in ``timestamp`` order if ``by_time`` (default: if
    ``timestamps``), else in row order; ``timestamps``: the rows carry their times as a list too. The last
    user of a batch waits for the next."""
    by_time = timestamps if by_time is None else by_time
    carry: pa.Table | None = None
    first_row = 0  # part row of carry's first row
    for batch in batches:
        table = pa.Table.from_batches([batch])
        table = table if carry is None else pa.concat_tables([carry, table])
        starts = group_starts(table.column("user_id"))  # (G,)
        cut = int(starts[-1]) if len(starts) else 0
        if cut:
            yield _as_lists(table.slice(0, cut), starts[:-1], first_row, timestamps, by_time)
        carry, first_row = table.slice(cut), first_row + cut
    if carry is not None and carry.num_rows:
        yield _as_lists(carry, np.zeros(1, dtype=np.int64), first_row, timestamps, by_time)


def group_starts(users: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Rows where a new user begins (a null id always begins one), int64 (G,)."""
    users = users.combine_chunks() if isinstance(users, pa.ChunkedArray) else users
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64)
    change = pc.fill_null(pc.not_equal(users.slice(1), users.slice(0, len(users) - 1)), True)
    return np.concatenate([[0], np.flatnonzero(change.to_numpy(zero_copy_only=False)) + 1]).astype(np.int64)


def seconds(values: pa.Array) -> pa.Array:
    """Timestamps as int64 seconds, as training reads them: integers are seconds already, floats must be
    whole (``data.schema.whole_numbers``), timestamp types are floored (``data.schema.floor_seconds``).
    Nulls stay null, and so does a value that is no int64 second (a float not whole or not finite, a uint64
    beyond int64): training refuses the file for it, scoring rejects its user (``wrong_type``) and goes on."""
    if pa.types.is_timestamp(values.type):
        return floor_seconds(values)
    if pa.types.is_floating(values.type):
        return _whole_seconds(values)
    if values.type == pa.uint64():
        within = pc.less_equal(values, pa.scalar(INT64_MAX, pa.uint64()))
        values = pc.if_else(within, values, pa.scalar(None, pa.uint64()))  # the cast below would raise
    return values.cast(pa.int64())


def _whole_seconds(values: pa.Array) -> pa.Array:
    """Floats (N,) -> int64 seconds (N,), null where the value is null, not whole, not finite or beyond int64."""
    floats = values.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls read as NaN
    usable = whole_numbers(floats) & (floats >= -2.0**63) & (floats < 2.0**63)  # training's rule, and int64's range
    return pa.array(np.where(usable, floats, 0).astype(np.int64), pa.int64(), mask=~usable)


def grouped_schema(part: InputPart, plan: InputPlan) -> pa.Schema:
    """The schema ``read_part`` gives a long-form part (ids in int64, uint64 or string)."""
    item_type = _item_type(pq.read_schema(part.path).field("item_id").type)
    fields = [("user_id", plan.user_type), ("history", pa.list_(item_type))]
    times = [("timestamps", pa.list_(pa.int64()))] if plan.carries_times else []
    return pa.schema(fields + times + [("row", pa.int64())])


def item_id_type(plan: InputPlan) -> pa.DataType:
    """The item ids' type as the input's first part stores them (``history``'s values or ``item_id``), for a
    message comparing it with the vocabulary's."""
    field = pq.read_schema(plan.parts[0].path).field("history" if plan.form == LIST_FORM else "item_id")
    return field.type.value_type if plan.form == LIST_FORM else field.type


def _as_lists(table: pa.Table, starts: np.ndarray, first_row: int, timestamps: bool, by_time: bool) -> pa.RecordBatch:
    """Rows [starts[g], starts[g + 1]) of ``table`` -> list-form row g, ordered by timestamp if ``by_time``,
    with the times as a list if ``timestamps``."""
    offsets = np.append(starts, table.num_rows)  # (G + 1,)
    items = table.column("item_id").combine_chunks()
    items = items.cast(_item_type(items.type))  # int64, uint64, string or null, whatever the part's integer width
    users = table.column("user_id").combine_chunks()
    columns = {"user_id": users.cast(_id_type(users.type)).take(pa.array(starts))}
    if by_time:
        raw = table.column("timestamp").combine_chunks()
        times = seconds(raw)  # (N,) int64, null where a row has no usable time: its user is rejected
        key = raw.cast(pa.int64()) if pa.types.is_timestamp(raw.type) else times  # sub-second order, as training
        group = np.repeat(np.arange(len(starts)), np.diff(offsets))
        order = np.lexsort((pc.fill_null(key, np.iinfo(np.int64).min).to_numpy(), group))  # stable
        items, times = items.take(pa.array(order)), times.take(pa.array(order))
    columns["history"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), items)
    if timestamps:
        columns["timestamps"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), times)
    if ORIGINAL_ROW in table.column_names:  # rows sorted by user: each group's first row in the part
        columns["row"] = table.column(ORIGINAL_ROW).combine_chunks().take(pa.array(starts))
    else:
        columns["row"] = pa.array(first_row + starts, pa.int64())
    return pa.RecordBatch.from_pydict(columns)


def _resolve(pattern: str) -> list[tuple[str, str]]:
    """(absolute path, part name) of every part of ``pattern``, in path order: a directory's parts at any depth,
    named by their paths under it; a file's or a glob's, named by their file names."""
    if not pattern.strip():  # Path('') is the working directory: an unset $VAR would score whatever lies there
        raise DataError(received_expected("input", repr(pattern), "a Parquet file, a directory of *.parquet parts or "
                                          "a glob"))
    path = Path(pattern)
    if path.is_dir():
        found = directory_parts(path, f"input '{pattern}'", "every part named *.parquet (files and folders starting "
                                "with _ or . are skipped), or a glob that picks the parts")
    elif path.is_file():
        found = [(str(path), path.name)]
    else:
        found = _glob_parts(pattern)
    if not found:
        where = " at any depth (files and folders starting with _ or . are skipped)" if path.is_dir() else ""
        raise DataError(received_expected(f"input '{pattern}'", f"no Parquet file{where}",
                                          "a Parquet file, a directory of *.parquet parts or a glob matching some"))
    refuse_files_reached_twice(found, f"input '{pattern}'")
    return sorted((os.path.abspath(p), name) for p, name in found)


def _glob_parts(pattern: str) -> list[tuple[str, str]]:
    """(path, file name) of every match of the glob ``pattern``. A match that is a folder (a Spark-written
    ``events.parquet/`` of part files, a Hive ``dt=...`` partition) is refused by name rather than skipped,
    which would drop its users without a word; so is a match that is no file at all (a broken link)."""
    matches = sorted(glob.glob(pattern))
    folders = [match for match in matches if os.path.isdir(match)]
    if folders:
        parents = sorted({str(Path(folder).parent) for folder in folders})
        parent = f" '{parents[0]}'" if len(parents) == 1 else "s"
        raise DataError(received_expected(
            f"input '{pattern}'", f"matches that are folders ({_first_few(folders)})",
            f"files: pass their parent directory{parent} (a directory is read at any depth, each part named by its "
            f"path under it) or a glob that reaches the files (such as '{os.path.join(pattern, '*.parquet')}')"))
    strays = [match for match in matches if not os.path.isfile(match)]
    if strays:
        raise DataError(received_expected(f"input '{pattern}'", f"matches that are not files ({_first_few(strays)})",
                                          "Parquet files (a broken link? remove it or fix its target)"))
    return [(match, Path(match).name) for match in matches]


def _first_few(paths: list[str], shown: int = 3) -> str:
    """``'a', 'b', 'c' and 2 more``: enough paths to find them, however many there are."""
    named = ", ".join(f"'{path}'" for path in paths[:shown])
    return named + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _check_part(path: str, needs_timestamps: bool) -> tuple[str, pa.DataType, bool, int]:
    """(form, user id type, whether a long-form part has a timestamp column, rows) of one part from its
    footer; SchemaError naming the column otherwise."""
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as err:
        raise DataError(received_expected(f"input part '{path}'", f"an unreadable file ({err})",
                                          "a Parquet file")) from err
    names = schema.names
    form = LIST_FORM if "history" in names else LONG_FORM if "item_id" in names else None
    if "user_id" not in names or form is None:
        raise SchemaError(received_expected(f"input part '{path}'", f"columns {names}", FORMS_EXPECTED))
    user_type = _check_column(path, schema, "user_id", _id_type, "integer or string user ids")
    if form == LIST_FORM:
        _check_column(path, schema, "history", _id_list_type, "a list of integer or string item ids, oldest first")
    else:
        _check_column(path, schema, "item_id", _item_type, "integer or string item ids")
    if needs_timestamps:
        name = "timestamps" if form == LIST_FORM else "timestamp"
        if name not in names:
            raise SchemaError(received_expected(f"input part '{path}'", f"columns {names}",
                                                f"a '{name}' column: the model reads timestamps"))
        check = _time_list_type if form == LIST_FORM else _time_type
        _check_column(path, schema, name, check, TIME_EXPECTED)
    timed = form == LONG_FORM and "timestamp" in names
    if timed and not needs_timestamps:  # it still orders each user's rows
        _check_column(path, schema, "timestamp", _time_type, f"{TIME_EXPECTED} (it orders each "
                      "user's interactions; drop the column to keep the file's order)")
    return form, user_type, timed, meta.num_rows


def _check_column(path: str, schema: pa.Schema, name: str, check, expected: str) -> pa.DataType:
    kind = check(schema.field(name).type)
    if kind is None:
        raise SchemaError(received_expected(f"input part '{path}': column '{name}'", schema.field(name).type, expected))
    return kind


def _id_type(kind: pa.DataType) -> pa.DataType | None:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if kind == pa.uint64():  # kept: above 2**63 - 1 it has no int64 (user ids pass through, item ids are rejected)
        return kind
    if pa.types.is_integer(kind):
        return pa.int64()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()  # a string_view column is read as string (``plain_type``)
    return None


def _item_type(kind: pa.DataType) -> pa.DataType | None:
    """``_id_type``, or null for a column of the null type: what pandas writes for a part whose lists are
    all empty or whose ids are all missing; its rows become rejects, not a failed job."""
    return pa.null() if pa.types.is_null(kind) else _id_type(kind)


def _id_list_type(kind: pa.DataType) -> pa.DataType | None:
    return _item_type(kind.value_type) if _is_any_list(kind) else None


def _is_any_list(kind: pa.DataType) -> bool:
    """A list, large list or either's view (read as a list: ``plain_type``)."""
    return (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind)
            or pa.types.is_large_list_view(kind))


def _time_type(kind: pa.DataType) -> pa.DataType | None:
    """int64 (the type ``seconds`` gives) for a type that can hold times as training reads them: integers,
    floats (whole values only, checked per value by ``seconds``), timestamps, or null (see ``_item_type``)."""
    usable = (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_timestamp(kind)
              or pa.types.is_null(kind))
    return pa.int64() if usable else None


def _time_list_type(kind: pa.DataType) -> pa.DataType | None:
    return _time_type(kind.value_type) if _is_any_list(kind) else None
