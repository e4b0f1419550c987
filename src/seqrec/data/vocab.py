"""Item vocabulary: raw item ids (int64 or string) <-> dense indices 1..N; 0 is padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec.errors import DataError, SchemaError, received_expected

RawIds = pa.Array | pa.ChunkedArray | np.ndarray
# Text that is an integer written as the integer prints: no leading zero, no '+', no '-0' ('01' is another id than 1,
# as in a RecBole import, whose tokens stay text). Up to 18 digits: always an int64; 19: compared with the edge.
INTEGER_TEXT = r"^(0|-?[1-9][0-9]{0,17})$"
INT64_EDGES = {r"^[1-9][0-9]{18}$": str(np.iinfo(np.int64).max), r"^-[1-9][0-9]{18}$": str(np.iinfo(np.int64).min)}


class Vocabulary:
    """Maps raw item ids to dense indices 1..N (index 0 is padding and never a raw id).

    ``items[i - 1]`` is the raw id of index ``i``. Integer ids are looked up with a sorted
    search (no hash table rebuilt per call); string ids with Arrow's ``index_in``.
    """

    def __init__(self, items: pa.Array) -> None:
        """Wrap ``items`` (unique, non-null raw ids in index order); prefer the constructors."""
        items = _normalise(items, "vocabulary items")
        if items.null_count:
            raise DataError(received_expected("vocabulary items", f"{items.null_count} nulls",
                                              "no nulls"))
        if len(pc.unique(items)) != len(items):
            raise DataError(received_expected("vocabulary items", "duplicate ids",
                                              "unique raw ids"))
        self._items = items
        if self.raw_type == "int64":
            values = items.to_numpy()
            self._order = np.argsort(values, kind="stable")  # (N,)
            self._sorted = values[self._order]  # (N,)

    @classmethod
    def from_items(cls, raw: RawIds) -> Vocabulary:
        """Build the vocabulary of the unique ids in ``raw``, sorted for determinism."""
        values = _normalise(raw, "item ids")
        if values.null_count:
            raise DataError(received_expected("item ids", f"{values.null_count} nulls",
                                              "no nulls"))
        unique = pc.unique(values)
        return cls(unique.take(pc.array_sort_indices(unique)))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`; DataError when the file is malformed."""
        what = f"vocabulary file '{path}'"
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as err:
            raise DataError(received_expected(what, f"an unreadable path ({err})",
                                              "a Parquet file")) from err
        if table.column_names[:2] != ["index", "item_id"] or table.num_columns != 2:
            raise DataError(received_expected(what, f"columns {table.column_names}",
                                              "columns ['index', 'item_id']"))
        index = table.column("index")
        expected = np.arange(1, table.num_rows + 1)
        if not pa.types.is_integer(index.type) or not np.array_equal(index.to_numpy(), expected):
            raise DataError(received_expected(f"{what}: column 'index'", index.type,
                                              "int64 values 1..N in order"))
        try:
            return cls(table.column("item_id").combine_chunks())
        except (SchemaError, DataError) as err:
            raise DataError(received_expected(f"{what}: column 'item_id'", err,
                                              "unique non-null int64 or string ids")) from err

    def save(self, path: str | Path) -> Path:
        """Write Parquet with columns ``index`` (int64, 1..N) and ``item_id`` (raw ids)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        index = pa.array(np.arange(1, len(self) + 1, dtype=np.int64))
        pq.write_table(pa.table({"index": index, "item_id": self._items}), path)
        return path

    def __len__(self) -> int:
        """Number of real items N (padding excluded)."""
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        """Two vocabularies are equal when they map the same ids to the same indices."""
        return isinstance(other, Vocabulary) and self._items.equals(other._items)

    def __repr__(self) -> str:
        """Short description: size and raw type."""
        return f"Vocabulary(items={len(self)}, raw_type={self.raw_type!r})"

    @property
    def num_embeddings(self) -> int:
        """Rows of an embedding table over this vocabulary: N + 1 (padding at 0)."""
        return len(self) + 1

    @property
    def raw_type(self) -> str:
        """``"int64"`` or ``"string"``."""
        return "int64" if pa.types.is_integer(self._items.type) else "string"

    @property
    def items(self) -> pa.Array:
        """Raw ids in index order: ``items[i - 1]`` has index ``i``."""
        return self._items

    def encode(self, raw: RawIds) -> np.ndarray:
        """Dense indices (int64) of ``raw``; unknown ids and nulls map to 0."""
        values = _normalise(raw, "ids to encode")
        if not len(values):
            return np.zeros(0, dtype=np.int64)
        if (self.raw_type == "int64") != pa.types.is_integer(values.type):
            raise SchemaError(received_expected("ids to encode", values.type,
                                                f"{self.raw_type} ids like the vocabulary's"))
        if self.raw_type == "int64":
            return self._encode_ints(values)
        found = pc.index_in(values, value_set=self._items)
        return pc.fill_null(pc.add(found.cast(pa.int64()), 1), 0).to_numpy()

    def decode(self, idx: np.ndarray) -> pa.Array:
        """Raw ids of dense indices ``idx`` (1-D, integers); index 0 decodes to null."""
        idx = _checked_indices(np.asarray(idx))
        if idx.size and (idx.min() < 0 or idx.max() > len(self)):
            raise DataError(received_expected("indices to decode",
                                              f"values in [{idx.min()}, {idx.max()}]",
                                              f"values in [0, {len(self)}]"))
        positions = pa.array(idx - 1, mask=idx == 0)
        return self._items.take(positions)

    def _encode_ints(self, values: pa.Array) -> np.ndarray:
        """Sorted-search lookup of int64 ids; unknown and null -> 0."""
        raw = pc.fill_null(values, 0).to_numpy()
        if not len(self):
            return np.zeros(raw.size, dtype=np.int64)
        pos = np.clip(np.searchsorted(self._sorted, raw), 0, len(self) - 1)
        hit = self._sorted[pos] == raw
        if values.null_count:
            hit &= values.is_valid().to_numpy(zero_copy_only=False)
        return np.where(hit, self._order[pos] + 1, 0).astype(np.int64)


def as_vocab_type(values: pa.Array, raw_type: str) -> tuple[pa.Array, np.ndarray]:
    """Ids in a vocabulary's id type (``raw_type``), and which could not be (bool (T0,)): integers become
    their decimal text for a string vocabulary; for an integer one, text that is an int64 written as it prints
    (``str(n)``) becomes it, other text (``'01'``, ``'+1'``, ``'x1'``: never read as 1) and unsigned integers
    above the int64 range cannot (they are left as 0). How ``seqrec score`` reads history items and ``seqrec
    eval`` an interactions file (whose reader has already refused unsigned ids beyond int64)."""
    is_text = pa.types.is_string(values.type)
    if raw_type == "string" and not is_text:
        return values.cast(pa.string()), np.zeros(len(values), dtype=bool)
    if raw_type == "int64" and is_text:
        ok = pc.fill_null(_int64_text(values), True)
        parsed = pc.if_else(ok, values, pa.scalar("0")).cast(pa.int64())
        return parsed, ~ok.to_numpy(zero_copy_only=False)
    if raw_type == "int64" and values.type == pa.uint64():  # above 2**63 - 1 no int64 id can match
        ok = pc.fill_null(pc.less_equal(values, pa.scalar(np.iinfo(np.int64).max, pa.uint64())), True)
        return pc.if_else(ok, values, pa.scalar(0, pa.uint64())).cast(pa.int64()), ~ok.to_numpy(zero_copy_only=False)
    return values, np.zeros(len(values), dtype=bool)


def _int64_text(values: pa.Array) -> pa.Array:
    """bool (T0,): the string is an int64 as it prints (``INTEGER_TEXT``). 19 digits are compared with the
    range's edge as text: digit strings of one length (after the same sign) compare as their magnitudes do."""
    ok = pc.match_substring_regex(values, INTEGER_TEXT)
    for pattern, edge in INT64_EDGES.items():
        within = pc.and_(pc.match_substring_regex(values, pattern), pc.less_equal(values, pa.scalar(edge)))
        ok = pc.or_(ok, within)
    return ok


