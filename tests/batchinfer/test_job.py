"""The local job end to end: outputs, rejects, summary, layouts, input forms, resume, refusals, CLI."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from seqrec.batchinfer import score
from seqrec.batchinfer.ledger import LEDGER_FILE
from seqrec.config import ExportConfig
from seqrec.cli import main
from seqrec.exporter import export_checkpoint
from seqrec.errors import ConfigError, DataError, ExportError, SchemaError

from histories import as_long_log, damage_last_row_group, read_dir, write_parts


@pytest.fixture(scope="module")
def bad_rows_dir(tmp_path_factory) -> Path:
    """One part with every bad-row kind and duplicate users; one with text ids, one not an id."""
    directory = tmp_path_factory.mktemp("bad")
    pq.write_table(pa.table({
        "user_id": pa.array([1, None, 3, 4, 5, 6, 1, 4, 9], pa.int64()),
        "history": pa.array([[1000, 1001], [1000], None, [], [5, 6], [5, 1002], [1003], [1004], [1005]]),
    }), directory / "a.parquet")
    pq.write_table(pa.table({"user_id": [20, 21], "history": [["1006", "x7"], ["1007", "8"]]}), directory / "b.parquet")
    return directory


def test_every_bad_row_kind_goes_to_the_rejects_with_its_reason(bundle, bad_rows_dir, run_config):
    cfg = run_config(bundle, bad_rows_dir)
    summary = score(cfg, echo=lambda line: None)
    out = Path(cfg.output)
    assert sorted(p.name for p in out.iterdir()) == ["_ledger.jsonl", "_rejects.parquet", "_summary.json",
                                                     "a.parquet", "b.parquet"]
    assert pq.read_table(out / "a.parquet").column("user_id").to_pylist() == [1, 6, 9]
    assert pq.read_table(out / "b.parquet").column("user_id").to_pylist() == [21]
    rejects = pq.read_table(out / "_rejects.parquet").to_pylist()
    assert [(r["part"], r["row"], r["user_id"], r["reason"]) for r in rejects] == [
        ("a.parquet", 1, None, "null_user_id"), ("a.parquet", 2, 3, "null_history"),
        ("a.parquet", 3, 4, "empty_history"), ("a.parquet", 4, 5, "all_unknown"),
        ("a.parquet", 6, 1, "duplicate_user"),  # user 1's first row was scored
        ("a.parquet", 7, 4, "duplicate_user"),  # user 4's first row was rejected: still its only verdict
        ("b.parquet", 0, 20, "wrong_type")]
    assert summary["users_scored"] == 4 and summary["users_rejected"] == 7
    assert summary["rejected_by_reason"] == {"all_unknown": 1, "duplicate_user": 2, "empty_history": 1,
                                             "null_history": 1, "null_user_id": 1, "wrong_type": 1}
    assert summary["unknown_items_dropped"] == 2  # item 5 for user 6, "8" for user 21
    assert json.loads((out / "_summary.json").read_text()) == summary
    assert summary["peak_rss_mb"] > 0 and summary["users_per_second"] > 0


def test_an_interleaved_log_is_grouped_by_user_as_a_sorted_one_is(bundle, run_config, tmp_path):
    """A log in time order mixes users. Streamed as it is, a user was scored on the first run of their
    rows only and the rest rejected; such a part is sorted by user first (stably: each user's rows keep
    their order), and rejects keep the part's own row numbers."""
    from seqrec.batchinfer.inputs import first_return

    log = pa.table({"user_id": pa.array([5, 5, 6, 7, 7, 5, None, 8, 6], pa.int64()),
                    "item_id": pa.array([1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008], pa.int64())})
    grouped = log.take([0, 1, 5, 2, 8, 3, 4, 6, 7])
    for name, table in (("interleaved", log), ("grouped", grouped)):
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / "a.parquet", row_group_size=4)
    for rows in (1, 2, 3, 100):  # a user continuing across read batches is one run; coming back is found
        assert first_return(str(tmp_path / "interleaved" / "a.parquet"), batch_rows=rows) == (5, 5)
        assert first_return(str(tmp_path / "grouped" / "a.parquet"), batch_rows=rows) is None
    outputs = {}
    for name in ("interleaved", "grouped"):
        cfg = run_config(bundle, tmp_path / name, batch_size=2)
        summary = score(cfg, echo=lambda line: None)
        assert summary["users_scored"] == 4 and summary["rejected_by_reason"] == {"null_user_id": 1}
        outputs[name] = read_dir(cfg.output)
    assert outputs["interleaved"]["a.parquet"] == outputs["grouped"]["a.parquet"]
    assert outputs["interleaved"]["a.parquet"].column("user_id").to_pylist() == [5, 6, 7, 8]
    assert [(r["row"], r["reason"]) for r in outputs["interleaved"]["_rejects.parquet"].to_pylist()] == \
        [(6, "null_user_id")]  # its row in the part as given, not in the sorted one


