"""The Ray engine on a local Ray cluster started here: the same files as the local engine."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec.batchinfer import score
from seqrec.batchinfer.ledger import LEDGER_FILE

from histories import as_long_log, damage_last_row_group, read_dir, write_partitioned, write_parts

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
    for folder in (lists, longs):  # a part without users: committed with none, in either form
        pq.write_table(pq.read_table(folder / "part-000.parquet").slice(0, 0), folder / "part-empty.parquet")
    return {"list": lists, "long": longs}


@pytest.mark.slow
@pytest.mark.parametrize("form,actors", [("list", 6), ("long", 2)])
def test_ray_engine_writes_what_the_local_engine_writes(local_ray, bundle, inputs, run_config, form, actors):
    """6 actors: more than the cluster places at once (half a CPU each on 2 CPUs); the pool runs with those it
    gets, and the model's probe before the ledger must not wait for all of them (it hung there)."""
    local = run_config(bundle, inputs[form], batch_size=16)
    distributed = run_config(bundle, inputs[form], batch_size=16, engine="ray", actors=actors)
    expected = score(local, echo=lambda line: None)
    summary = score(distributed, echo=lambda line: None)
    assert read_dir(distributed.output) == read_dir(local.output)  # same rows, same order, same rejects
    rejected = {"all_unknown": 1} | ({"empty_history": 1, "duplicate_user": 1} if form == "list" else {})
    assert summary["rejected_by_reason"] == expected["rejected_by_reason"] == rejected  # a log has no empty
    # history, and the user whose rows come back at the end of a log part is one user (the part is sorted)
    assert summary["users_scored"] == expected["users_scored"] and summary["engine"] == "ray"
    assert not (Path(distributed.output) / "_staging").exists()
    entries = [entry for entry in map(json.loads, (Path(distributed.output) / LEDGER_FILE).read_text().splitlines())
               if "part" in entry]
    for entry in entries:  # the actors' seconds on each part (none on the part without users), at most theirs in all
        assert (entry["actor_seconds"] > 0) == (entry["part"] != "part-empty.parquet"), entry
    assert sum(entry["actor_seconds"] for entry in entries) <= 2 * summary["wall_seconds"]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["list", "long"])
def test_a_damaged_part_fails_a_ray_job_after_every_other_part_is_committed(local_ray, bundle, run_config, tmp_path,
                                                                           form, caplog):
    """Parts are committed as Ray returns their last rows, and a row group that cannot be read (a file damaged
    in transfer: planning reads only the footers) does not stop the other parts: the actor returns what it
    could read, Ray goes on, and the job ends with the DataError naming the part (and, in the list form, its row group) once
    every other part is committed. Written again, the part is all a --resume scores; the files are then an
    uninterrupted run's."""
    from seqrec.batchinfer.ray_engine import UNIT_FAILURE_LOGGER
    from seqrec.errors import DataError

    inputs = write_parts(tmp_path / "lists", parts=4, users=60, row_group=20)
    if form == "long":
        for path in sorted(inputs.glob("*.parquet")):
            pq.write_table(as_long_log(pq.read_table(path)), path, row_group_size=200)
    damage_last_row_group(inputs / "part-001.parquet", "history" if form == "list" else "item_id")
    cfg = run_config(bundle, inputs, batch_size=16, engine="ray", actors=2)
    where = r", row group 2" if form == "list" else ""
    with pytest.raises(DataError, match=rf"input part '.*part-001.parquet'{where} \| received a damaged file"):
        score(cfg, echo=lambda line: None)
    # no Ray task failed (Ray Data logged three tracebacks of one): the actor returned the unit's rows it could read
    assert [record for record in caplog.records if record.name == UNIT_FAILURE_LOGGER] == []
    done = [json.loads(line).get("part") for line in (Path(cfg.output) / LEDGER_FILE).read_text().splitlines()[1:]]
    assert sorted(done) == ["part-000.parquet", "part-002.parquet", "part-003.parquet"]
    assert not (Path(cfg.output) / "_staging").exists() and not list(Path(cfg.output).glob(".*"))
    if form == "long":  # the resume below is the list form's; the log's own path ends here (time on 2 cores)
        return

    pq.write_table(pq.read_table(inputs / "part-002.parquet").slice(0, 45), inputs / "part-001.parquet")
    lines = []
    score(run_config(bundle, inputs, batch_size=16, engine="ray", actors=2, output=cfg.output, resume=True),
          echo=lines.append)
    assert lines[0] == "resuming: 3 of 4 parts already scored, 1 to go"
    local = run_config(bundle, inputs, batch_size=16)
    score(local, echo=lambda line: None)
    assert read_dir(cfg.output) == read_dir(local.output)


