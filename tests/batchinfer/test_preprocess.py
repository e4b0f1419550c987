"""encode_batch: every bad-row kind gets its reason, unknown items are dropped and counted."""

import numpy as np
import pyarrow as pa

from seqrec.batchinfer.preprocess import encode_batch
from seqrec.data import Vocabulary

VOCAB = Vocabulary.from_items(np.arange(1000, 1300))  # 1000 -> 1, 1001 -> 2, ...


def encode(users, histories, history_type=pa.list_(pa.int64()), vocab=VOCAB, **extra):
    batch = pa.RecordBatch.from_pydict({"user_id": pa.array(users, pa.int64()),
                                        "history": pa.array(histories, history_type), **extra})
    return encode_batch(batch, vocab, timestamps="timestamps" in extra)


def test_each_bad_row_kind_gets_its_reason_and_valid_rows_keep_known_items():
    encoded = encode([1, None, 3, 4, 5, 6, None],
                     [[1000, 1001], [1000], None, [], [5, 6], [5, 1002, None], None])
    assert encoded.reasons.to_pylist() == [None, "null_user_id", "null_history", "empty_history", "all_unknown",
                                           None, "null_user_id"]  # a null user id comes first
    assert encoded.rows.tolist() == [0, 5]
    assert encoded.unknown.tolist() == [0, 0, 0, 0, 0, 2, 0]  # 5 and the null are dropped from row 5
    rows = [encoded.items[s:e].tolist() for s, e in zip(encoded.starts, encoded.ends)]
    assert rows == [[1, 2], [3]]


def test_strings_that_are_not_integer_ids_are_a_wrong_type():
    encoded = encode([1, 2, 3], [["1000", "x1"], ["1001", "7"], ["1002", None]], pa.list_(pa.string()))
    assert encoded.reasons.to_pylist() == ["wrong_type", None, None]
    assert encoded.items.tolist() == [2, 3] and encoded.unknown.tolist() == [0, 1, 1]


def test_integer_ids_against_a_string_vocabulary_are_compared_as_text():
    vocab = Vocabulary.from_items(pa.array(["1000", "a"]))
    encoded = encode([1, 2], [[1000, 17], [3]], vocab=vocab)
    assert encoded.reasons.to_pylist() == [None, "all_unknown"] and encoded.unknown.tolist() == [1, 0]


def test_large_lists_and_sliced_batches_encode_like_plain_ones():
    histories = [[1000], [1001, 1002], [1003, 5, 1004]]
    plain = encode([1, 2, 3], histories)
    large = encode([1, 2, 3], histories, pa.large_list(pa.int64()))
    assert large.items.tolist() == plain.items.tolist() == [1, 2, 3, 4, 5]
    batch = pa.RecordBatch.from_pydict({"user_id": [1, 2, 3], "history": histories}).slice(1)
    sliced = encode_batch(batch, VOCAB, timestamps=False)
    assert sliced.items.tolist() == [2, 3, 4, 5] and sliced.ends.tolist() == [2, 4]


def test_timestamps_follow_the_kept_items_and_misaligned_ones_are_rejected():
    times = pa.array([[10, 20, 30], [1, 2], None], pa.list_(pa.int64()))
    encoded = encode([1, 2, 3], [[1000, 5, 1001], [1002, 1003, 1004], [1005]], timestamps=times)
    assert encoded.reasons.to_pylist() == [None, "wrong_type", "wrong_type"]
    assert encoded.items.tolist() == [1, 2] and encoded.timestamps.tolist() == [10, 30]


def test_a_null_time_and_an_id_beyond_int64_are_a_wrong_type_not_a_crash():
    times = pa.array([[10, None], [1, 2]], pa.list_(pa.int64()))
    encoded = encode([1, 2], [[1000, 1001], [1002, 1003]], timestamps=times)
    assert encoded.reasons.to_pylist() == ["wrong_type", None] and encoded.timestamps.tolist() == [1, 2]
    huge = encode([1, 2], [[1000, 2**64 - 1], [1001]], pa.list_(pa.uint64()))
    assert huge.reasons.to_pylist() == ["wrong_type", None] and huge.items.tolist() == [2]


def test_text_ids_cover_the_whole_int64_range_and_nothing_beyond():
    edge, low = 2**63 - 1, -(2**63)
    vocab = Vocabulary.from_items(np.array([edge, low, 5], dtype=np.int64))
    texts = [[str(edge)], [str(low)], [str(edge + 1)], [str(low - 1)], ["1" + "0" * 19], ["5"]]
    encoded = encode(list(range(6)), texts, pa.list_(pa.string()), vocab=vocab)
    assert encoded.reasons.to_pylist() == [None, None, "wrong_type", "wrong_type", "wrong_type", None]
    assert encoded.items.tolist() == vocab.encode(pa.array([edge, low, 5])).tolist()


def test_text_is_an_integer_id_only_as_the_integer_prints():
    """'0005' was read as 5 and '01' as 1, silently: text other than ``str(n)`` (a leading zero, a '+', '-0', a space)
    is no id of an integer vocabulary, whatever integer it parses to, and is a ``wrong_type`` as 'x1' is."""
    vocab = Vocabulary.from_items(np.array([0, 1, 5, -7, 2**63 - 1], dtype=np.int64))
    good = ["0", "1", "5", "-7", str(2**63 - 1)]
    bad = ["0005", "01", "00", "-0", "+5", " 5", "5 ", "-07", "0" + str(2**63 - 1)[1:], "0" * 19 + "1"]
    encoded = encode(list(range(len(good) + len(bad))), [[text] for text in good + bad], pa.list_(pa.string()),
                     vocab=vocab)
    assert encoded.reasons.to_pylist() == [None] * len(good) + ["wrong_type"] * len(bad)
    assert encoded.items.tolist() == vocab.encode(pa.array([0, 1, 5, -7, 2**63 - 1])).tolist()