def test_uint64_ids_beyond_int64_keep_the_users_and_reject_the_items_in_both_forms(bundle, run_config, tmp_path):
    huge = 2**64 - 1
    users, items = pa.array([huge, 2, 3], pa.uint64()), pa.array([[1000, 1001], [1002, huge], [1003]], pa.list_(pa.uint64()))
    (tmp_path / "lists").mkdir()
    pq.write_table(pa.table({"user_id": users, "history": items}), tmp_path / "lists" / "a.parquet")
    (tmp_path / "longs").mkdir()
    pq.write_table(as_long_log(pq.read_table(tmp_path / "lists" / "a.parquet")), tmp_path / "longs" / "a.parquet")
    for form in ("lists", "longs"):
        cfg = run_config(bundle, tmp_path / form)
        summary = score(cfg, echo=lambda line: None)
        scored = pq.read_table(Path(cfg.output) / "a.parquet")
        assert scored.schema.field("user_id").type == pa.uint64()
        assert scored.column("user_id").to_pylist() == [huge, 3]
        rejects = pq.read_table(Path(cfg.output) / "_rejects.parquet").to_pylist()
        assert [(r["user_id"], r["reason"]) for r in rejects] == [(2, "wrong_type")], form
        assert summary["users_scored"] == 2


@pytest.mark.parametrize("form", ["list", "long"])
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_text_ids_are_an_integer_vocabularys_ids_only_as_the_integers_print(bundle, checkpoint, run_config, tmp_path,
                                                                           form, backend):
    """'01000' was read as item 1000, silently ("dropped 0 unknown items"). Text is an id of an integer vocabulary
    only as the integer prints (a RecBole import keeps '007' apart from '7'); other text ('01000', '+1002', '-0')
    is no id of that vocabulary, so its user is rejected as ``wrong_type``, in both forms, on the exported graph
    and on torch (one reader); text as the integers print scores as the integers do."""
    histories = pa.table({"user_id": pa.array([1, 2, 3, 4], pa.int64()),
                          "history": [["1000", "1001"], ["01000", "1001"], ["1002", "+1002"], ["1003", "-0"]]})
    as_ints = pa.table({"user_id": pa.array([1], pa.int64()), "history": [[1000, 1001]]})
    model = bundle if backend == "onnxruntime" else checkpoint
    scored = {}
    for name, table in (("text", histories), ("ints", as_ints)):
        (tmp_path / name).mkdir()
        pq.write_table(table if form == "list" else as_long_log(table), tmp_path / name / "a.parquet")
        cfg = run_config(model, tmp_path / name, backend=backend)
        scored[name] = (score(cfg, echo=lambda line: None), read_dir(cfg.output))
    summary, files = scored["text"]
    assert summary["rejected_by_reason"] == {"wrong_type": 3} and summary["unknown_items_dropped"] == 0
    assert [(r["user_id"], r["reason"]) for r in files["_rejects.parquet"].to_pylist()] == [
        (2, "wrong_type"), (3, "wrong_type"), (4, "wrong_type")]
    assert files["a.parquet"].equals(scored["ints"][1]["a.parquet"])


def test_columns_of_the_null_type_become_rejects_not_a_failed_job(bundle, run_config, tmp_path):
    """pandas writes ``list<null>`` for a part whose histories are all empty or null, and a null-typed
    ``item_id`` for a log whose ids are all missing: those rows are rejects, the other parts score."""
    (tmp_path / "lists").mkdir()
    pq.write_table(pa.table({"user_id": [1, 2], "history": pa.array([[], None], pa.list_(pa.null()))}),
                   tmp_path / "lists" / "a.parquet")
    pq.write_table(pa.table({"user_id": [3], "history": [[1000, 1001]]}), tmp_path / "lists" / "b.parquet")
    (tmp_path / "longs").mkdir()
    pq.write_table(pa.table({"user_id": [4, 4, 5], "item_id": pa.array([None] * 3, pa.null())}),
                   tmp_path / "longs" / "a.parquet")
    pq.write_table(pa.table({"user_id": [6], "item_id": [1000]}), tmp_path / "longs" / "b.parquet")
    expected = {"lists": ([(1, "empty_history"), (2, "null_history")], [3]),
                "longs": ([(4, "all_unknown"), (5, "all_unknown")], [6])}
    for form, (rejected, scored) in expected.items():
        cfg = run_config(bundle, tmp_path / form)
        summary = score(cfg, echo=lambda line: None)
        rejects = pq.read_table(Path(cfg.output) / "_rejects.parquet").to_pylist()
        assert [(r["user_id"], r["reason"]) for r in rejects] == rejected, form
        assert pq.read_table(Path(cfg.output) / "b.parquet").column("user_id").to_pylist() == scored
        assert pq.read_table(Path(cfg.output) / "a.parquet").num_rows == 0 and summary["users_scored"] == 1


