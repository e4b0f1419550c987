"""Input parts: found, checked before any work (one clear message), streamed, long logs grouped."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec.batchinfer.inputs import LIST_FORM, LONG_FORM, group_long, plan_input, read_part
from seqrec.batchinfer.preprocess import encode_batch
from seqrec.data import Vocabulary
from seqrec.errors import DataError, SchemaError

from histories import write_partitioned


def write(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def grouped(path, tmp_path, reads_times):
    """The list-form rows ``seqrec score`` makes of the part at ``path`` for a model that reads times or not."""
    plan = plan_input(str(path), tmp_path / "out", reads_times)
    return plan, pa.Table.from_batches(list(read_part(plan.parts[0], plan, batch_rows=2)))


def reasons(table):
    """Each grouped row's reject reason from ``encode_batch`` reading the times the rows carry (None: scored)."""
    vocab = Vocabulary.from_items(np.arange(1, 10))
    return encode_batch(table.combine_chunks().to_batches()[0], vocab, timestamps=True).reasons.to_pylist()


def test_parts_come_from_a_file_a_directory_or_a_glob(tmp_path):
    for name in ("b.parquet", "a.parquet", "_hidden.parquet"):
        write(tmp_path / "in" / name, user_id=[1], history=[[1000]])
    (tmp_path / "in" / "notes.txt").write_text("not a part")
    out = tmp_path / "out"
    assert [p.name for p in plan_input(str(tmp_path / "in"), out, False).parts] == ["a.parquet", "b.parquet"]
    assert [p.name for p in plan_input(str(tmp_path / "in" / "b*.parquet"), out, False).parts] == ["b.parquet"]
    plan = plan_input(str(tmp_path / "in" / "a.parquet"), out, False)
    assert plan.form == LIST_FORM and plan.user_type == pa.int64() and plan.parts[0].rows == 1
    with pytest.raises(DataError, match="no Parquet file"):
        plan_input(str(tmp_path / "nothing*.parquet"), out, False)
    with pytest.raises(DataError, match="--output .* the directory of the input parts"):
        plan_input(str(tmp_path / "in"), tmp_path / "in", False)


def test_a_parquet_part_without_the_extension_is_named_not_skipped(tmp_path):
    """Its users would not be scored, and the job would say nothing of them; a glob can pick such parts."""
    write(tmp_path / "in" / "a.parquet", user_id=[1], history=[[1000]])
    write(tmp_path / "in" / "000001_0", user_id=[2], history=[[1000]])
    with pytest.raises(DataError, match=r"input '.*in' \| received Parquet files not named \*\.parquet "
                                        r"\('000001_0'\), which would be skipped"):
        plan_input(str(tmp_path / "in"), tmp_path / "out", False)
    assert [p.name for p in plan_input(str(tmp_path / "in" / "*"), tmp_path / "out", False).parts] == [
        "000001_0", "a.parquet"]


def test_a_directory_is_read_at_any_depth_each_part_named_by_its_path_under_it(tmp_path):
    """A partitioned layout (Spark, Hive, pyarrow.dataset): one file name in every folder, markers and
    attempts beside the parts, a folder named like a file (Spark's ``events.parquet/``)."""
    inputs = write_partitioned(tmp_path / "in", days=2, users=3)
    write(inputs / "top.parquet", user_id=[1], history=[[1000]])
    write(inputs / "events.parquet" / "part-1.parquet", user_id=[2], history=[[1000]])
    write(inputs / "dt=2026-12-01" / "_committed_1" / "part-00000.parquet", user_id=[3], history=[[1000]])
    plan = plan_input(str(inputs), tmp_path / "out", False)
    assert [(part.name, part.path) for part in plan.parts] == [
        (name, str(inputs / name)) for name in ("dt=2026-12-01/part-00000.parquet", "dt=2026-12-02/part-00000.parquet",
                                                "events.parquet/part-1.parquet", "top.parquet")]
    with pytest.raises(DataError, match=r"sharing the file names \['part-00000.parquet'\], expected distinct part "
                                        r"names \(each names its output part; pass the directory that holds"):
        plan_input(str(inputs / "*" / "*.parquet"), tmp_path / "out", False)  # a glob's parts: file names
    write(inputs / "dt=2026-12-02" / "000001_0", user_id=[4], history=[[1000]])
    with pytest.raises(DataError, match=r"received Parquet files not named \*\.parquet \('dt=2026-12-02/000001_0'\)"):
        plan_input(str(inputs), tmp_path / "out", False)
    with pytest.raises(DataError, match=r"received no Parquet file at any depth \(files and folders starting with _ "):
        plan_input(str(write_partitioned(tmp_path / "markers", days=0, users=0)), tmp_path / "out", False)