@pytest.mark.slow
def test_ray_scores_a_partitioned_log_into_the_same_folders_as_the_local_engine(local_ray, bundle, run_config,
                                                                               tmp_path):
    """Parts of one file name in two folders; as logs, each is grouped by a Ray task into a staged copy
    (named by the part's index, its name holding a folder), then committed at its path under the output."""
    inputs = write_partitioned(tmp_path / "in", days=2, users=30)
    for path in inputs.glob("dt=*/*.parquet"):
        pq.write_table(as_long_log(pq.read_table(path)), path, row_group_size=100)
    local = run_config(bundle, inputs, batch_size=16)
    distributed = run_config(bundle, inputs, batch_size=16, engine="ray", actors=2)
    expected = score(local, echo=lambda line: None)
    assert score(distributed, echo=lambda line: None)["users_scored"] == expected["users_scored"] == 60
    files = read_dir(distributed.output)
    assert sorted(files) == ["_rejects.parquet", "dt=2026-12-01/part-00000.parquet", "dt=2026-12-02/part-00000.parquet"]
    assert files == read_dir(local.output)


@pytest.mark.slow
def test_a_model_the_actors_cannot_load_fails_before_anything_is_written(local_ray, bundle, damaged_bundle, parts_dir,
                                                                        run_config, capfd):
    """The driver holds no session: each actor opens its own. Actors now open it before the ledger is written,
    so ONNX Runtime's refusal is the actors' one-line ExportError (not Ray's tracebacks), DIR stays empty, and
    once the bundle is whole again the same command runs without --resume."""
    import shutil

    from seqrec.errors import ExportError

    cfg = run_config(damaged_bundle, parts_dir, engine="ray", actors=2)
    with pytest.raises(ExportError, match=r"^ONNX model '.*bundle/model.onnx' \| received a model ONNX Runtime "
                                          r"could not load \(.*Protobuf parsing failed"):
        score(cfg, echo=lambda line: None)
    assert not Path(cfg.output).exists() or not any(Path(cfg.output).iterdir())
    assert "Traceback" not in "".join(capfd.readouterr())
    shutil.copy2(bundle / "model.onnx", damaged_bundle / "model.onnx")
    assert score(cfg, echo=lambda line: None)["users_scored"] == 450


