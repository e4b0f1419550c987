"""Vocabulary: construction, encode/decode, save/load."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec.data import Vocabulary
from seqrec.errors import DataError, SchemaError


def test_int_ids_sorted_dense_from_one() -> None:
    vocab = Vocabulary.from_items(np.array([30, 10, 20, 10], dtype=np.int32))
    assert len(vocab) == 3 and vocab.num_embeddings == 4 and vocab.raw_type == "int64"
    assert vocab.items.to_pylist() == [10, 20, 30]
    np.testing.assert_array_equal(vocab.encode(np.array([20, 30, 99, 10])), [2, 3, 0, 1])
    assert vocab.encode(np.array([20])).dtype == np.int64


def test_string_ids_from_chunked_array() -> None:
    raw = pa.chunked_array([["b", "a"], ["c", "a"]])
    vocab = Vocabulary.from_items(raw)
    assert vocab.raw_type == "string" and vocab.items.to_pylist() == ["a", "b", "c"]
    np.testing.assert_array_equal(vocab.encode(pa.array(["c", "zz", None, "a"])), [3, 0, 0, 1])


def test_decode_padding_is_null() -> None:
    vocab = Vocabulary.from_items(pa.array(["x", "y"]))
    assert vocab.decode(np.array([2, 0, 1])).to_pylist() == ["y", None, "x"]
    with pytest.raises(DataError, match=r"indices to decode \| received values in \[0, 3\]"):
        vocab.decode(np.array([0, 3]))


def test_encode_wrong_id_type() -> None:
    vocab = Vocabulary.from_items(pa.array(["x", "y"]))
    with pytest.raises(SchemaError, match=r"ids to encode \| received int64, expected string"):
        vocab.encode(np.array([1, 2]))


@pytest.mark.parametrize("raw", [pa.array([5, 3, 9]), pa.array(["b", "é", "a"])])
def test_save_load_round_trip(tmp_path, raw: pa.Array) -> None:
    vocab = Vocabulary.from_items(raw)
    path = vocab.save(tmp_path / "ckpt" / "vocab.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["index", "item_id"]
    assert table.column("index").type == pa.int64()
    assert table.column("index").to_pylist() == [1, 2, 3]
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    np.testing.assert_array_equal(loaded.encode(raw), vocab.encode(raw))


def test_load_keeps_index_order_of_an_unsorted_file(tmp_path) -> None:
    path = tmp_path / "vocab.parquet"
    pq.write_table(pa.table({"index": pa.array([1, 2, 3], pa.int64()),
                             "item_id": [30, 10, 20]}), path)
    vocab = Vocabulary.load(path)
    np.testing.assert_array_equal(vocab.encode(np.array([10, 20, 30, 40])), [2, 3, 1, 0])


@pytest.mark.parametrize(("table", "message"), [
    (pa.table({"idx": [1], "item_id": [5]}), r"received columns \['idx', 'item_id'\]"),
    (pa.table({"index": [2, 1], "item_id": [5, 6]}), r"column 'index' \| received int64"),
    (pa.table({"index": [1, 2], "item_id": [5, 5]}), r"duplicate ids"),
    (pa.table({"index": [1, 2], "item_id": [5, None]}), r"1 nulls"),
    (pa.table({"index": [1], "item_id": [1.5]}), r"column 'item_id' \| received .*double"),
])
def test_load_malformed(tmp_path, table: pa.Table, message: str) -> None:
    path = tmp_path / "vocab.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match=message):
        Vocabulary.load(path)


def test_load_not_parquet(tmp_path) -> None:
    path = tmp_path / "vocab.parquet"
    path.write_bytes(b"nope")
    with pytest.raises(DataError, match=r"vocabulary file '.*' \| received an unreadable path"):
        Vocabulary.load(path)


def test_decode_takes_1d_integer_indices_only() -> None:
    """decode(np.array([1.7])) decoded item 1, and a 2-D array was flattened."""
    vocab = Vocabulary.from_items(pa.array(["x", "y"]))
    for bad in (np.array([1.7]), np.array([1.0, 2.0]), np.array([True, False]), ["1"]):
        with pytest.raises(SchemaError, match=r"indices to decode \| received dtype \S+, expected an integer dtype"):
            vocab.decode(bad)
    for bad in (np.array([[1, 2]]), np.int64(1)):
        with pytest.raises(DataError, match=r"indices to decode \| received an array of shape \(.*\), expected a 1-D"):
            vocab.decode(bad)
    assert vocab.decode(np.array([2, 1], dtype=np.uint8)).to_pylist() == ["y", "x"]
    assert vocab.decode([]).to_pylist() == [] and vocab.decode([1]).to_pylist() == ["x"]