def test_symlinked_folders_are_followed_and_a_folder_reached_twice_is_refused(tmp_path):
    """Path.rglob on Python 3.11 skips a linked folder's parts without a word; they are read, under the link's
    name. A link back up would never end, two links to one folder would score its users twice: refused."""
    write(tmp_path / "in" / "dt=1" / "part-0.parquet", user_id=[1], history=[[1000]])
    write(tmp_path / "elsewhere" / "part-0.parquet", user_id=[2], history=[[1000]])
    (tmp_path / "in" / "dt=2").symlink_to(tmp_path / "elsewhere")
    plan = plan_input(str(tmp_path / "in"), tmp_path / "out", False)
    assert [(part.name, part.path) for part in plan.parts] == [
        ("dt=1/part-0.parquet", str(tmp_path / "in" / "dt=1" / "part-0.parquet")),
        ("dt=2/part-0.parquet", str(tmp_path / "in" / "dt=2" / "part-0.parquet"))]
    (tmp_path / "in" / "dt=1" / "up").symlink_to(tmp_path / "in")
    with pytest.raises(DataError, match=r"received the folder '\.' a second time, as 'dt=1/up' \(a symbolic link\), "
                                        r"expected each folder once"):
        plan_input(str(tmp_path / "in"), tmp_path / "out", False)
    (tmp_path / "in" / "dt=1" / "up").unlink()
    (tmp_path / "in" / "latest").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"the folder 'dt=2' a second time, as 'latest'"):
        plan_input(str(tmp_path / "in"), tmp_path / "out", False)


def test_a_dangling_link_or_an_unlistable_folder_is_refused_not_skipped(tmp_path, monkeypatch):
    """A partition linked in from a store that is not mounted dropped its users with rc 0 (a glob already refused
    such a match); a folder that cannot be listed was a PermissionError traceback."""
    write(tmp_path / "in" / "dt=1" / "part-0.parquet", user_id=[1], history=[[1000]])
    (tmp_path / "in" / "dt=4").symlink_to(tmp_path / "unmounted" / "dt=4")
    with pytest.raises(DataError, match=r"input '.*in' \| received links whose targets are missing \('dt=4' -> "
                                        r"'.*unmounted/dt=4'\), expected links to folders or parts that exist"):
        plan_input(str(tmp_path / "in"), tmp_path / "out", False)
    (tmp_path / "in" / "dt=4").unlink()
    (tmp_path / "in" / "dt=1" / "part-9.parquet").symlink_to(tmp_path / "gone.parquet")
    with pytest.raises(DataError, match=r"links whose targets are missing \('dt=1/part-9.parquet' -> "):
        plan_input(str(tmp_path / "in"), tmp_path / "out", False)
    (tmp_path / "in" / "dt=1" / "part-9.parquet").unlink()
    listing = Path.iterdir

    def unlistable(folder):
        if folder.name == "dt=1":
            raise PermissionError(13, "Permission denied", str(folder))
        return listing(folder)

    monkeypatch.setattr(Path, "iterdir", unlistable)  # the tests run as root, whom file modes do not stop
    with pytest.raises(DataError, match=r"received the folder 'dt=1', which cannot be listed \(Permission denied\)"):
        plan_input(str(tmp_path / "in"), tmp_path / "out", False)


