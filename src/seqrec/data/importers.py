"""Importers from the formats other tools publish interactions in, and the Parquet writer.

Every importer returns the canonical table of :func:`seqrec.data.schema.validate_interactions`.
Text formats are parsed with Arrow compute kernels over the whole file (no Python loop per line).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from seqrec.config import IMPORT_FORMATS as FORMATS
from seqrec.data.schema import read_interactions, validate_interactions
from seqrec.errors import ConfigError, DataError, SchemaError, received_expected

USERS_WITHOUT_ITEMS = b"seqrec.users_without_items"  # schema metadata: s3rec lines with a user and no items
_RECBOLE_FIELDS = ("user_id", "item_id", "timestamp")
# What pandas.read_csv (RecBole's reader) takes for a missing value by default; RecBole drops
# rows whose user or item is missing, we refuse them as null ids.
_PANDAS_NA_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                     "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                     "nan", "null"]


def import_interactions(src: str | Path, fmt: str) -> pa.Table:
    """Read ``src`` written in format ``fmt`` (one of FORMATS) into the canonical table."""
    readers = {"parquet": read_interactions, "recbole": read_recbole,
               "sasrec": read_sasrec, "s3rec": read_s3rec}
    if fmt not in readers:
        raise DataError(received_expected("interaction format", repr(fmt), f"one of {FORMATS}"))
    return readers[fmt](Path(src))


def write_interactions(table: pa.Table, dst: str | Path) -> Path:
    """Write ``table`` as zstd-compressed Parquet at ``dst``, creating parent directories; written
    beside ``dst`` and renamed, so a failed write leaves what was there.

    ConfigError naming ``dst`` when it cannot be created or written.
    """
    dst = Path(dst)
    temporary = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, temporary, compression="zstd")
        os.replace(temporary, dst)
    except (OSError, pa.ArrowException) as err:
        raise ConfigError(received_expected(f"output file '{dst}'", f"an unwritable path ({err})",
                                            "a file path this user can create and write")) from err
    finally:
        with contextlib.suppress(OSError):  # absent after the rename, or its directory never existed
            temporary.unlink(missing_ok=True)
    return dst


def read_recbole(path: Path) -> pa.Table:
    """Read a RecBole atomic ``.inter`` file (tab-separated, header ``name:type``).

    The user, item and timestamp fields are found by the name before the colon; ids are read as
    strings (RecBole tokens), a float timestamp must hold whole numbers. Without a timestamp
    field, the position of each row within its user's rows (file order) stands in for it.
    Fields are read as RecBole reads them (pandas defaults): a double-quoted field loses its
    quotes, and an empty or NA-like field ('NA', 'null', 'NaN', ...) is missing, so a row
    without a user or item is refused as a null id.
    """
    source = f"recbole file '{path}'"
    header = _recbole_header(path, source)
    wanted = {name: header[name] for name in _RECBOLE_FIELDS if name in header}
    for name in ("user_id", "item_id"):
        if name not in wanted:
            line = "\t".join(header.values())
            received = f"the header line {line!r}" + (", one field" if len(header) == 1 else "")
            raise SchemaError(received_expected(f"{source}: field '{name}'", received,
                                                f"a header field named '{name}:token', fields separated by tabs"))
    types = {wanted["user_id"]: pa.string(), wanted["item_id"]: pa.string()}
    table = _read_csv(path, source, list(wanted.values()), types)
    table = table.rename_columns([_field_name(column) for column in table.column_names])
    return validate_interactions(table, source=source)


def read_sasrec(path: Path) -> pa.Table:
    """Read SASRec text: one ``user item`` line per interaction, in time order.

    The timestamp is the position of the interaction within its user's lines (0-based). Blank
    lines are skipped; any other line must hold exactly two integers.
    """
    source = f"sasrec file '{path}'"
    lines = _read_lines(path, source)
    tokens, line_of_token, counts = _split_tokens(lines)
    bad = np.flatnonzero((counts != 0) & (counts != 2))
    if bad.size:
        line = int(bad[0])
        raise DataError(
            received_expected(f"{source}, line {line + 1}",
                              f"{counts[line]} fields {lines[line].as_py()!r}",
                              "2 whitespace-separated integers 'user item'")
        )
    values = _parse_ints(tokens, line_of_token, lines, source)
    table = pa.table({"user_id": values[0::2], "item_id": values[1::2]})
    return validate_interactions(table, source=source)


def read_s3rec(path: Path) -> pa.Table:
    """Read S3Rec text: one ``user item item ...`` line per user, items in time order.

    The timestamp is the position of the item within its user (0, 1, 2, ...). A line with a
    user and no items contributes nothing but is counted (``USERS_WITHOUT_ITEMS`` in the table's
    schema metadata); blank lines are skipped. A user on two lines is refused (S3Rec reads each
    line as a sequence of its own).
    """
    source = f"s3rec file '{path}'"
    lines = _read_lines(path, source)
    tokens, line_of_token, counts = _split_tokens(lines)
    values = _parse_ints(tokens, line_of_token, lines, source)
    line_start = np.cumsum(counts) - counts
    is_user = np.zeros(values.size, dtype=bool)
    is_user[line_start[counts > 0]] = True
    users = values[is_user]
    _check_one_line_per_user(users, line_of_token[is_user], source)
    owner = np.cumsum(is_user) - 1  # index into users of each token's line
    table = pa.table({"user_id": users[owner[~is_user]], "item_id": values[~is_user]})
    table = validate_interactions(table, source=source)
    return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                          USERS_WITHOUT_ITEMS: str(int((counts == 1).sum()))})


def _check_one_line_per_user(users: np.ndarray, user_lines: np.ndarray, source: str) -> None:
    """DataError naming both lines of the first user (in file order) found on a second line."""
    order = np.argsort(users, kind="stable")
    repeats = np.flatnonzero(users[order][1:] == users[order][:-1])
    if not repeats.size:
        return
    first_repeat = repeats[np.argmin(order[repeats + 1])]
    earlier, later = order[first_repeat], order[first_repeat + 1]
    raise DataError(
        received_expected(f"{source}, lines {user_lines[earlier] + 1} and {user_lines[later] + 1}",
                          f"user {users[later]} on both",
                          "one line per user holding all of that user's items")
    )


def _read_lines(path: Path, source: str) -> pa.Array:
    """Return the file's lines as an Arrow string array (trailing newline gives no line).

    Read as Python's text mode does: a UTF-8 byte-order mark is dropped, and '\\n', '\\r\\n' and
    a lone '\\r' all end a line.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(received_expected(source, f"an unreadable file ({err})",
                                          "a readable UTF-8 text file")) from err
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        return pa.array([], pa.large_string())
    whole = pa.array([text], pa.large_string())
    return pc.list_flatten(pc.split_pattern(whole, "\n"))


