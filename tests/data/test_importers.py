"""Importers: hand-written files of each format, error cases, and the shared data sets."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from seqrec.cli import main
from seqrec.data import FORMATS, import_interactions, interaction_stats, write_interactions
from seqrec.errors import ConfigError, DataError, SchemaError


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


@pytest.mark.parametrize("fmt, text, message", [
    ("sasrec", "1 10\n2 20\n2 abc\n", r"line 3 \| received token 'abc' in '2 abc'"),
    ("sasrec", "1 10\n1 11\n2 12\n2 99999999999999999999\n",  # out of the int64 range
     r"line 4 \| received token '99999999999999999999' in '2 99999999999999999999', expected integer ids that fit"),
    ("s3rec", "1 10 11 12\n2 13 +5 14\n", r"line 2 \| received token '\+5' in '2 13 \+5 14'"),
])
def test_a_token_that_is_no_int64_is_named_with_its_line(tmp_path, fmt, text, message) -> None:
    with pytest.raises(DataError, match=message):
        import_interactions(_write(tmp_path / "log.txt", text), fmt)


def test_s3rec(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "1 5 6 7\n2 8\n\n3\n4 5 5\n")
    table = import_interactions(path, "s3rec")
    assert table.to_pydict() == {"user_id": [1, 1, 1, 2, 4, 4], "item_id": [5, 6, 7, 8, 5, 5],
                                 "timestamp": [0, 1, 2, 0, 0, 1]}


def test_s3rec_users_without_items_are_counted_not_silently_dropped(tmp_path) -> None:
    from seqrec.data import convert_interactions

    path = _write(tmp_path / "log.txt", "1 5 6 7\n2 8\n\n3\n4 5 5\n9\n")
    stats = convert_interactions(path, "s3rec", tmp_path / "out.parquet")
    assert stats["users"] == 3 and stats["users_without_items"] == 2  # users 3 and 9
    metadata = pq.read_schema(tmp_path / "out.parquet").metadata or {}
    assert b"seqrec.users_without_items" not in metadata  # a count for the command's output, not the file's
    assert "users_without_items" not in convert_interactions(_write(tmp_path / "s.txt", "1 5\n2 6\n"), "sasrec",
                                                             tmp_path / "s.parquet")


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
    with pytest.raises(SchemaError, match=r"field 'item_id' \| received the header line "
                                          r"'user_id:token\\tmovie:token', expected a header field named"):
        import_interactions(_write(tmp_path / "x.inter", text), "recbole")


@pytest.mark.parametrize("separator", [" ", ","])
def test_recbole_header_not_split_by_tabs_is_shown_whole(tmp_path, separator) -> None:
    """The header cut at its first colon read 'received fields ['user_id']', hiding the separator."""
    header = separator.join(["user_id:token", "item_id:token", "timestamp:float"])
    text = header + "\n" + separator.join(["1", "2", "3"]) + "\n"
    with pytest.raises(SchemaError, match=rf"received the header line '{header}', one field, expected a header "
                                          r"field named 'item_id:token', fields separated by tabs"):
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


def test_int64_bounds_are_ids(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "9223372036854775807 -9223372036854775808\n")
    table = import_interactions(path, "sasrec")
    assert table.to_pydict()["item_id"] == [-9223372036854775808]


@pytest.mark.parametrize(("fmt", "text"), [
    ("sasrec", "1 10\n1 11\n"),
    ("s3rec", "1 10 11\n"),
    ("recbole", "user_id:token\titem_id:token\n1\t10\n1\t11\n"),
])
def test_utf8_byte_order_mark_is_dropped(tmp_path, fmt: str, text: str) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    table = import_interactions(path, fmt)
    assert [str(user) for user in table["user_id"].to_pylist()] == ["1", "1"]
    assert [str(item) for item in table["item_id"].to_pylist()] == ["10", "11"]


def test_s3rec_lone_carriage_returns_end_lines(tmp_path) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"1 10 11\r2 12 13\r")
    table = import_interactions(path, "s3rec")
    assert table.to_pydict() == {"user_id": [1, 1, 2, 2], "item_id": [10, 11, 12, 13],
                                 "timestamp": [0, 1, 0, 1]}


def test_s3rec_user_on_two_lines_names_both(tmp_path) -> None:
    path = _write(tmp_path / "log.txt", "1 10 11\n2 12\n3 13\n2 14\n1 15\n")
    with pytest.raises(DataError, match=r"lines 2 and 4 \| received user 2 on both, expected one "
                                        r"line per user"):
        import_interactions(path, "s3rec")


@pytest.mark.parametrize(("row", "column"), [
    ("\t10\t1", "user_id"), ("1\t\t1", "item_id"), ("NA\t10\t1", "user_id"),
])
def test_recbole_missing_id_is_a_null(tmp_path, row: str, column: str) -> None:
    text = f"user_id:token\titem_id:token\ttimestamp:float\n{row}\n1\t11\t50\n"
    path = _write(tmp_path / "x.inter", text)
    with pytest.raises(SchemaError, match=rf"recbole file '.*x\.inter': column '{column}' \| "
                                          r"received 1 nulls, expected no nulls"):
        import_interactions(path, "recbole")


_QUOTED = 'user_id:token\titem_id:token\n1\t"10"\n1\t10\n2\t"a""b"\n2\ta"b\n'


def test_recbole_quotes_are_not_part_of_the_token(tmp_path) -> None:
    table = import_interactions(_write(tmp_path / "x.inter", _QUOTED), "recbole")
    assert table["item_id"].to_pylist() == ["10", "10", 'a"b', 'a"b']


def _recbole_pandas_frame(path: Path):
    """The columns as RecBole reads them (recbole.data.dataset.Dataset._load_feat)."""
    pd = pytest.importorskip("pandas")
    return pd.read_csv(path, delimiter="\t", dtype=str, encoding="utf-8", engine="python")


def test_recbole_tokens_match_recboles_pandas_reader(tmp_path) -> None:
    path = _write(tmp_path / "x.inter", _QUOTED)
    frame = _recbole_pandas_frame(path)
    table = import_interactions(path, "recbole")
    assert table["user_id"].to_pylist() == frame["user_id:token"].tolist()
    assert table["item_id"].to_pylist() == frame["item_id:token"].tolist()


@pytest.mark.parametrize("marker", ["", "NA", "null", "NaN", "None", "#N/A"])
def test_recbole_missing_markers_match_recboles_pandas_reader(tmp_path, marker: str) -> None:
    path = _write(tmp_path / "x.inter", f"user_id:token\titem_id:token\n1\t{marker}\n1\t11\n")
    assert _recbole_pandas_frame(path)["item_id:token"].isna().tolist() == [True, False]
    with pytest.raises(SchemaError, match=r"column 'item_id' \| received 1 nulls"):
        import_interactions(path, "recbole")


def test_unwritable_destination_is_named(tmp_path) -> None:
    (tmp_path / "hand.parquet").touch()
    dst = tmp_path / "hand.parquet" / "x.parquet"
    table = pa.table({"user_id": [1], "item_id": [2], "timestamp": [0]})
    with pytest.raises(ConfigError, match=r"output file '.*hand\.parquet/x\.parquet' \| received "
                                          r"an unwritable path"):
        write_interactions(table, dst)


def test_cli_unwritable_destination_is_one_error_line(tmp_path) -> None:
    src = _write(tmp_path / "log.txt", "1 10\n")
    (tmp_path / "hand.parquet").touch()
    result = CliRunner().invoke(main, ["data", "import", "--format", "sasrec", str(src),
                                       str(tmp_path / "hand.parquet" / "x.parquet")])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: output file ")


def test_cli_import_help_describes_every_format() -> None:
    result = CliRunner().invoke(main, ["data", "import", "--help"])
    described = {line.split()[0] for line in result.output.splitlines() if line.startswith("    ")
                 and line.split() and line.split()[0] in FORMATS}
    assert described == set(FORMATS)
    assert "'user item'" in result.output and "'user item item ...'" in result.output


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


def test_cli_keeps_an_existing_destination_unless_told_to_overwrite(tmp_path) -> None:
    """DST may be the data a checkpoint was trained on: replaced only with --overwrite, and then whole."""
    src = _write(tmp_path / "log.txt", "1 10\n1 11\n")
    dst = tmp_path / "train.parquet"
    dst.write_bytes(b"precious")
    for command in (["data", "import", "--format", "sasrec", str(src), str(dst)],
                    ["data", "synth", str(dst), "--users", "5", "--items", "20"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.output == (f"Error: DST '{dst}' | received a file that exists, "
                                                           "expected a new path, or --overwrite to replace it\n")
        assert dst.read_bytes() == b"precious"
    result = CliRunner().invoke(main, ["data", "import", "--format", "sasrec", str(src), str(dst), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(dst).num_rows == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["log.txt",
                                                                                                "train.parquet"]


def test_cli_refuses_a_destination_inside_the_source_directory(tmp_path) -> None:
    """Written among the parts it came from, DST would be read back as one more part: every re-import
    (and every training run on the directory) would count each interaction once more."""
    logs = tmp_path / "logs"
    logs.mkdir()
    pq.write_table(pa.table({"user_id": [1, 1, 2], "item_id": [5, 6, 5]}), logs / "part-0.parquet")
    for dst in (logs / "canon.parquet", logs / "sub" / "canon.parquet"):
        result = CliRunner().invoke(main, ["data", "import", "--format", "parquet", str(logs), str(dst), "--overwrite"])
        assert result.exit_code == 1 and "a path inside the source directory" in result.output, result.output
        assert not dst.exists()
    outside = tmp_path / "canon.parquet"
    for _ in range(2):
        result = CliRunner().invoke(main, ["data", "import", "--format", "parquet", str(logs), str(outside), "--overwrite"])
        assert result.exit_code == 0 and '"interactions": 3' in result.output, result.output


@pytest.mark.parametrize("dst", ["", "  ", "folder/"])  # an existing directory: click refuses it (exit 2)
def test_cli_dst_must_name_a_file(tmp_path, monkeypatch, dst) -> None:
    """An empty DST ended in a traceback (with --overwrite) or 'a file that exists'; 'folder/' wrote a file named
    'folder'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_dir").mkdir()
    src = _write(tmp_path / "log.txt", "1 10\n")
    for command in (["data", "import", "--format", "sasrec", str(src), dst, "--overwrite"],
                    ["data", "synth", dst, "--users", "5", "--items", "20", "--overwrite"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.output == (f"Error: DST | received {dst!r}, expected the path of a "
                                                           "Parquet file to write, not a directory\n"), result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing_dir", "log.txt"]