def test_an_output_inside_a_linked_partitions_target_is_refused(tmp_path):
    """The walk follows a linked folder outside the input: an output inside its target was accepted, and the next
    run read the scored parts as input parts."""
    write(tmp_path / "in" / "dt=1" / "part-0.parquet", user_id=[1], history=[[1000]])
    write(tmp_path / "ext" / "dt=3" / "part-0.parquet", user_id=[2], history=[[1000]])
    (tmp_path / "in" / "dt=3").symlink_to(tmp_path / "ext" / "dt=3")
    with pytest.raises(DataError, match=rf"--output \| received '{tmp_path}/ext/dt=3/scored', inside the input "
                                        rf"directory '{tmp_path}/ext/dt=3'"):
        plan_input(str(tmp_path / "in"), tmp_path / "ext" / "dt=3" / "scored", False)


def test_a_glob_matching_folders_is_refused_naming_them_not_skipped(tmp_path):
    """Spark writes ``hist_a.parquet/`` as a folder of part files: a glob skipping it dropped its users with
    rc 0. A glob of partition folders (``dt=*``) is told the same, not that it found no Parquet file."""
    write(tmp_path / "in" / "hist_a.parquet" / "part-00000.parquet", user_id=[1], history=[[1000]])
    write(tmp_path / "in" / "hist_b.parquet", user_id=[2], history=[[1000]])
    with pytest.raises(DataError, match=rf"input '.*in/\*\.parquet' \| received matches that are folders "
                                        rf"\('{tmp_path}/in/hist_a.parquet'\), expected files: pass their parent "
                                        rf"directory '{tmp_path}/in' \(a directory is read at any depth"):
        plan_input(str(tmp_path / "in" / "*.parquet"), tmp_path / "out", False)
    for day in range(5):
        write(tmp_path / "hive" / f"dt={day}" / f"part-{day}.parquet", user_id=[day], history=[[1000]])
    with pytest.raises(DataError, match=r"received matches that are folders \('.*/dt=0', '.*/dt=1', '.*/dt=2' and 2 "
                                        r"more\), expected files: .* or a glob that reaches the files \(such as "
                                        r"'.*/hive/dt=\*/\*\.parquet'\)"):
        plan_input(str(tmp_path / "hive" / "dt=*"), tmp_path / "out", False)
    assert len(plan_input(str(tmp_path / "hive" / "dt=*" / "*.parquet"), tmp_path / "out", False).parts) == 5


def test_a_file_reached_twice_is_refused_naming_both_paths(tmp_path):
    """A link beside its target (``b.parquet`` -> ``a.parquet``) would score the same users twice, into two
    output parts; a folder reached twice already was refused."""
    write(tmp_path / "in" / "dt=1" / "a.parquet", user_id=[1], history=[[1000]])
    (tmp_path / "in" / "dt=2").mkdir()
    (tmp_path / "in" / "dt=2" / "b.parquet").symlink_to(tmp_path / "in" / "dt=1" / "a.parquet")
    for pattern, first, again in ((tmp_path / "in", "dt=1/a.parquet", "dt=2/b.parquet"),
                                  (tmp_path / "in" / "*" / "*.parquet", "a.parquet", "b.parquet")):
        with pytest.raises(DataError, match=rf"received the file '{first}' a second time, as '{again}' \(a symbolic "
                                            r"or hard link\), expected each file once: its rows would be read twice"):
            plan_input(str(pattern), tmp_path / "out", False)


