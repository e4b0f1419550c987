"""List-form record batch -> the rows to score, their known items (dense indices), and a reject
reason for every other row. Vectorised over the batch: no Python loop per user.

Per row, in order of precedence (the first that applies is the reason):

- ``null_user_id``: ``user_id`` is null;
- ``null_history``: ``history`` is null;
- ``empty_history``: ``history`` has no element;
- ``wrong_type``: an element cannot be an id of the vocabulary's type (a string that is not an
  integer as it prints, such as ``'x1'`` or ``'01'``, or an unsigned integer above the int64 range,
  for an integer vocabulary), or
  ``timestamps`` are null, hold a null or are not aligned with ``history`` where the model reads them
  or the batch carries them (an interaction log's times order its rows even for a model without times);
- ``all_unknown``: no element is in the vocabulary (nulls count as unknown).

Unknown items inside an otherwise valid history are dropped and counted per row
(``unknown_items``); the model then sees the most recent ``window`` known items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec.batchinfer.inputs import seconds
from seqrec.data import Vocabulary
from seqrec.data.vocab import as_vocab_type

REASONS = ("null_user_id", "null_history", "empty_history", "wrong_type", "all_unknown")
DUPLICATE_USER = "duplicate_user"  # decided per part by the writer (outputs.FirstSeen), not per batch


@dataclass
class EncodedBatch:
    """The scored rows of a batch (U of its R rows) in CSR form, and why the others are not scored."""

    rows: np.ndarray  # (U,) batch rows to score, ascending
    items: np.ndarray  # (T,) dense indices of their known items, row after row, oldest first
    timestamps: np.ndarray | None  # (T,) int64 seconds, aligned with items, where the model reads times
    starts: np.ndarray  # (U,) each scored row's slice of items
    ends: np.ndarray  # (U,)
    reasons: pa.Array  # (R,) string: the reject reason, null where the row is scored
    unknown: np.ndarray  # (R,) int32: unknown items dropped from the row (0 for rejected rows)


def encode_batch(batch: pa.RecordBatch, vocab: Vocabulary, timestamps: bool) -> EncodedBatch:
    """Map ``batch.history`` through ``vocab`` and sort rows into scored and rejected."""
    history = _as_list(batch.column("history"))
    lengths = pc.fill_null(pc.list_value_length(history), 0).to_numpy().astype(np.int64)  # (R,)
    owner = np.repeat(np.arange(len(history)), lengths)  # (T0,) row of each element
    values, bad = as_vocab_type(pc.list_flatten(history), vocab.raw_type)
    codes = vocab.encode(values)  # (T0,) 0 = unknown or null
    reason = np.zeros(len(history), dtype=np.int8)  # index into ("", *REASONS); later lines take precedence
    known = np.bincount(owner[codes > 0], minlength=len(history))  # (R,)
    reason[known == 0] = 5
    reason[np.bincount(owner[bad], minlength=len(history)) > 0] = 4
    times = None
    if timestamps or "timestamps" in batch.schema.names:  # a log's times order its rows, read or not
        times, aligned = _aligned_times(batch.column("timestamps"), owner, lengths)
        reason[~aligned] = 4
        times = times if timestamps else None
    reason[lengths == 0] = 3
    reason[_nulls(history)] = 2
    reason[_nulls(batch.column("user_id"))] = 1
    scored = reason == 0
    keep = (codes > 0) & scored[owner]  # (T0,)
    counts = np.bincount(owner[keep], minlength=len(history))[scored]  # (U,)
    ends = np.cumsum(counts)
    unknown = np.where(scored, lengths - known, 0).astype(np.int32)
    names = np.array([None, *REASONS], dtype=object)
    return EncodedBatch(np.flatnonzero(scored), codes[keep], None if times is None else times[keep], ends - counts,
                        ends, pa.array(names[reason], pa.string()), unknown)


def _as_list(history: pa.Array) -> pa.Array:
    """list<...> (large lists and dictionary values decoded) so offsets and flattening are uniform."""
    value_type = history.type.value_type
    if pa.types.is_dictionary(value_type):
        value_type = value_type.value_type
    if pa.types.is_large_string(value_type):
        value_type = pa.string()
    target = pa.list_(value_type)
    return history if history.type == target else history.cast(target)


def _aligned_times(column: pa.Array, owner: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps in seconds aligned with the history elements (T0,), and the rows whose list matches."""
    counts = pc.list_value_length(column)
    aligned = pc.fill_null(pc.equal(counts, pa.array(lengths)), False).to_numpy(zero_copy_only=False)  # (R,)
    flat_times = seconds(pc.list_flatten(column))
    time_owner = np.repeat(np.arange(len(column)), pc.fill_null(counts, 0).to_numpy())
    missing = flat_times.is_null().to_numpy(zero_copy_only=False)  # a null time is no time, not 1970
    aligned &= np.bincount(time_owner[missing], minlength=len(column)) == 0
    flat = pc.fill_null(flat_times, 0).to_numpy()
    times = np.zeros(len(owner), dtype=np.int64)
    times[aligned[owner]] = flat[aligned[time_owner]]  # aligned rows hold as many times as items, in order
    return times, aligned


def _nulls(column: pa.Array) -> np.ndarray:
    return column.is_null().to_numpy(zero_copy_only=False)