def _split_tokens(lines: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Split lines on ASCII whitespace; return tokens, line index per token, tokens per line."""
    split = pc.ascii_split_whitespace(pc.ascii_trim_whitespace(lines))
    tokens = pc.list_flatten(split)
    line_of_token = pc.list_parent_indices(split).to_numpy().astype(np.int64)
    keep = pc.not_equal(tokens, "")  # a blank line splits into one empty token
    tokens = tokens.filter(keep)
    line_of_token = line_of_token[keep.to_numpy(zero_copy_only=False)]
    counts = np.bincount(line_of_token, minlength=len(lines)).astype(np.int64)
    return tokens, line_of_token, counts


def _parse_ints(tokens: pa.Array, line_of_token: np.ndarray, lines: pa.Array,
                source: str) -> np.ndarray:
    """Parse tokens as int64; DataError naming the first bad token and its line."""
    try:
        return pc.cast(tokens, pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        first = _first_unparsable(tokens)
    line = int(line_of_token[first])
    raise DataError(
        received_expected(f"{source}, line {line + 1}",
                          f"token {tokens[first].as_py()!r} in {lines[line].as_py()!r}",
                          "integer ids that fit int64")
    )


def _parses_as_int64(tokens: pa.Array) -> bool:
    """Whether Arrow casts every token to int64 (digits with an optional '-', in range)."""
    try:
        pc.cast(tokens, pa.int64())
    except pa.ArrowInvalid:
        return False
    return True


def _first_unparsable(tokens: pa.Array) -> int:
    """Index of the first token that does not cast to int64 (some token must fail).

    Bisects with whole-slice casts, so the rule is exactly Arrow's and the cost stays linear.
    """
    good, bad = 0, len(tokens)  # tokens[:good] cast; tokens[:bad] do not
    while bad - good > 1:
        middle = (good + bad) // 2
        if _parses_as_int64(tokens.slice(good, middle - good)):
            good = middle
        else:
            bad = middle
    return bad - 1


def _recbole_header(path: Path, source: str) -> dict[str, str]:
    """Map field name (before the colon) to the full header column of a RecBole file."""
    try:
        with path.open("r", encoding="utf-8-sig") as handle:
            first = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(received_expected(source, f"an unreadable file ({err})",
                                          "a readable UTF-8 .inter file")) from err
    if not first:
        raise DataError(received_expected(source, "an empty file",
                                          "a header such as 'user_id:token\\titem_id:token'"))
    return {_field_name(column): column for column in first.split("\t")}


def _field_name(column: str) -> str:
    """Field name of a RecBole header column: ``'user_id:token'`` -> ``'user_id'``."""
    return column.split(":", 1)[0]


def _read_csv(path: Path, source: str, columns: list[str],
              types: dict[str, pa.DataType]) -> pa.Table:
    """Read selected columns of a tab-separated file with a header; DataError on failure."""
    try:
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char='"', double_quote=True),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=columns,
                                                 null_values=_PANDAS_NA_VALUES,
                                                 strings_can_be_null=True),
        )
    except (OSError, pa.ArrowException) as err:
        raise DataError(received_expected(source, f"a malformed file ({err})",
                                          "tab-separated rows matching the header")) from err


def convert_interactions(src: str | Path, fmt: str, dst: str | Path) -> dict:
    """``seqrec data import``: read ``src`` in format ``fmt``, write canonical Parquet, return stats.

    The rows are written grouped by user, in time order within a user (ties keep the source's order):
    the file is then also an interaction log that ``seqrec score`` streams as it is (a log in time
    order, users interleaved, is read whole and sorted there). Training reads the same sequences either way.
    """
    from seqrec.data.stats import interaction_stats

    _refuse_destination_inside(src, dst)
    table = import_interactions(src, fmt)
    metadata = dict(table.schema.metadata or {})
    dropped = {"users_without_items": int(metadata.pop(USERS_WITHOUT_ITEMS))} if USERS_WITHOUT_ITEMS in metadata else {}
    table = table.replace_schema_metadata(metadata or None)
    table = table.take(pc.sort_indices(table, [("user_id", "ascending"), ("timestamp", "ascending")]))  # stable
    write_interactions(table, dst)
    return {"written": str(dst), **interaction_stats(table), **dropped}


def _refuse_destination_inside(src: str | Path, dst: str | Path) -> None:
    """A DST inside a directory SRC would be read back as one more part of that directory: by the next import
    (each run adding a copy of every interaction) and by ``seqrec train --data SRC``."""
    source, destination = Path(src).resolve(), Path(dst).resolve()
    if source.is_dir() and destination.is_relative_to(source):
        raise ConfigError(received_expected(f"DST '{dst}'", f"a path inside the source directory '{src}'",
                                            "a path outside it (the directory's parts are read as one log, "
                                            "so DST would become one of them)"))