@pytest.mark.parametrize("time_bias", [False, True])
def test_hstu_takes_timestamps_only_where_its_time_bias_can_read_them(tiny_checkpoints, run_config, tmp_path,
                                                                      time_bias):
    """Trained on data without real times, HSTU keeps a zero time bias: its bundle has no timestamps
    input and a log without a timestamp column scores; a model that reads times refuses such a log."""
    checkpoint = tiny_checkpoints("hstu", "softmax", time_bias=time_bias)
    bundle = tmp_path / "bundle"
    export_checkpoint(checkpoint, bundle, ExportConfig(top_k=5, validation_users=20), echo=lambda line: None)
    inputs = [entry["name"] for entry in json.loads((bundle / "manifest.json").read_text())["inputs"]]
    assert inputs == (["items", "timestamps"] if time_bias else ["items"])
    (tmp_path / "log").mkdir()
    pq.write_table(pa.table({"user_id": [1, 1, 1, 2, 2], "item_id": [1000, 1003, 1001, 1010, 1200]}),
                   tmp_path / "log" / "a.parquet")
    configs = [run_config(checkpoint, tmp_path / "log", top_k=5), run_config(bundle, tmp_path / "log")]
    if time_bias:
        for cfg in configs:
            with pytest.raises(SchemaError, match="a 'timestamp' column: the model reads timestamps"):
                score(cfg, echo=lambda line: None)
        return
    for cfg in configs:
        assert score(cfg, echo=lambda line: None)["users_scored"] == 2
    eager, graph = (pq.read_table(Path(cfg.output) / "a.parquet") for cfg in configs)
    assert eager.column("items").to_pylist() == graph.column("items").to_pylist()


def test_long_layout_holds_the_list_layout_row_by_row(bundle, parts_dir, run_config):
    lists = run_config(bundle, parts_dir)
    longs = run_config(bundle, parts_dir, layout="long")
    score(lists, echo=lambda line: None)
    score(longs, echo=lambda line: None)
    for name, table in read_dir(lists.output).items():
        if name.startswith("_"):
            continue
        long = pq.read_table(Path(longs.output) / name)
        assert long.column_names == ["user_id", "rank", "item_id", "score"]
        assert long.column("rank").to_pylist() == list(range(1, 8)) * table.num_rows
        assert long.column("user_id").to_pylist() == np.repeat(table.column("user_id").to_numpy(), 7).tolist()
        assert long.column("item_id").to_pylist() == np.concatenate(table.column("items").to_pylist()).tolist()
        assert long.column("score").equals(pa.chunked_array([pa.concat_arrays(
            [c.flatten() for c in table.column("scores").chunks])]))


@pytest.mark.parametrize("layout", ["list", "long"])
def test_a_user_with_no_item_left_is_counted_in_both_layouts(tiny_checkpoints, run_config, tmp_path, layout):
    """--exclude-seen with a window holding the whole catalog leaves nothing to recommend: an empty list,
    or no row in the long layout; either way the summary and its line count the user."""
    checkpoint = tiny_checkpoints("sasrec", "softmax", num_items=30, max_length=32)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"user_id": [1, 2], "history": [list(range(1000, 1030)), [1000, 1001]]}),
                   tmp_path / "in" / "a.parquet")
    lines = []
    cfg = run_config(checkpoint, tmp_path / "in", top_k=5, exclude_seen=True, layout=layout)
    summary = score(cfg, echo=lines.append)
    table = pq.read_table(Path(cfg.output) / "a.parquet")
    if layout == "list":
        assert table.column("items").to_pylist()[0] == [] and len(table.column("items").to_pylist()[1]) == 5
    else:
        assert table.column("user_id").to_pylist() == [2] * 5
    assert summary["users_scored"] == 2 and summary["users_without_items"] == 1 and summary["users_rejected"] == 0
    assert lines[-1].startswith("scored 2 users (1 with no item left to recommend), rejected 0")


def test_a_long_interaction_log_scores_like_its_list_form(bundle, parts_dir, run_config, tmp_path):
    for path in sorted(parts_dir.glob("*.parquet")):
        pq.write_table(as_long_log(pq.read_table(path)), tmp_path / path.name, row_group_size=100)
    lists, longs = run_config(bundle, parts_dir), run_config(bundle, tmp_path)
    score(lists, echo=lambda line: None)
    summary = score(longs, echo=lambda line: None)
    assert summary["form"] == "long" and summary["users_scored"] == 450
    assert read_dir(longs.output) == read_dir(lists.output)


