"""The Ray engine on a local Ray cluster started here: the same files as the local engine."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec.batchinfer import score

from histories import as_long_log, read_dir

ray = pytest.importorskip("ray", reason="the ray engine needs ray: pip install 'seqrec[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    """Two CPUs, as on this machine (actors take half a CPU each so Ray's other tasks still run), and small
    blocks, so Ray cuts the results into many pieces that the driver must put back in order (the list
    parts have row groups of 50 rows: several work units per part, shared by the actors)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 16 * 1024  # many blocks per part
    yield
    context.target_max_block_size = block_size
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, parts_dir) -> dict[str, Path]:
    """The list-form parts with bad rows added to one, and the same users as a long log (where the
    duplicate user's second row makes the part interleaved: sorted by user before grouping)."""
    lists, longs = tmp_path_factory.mktemp("lists"), tmp_path_factory.mktemp("longs")
    for path in sorted(parts_dir.glob("*.parquet")):
        table = pq.read_table(path)
        if path.name.endswith("001.parquet"):
            extra = pa.table({"user_id": [7, 8, table["user_id"][0].as_py()], "history": [[], [5], [1000]]})
            table = pa.concat_tables([table, extra.cast(table.schema)])
        pq.write_table(table, lists / path.name, row_group_size=50)
        pq.write_table(as_long_log(table), longs / path.name, row_group_size=300)
    pq.write_table(pq.read_table(lists / "part-000.parquet").slice(0, 0), lists / "part-empty.parquet")
    return {"list": lists, "long": longs}


@pytest.mark.slow
@pytest.mark.parametrize("form", ["list", "long"])
def test_ray_engine_writes_what_the_local_engine_writes(local_ray, bundle, inputs, run_config, form):
    local = run_config(bundle, inputs[form], batch_size=16)
    distributed = run_config(bundle, inputs[form], batch_size=16, engine="ray", actors=2)
    expected = score(local, echo=lambda line: None)
    summary = score(distributed, echo=lambda line: None)
    assert read_dir(distributed.output) == read_dir(local.output)  # same rows, same order, same rejects
    rejected = {"all_unknown": 1} | ({"empty_history": 1, "duplicate_user": 1} if form == "list" else {})
    assert summary["rejected_by_reason"] == expected["rejected_by_reason"] == rejected  # a log has no empty
    # history, and the user whose rows come back at the end of a log part is one user (the part is sorted)
    assert summary["users_scored"] == expected["users_scored"] and summary["engine"] == "ray"
    assert not (Path(distributed.output) / "_staging").exists()


def _staged(directory: Path, numbers: list[list[int]]) -> None:
    """Ray-like result files: file f holds rows whose ``_seq`` are numbers[f] (in that order)."""
    directory.mkdir()
    for index, chunk in enumerate(numbers):
        pq.write_table(pa.table({"user_id": [1000 + n for n in chunk], "_seq": pa.array(chunk, pa.int64())}),
                       directory / f"{index:03d}.parquet")


def test_results_come_back_in_input_order_whatever_order_ray_wrote_them(tmp_path):
    from seqrec.batchinfer.inputs import InputPart
    from seqrec.batchinfer.ray_engine import _ordered_results

    _staged(tmp_path / "results", [[7, 8, 9, 3, 4], [0, 1, 2], [10, 5, 6], [11]])  # runs cut and shuffled
    parts = [InputPart(f"/in/p{i}", f"p{i}", rows) for i, rows in enumerate([4, 0, 6, 2])]
    events = [(part.name, None if batch is None else batch.column("user_id").to_pylist())
              for part, batch in _ordered_results(tmp_path / "results", parts, [4, 0, 6, 2])]
    users = {name: sum((rows for n, rows in events if n == name and rows), []) for name in ("p0", "p1", "p2", "p3")}
    assert users == {"p0": [1000, 1001, 1002, 1003], "p1": [], "p2": [1004, 1005, 1006, 1007, 1008, 1009],
                     "p3": [1010, 1011]}
    assert [name for name, rows in events if rows is None] == ["p0", "p1", "p2", "p3"]  # each part closed once
    assert all(batch is None or "_seq" not in batch.schema.names for _, batch in
               _ordered_results(tmp_path / "results", parts, [4, 0, 6, 2]))


@pytest.mark.parametrize("numbers, message", [([[0, 1], [3]], r"rows 2\.\.2 missing"),
                                               ([[0, 1, 2], [2, 3]], r"row 2 twice"),
                                               ([[0, 1, 2]], r"rows 3\.\.3 missing")])
def test_lost_or_doubled_ray_rows_fail_instead_of_reaching_the_output(tmp_path, numbers, message):
    from seqrec.batchinfer.inputs import InputPart
    from seqrec.batchinfer.ray_engine import _ordered_results
    from seqrec.errors import SeqrecError

    _staged(tmp_path / "results", numbers)
    with pytest.raises(SeqrecError, match=message):
        list(_ordered_results(tmp_path / "results", [InputPart("/in/p", "p", 4)], [4]))
