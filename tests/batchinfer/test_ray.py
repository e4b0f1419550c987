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
    """Two CPUs, as on this machine (actors take half a CPU each so the read tasks still run), and small
    blocks, so several actors score pieces of one part and the results must be put back in order."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 16 * 1024  # many blocks per part
    yield
    context.target_max_block_size = block_size
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, parts_dir) -> dict[str, Path]:
    """The list-form parts with bad rows added to one, and the same users as a long log."""
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
    rejected = {"all_unknown": 1, "duplicate_user": 1} | ({"empty_history": 1} if form == "list" else {})
    assert summary["rejected_by_reason"] == expected["rejected_by_reason"] == rejected  # a log has no empty history
    assert summary["users_scored"] == expected["users_scored"] and summary["engine"] == "ray"
    assert not (Path(distributed.output) / "_staging").exists()