def test_a_log_written_newest_first_scores_in_time_order(bundle, parts_dir, run_config, tmp_path):
    """Each user's interactions newest first, with their times: the model (no timestamps input) still sees
    every history oldest first, as training does, so the output is the list form's."""
    for path in sorted(parts_dir.glob("*.parquet")):
        log = as_long_log(pq.read_table(path))
        users = log.column("user_id").to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # each user's first row
        position = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
        group = np.cumsum(np.r_[True, users[1:] != users[:-1]])
        log = log.append_column("timestamp", pa.array(1_600_000_000 + 60 * position))
        pq.write_table(log.take(np.lexsort((-position, group))), tmp_path / path.name)
    lists, longs = run_config(bundle, parts_dir), run_config(bundle, tmp_path)
    score(lists, echo=lambda line: None)
    score(longs, echo=lambda line: None)
    assert read_dir(longs.output) == read_dir(lists.output)


def test_resume_skips_finished_parts_and_cleans_what_a_kill_left(bundle, parts_dir, run_config):
    cfg = run_config(bundle, parts_dir)
    score(cfg, echo=lambda line: None)
    out = Path(cfg.output)
    expected = read_dir(out)
    lines = (out / LEDGER_FILE).read_text().splitlines()
    (out / LEDGER_FILE).write_text("\n".join(lines[:2]) + '\n{"part": "part-0')  # 1 part done, a torn append
    (out / "part-002.parquet").unlink()
    (out / ".part-001.parquet.inprogress").write_bytes(b"half a part")
    (out / "_summary.json").unlink()
    lines_seen = []
    summary = score(run_config(bundle, parts_dir, output=cfg.output, resume=True), echo=lines_seen.append)
    assert lines_seen[0] == "resuming: 1 of 3 parts already scored, 2 to go"
    assert summary["resumed_parts"] == 1 and summary["users_scored"] == 450 and summary["users_this_run"] == 300
    assert read_dir(out) == expected and not list(out.glob(".*"))
    assert score(run_config(bundle, parts_dir, output=cfg.output, resume=True), echo=lines_seen.append) == summary
    assert "already complete" in lines_seen[-1]


def test_a_finished_job_or_a_rerun_without_resume_is_answered_before_any_session_opens(
        bundle, parts_dir, run_config, monkeypatch):
    """The engine was opened before the ledger was read: a rerun of a finished job opened an ONNX Runtime session
    (under Ray, a cluster and its actors) to say there was nothing to do, and a rerun without --resume did the
    same before being refused."""
    from seqrec.batchinfer import job
    from seqrec.errors import ConfigError

    cfg = run_config(bundle, parts_dir)
    summary = score(cfg, echo=lambda line: None)

    def no_session(*args, **kwargs):
        raise AssertionError("a session was opened")

    monkeypatch.setattr(job, "BatchScorer", no_session)
    lines = []
    assert score(dataclasses.replace(cfg, resume=True), echo=lines.append) == summary
    assert lines == [f"{cfg.output}: the job is already complete (its ledger says finished); nothing to do"]
    with pytest.raises(ConfigError, match="a previous job's ledger"):
        score(cfg, echo=lambda line: None)
    (Path(cfg.output) / "_summary.json").unlink()  # a copy that skipped _* files: one line, not a traceback
    with pytest.raises(DataError, match=r"_summary.json' \| received an unreadable file .*, expected the summary of the "
                                        r"finished job in --output"):
        score(dataclasses.replace(cfg, resume=True), echo=lambda line: None)


def test_an_output_directory_in_use_is_refused(bundle, checkpoint, parts_dir, run_config):
    cfg = run_config(bundle, parts_dir)
    score(cfg, echo=lambda line: None)
    with pytest.raises(ConfigError, match="a previous job's ledger \\(add --resume to continue it\\)"):
        score(run_config(bundle, parts_dir, output=cfg.output), echo=lambda line: None)
    with pytest.raises(ConfigError, match=r"--resume \| received the ledger of a different job \(differs in "
                                          r"backend; kind; model; model_fingerprint\)"):
        score(run_config(checkpoint, parts_dir, output=cfg.output, resume=True, top_k=7), echo=lambda line: None)


def test_resume_refuses_an_input_part_rewritten_with_as_many_rows(bundle, run_config, tmp_path):
    """A nightly job re-run into the same directory over new shards of a fixed size: the rows match, the
    users do not; resuming would keep the old users' output, so it is refused, naming the part."""
    (tmp_path / "in").mkdir()
    for name, first in (("a.parquet", 1), ("b.parquet", 10)):
        pq.write_table(pa.table({"user_id": [first, first + 1], "history": [[1000, 1001], [1002]]}),
                       tmp_path / "in" / name)
    cfg = run_config(bundle, tmp_path / "in")
    score(cfg, echo=lambda line: None)
    copy = tmp_path / "in" / "b.parquet"
    copy.write_bytes(copy.read_bytes())  # the same bytes again (a re-download): still the same job
    score(run_config(bundle, tmp_path / "in", output=cfg.output, resume=True), echo=lambda line: None)
    pq.write_table(pa.table({"user_id": [100, 200], "history": [[1003, 1001], [1002]]}), tmp_path / "in" / "a.parquet")
    with pytest.raises(ConfigError, match=r"differs in input parts a.parquet \(added, removed or rewritten\)"):
        score(run_config(bundle, tmp_path / "in", output=cfg.output, resume=True), echo=lambda line: None)


