"""Grouping into per-user sequences and left padding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from seqrec.data import Vocabulary, build_sequences, pad_left
from seqrec.data.sequences import known_only
from seqrec.errors import ConfigError, DataError


def test_sequences_sorted_by_timestamp_with_stable_ties() -> None:
    table = pa.table({
        "user_id": ["b", "a", "b", "a", "a", "b", "a"],
        "item_id": [10, 11, 12, 13, 14, 15, 16],
        "timestamp": [5, 9, 1, 3, 9, 5, 1],
    })
    vocab = Vocabulary.from_items(table.column("item_id"))
    seqs = build_sequences(table, vocab)
    assert seqs.user_ids.to_pylist() == ["a", "b"]
    np.testing.assert_array_equal(seqs.offsets, [0, 4, 7])
    np.testing.assert_array_equal(seqs.lengths(), [4, 3])
    assert len(seqs) == 2
    # a: 16@1, 13@3, 11@9, 14@9 (tie keeps file order); b: 12@1, 10@5, 15@5
    np.testing.assert_array_equal(vocab.decode(seqs.sequence(0)).to_pylist(), [16, 13, 11, 14])
    np.testing.assert_array_equal(vocab.decode(seqs.sequence(1)).to_pylist(), [12, 10, 15])
    np.testing.assert_array_equal(seqs.timestamps, [1, 3, 9, 9, 1, 5, 5])
    assert seqs.items.dtype == np.int64 and seqs.offsets.dtype == np.int64


def test_unknown_items_raise_are_dropped_or_kept_beyond_the_vocabulary() -> None:
    table = pa.table({"user_id": [1, 1, 2, 2, 2], "item_id": [7, 8, 9, 8, 7], "timestamp": [1, 2, 3, 4, 5]})
    vocab = Vocabulary.from_items(np.array([7]))
    with pytest.raises(DataError, match=r"item_id \| received 3 ids missing from the vocab"):
        build_sequences(table, vocab)
    seqs = build_sequences(table, vocab, unknown="drop")
    assert seqs.user_ids.to_pylist() == [1, 2]
    np.testing.assert_array_equal(seqs.items, [1, 1])
    kept = build_sequences(table, vocab, unknown="keep")  # 8 -> 2, 9 -> 3: one index per distinct unknown id
    np.testing.assert_array_equal(kept.items, [1, 2, 3, 2, 1])
    known, at = known_only(kept, len(vocab))
    np.testing.assert_array_equal(known.items, [1, 1])
    np.testing.assert_array_equal(known.offsets, [0, 1, 2])
    np.testing.assert_array_equal(at, [0, 1, 1, 1, 1, 2])  # position p of kept -> position at[p] of known


def test_an_unknown_unknown_mode_is_refused() -> None:
    """unknown="skip" silently behaved as "raise"."""
    table = pa.table({"user_id": [1, 1], "item_id": [7, 7], "timestamp": [1, 2]})
    vocab = Vocabulary.from_items(np.array([7]))
    for bad in ("skip", "Drop", ""):
        with pytest.raises(ConfigError, match=rf"build_sequences unknown \| received '{bad}', expected one of raise, "
                                              r"drop, keep"):
            build_sequences(table, vocab, unknown=bad)


def test_pad_left_truncates_pads_and_right_aligns() -> None:
    flat = np.arange(1, 11)  # 1..10
    starts = np.array([0, 3, 3, 9])
    ends = np.array([3, 3, 9, 10])  # lengths 3, 0, 6, 1
    out = pad_left(flat, starts, ends, max_length=4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [0, 0, 0, 0], [6, 7, 8, 9],
                                        [0, 0, 0, 10]])
    assert out.dtype == np.int64


def test_pad_left_width_is_longest_row_at_least_one() -> None:
    flat = np.array([5, 6, 7])
    assert pad_left(flat, np.array([0, 2]), np.array([2, 3]), 50).tolist() == [[5, 6], [0, 7]]
    assert pad_left(flat, np.array([1]), np.array([1]), 50).tolist() == [[0]]
    assert pad_left(flat, np.array([], int), np.array([], int), 50).shape == (0, 1)


def test_pad_left_matches_a_plain_loop_on_random_slices() -> None:
    rng = np.random.default_rng(1)
    flat = rng.integers(1, 100, size=500)
    ends = np.sort(rng.integers(0, 501, size=37))
    starts = np.maximum(ends - rng.integers(0, 30, size=37), 0)
    out = pad_left(flat, starts, ends, 13)
    for row, (start, end) in enumerate(zip(starts, ends)):
        tail = flat[max(start, end - 13):end]
        expected = np.concatenate([np.zeros(out.shape[1] - tail.size, int), tail])
        np.testing.assert_array_equal(out[row], expected)


def test_pad_left_into_a_reused_buffer_equals_a_fresh_array() -> None:
    flat = np.arange(1, 11)
    starts, ends = np.array([0, 3, 9]), np.array([3, 9, 10])
    buffer = np.full(64, -1, dtype=np.int64)  # stale values from an earlier, wider batch
    out = pad_left(flat, starts, ends, 4, out=buffer)
    np.testing.assert_array_equal(out, pad_left(flat, starts, ends, 4))
    assert np.shares_memory(out, buffer) and out.flags.c_contiguous


def test_pad_left_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"max_length \| received 0"):
        pad_left(np.array([1]), np.array([0]), np.array([1]), 0)
    with pytest.raises(DataError, match=r"slices \| received"):
        pad_left(np.array([1]), np.array([1]), np.array([0]), 3)


def test_positions_standing_in_for_times_are_not_times() -> None:
    untimed = pa.table({"user_id": [1, 1, 2, 2, 2], "item_id": [5, 6, 5, 7, 8]})  # schema fills in 0, 1, 2, ...
    vocab = Vocabulary.from_items(untimed.column("item_id"))
    assert not build_sequences(untimed, vocab).has_times
    timed = untimed.append_column("timestamp", pa.array([10, 20, 5, 6, 9]))
    assert build_sequences(timed, vocab).has_times
