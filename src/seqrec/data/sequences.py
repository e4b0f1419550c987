"""Per-user item sequences in CSR form, and left padding into model batches."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec.data.schema import validate_interactions
from seqrec.config import _check_choice
from seqrec.data.vocab import Vocabulary
from seqrec.errors import ConfigError, DataError, received_expected


@dataclass
class UserSequences:
    """Every user's items in time order, concatenated (CSR layout).

    User ``u`` (0-based row, raw id ``user_ids[u]``) owns ``items[offsets[u]:offsets[u + 1]]``
    and the matching ``timestamps``. Items are dense vocabulary indices (never 0).
    """

    user_ids: pa.Array  # (U,) raw user ids, sorted
    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (T,) int64 dense indices
    timestamps: np.ndarray  # (T,) int64

    def __len__(self) -> int:
        """Number of users U."""
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """Number of interactions per user, int64 (U,)."""
        return np.diff(self.offsets)

    def sequence(self, u: int) -> np.ndarray:
        """Items of user row ``u``, oldest first."""
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    @cached_property
    def has_times(self) -> bool:
        """False when every timestamp is only its position within the user (0, 1, 2, ...), as the
        schema fills in for sources without times: models must then get no timestamps at all."""
        lengths = self.lengths()
        positions = np.arange(self.items.size) - np.repeat(self.offsets[:-1], lengths)  # (T,)
        return not np.array_equal(self.timestamps, positions)


UNKNOWN_ITEMS = ("raise", "drop", "keep")  # what build_sequences does with an item missing from the vocabulary


def build_sequences(table: pa.Table, vocab: Vocabulary, *, unknown: str = "raise") -> UserSequences:
    """Group ``table`` by user (users sorted) and order each user's items by timestamp.

    The sort is stable: interactions with equal timestamps keep their file order. An item missing
    from ``vocab`` raises DataError (``unknown="raise"``), is dropped (``"drop"``), or is kept under
    an index beyond the vocabulary, N + 1, N + 2, ... one per distinct raw id (``"keep"``), so that
    evaluation can split by position and still tell which items the model cannot know. Any other
    ``unknown`` is a ConfigError.
    """
    _check_choice("build_sequences unknown", unknown, UNKNOWN_ITEMS)
    table = validate_interactions(table, source="interactions")
    users = table.column("user_id").combine_chunks()
    unique = pc.unique(users)
    user_ids = unique.take(pc.array_sort_indices(unique))
    codes = pc.index_in(users, value_set=user_ids).to_numpy().astype(np.int64)
    items = vocab.encode(table.column("item_id"))
    timestamps = table.column("timestamp").to_numpy()
    if unknown == "keep":
        items = _code_unknown(items, table.column("item_id"), len(vocab))
    else:
        codes, items, timestamps = _keep_known(codes, items, timestamps, unknown == "drop")
    order = np.lexsort((np.arange(items.size), timestamps, codes))
    counts = np.bincount(codes, minlength=len(user_ids))
    keep = counts > 0  # users whose items were all dropped
    offsets = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
    return UserSequences(user_ids.filter(pa.array(keep)), offsets, items[order],
                         timestamps[order])


def known_only(seqs: UserSequences, known_items: int) -> tuple[UserSequences, np.ndarray]:
    """``seqs`` without the items beyond index ``known_items`` (users kept, even if left empty), and
    where each position of ``seqs`` lands in it: (T + 1,) int64, so [a, b) maps to [at[a], at[b])."""
    known = seqs.items <= known_items  # (T,)
    at = np.concatenate([[0], np.cumsum(known)]).astype(np.int64)  # (T + 1,)
    return UserSequences(seqs.user_ids, at[seqs.offsets], seqs.items[known], seqs.timestamps[known]), at


def pad_left(flat_items: np.ndarray, starts: np.ndarray, ends: np.ndarray,
             max_length: int, out: np.ndarray | None = None) -> np.ndarray:
    """Right-align the last ``max_length`` items of each ``[start, end)`` slice, zeros left.

    Returns int64 (B, L) with L = min(max_length, longest slice), at least 1; the most recent
    item of each row sits in the last column. ``out``, a flat int64 buffer of at least B x L
    values, is reused (its first B x L values become the result) instead of a new allocation.
    """
    if max_length < 1:
        raise ConfigError(received_expected("max_length", max_length, "an integer >= 1"))
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if starts.shape != ends.shape or np.any(ends < starts):
        raise DataError(received_expected("slices", "starts/ends of different shapes or "
                                          "end < start", "equal shapes with start <= end"))
    first = np.maximum(starts, ends - max_length)  # (B,)
    counts = ends - first  # (B,)
    width = max(1, int(counts.max(initial=0)))
    if out is None:
        out = np.zeros((starts.size, width), dtype=np.int64)  # (B, L)
    else:
        out = out[: starts.size * width].reshape(starts.size, width)  # (B, L), a view
        out.fill(0)
    rows = np.repeat(np.arange(starts.size), counts)
    within = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out[rows, width - counts[rows] + within] = np.asarray(flat_items)[first[rows] + within]
    return out


def _keep_known(codes: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
                drop_unknown: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop interactions whose item encoded to 0, or raise DataError when not allowed."""
    known = items != 0
    if known.all():
        return codes, items, timestamps
    if not drop_unknown:
        raise DataError(received_expected("item_id", f"{int((~known).sum())} ids missing from "
                                          "the vocabulary", "every item in the vocabulary "
                                          "(or unknown='drop')"))
    return codes[known], items[known], timestamps[known]


def _code_unknown(items: np.ndarray, raw: pa.ChunkedArray, vocabulary_size: int) -> np.ndarray:
    """Items (T,) with each unknown one (0) replaced by N + 1 + its rank among the distinct unknown ids."""
    unknown = items == 0
    if not unknown.any():
        return items
    raw_unknown = raw.combine_chunks().filter(pa.array(unknown))
    distinct = pc.unique(raw_unknown)
    items = items.copy()
    items[unknown] = vocabulary_size + 1 + pc.index_in(raw_unknown, value_set=distinct).to_numpy()
    return items