def _failing_on_items_from(bundle: Path, target: Path, first: int) -> Path:
    """A copy of ``bundle`` whose graph loads and scores as before, but fails in ONNX Runtime on a history
    holding an item index >= ``first`` (its items pass a Gather over 0..first-1 first): an actor that raises
    part way through a job, with nothing in the input the job could check up front."""
    import json
    import shutil

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    shutil.copytree(bundle, target)
    graph_path = target / "model.onnx"
    model = onnx.load(graph_path, load_external_data=False)  # the weights stay in model.onnx.data
    for node in model.graph.node:
        node.input[:] = ["items_checked" if name == "items" else name for name in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.arange(first, dtype=np.int64), "known_indices"))
    model.graph.node.insert(0, helper.make_node("Gather", ["known_indices", "items"], ["items_checked"]))
    onnx.save(model, graph_path)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["graph"]["bytes"] = graph_path.stat().st_size
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.slow
def test_an_actor_that_raises_stops_the_job_with_one_error_and_resume_finishes_it(local_ray, bundle, run_config,
                                                                                 tmp_path, capfd):
    """An actor's exception while scoring (here ONNX Runtime's, on an item the graph refuses) stopped the job
    with Ray's tracebacks of it. It is now one ScoringFailedError naming the part in flight, the actor's
    exception and the way on; the ledger stays, and --resume, once the part is written again, ends with the
    files of an uninterrupted run."""
    from seqrec.errors import ScoringFailedError

    model = _failing_on_items_from(bundle, tmp_path / "failing", first=201)  # items 1000..1199 are indices 1..200
    inputs = write_parts(tmp_path / "in", parts=3, users=40, row_group=20)
    for path in sorted(inputs.glob("*.parquet")):
        table = pq.read_table(path)
        histories = [[min(item, 1199) for item in history] for history in table.column("history").to_pylist()]
        if path.name == "part-001.parquet":
            histories[-1] = histories[-1] + [1299]  # its last row group fails
        pq.write_table(table.set_column(1, "history", pa.array(histories, table.schema.field("history").type)),
                       path, row_group_size=20)
    cfg = run_config(model, inputs, batch_size=16, engine="ray", actors=2)
    with pytest.raises(ScoringFailedError, match=r"^Ray scoring of input parts? .*'part-001.parquet'.* \| received "
                                                 r"RuntimeError: .*Gather node.*indices element out of data bounds.*, expected every unit scored: .* run the same "
                                                 r"command with --resume to score the rest; the full error: "
                                                 r"SEQREC_DEBUG=1, the actors' tracebacks: Ray's logs in "):
        score(cfg, echo=lambda line: None)
    assert "Traceback" not in "".join(capfd.readouterr())
    done = [json.loads(line).get("part") for line in (Path(cfg.output) / LEDGER_FILE).read_text().splitlines()[1:]]
    assert "part-001.parquet" not in done

    table = pq.read_table(inputs / "part-001.parquet")
    histories = [[min(item, 1199) for item in history] for history in table.column("history").to_pylist()]
    pq.write_table(table.set_column(1, "history", pa.array(histories, table.schema.field("history").type)),
                   inputs / "part-001.parquet", row_group_size=20)
    score(run_config(model, inputs, batch_size=16, engine="ray", actors=2, output=cfg.output, resume=True),
          echo=lambda line: None)
    local = run_config(model, inputs, batch_size=16)
    score(local, echo=lambda line: None)
    assert read_dir(cfg.output) == read_dir(local.output)


@pytest.mark.slow
def test_a_log_time_that_is_no_time_rejects_its_user_on_ray_as_locally(local_ray, bundle, run_config, tmp_path):
    """The Ray scorer read a log's times only where the model reads them: a user whose time is null was then
    scored with a reordered history instead of rejected (the bundle here reads no times)."""
    log = pa.table({"user_id": pa.array([1, 1, 2, 2, 3], pa.int64()),
                    "item_id": pa.array([1000, 1001, 1002, 1003, 1004], pa.int64()),
                    "timestamp": pa.array([5, None, 7, 6, 9], pa.int64())})
    pq.write_table(log, tmp_path / "log.parquet")
    local = run_config(bundle, tmp_path / "log.parquet")
    distributed = run_config(bundle, tmp_path / "log.parquet", engine="ray", actors=2)
    summaries = [score(cfg, echo=lambda line: None) for cfg in (local, distributed)]
    assert [summary["rejected_by_reason"] for summary in summaries] == [{"wrong_type": 1}] * 2
    assert read_dir(distributed.output) == read_dir(local.output)


def _table(numbers: list[int]) -> pa.Table:
    """A Ray-like result table: rows whose ``_seq`` are ``numbers`` (in that order)."""
    return pa.table({"user_id": [1000 + n for n in numbers], "_seq": pa.array(numbers, pa.int64())})


def test_staged_parts_complete_as_their_last_rows_come_back_and_read_in_input_order(tmp_path):
    from seqrec.batchinfer.ray_engine import StagedParts

    staged = StagedParts(tmp_path / "results", [4, 0, 6, 2])  # part 1 has no rows
    assert staged.complete_at_start() == [1]
    completed = [staged.add(_table(numbers)) for numbers in ([7, 8, 9, 3, 4], [11], [0, 1, 2], [10, 5, 6])]
    assert completed == [[], [], [0], [2, 3]]  # runs cut, shuffled and spanning parts
    users = {index: sum((batch.column("user_id").to_pylist() for batch in staged.rows(index)), [])
             for index in (0, 1, 2, 3)}
    assert users == {0: [1000, 1001, 1002, 1003], 1: [], 2: [1004, 1005, 1006, 1007, 1008, 1009], 3: [1010, 1011]}
    assert all("_seq" not in batch.schema.names for batch in staged.rows(2))
    staged.drop(2)
    assert not (tmp_path / "results" / "000002").exists() and staged.incomplete() == []


