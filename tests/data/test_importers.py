"""Importers: hand-written files of each format, error cases, and the shared data sets."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec.data import FORMATS, import_interactions, interaction_stats, write_interactions
from seqrec.errors import DataError, SchemaError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_sasrec(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "1 10\n2 20\n1 11\n\n1  12\r\n2\t10\n")
    table = import_interactions(path, "sasrec")
    assert table.schema.types == [pa.int64()] * 3
    assert table.to_pydict() == {"user_id": [1, 2, 1, 1, 2], "item_id": [10, 20, 11, 12, 10],
                                 "timestamp": [0, 0, 1, 2, 1]}


def test_sasrec_wrong_field_count_names_the_line(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "1 10\n1 11 12\n")
    with pytest.raises(DataError, match=r"line 2 \| received 3 fields '1 11 12', expected 2 "):
        import_interactions(path, "sasrec")


def test_sasrec_non_integer_token(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "1 10\n2 20\n2 abc\n")
    with pytest.raises(DataError, match=r"line 3 \| received token 'abc' in '2 abc'"):
        import_interactions(path, "sasrec")


def test_s3rec(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "1 5 6 7\n2 8\n\n3\n4 5 5\n")
    table = import_interactions(path, "s3rec")
    assert table.to_pydict() == {"user_id": [1, 1, 1, 2, 4, 4], "item_id": [5, 6, 7, 8, 5, 5],
                                 "timestamp": [0, 1, 2, 0, 0, 1]}


def test_s3rec_non_integer_token(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "1 5 6\n2 7 x8 9\n")
    with pytest.raises(DataError, match=r"line 2 \| received token 'x8' in '2 7 x8 9'"):
        import_interactions(path, "s3rec")


def test_empty_text_file_has_no_interactions(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "\n")
    with pytest.raises(DataError, match=r"received 0 rows, expected at least one interaction"):
        import_interactions(path, "s3rec")


def test_recbole(tmp_path) -> None:
    text = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
            "u1\t007\t3\t100.0\nu2\t8\t4\t50\nu1\t9\t5\t90\n")
    table = import_interactions(_write(tmp_path / "x.inter", text), "recbole")
    assert table.schema.types == [pa.string(), pa.string(), pa.int64()]
    assert table.to_pydict() == {"user_id": ["u1", "u2", "u1"], "item_id": ["007", "8", "9"],
                                 "timestamp": [100, 50, 90]}


def test_recbole_without_timestamp_uses_file_order(tmp_path) -> None:
    text = "item_id:token\tuser_id:token\n1\ta\n2\ta\n3\tb\n"
    table = import_interactions(_write(tmp_path / "x.inter", text), "recbole")
    assert table.to_pydict() == {"user_id": ["a", "a", "b"], "item_id": ["1", "2", "3"],
                                 "timestamp": [0, 1, 0]}


def test_recbole_missing_field(tmp_path) -> None:
    text = "user_id:token\tmovie:token\n1\t2\n"
    with pytest.raises(SchemaError, match=r"field 'item_id' \| received fields "
                                          r"\['user_id', 'movie'\]"):
        import_interactions(_write(tmp_path / "x.inter", text), "recbole")


def test_recbole_ragged_row(tmp_path) -> None:
    text = "user_id:token\titem_id:token\n1\t2\n3\n"
    with pytest.raises(DataError, match=r"received a malformed file"):
        import_interactions(_write(tmp_path / "x.inter", text), "recbole")


def test_parquet_round_trip(tmp_path) -> None:
    table = pa.table({"user_id": ["a", "b"], "item_id": [1, 2], "timestamp": [5, 6]})
    dst = write_interactions(table, tmp_path / "deep" / "dir" / "log.parquet")
    assert pq.ParquetFile(dst).metadata.row_group(0).column(0).compression == "ZSTD"
    assert import_interactions(dst, "parquet").equals(table)


def test_unknown_format_lists_formats(tmp_path) -> None:
    with pytest.raises(DataError, match=r"received 'csv', expected one of \('parquet', "):
        import_interactions(tmp_path / "x", "csv")
    assert FORMATS == ("parquet", "recbole", "sasrec", "s3rec")


def test_missing_text_file(tmp_path) -> None:
    with pytest.raises(DataError, match=r"received an unreadable file"):
        import_interactions(tmp_path / "absent.txt", "sasrec")


@pytest.mark.parametrize(("name", "fmt", "users", "items", "interactions"), [
    ("amazon-beauty.txt", "s3rec", 22_363, 12_101, 198_502),
    ("lastfm.txt", "s3rec", 1_090, 3_646, 52_551),
    ("ml-100k.inter", "recbole", 943, 1_682, 100_000),
])
def test_shared_data_sets(shared_data: Path, name: str, fmt: str, users: int, items: int,
                          interactions: int) -> None:
    stats = interaction_stats(import_interactions(shared_data / name, fmt))
    assert (stats["users"], stats["items"], stats["interactions"]) == (users, items,
                                                                       interactions)
    assert stats["repeat_share"] == 0.0