def finished_parts(out: Path) -> list[str]:
    return [record["part"] for record in map(json.loads, (out / LEDGER_FILE).read_text().splitlines())
            if "part" in record]


def test_a_damaged_part_stops_the_job_after_the_parts_before_it_are_committed(bundle, run_config, tmp_path):
    """Planning reads only the footers, so a part damaged inside (a bad copy) fails while it is read: one
    DataError naming the part, not pyarrow's OSError, after every part scored before it is committed. Written
    again, it is scored by --resume from its new contents; a finished part rewritten is still refused."""
    inputs = write_parts(tmp_path / "in", parts=4, users=200, row_group=10)
    damage_last_row_group(inputs / "part-003.parquet")  # its first row groups are scored before the damage shows
    cfg = run_config(bundle, inputs, batch_size=16)
    with pytest.raises(DataError, match=r"input part '.*part-003.parquet' \| received a damaged file \(.+\), "
                                        r"expected a readable Parquet file \(write the part again, then run the "
                                        r"same command with --resume\)"):
        score(cfg, echo=lambda line: None)
    out = Path(cfg.output)
    assert finished_parts(out) == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    assert not list(out.glob("part-003*")) and not list(out.glob(".*"))  # nothing half written in view

    first = pq.read_table(inputs / "part-000.parquet")
    pq.write_table(pq.read_table(inputs / "part-001.parquet").slice(0, 45), inputs / "part-003.parquet")
    lines = []
    summary = score(run_config(bundle, inputs, batch_size=16, output=cfg.output, resume=True), echo=lines.append)
    assert lines[:2] == ["resuming: 3 of 4 parts already scored, 1 to go", "input parts rewritten since the job "
                         "began, not yet scored: part-003.parquet (scored from their new contents)"]
    uninterrupted = run_config(bundle, inputs, batch_size=16)
    assert summary["users_scored"] == score(uninterrupted, echo=lambda line: None)["users_scored"]
    assert read_dir(out) == read_dir(uninterrupted.output)
    score(run_config(bundle, inputs, output=cfg.output, resume=True), echo=lines.append)  # held to the new job line
    assert "already complete" in lines[-1]

    pq.write_table(first.slice(0, 30), inputs / "part-000.parquet")  # finished: its output has the old users
    with pytest.raises(ConfigError, match=r"differs in input parts part-000.parquet \(added, removed or rewritten\)"):
        score(run_config(bundle, inputs, output=cfg.output, resume=True), echo=lambda line: None)


def test_a_job_running_on_the_output_directory_keeps_others_out(bundle, parts_dir, run_config):
    """The ledger is locked while a job runs: a second job, resumed or new, is refused at once instead of
    deleting the first one's temporary files; the lock goes with the job."""
    from seqrec.batchinfer.ledger import Ledger

    cfg = run_config(bundle, parts_dir)
    running = Ledger.open(Path(cfg.output), {"job": "first"}, resume=False)  # the real lock of a job in flight
    for resume in (True, False):
        with pytest.raises(ConfigError, match="another running seqrec score job holds"):
            score(run_config(bundle, parts_dir, output=cfg.output, resume=resume), echo=lambda line: None)
    running.close()
    with pytest.raises(ConfigError, match="the ledger of a different job"):  # the lock is free again
        score(run_config(bundle, parts_dir, output=cfg.output, resume=True), echo=lambda line: None)