def test_staged_parts_of_unknown_size_learn_it_when_their_first_rows_come_back(tmp_path):
    """Long-form parts: rows numbered within bounds (the parts' interactions), the sizes (their users) read
    when a part's first rows arrive; a part none of whose rows came is unseen, to be settled after."""
    from seqrec.batchinfer.ray_engine import StagedParts

    asked = []
    sizes = {0: 3, 1: 2, 2: 0, 3: None}  # part 2: no users; part 3: its grouping failed
    staged = StagedParts(tmp_path / "results", [None] * 4, [10, 5, 4, 6],
                         size_of=lambda index: asked.append(index) or sizes[index])
    assert staged.complete_at_start() == [] and list(staged.starts) == [0, 10, 15, 19, 25]
    assert staged.add(_table([10, 0, 11, 2])) == [1]  # part 1 whole with its first rows; part 0 has 2 of 3
    assert staged.add(_table([1])) == [0] and asked == [0, 1]  # each size read once
    assert sum((batch.column("user_id").to_pylist() for batch in staged.rows(0)), []) == [1000, 1001, 1002]
    assert staged.unseen() == [2, 3] and staged.incomplete() == [2, 3]
    staged.sizes[2] = 0  # its grouped file has no rows: complete
    assert staged.incomplete() == [3]


def test_staged_parts_add_up_the_actors_seconds_of_each_parts_rows(tmp_path):
    """Ray's actors score parts side by side, out of the driver's sight, so a part's wall clock says little of
    its cost (parts that finish together take about 0 s each): every result row carries its share of its
    actor's seconds, and a part's are summed over however Ray cut its rows into tables."""
    from seqrec.batchinfer.ray_engine import ACTOR_SECONDS, SEQUENCE, StagedParts

    staged = StagedParts(tmp_path, [3, 2])
    rows = pa.table({"user_id": [10, 11, 20, 12, 21], SEQUENCE: [0, 1, 3, 2, 4],
                     ACTOR_SECONDS: [0.5, 0.5, 2.0, 0.25, 1.0]})
    assert staged.add(rows.slice(0, 3)) == [] and staged.add(rows.slice(3)) == [0, 1]
    assert staged.actor_seconds.tolist() == [1.25, 3.0]
    assert [batch.schema.names for batch in staged.rows(0)] == [["user_id"]] * 2  # neither column reaches the output


def test_a_ray_parts_line_shows_the_actors_seconds_and_rate():
    from seqrec.batchinfer.writer import part_line

    counts = {"users_scored": 1000, "rejected": {"empty_history": 20}}
    assert part_line(3, 8, "a.parquet", counts, 0.01) == "part 3/8 a.parquet: 1,000 scored, 20 rejected in 0.0 s " \
        "(102,000 users/s)"
    assert part_line(3, 8, "a.parquet", counts, 0.01, actor_seconds=5.1) == "part 3/8 a.parquet: 1,000 scored, " \
        "20 rejected in 5.1 actor-seconds (200 users/s per actor)"


@pytest.mark.parametrize("numbers, message", [([[0, 1], [3], [2, 2]], r"row 2 twice"),
                                               ([[0, 1, 1], [3]], r"row 1 twice")])
def test_a_doubled_ray_row_fails_instead_of_reaching_the_output(tmp_path, numbers, message):
    from seqrec.batchinfer.ray_engine import StagedParts
    from seqrec.errors import SeqrecError

    staged = StagedParts(tmp_path / "results", [4])
    completed = sum((staged.add(_table(chunk)) for chunk in numbers), [])
    assert completed == [0]  # as many rows as the part has, or more: the check comes when it is read
    with pytest.raises(SeqrecError, match=message):
        list(staged.rows(0))


