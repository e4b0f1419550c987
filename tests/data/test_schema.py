"""Schema validation and Parquet reading."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec.data import read_interactions, validate_interactions
from seqrec.errors import DataError, SchemaError


def test_canonical_columns_types_and_extra_dropped() -> None:
    table = pa.table({"extra": [1.0, 2.0], "item_id": pa.array([5, 6], pa.int32()),
                      "user_id": ["a", "b"], "timestamp": pa.array([10, 20], pa.uint32())})
    out = validate_interactions(table)
    assert out.column_names == ["user_id", "item_id", "timestamp"]
    assert out.schema.types == [pa.string(), pa.int64(), pa.int64()]
    assert out.to_pydict() == {"user_id": ["a", "b"], "item_id": [5, 6], "timestamp": [10, 20]}


def test_dictionary_and_large_string_ids_are_decoded() -> None:
    table = pa.table({"user_id": pa.array(["u", "v", "u"]).dictionary_encode(),
                      "item_id": pa.array(["x", "y", "x"], pa.large_string())})
    out = validate_interactions(table)
    assert out.schema.types[:2] == [pa.string(), pa.string()]
    assert out.column("user_id").to_pylist() == ["u", "v", "u"]


def test_missing_timestamp_is_position_within_user_in_file_order() -> None:
    table = pa.table({"user_id": [1, 2, 1, 1, 2, 3], "item_id": [9, 8, 7, 6, 5, 4]})
    out = validate_interactions(table)
    assert out.column("timestamp").to_pylist() == [0, 0, 1, 2, 1, 0]


def test_timestamp_type_becomes_int64_seconds() -> None:
    moments = [datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(1969, 12, 31, 23, 59, 58,
                                                                  500000, tzinfo=timezone.utc)]
    table = pa.table({"user_id": [1, 1], "item_id": [1, 2],
                      "timestamp": pa.array(moments, pa.timestamp("ms", tz="UTC"))})
    out = validate_interactions(table)  # rows in time order first: 1969 before 2024
    assert out.to_pydict() == {"user_id": [1, 1], "item_id": [2, 1], "timestamp": [-2, 1_704_067_200]}  # floored


def test_sub_second_timestamps_order_the_rows_before_they_are_floored() -> None:
    """1.7 s and 1.2 s floor to the same second; the item at 1.2 s must still come first."""
    table = pa.table({"user_id": [1, 1, 1, 1], "item_id": [20, 10, 30, 40],
                      "timestamp": pa.array([1700, 1200, 5000, 9000], pa.timestamp("ms"))})
    out = validate_interactions(table)
    assert out.column("item_id").to_pylist() == [10, 20, 30, 40]
    assert out.column("timestamp").to_pylist() == [1, 1, 5, 9]
    whole = pa.table({"user_id": [1, 1], "item_id": [2, 1], "timestamp": pa.array([2000, 1000], pa.timestamp("ms"))})
    assert validate_interactions(whole).column("item_id").to_pylist() == [2, 1]  # whole seconds: file order kept


def test_whole_float_timestamps_are_cast() -> None:
    table = pa.table({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [881250949.0, 3.0]})
    out = validate_interactions(table)
    assert out.column("timestamp").type == pa.int64()
    assert out.column("timestamp").to_pylist() == [881250949, 3]


def test_fractional_float_timestamps_are_rejected() -> None:
    table = pa.table({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [1.0, 1.5]})
    with pytest.raises(SchemaError, match=r"column 'timestamp' \| received 1 values that are "
                                          r"not whole numbers \(first: 1\.5\)"):
        validate_interactions(table)


def test_missing_column_names_it_and_the_columns_received() -> None:
    table = pa.table({"user_id": [1], "item": [2]})
    with pytest.raises(SchemaError, match=r"column 'item_id' \| received columns "
                                          r"\['user_id', 'item'\], expected a column named"):
        validate_interactions(table)


def test_mistyped_column() -> None:
    table = pa.table({"user_id": [1], "item_id": [2.0]})
    with pytest.raises(SchemaError, match=r"column 'item_id' \| received double, "
                                          r"expected an integer or string type"):
        validate_interactions(table)


def test_mistyped_timestamp() -> None:
    table = pa.table({"user_id": [1], "item_id": [2], "timestamp": ["yesterday"]})
    with pytest.raises(SchemaError, match=r"column 'timestamp' \| received string"):
        validate_interactions(table)


@pytest.mark.parametrize("column", ["user_id", "item_id", "timestamp"])
def test_nulls_are_counted(column: str) -> None:
    data = {"user_id": [1, 2, 3], "item_id": [4, 5, 6], "timestamp": [7, 8, 9]}
    data[column] = [None, 5, None]
    with pytest.raises(SchemaError, match=rf"column '{column}' \| received 2 nulls"):
        validate_interactions(pa.table(data))


def test_zero_rows() -> None:
    table = pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.string())})
    with pytest.raises(DataError, match=r"received 0 rows, expected at least one interaction"):
        validate_interactions(table)


def test_unsigned_ids_out_of_int64_range() -> None:
    """User ids only group rows: uint64 ones stay uint64. Item ids index a vocabulary of int64."""
    table = pa.table({"user_id": pa.array([2**64 - 1], pa.uint64()), "item_id": [1]})
    assert validate_interactions(table).column("user_id").to_pylist() == [2**64 - 1]
    table = pa.table({"user_id": [1], "item_id": pa.array([2**63], pa.uint64())})
    with pytest.raises(SchemaError, match=r"column 'item_id' \| received uint64"):
        validate_interactions(table)


def test_zero_rows_of_the_null_type_say_zero_rows() -> None:
    table = pa.table({"user_id": pa.array([], pa.null()), "item_id": pa.array([], pa.null())})
    with pytest.raises(DataError, match=r"received 0 rows, expected at least one interaction"):
        validate_interactions(table)


def test_parts_are_read_each_with_its_own_schema(tmp_path) -> None:
    """A directory is not read with its first part's schema: narrower integer types widen, and a part
    that differs in kind (timestamp missing, text ids for integers) is refused by name."""
    (tmp_path / "widths").mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1, 1], pa.int32()), "item_id": [1, 2]}),
                   tmp_path / "widths" / "part-0.parquet")
    pq.write_table(pa.table({"user_id": [2**40, 2**40], "item_id": [1, 2]}), tmp_path / "widths" / "part-1.parquet")
    assert read_interactions(tmp_path / "widths").column("user_id").to_pylist() == [1, 1, 2**40, 2**40]
    cases = {"times": ({"user_id": [1, 1], "item_id": [1, 2]}, {"user_id": [2, 2], "item_id": [6, 5],
                                                                "timestamp": [30, 20]}, "timestamp int64"),
             "kinds": ({"user_id": ["a", "a"], "item_id": ["007", "7"]}, {"user_id": ["b", "b"], "item_id": [7, 8]},
                       "item_id int64")}
    for name, (first, second, received) in cases.items():
        (tmp_path / name).mkdir()
        pq.write_table(pa.table(first), tmp_path / name / "part-0.parquet")
        pq.write_table(pa.table(second), tmp_path / name / "part-1.parquet")
        with pytest.raises(SchemaError, match=rf"part-1.parquet' \| received .*{received}.*, as in '.*part-0.parquet'"):
            read_interactions(tmp_path / name)


def test_parts_keep_dates_that_nanoseconds_cannot_hold(tmp_path) -> None:
    """Placeholder dates such as 9999-12-31 in microsecond parts read as one file does; only a part whose dates
    the finest unit among the parts cannot hold is refused, by name."""
    def part(name: str, user: int, when: datetime, unit: str) -> None:
        times = pa.array([when], pa.timestamp("us")).cast(pa.timestamp(unit), safe=False)
        pq.write_table(pa.table({"user_id": [user], "item_id": [10], "timestamp": times}), tmp_path / name)

    far, near = datetime(9999, 12, 31), datetime(2020, 1, 1)
    (tmp_path / "us").mkdir()
    part("us/a.parquet", 1, far, "us")
    part("us/b.parquet", 2, near, "ms")
    seconds = read_interactions(tmp_path / "us").column("timestamp").to_pylist()
    assert seconds == [int(far.replace(tzinfo=timezone.utc).timestamp()), int(near.replace(tzinfo=timezone.utc).timestamp())]
    (tmp_path / "ns").mkdir()
    part("ns/a.parquet", 1, far, "us")
    part("ns/b.parquet", 2, near, "ns")
    with pytest.raises(SchemaError, match=r"a.parquet': column 'timestamp' \| received timestamp\[us\] values that "
                                          r"timestamp\[ns\] cannot hold .*write the parts in one unit"):
        read_interactions(tmp_path / "ns")


def test_folder_names_are_not_columns(tmp_path) -> None:
    """Hive-style folders would turn user '007' into the integer 7, merging it with user '7'."""
    for user in ("007", "7"):
        (tmp_path / f"user_id={user}").mkdir()
        pq.write_table(pa.table({"item_id": [1, 2, 3]}), tmp_path / f"user_id={user}" / "p.parquet")
    with pytest.raises(SchemaError, match=r"user_id=007/p.parquet': column 'user_id' \| received columns \['item_id'\]"):
        read_interactions(tmp_path)


def test_read_parquet_file_and_directory(tmp_path) -> None:
    table = pa.table({"user_id": [1, 1, 2], "item_id": ["a", "b", "c"], "timestamp": [3, 1, 2]})
    pq.write_table(table, tmp_path / "one.parquet")
    (tmp_path / "parts").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "parts" / "part-0.parquet")
    pq.write_table(table.slice(2), tmp_path / "parts" / "part-1.parquet")
    assert read_interactions(tmp_path / "one.parquet").equals(validate_interactions(table))
    assert read_interactions(tmp_path / "parts").to_pydict() == table.to_pydict()


def test_a_parquet_part_without_the_extension_is_named_not_skipped(tmp_path) -> None:
    """A directory of parts was read as its *.parquet files only: a Hive part such as '000000_0' (Parquet
    without the extension) was skipped, and its users with it, without a word. Notes and markers stay skipped."""
    table = pa.table({"user_id": [1, 1, 2], "item_id": ["a", "b", "c"], "timestamp": [3, 1, 2]})
    (tmp_path / "parts" / "day=2").mkdir(parents=True)
    pq.write_table(table.slice(0, 2), tmp_path / "parts" / "part-0.parquet")
    (tmp_path / "parts" / "README.txt").write_text("not a part")
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    assert read_interactions(tmp_path / "parts").num_rows == 2
    pq.write_table(table.slice(2), tmp_path / "parts" / "day=2" / "000000_0")
    with pytest.raises(DataError, match=r"parquet input '.*parts' \| received Parquet files not named \*\.parquet "
                                        r"\('day=2/000000_0'\), which would be skipped, expected every part named"):
        read_interactions(tmp_path / "parts")


def test_a_linked_partition_is_read_and_a_part_reached_twice_refused_as_seqrec_score_finds_them(tmp_path) -> None:
    """The import read a directory with Path.rglob, which on Python 3.11 skips a symlinked folder's parts without
    a word (seqrec score follows it): the same directory gave the two commands different users. Both now find
    parts with one walk (data.parts): a linked partition is read, and a link that would read a part twice is
    refused by name."""
    table = pa.table({"user_id": [1, 1, 2], "item_id": ["a", "b", "c"], "timestamp": [3, 1, 2]})
    (tmp_path / "log" / "dt=1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "log" / "dt=1" / "part-0.parquet")
    pq.write_table(table.slice(2), tmp_path / "elsewhere" / "part-0.parquet")
    (tmp_path / "log" / "dt=2").symlink_to(tmp_path / "elsewhere")
    assert read_interactions(tmp_path / "log").to_pydict() == table.to_pydict()
    (tmp_path / "log" / "dt=1" / "again.parquet").symlink_to(tmp_path / "log" / "dt=1" / "part-0.parquet")
    with pytest.raises(DataError, match=r"parquet input '.*log' \| received the file 'dt=1/again.parquet' a second "
                                        r"time, as 'dt=1/part-0.parquet' \(a symbolic or hard link\)"):
        read_interactions(tmp_path / "log")


def test_read_not_a_parquet_file(tmp_path) -> None:
    path = tmp_path / "log.parquet"
    path.write_text("user_id,item_id\n1,2\n")
    with pytest.raises(DataError, match=r"parquet input '.*log\.parquet' \| received an "
                                        r"unreadable path.*seqrec data import SRC DST --format"):
        read_interactions(path)


def test_read_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match=r"nothing\.parquet' \| received an unreadable path"):
        read_interactions(tmp_path / "nothing.parquet")


def test_read_empty_parquet_file(tmp_path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"user_id": pa.array([], pa.int64()),
                             "item_id": pa.array([], pa.int64())}), path)
    with pytest.raises(DataError, match=r"empty\.parquet' \| received 0 rows"):
        read_interactions(path)