def test_an_output_path_that_cannot_be_a_directory_is_one_clear_line(bundle, parts_dir, run_config, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    output = tmp_path / "afile" / "sub"
    result = CliRunner().invoke(main, ["score", str(bundle), "--input", str(parts_dir), "--output", str(output),
                                       "--quiet"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: --output '{output}' | received a path where not a directory "
                                    "(NotADirectoryError), expected a directory this user can create and write")
    assert len(result.output.strip().splitlines()) == 1, result.output
    with pytest.raises(ConfigError, match="received a file, expected a directory"):  # click refuses it before
        score(run_config(bundle, parts_dir, output=str(tmp_path / "afile")), echo=lambda line: None)


def test_without_a_terminal_each_part_logs_one_line(bundle, parts_dir, run_config, capsys):
    score(run_config(bundle, parts_dir, progress=True), echo=lambda line: None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"part {i}/3 part-00{i - 1}.parquet" for i in (1, 2, 3)]
    assert all(" 150 scored, 0 rejected in " in line and line.endswith(" users/s)") for line in lines)


def test_a_wrong_schema_fails_before_any_work(bundle, parts_dir, run_config, tmp_path):
    for path in parts_dir.glob("*.parquet"):
        (tmp_path / path.name).symlink_to(path)
    pq.write_table(pa.table({"user_id": [1], "history": [[0.5]]}), tmp_path / "part-999.parquet")
    cfg = run_config(bundle, tmp_path)
    with pytest.raises(SchemaError, match=r"part-999.parquet': column 'history' \| received list<element: double>"):
        score(cfg, echo=lambda line: None)
    assert not Path(cfg.output).exists()


def test_a_model_that_does_not_load_fails_in_one_line_before_anything_is_written(bundle, damaged_bundle, parts_dir,
                                                                                 run_config):
    """The session was opened lazily, after the ledger: a damaged model.onnx gave ONNX Runtime's traceback and left
    DIR/_ledger.jsonl, so once the bundle was exported again the same command was refused (a previous job's ledger)
    and so was --resume (another model). The model is opened before anything is written: one ExportError, no
    DIR, and the same command scores once the bundle is whole again."""
    import shutil

    cfg = run_config(damaged_bundle, parts_dir)
    with pytest.raises(ExportError, match=r"ONNX model '.*bundle/model.onnx' \| received a model ONNX Runtime could "
                                          r"not load \(.*Protobuf parsing failed.*\), expected model.onnx as seqrec "
                                          r"export wrote it"):
        score(cfg, echo=lambda line: None)
    assert not Path(cfg.output).exists()
    result = CliRunner().invoke(main, ["score", str(damaged_bundle), "--input", str(parts_dir), "--output", cfg.output,
                                       "--threads", "1", "--quiet"])
    assert result.exit_code == 1 and result.output.startswith("Error: ONNX model '"), result.output
    assert len(result.output.strip().splitlines()) == 1 and not Path(cfg.output).exists()
    shutil.copy2(bundle / "model.onnx", damaged_bundle / "model.onnx")  # the bundle whole again
    assert score(cfg, echo=lambda line: None)["users_scored"] == 450


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_graph_cut_short_is_refused_before_anything_is_written_by_either_engine(bundle, parts_dir, run_config,
                                                                                  tmp_path, engine):
    """Ray's driver opens no session (each actor opens its own, once the ledger is written), so a damaged graph left
    a ledger there still; the manifest's record of model.onnx's size refuses a graph cut short when the bundle is
    loaded, before the cluster is even joined."""
    import shutil

    shutil.copytree(bundle, tmp_path / "bundle")
    graph = tmp_path / "bundle" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    cfg = run_config(tmp_path / "bundle", parts_dir, engine=engine)
    with pytest.raises(ExportError, match=r"export bundle graph .*model.onnx \| received 1,000 bytes, expected"):
        score(cfg, echo=lambda line: None)
    assert not Path(cfg.output).exists()


def test_seqrec_score_command(bundle, parts_dir, tmp_path):
    out = tmp_path / "scored"
    result = CliRunner().invoke(main, ["score", str(bundle), "--input", str(parts_dir), "--output", str(out),
                                       "--batch-size", "64", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("scored 450 users, rejected 0, dropped ") and "users/s" in result.output
    result = CliRunner().invoke(main, ["score", str(bundle), "--input", str(parts_dir), "--output", str(out),
                                       "--backend", "torch"])
    assert result.exit_code == 1 and result.output.startswith("Error: --backend torch | received the export bundle")
    assert len(result.output.strip().splitlines()) == 1


def test_ray_options_without_the_ray_engine_are_refused(bundle, parts_dir, tmp_path):
    """A local run would ignore them: someone who meant a cluster would get a local run reported as success."""
    for option, value, shown in (("--address", "10.0.0.5:6379", "'10.0.0.5:6379'"), ("--actors", "4", "4")):
        result = CliRunner().invoke(main, ["score", str(bundle), "--input", str(parts_dir), "--output",
                                           str(tmp_path / "out"), option, value, "--quiet"])
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: {option[2:]} | received {shown} with engine 'local', expected only "
                                        "with engine 'ray'"), result.output
    assert not (tmp_path / "out").exists()


def test_a_ray_cluster_that_cannot_be_reached_is_one_error_and_leaves_no_ledger(bundle, parts_dir, run_config,
                                                                                 monkeypatch):
    """ray.init is replaced by one that fails as Ray's does for an unreachable --address: the real one
    retries for minutes (or aborts the process) on this machine, too long and too blunt for a test."""
    ray = pytest.importorskip("ray")

    def unreachable(address=None, **_):
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", unreachable)
    cfg = run_config(bundle, parts_dir, engine="ray", address="10.9.9.9:6379")
    with pytest.raises(ConfigError, match=r"--address '10.9.9.9:6379' \| received no cluster reached \(Failed to "
                                          r"connect to Ray cluster at 10.9.9.9:6379\), expected a running Ray cluster"):
        score(cfg, echo=lambda line: None)
    assert not Path(cfg.output).exists()  # a rerun with the right address needs no --resume


def test_an_address_where_nothing_answers_is_one_error_within_seconds(bundle, parts_dir, run_config):
    """The real ray.init, not a stand-in: a port nobody listens on (bound, then closed) is refused at once,
    instead of ray.init's minutes of retries."""
    pytest.importorskip("ray")
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = run_config(bundle, parts_dir, engine="ray", address=f"127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"--address '127.0.0.1:{port}' \| received no cluster reached \(nothing "
                                          rf"answers at 127.0.0.1:{port} within 10 s"):
        score(cfg, echo=lambda line: None)
    assert time.perf_counter() - started < 15 and not Path(cfg.output).exists()


def test_an_input_without_rows_scores_nothing_and_says_so(bundle, run_config, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"user_id": pa.array([], pa.int64()), "history": pa.array([], pa.list_(pa.int64()))}),
                   tmp_path / "in" / "a.parquet")
    summary = score(run_config(bundle, tmp_path / "in"), echo=lambda line: None)
    assert summary["users_scored"] == 0 and summary["users_rejected"] == 0 and summary["warnings"] == ["empty_input"]
    assert capsys.readouterr().err.strip() == (f"warning: the input '{tmp_path / 'in'}' has no rows (in 1 part): "
                                                "nothing to score")


def test_every_user_rejected_is_a_warning_naming_the_id_types_and_a_summary_field(bundle, run_config, tmp_path,
                                                                                   capsys):
    """A model trained on other ids scored no one with status 0 and only the counts to tell; stderr now names
    the input's item id type against the vocabulary's, and ``_summary.json`` has ``warnings`` for a monitor.
    The status stays 0 (``job._warnings`` says why)."""
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"user_id": [1, 2, 3], "history": [["i1"], ["i2", "i9"], ["i3"]]}),
                   tmp_path / "in" / "a.parquet")
    cfg = run_config(bundle, tmp_path / "in")
    summary = score(cfg, echo=lambda line: None)
    assert summary["users_scored"] == 0 and summary["input_users"] == 3 and summary["warnings"] == ["no_user_scored"]
    assert json.loads((Path(cfg.output) / "_summary.json").read_text())["warnings"] == ["no_user_scored"]
    assert capsys.readouterr().err.strip() == (
        f"warning: no user of the input '{tmp_path / 'in'}' was scored: all 3 rejected (wrong_type 3); its item ids "
        "are string, the model's vocabulary holds int64 ids (such as 1000, 1001, 1002): is the input meant for this "
        "model?")