def test_an_output_inside_the_input_or_around_it_is_refused(tmp_path):
    """The input is read at any depth: an output inside it would be read as input by the next run."""
    write(tmp_path / "in" / "top.parquet", user_id=[1], history=[[1000]])
    write(tmp_path / "in" / "dt=1" / "part-0.parquet", user_id=[2], history=[[1000]])
    for output in (tmp_path / "in" / "scored", tmp_path / "in" / "dt=1" / "scored" / "today"):
        with pytest.raises(DataError, match=rf"--output \| received '{output}', inside the input directory "
                                            rf"'{tmp_path / 'in'}', expected a directory outside the input"):
            plan_input(str(tmp_path / "in"), output, False)
    for pattern in (tmp_path / "in" / "dt=1", tmp_path / "in" / "*" / "*.parquet"):
        with pytest.raises(DataError, match=rf"--output \| received '{tmp_path / 'in'}', a directory that holds the "
                                            r"input '.*', expected a directory outside the input"):
            plan_input(str(pattern), tmp_path / "in", False)


@pytest.mark.parametrize("columns,match", [
    ({"user_id": [1], "items": [[1000]]}, r"columns \['user_id', 'items'\], expected user_id \+ history"),
    ({"user_id": [1], "history": [[1.5]]}, r"column 'history' \| received list<element: double>"),
    ({"user_id": [[1]], "item_id": [1000]}, r"column 'user_id' \| received list<element: int64>"),
])
def test_a_wrong_schema_is_one_message_naming_the_column(tmp_path, columns, match):
    write(tmp_path / "in" / "a.parquet", user_id=[1], history=[[1000]])
    write(tmp_path / "in" / "b.parquet", **columns)
    with pytest.raises(SchemaError, match=r"input part '.*b\.parquet'.*" + match):
        plan_input(str(tmp_path / "in"), tmp_path / "out", False)


def test_parts_must_agree_on_form_and_user_id_type(tmp_path):
    write(tmp_path / "forms" / "a.parquet", user_id=[1], history=[[1000]])
    write(tmp_path / "forms" / "b.parquet", user_id=[1], item_id=[1000])
    with pytest.raises(SchemaError, match="received the long form with int64 user ids without a timestamp column, "
                                          "expected the list form"):
        plan_input(str(tmp_path / "forms"), tmp_path / "out", False)
    write(tmp_path / "ids" / "a.parquet", user_id=[1], history=[[1000]])
    write(tmp_path / "ids" / "b.parquet", user_id=["u1"], history=[[1000]])
    with pytest.raises(SchemaError, match="with string user ids, expected the list form with int64"):
        plan_input(str(tmp_path / "ids"), tmp_path / "out", False)
    with pytest.raises(SchemaError, match="a 'timestamps' column: the model reads timestamps"):
        plan_input(str(tmp_path / "ids" / "a.parquet"), tmp_path / "out", True)
    write(tmp_path / "times" / "a.parquet", user_id=[1], item_id=[1000], timestamp=[5])
    write(tmp_path / "times" / "b.parquet", user_id=[1], item_id=[1000])
    with pytest.raises(SchemaError, match="b.parquet' \\| received the long form with int64 user ids without a "
                                          "timestamp column, expected the long form with int64 user ids and a "
                                          "timestamp column as '.*a.parquet'"):
        plan_input(str(tmp_path / "times"), tmp_path / "out", False)


def test_a_log_is_put_in_time_order_even_where_the_model_reads_no_times(tmp_path):
    """A log written newest first: SASRec takes no timestamps, but its history is still oldest first."""
    path = write(tmp_path / "log.parquet", user_id=[1, 1, 1, 2, 2], item_id=[5, 7, 9, 3, 4],
                 timestamp=[30, 20, 10, 2, 1])
    plan = plan_input(str(path), tmp_path / "out", False)
    assert plan.time_order and not plan.timestamps
    rows = pa.Table.from_batches(list(read_part(plan.parts[0], plan, batch_rows=2))).to_pylist()
    assert rows == [{"user_id": 1, "history": [9, 7, 5], "timestamps": [10, 20, 30], "row": 0},
                    {"user_id": 2, "history": [4, 3], "timestamps": [1, 2], "row": 3}]  # times carried: see below
    write(tmp_path / "bad" / "log.parquet", user_id=[1], item_id=[5], timestamp=["yesterday"])
    with pytest.raises(SchemaError, match=r"column 'timestamp' \| received string, expected integer seconds, "
                                          r"whole-valued floats or a timestamp type \(it orders each user's interactions"):
        plan_input(str(tmp_path / "bad"), tmp_path / "out", False)


