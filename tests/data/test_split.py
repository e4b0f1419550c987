"""Chronological leave-one-out split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from seqrec.data import Vocabulary, build_sequences, leave_one_out, split_by_name
from seqrec.errors import DataError


def _seqs(users: list[int], items: list[int]):
    table = pa.table({"user_id": users, "item_id": items})
    return build_sequences(table, Vocabulary.from_items(np.array(items)))


def test_leave_one_out_hand_case() -> None:
    # user 1: one item; user 2: two; user 3: three; user 4: five (items are their own index)
    seqs = _seqs([1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    split = leave_one_out(seqs)
    np.testing.assert_array_equal(seqs.offsets, [0, 1, 3, 6, 11])
    np.testing.assert_array_equal(split.train_end, [1, 3, 4, 9])  # short users: all train
    for examples in (split.valid, split.test):
        np.testing.assert_array_equal(examples.users, [2, 3])
        np.testing.assert_array_equal(examples.history_start, [3, 6])
    np.testing.assert_array_equal(split.valid.history_end, [4, 9])
    np.testing.assert_array_equal(split.valid.targets, [5, 10])
    np.testing.assert_array_equal(split.test.history_end, [5, 10])
    np.testing.assert_array_equal(split.test.targets, [6, 11])
    assert split_by_name(split, "valid") is split.valid
    assert split_by_name(split, "test") is split.test
    assert len(split.test) == 2


def test_split_by_unknown_name() -> None:
    split = leave_one_out(_seqs([1, 1, 1], [1, 2, 3]))
    with pytest.raises(DataError, match=r"split name \| received 'train', expected one of"):
        split_by_name(split, "train")


def test_no_user_long_enough() -> None:
    with pytest.raises(DataError, match=r"received no user with 3 or more interactions"):
        leave_one_out(_seqs([1, 1, 2], [1, 2, 3]))