def test_a_log_counts_its_users_beside_its_interactions(bundle, run_config, tmp_path):
    """``input_rows`` of a log counts interactions, so scored + rejected never added up to it; ``input_users``
    does, and the final line gives both."""
    (tmp_path / "in").mkdir()
    users = pa.table({"user_id": [1, 2, 3, 1], "history": [[1000, 1001], [1002, 1003, 1004], [5], [1005]]})
    pq.write_table(as_long_log(users), tmp_path / "in" / "a.parquet")  # user 1 comes back: sorted, one user
    lines = []
    summary = score(run_config(bundle, tmp_path / "in"), echo=lines.append)
    assert (summary["input_rows"], summary["input_users"], summary["users_scored"], summary["users_rejected"]) == (
        7, 3, 2, 1) and summary["warnings"] == []
    assert "; 1 part (3 users from 7 interactions); this run" in lines[-1]


def test_a_log_time_that_is_no_time_rejects_its_user_for_a_model_without_times(bundle, run_config, tmp_path):
    """Needs the preprocess.py / ray_engine.py change: the model reads no times, yet the user whose rows
    hold a null, fractional or beyond-int64 time is a ``wrong_type`` reject, never scored reordered."""
    for name, times in {"null": pa.array([5, None, 7], pa.int64()), "fraction": pa.array([5.0, 6.5, 7.0]),
                        "huge": pa.array([5, 2**64 - 1, 7], pa.uint64())}.items():
        pq.write_table(pa.table({"user_id": pa.array([1, 1, 2], pa.int64()),
                                 "item_id": pa.array([1000, 1001, 1002], pa.int64()), "timestamp": times}),
                       tmp_path / f"{name}.parquet")
        cfg = run_config(bundle, tmp_path / f"{name}.parquet")
        summary = score(cfg, echo=lambda line: None)
        rejects = pq.read_table(Path(cfg.output) / "_rejects.parquet").to_pylist()
        assert [(r["user_id"], r["reason"]) for r in rejects] == [(1, "wrong_type")], name
        assert summary["users_scored"] == 1, name