def test_parts_are_streamed_in_record_batches(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"user_id": range(100), "history": [[1000]] * 100}), path, row_group_size=30)
    plan = plan_input(str(path), tmp_path / "out", False)
    sizes = [batch.num_rows for batch in read_part(plan.parts[0], plan, batch_rows=16)]
    assert sum(sizes) == 100 and max(sizes) <= 16 and len(sizes) >= 7


def test_a_long_log_is_grouped_across_batch_boundaries(tmp_path):
    users = [7, 7, 7, 3, 9, 9, 9, 9, 9, 4, 8]  # each user's rows together: streamed
    path = write(tmp_path / "log.parquet", user_id=users, item_id=list(range(1000, 1011)))
    plan = plan_input(str(path), tmp_path / "out", False)
    assert plan.form == LONG_FORM and plan.parts[0].grouped
    for batch_rows in (1, 2, 4, 100):
        rows = pa.Table.from_batches(list(read_part(plan.parts[0], plan, batch_rows))).to_pylist()
        assert rows == [{"user_id": 7, "history": [1000, 1001, 1002], "row": 0},
                        {"user_id": 3, "history": [1003], "row": 3},
                        {"user_id": 9, "history": [1004, 1005, 1006, 1007, 1008], "row": 4},
                        {"user_id": 4, "history": [1009], "row": 9},
                        {"user_id": 8, "history": [1010], "row": 10}]


def test_a_log_whose_user_comes_back_is_sorted_by_user_first(tmp_path):
    users = [7, 7, 7, 3, 9, 9, 9, 9, 9, 4, 7]  # user 7 comes back at the end: one user, four items
    path = write(tmp_path / "log.parquet", user_id=users, item_id=list(range(1000, 1011)))
    plan = plan_input(str(path), tmp_path / "out", False)
    assert not plan.parts[0].grouped
    for batch_rows in (1, 2, 4, 100):
        rows = pa.Table.from_batches(list(read_part(plan.parts[0], plan, batch_rows))).to_pylist()
        assert rows == [{"user_id": 3, "history": [1003], "row": 3},
                        {"user_id": 4, "history": [1009], "row": 9},
                        {"user_id": 7, "history": [1000, 1001, 1002, 1010], "row": 0},
                        {"user_id": 9, "history": [1004, 1005, 1006, 1007, 1008], "row": 4}]


def test_a_long_log_is_ordered_by_timestamp_within_a_user_ties_in_file_order():
    batch = pa.RecordBatch.from_pydict({"user_id": ["a", "a", "a", "a", None, None],
                                        "item_id": [1, 2, 3, 4, 5, 6], "timestamp": [30, 10, 30, 20, 1, 1]})
    rows = pa.Table.from_batches(list(group_long(iter([batch]), timestamps=True))).to_pylist()
    assert rows[0] == {"user_id": "a", "history": [2, 4, 1, 3], "timestamps": [10, 20, 30, 30], "row": 0}
    assert [row["history"] for row in rows[1:]] == [[5], [6]]  # null user ids never merge


def test_a_long_log_keeps_sub_second_order_as_training_does():
    """1.7 s and 1.2 s floor to one second; the item at 1.2 s comes first in scoring as in training."""
    from seqrec.data.schema import validate_interactions

    times = pa.array([1700, 1200, 5000], pa.timestamp("ms"))
    batch = pa.RecordBatch.from_pydict({"user_id": [1, 1, 1], "item_id": [20, 10, 30], "timestamp": times})
    row = pa.Table.from_batches(list(group_long(iter([batch]), timestamps=True))).to_pylist()[0]
    trained = validate_interactions(pa.Table.from_batches([batch]))
    assert row["history"] == trained.column("item_id").to_pylist() == [10, 20, 30]
    assert row["timestamps"] == trained.column("timestamp").to_pylist() == [1, 1, 5]