def test_a_row_of_a_part_already_committed_fails_the_job(tmp_path):
    from seqrec.batchinfer.ray_engine import StagedParts
    from seqrec.errors import SeqrecError

    staged = StagedParts(tmp_path / "results", [4, 2])
    assert staged.add(_table([0, 1, 2, 3])) == [0]
    list(staged.rows(0))
    staged.drop(0)
    with pytest.raises(SeqrecError, match=r"rows after all its rows came back \(doubled rows\)"):
        staged.add(_table([2, 4, 5]))


def test_parts_short_of_rows_are_found_with_their_first_unit_short_of_rows(tmp_path):
    from seqrec.batchinfer.ray_engine import StagedParts, _first_short_unit
    from seqrec.errors import SeqrecError

    staged = StagedParts(tmp_path / "results", [6, 3])
    units = [{"path": "a", "row_group": 0, "first": 0}, {"path": "a", "row_group": 1, "first": 3},
             {"path": "b", "row_group": 0, "first": 6}]
    staged.add(_table([0, 1, 2, 6, 7, 8]))  # row group 1 of part a never came back
    assert staged.incomplete() == [0]
    assert _first_short_unit(staged.returned(0), units, 0, 6) == units[1]
    with pytest.raises(SeqrecError, match="row numbers"):
        staged.add(_table([9]))


def test_ray_init_leaves_the_callers_sigterm_handler_in_place():
    """ray.init installs sys.exit(15) for SIGTERM (through this very function); the job keeps the CLI's."""
    import signal

    from ray._private.utils import set_sigterm_handler

    from seqrec.interrupts import handlers_restored

    def callers(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, callers)
    try:
        with handlers_restored(signal.SIGTERM):
            set_sigterm_handler(lambda signum, frame: None)
        assert signal.getsignal(signal.SIGTERM) is callers
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_ray_parts_seconds_run_from_when_the_work_began_or_the_previous_part_was_committed(bundle, parts_dir,
                                                                                              run_config, tmp_path):
    """The driver timed a Ray part from its first rows coming back (already read and scored by an actor, out of
    its sight) to its commit: a part of one unit showed about 0 s. The first part's clock now starts when the
    work began, each next one's when the previous part was committed, so the parts' seconds add up to the job's."""
    import time

    import numpy as np

    from seqrec.batchinfer.core import BatchScorer
    from seqrec.batchinfer.inputs import plan_input, read_part
    from seqrec.batchinfer.ledger import Ledger
    from seqrec.batchinfer.model import open_model
    from seqrec.batchinfer.ray_engine import SEQUENCE, StagedParts, _commit
    from seqrec.batchinfer.writer import PartWriter

    cfg = run_config(bundle, parts_dir)
    model, plan, out = open_model(cfg), plan_input(cfg.input, cfg.output, False), Path(cfg.output)
    parts = plan.parts[:2]
    with BatchScorer(model, cfg.batch_size) as scorer:  # the rows an actor would return, numbered in input order
        results = [pa.Table.from_batches([scorer.score(batch) for batch in read_part(part, plan, 1000)])
                   for part in parts]
    results[1] = results[1].append_column(SEQUENCE, pa.array(np.arange(len(results[1])) + len(results[0])))
    results[0] = results[0].append_column(SEQUENCE, pa.array(np.arange(len(results[0]))))
    ledger = Ledger.open(out, {"test": "ray timing"}, False)
    writer = PartWriter(out, plan, "list", model.vocab.items.type, ledger)
    staged, pause = StagedParts(tmp_path / "results", [part.rows for part in parts]), 0.3
    began = time.perf_counter()
    for index, table in enumerate(results):
        time.sleep(pause)  # the part read and scored by the actors, out of the driver's sight
        assert staged.add(table) == [index]
        _commit(staged, index, parts[index], writer, began)
    ended = time.perf_counter()
    ledger.close()
    seconds = [entry["seconds"] for entry in ledger.entries]
    assert min(seconds) >= pause and sum(seconds) <= ended - began + 0.002  # ledger seconds are rounded to ms