def _normalise(raw: RawIds, what: str) -> pa.Array:
    """Return ``raw`` as one Arrow array of int64 or string ids; SchemaError otherwise."""
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    elif not isinstance(raw, pa.Array):
        raw = pa.array(np.asarray(raw).reshape(-1) if isinstance(raw, np.ndarray) else raw)
    if pa.types.is_dictionary(raw.type):
        raw = raw.dictionary_decode()
    if pa.types.is_integer(raw.type):
        try:
            return raw.cast(pa.int64())
        except pa.ArrowInvalid as err:
            raise SchemaError(received_expected(what, f"{raw.type} ({err})",
                                                "ids that fit int64")) from err
    if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
        return raw.cast(pa.string())
    if pa.types.is_null(raw.type):
        return raw.cast(pa.int64())
    raise SchemaError(received_expected(what, raw.type, "integer or string ids"))


def _checked_indices(idx: np.ndarray) -> np.ndarray:
    """``idx`` as int64 (I,): SchemaError for a non-integer dtype (1.7 was truncated to 1), DataError for
    another number of dimensions (a 2-D array was flattened). An empty list (float64 in NumPy) passes."""
    if idx.ndim != 1:
        raise DataError(received_expected("indices to decode", f"an array of shape {idx.shape}", "a 1-D array"))
    if idx.dtype.kind not in "iu" and idx.size:
        raise SchemaError(received_expected("indices to decode", f"dtype {idx.dtype}", "an integer dtype"))
    return idx.astype(np.int64, copy=False)