def test_timestamps_become_seconds_as_training_reads_them():
    from seqrec.batchinfer.inputs import seconds
    from seqrec.data.schema import validate_interactions

    times = pa.array([-1500, 1500, 0, None], pa.timestamp("ms", tz="UTC"))
    assert seconds(times).to_pylist() == [-2, 1, 0, None]
    table = pa.table({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "timestamp": times.slice(0, 3)})
    trained = validate_interactions(table)  # rows in time order: -1.5 s, 0 s, 1.5 s
    assert trained.column("timestamp").to_pylist() == sorted(seconds(times.slice(0, 3)).to_pylist())


def test_float_timestamps_are_read_as_training_reads_them_and_a_fraction_is_a_wrong_type(tmp_path):
    """Training takes whole-valued float times; scoring plans the same file, and a user with a time that is
    not a whole second (or NaN, or beyond int64) is rejected, not rounded and not a failed job."""
    path = write(tmp_path / "log.parquet", user_id=[1, 1, 2, 2, 3, 4], item_id=[5, 6, 7, 8, 9, 1],
                 timestamp=[20.0, 10.0, 1.5, 2.0, np.nan, 1e19])
    plan, table = grouped(path, tmp_path, reads_times=False)
    assert plan.time_order and table.column("history").to_pylist()[0] == [6, 5]
    plan, table = grouped(path, tmp_path, reads_times=True)
    assert table.column("timestamps").to_pylist() == [[10, 20], [None, 2], [None], [None]]
    assert reasons(table) == [None, "wrong_type", "wrong_type", "wrong_type"]
    lists = write(tmp_path / "lists" / "a.parquet", user_id=[1, 2], history=[[5, 6], [7]],
                  timestamps=[[1.0, 2.0], [0.5]])
    plan, table = grouped(lists, tmp_path, reads_times=True)
    assert reasons(table) == [None, "wrong_type"]


def test_a_null_time_in_a_log_reaches_scoring_whether_the_model_reads_times_or_not(tmp_path):
    """A null time is no time: its user's rows carry it for a model without times too (the log is ordered by
    time either way, and the null sorts first), so that preprocess can reject that user as ``wrong_type``
    rather than score the item moved to the front of the history."""
    path = write(tmp_path / "log.parquet", user_id=[1, 1, 1, 2], item_id=[3, 4, 5, 6],
                 timestamp=pa.array([5, 6, None, 7], pa.int64()))
    for reads_times in (False, True):
        plan, table = grouped(path, tmp_path, reads_times)
        assert plan.timestamps == reads_times and plan.time_order
        assert table.column("timestamps").to_pylist() == [[None, 5, 6], [7]]
        assert reasons(table) == ["wrong_type", None]


def test_a_uint64_time_beyond_int64_rejects_its_user_and_the_job_goes_on(tmp_path):
    """As an item id beyond int64 is a ``wrong_type``: the footer cannot tell, so the value is no time, not an
    ArrowInvalid from the cast halfway through the job."""
    path = write(tmp_path / "log.parquet", user_id=[1, 1, 2], item_id=[3, 4, 5],
                 timestamp=pa.array([1, 2**64 - 1, 2**63 - 1], pa.uint64()))
    for reads_times in (False, True):
        plan, table = grouped(path, tmp_path, reads_times)
        assert table.column("timestamps").to_pylist() == [[None, 1], [2**63 - 1]]
        assert reasons(table) == ["wrong_type", None]


def test_an_empty_input_is_refused_not_the_working_directory(tmp_path, monkeypatch):
    """Path('') is '.': an unset $VAR in a nightly job scored whatever Parquet lay in the working directory."""
    write(tmp_path / "stray.parquet", user_id=[1], history=[[1000]])
    monkeypatch.chdir(tmp_path)
    for pattern in ("", "  "):
        with pytest.raises(DataError, match=r"input \| received '\s*', expected a Parquet file"):
            plan_input(pattern, tmp_path / "out", False)