def test_a_parts_seconds_count_the_reading_and_scoring_of_its_first_batch(bundle, parts_dir, run_config, monkeypatch,
                                                                          capsys):
    """A part's clock started when its first scored batch reached the writer: a part read in one batch showed
    its reading and scoring left out (real data: 0.0 s, 121,039 users/s beside a summary of 3,002 users/s, the
    ledger 0.017 s). It starts when the part's reading begins (or the previous part is committed, if later):
    with the first batch of each part scored slowly, each part's seconds hold that, and they add up to the job's."""
    import re
    import time

    from seqrec.batchinfer import job

    pause = 0.4

    class SlowFirstBatch(job.BatchScorer):
        def score(self, batch):
            if batch.column("user_id")[0].as_py() % 100_000 == 0:  # the first user of a part
                time.sleep(pause)
            return super().score(batch)

    monkeypatch.setattr(job, "BatchScorer", SlowFirstBatch)
    cfg = run_config(bundle, parts_dir, batch_size=64, progress=True)  # 256 rows a read: each part one batch
    summary = score(cfg, echo=lambda line: None)
    seconds = [entry["seconds"] for entry in map(json.loads, (Path(cfg.output) / LEDGER_FILE).read_text().splitlines())
               if "part" in entry]
    assert len(seconds) == 3 and seconds[0] >= pause and min(seconds) >= pause / 2  # less a commit overlap
    assert sum(seconds) <= summary["wall_seconds"]
    rates = [float(rate.replace(",", "")) for rate in re.findall(r"\(([\d,]+) users/s\)", capsys.readouterr().err)]
    assert len(rates) == 3 and all(summary["users_per_second"] / 3 <= rate <= 3 * summary["users_per_second"]
                                   for rate in rates), (rates, summary["users_per_second"])


def test_the_default_batch_holds_a_long_windows_attention_to_a_gib_per_layer(tiny_checkpoints, run_config, tmp_path,
                                                                             capsys):
    """512 users of a 2,048-item window hold 8 GiB per attention tensor: the default batch shrinks and says so;
    a batch asked for is kept, and a short window or a GRU keeps the default."""
    from seqrec.batchinfer import resolved_score_config

    long_window = tiny_checkpoints("sasrec", "softmax", max_length=1024)  # 2 heads: 2^28 // (2 x 1024^2) = 128
    histories = tmp_path / "h.parquet"
    pq.write_table(pa.table({"user_id": [1, 2, 3], "history": [[1000, 1001], [1002], [1003, 1004, 1005]]}), histories)
    summary = score(run_config(long_window, histories, batch_size=None))
    assert summary["users_scored"] == 3
    assert "batch size 128 (the default 512 at this model's window of 1,024" in capsys.readouterr().err
    assert resolved_score_config(run_config(long_window, batch_size=None)).batch_size == 128
    assert resolved_score_config(run_config(long_window, batch_size=300)).batch_size == 300
    for short in (tiny_checkpoints("sasrec", "softmax"), tiny_checkpoints("gru4rec", "softmax", max_length=1024)):
        assert resolved_score_config(run_config(short, batch_size=None)).batch_size == 512


def write_views(path: Path, table: pa.Table) -> Path:
    """``table`` written with its strings as ``string_view`` and its lists as ``list_view``, as recent pyarrow
    writes them (the Arrow schema in the footer keeps the view types); a skip where this pyarrow cannot."""
    views = {pa.string(): pa.string_view(), pa.list_(pa.string()): pa.list_view(pa.string_view()),
             pa.list_(pa.int64()): pa.list_view(pa.int64())}
    try:
        schema = pa.schema([(field.name, views.get(field.type, field.type)) for field in table.schema])
        pq.write_table(pa.table([pa.array(table[name].to_pylist(), schema.field(name).type) for name in schema.names],
                                schema=schema), path)
    except (AttributeError, pa.ArrowNotImplementedError) as err:
        pytest.skip(f"this pyarrow {pa.__version__} cannot write string_view / list_view to Parquet: {err}")
    assert pq.read_schema(path) == schema
    return path


def test_string_view_and_list_view_columns_are_read_as_string_and_list(bundle, run_config, tmp_path):
    """They were refused up front as 'received string_view, expected integer or string user ids'; they are read
    as string and list, and score as the plain file does, list form and log alike."""
    lists = pa.table({"user_id": ["u1", "u2", "u3"], "history": [["1000", "1001"], None, ["1002", "5", "1003"]]})
    for name, table in {"lists": lists, "log": as_long_log(lists.filter(pc.is_valid(lists["history"])))}.items():
        (tmp_path / name / "plain").mkdir(parents=True)
        (tmp_path / name / "views").mkdir()
        pq.write_table(table, tmp_path / name / "plain" / "a.parquet")
        write_views(tmp_path / name / "views" / "a.parquet", table)
        plain, views = (run_config(bundle, tmp_path / name / kind) for kind in ("plain", "views"))
        score(plain, echo=lambda line: None)
        assert score(views, echo=lambda line: None)["users_scored"] == 2
        assert read_dir(views.output) == read_dir(plain.output)
