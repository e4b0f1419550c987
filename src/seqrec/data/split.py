"""Chronological leave-one-out split of user sequences.

For a user with n >= 3 items: the test target is item n-1 (history items[:n-1]), the validation
target is item n-2 (history items[:n-2]) and the training sequence is items[:n-2]. Users with
fewer than 3 items give no validation or test example; all their items go to training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqrec.data.sequences import UserSequences
from seqrec.errors import DataError, received_expected

MIN_EVAL_LENGTH = 3
SPLIT_NAMES = ("valid", "test")


@dataclass
class EvalExamples:
    """One next-item example per row: history ``items[history_start:history_end]``, target."""

    users: np.ndarray  # (E,) int64 row index into UserSequences
    history_start: np.ndarray  # (E,) int64
    history_end: np.ndarray  # (E,) int64
    targets: np.ndarray  # (E,) int64 dense item indices

    def __len__(self) -> int:
        """Number of examples E."""
        return len(self.users)


@dataclass
class Split:
    """Training ends per user plus the validation and test examples."""

    train_end: np.ndarray  # (U,) int64: train sequence of u is items[offsets[u]:train_end[u]]
    valid: EvalExamples
    test: EvalExamples


def leave_one_out(seqs: UserSequences) -> Split:
    """Split ``seqs`` chronologically; DataError when no user has 3 or more items."""
    lengths = seqs.lengths()
    users = np.flatnonzero(lengths >= MIN_EVAL_LENGTH).astype(np.int64)
    if users.size == 0:
        raise DataError(received_expected("leave-one-out split", "no user with 3 or more "
                                          "interactions", "at least one such user"))
    start = seqs.offsets[users]
    end = seqs.offsets[users + 1]
    train_end = seqs.offsets[1:].copy()
    train_end[users] = end - 2
    valid = EvalExamples(users, start, end - 2, seqs.items[end - 2])
    test = EvalExamples(users, start.copy(), end - 1, seqs.items[end - 1])
    return Split(train_end.astype(np.int64), valid, test)


def split_by_name(split: Split, name: str) -> EvalExamples:
    """Return ``split.valid`` or ``split.test`` by name; DataError for any other name."""
    if name not in SPLIT_NAMES:
        raise DataError(received_expected("split name", repr(name), f"one of {SPLIT_NAMES}"))
    return getattr(split, name)
