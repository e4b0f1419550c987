"""A partitioned input directory end to end: parts in subfolders, one file name in each, scored into the same
folders under the output; rejects, ledger and progress name them by their paths; a partial job resumes."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from seqrec.batchinfer import score
from seqrec.batchinfer.ledger import LEDGER_FILE
from seqrec.errors import DataError

from histories import damage_last_row_group, read_dir, write_partitioned

DAYS = ("dt=2026-12-01/part-00000.parquet", "dt=2026-12-02/part-00000.parquet")


@pytest.fixture
def nightly(tmp_path) -> Path:
    """Two days of 40 users (and a reject) each, Spark's markers beside them, and a part at the top."""
    inputs = write_partitioned(tmp_path / "in", days=2, users=40)
    pq.write_table(pq.read_table(inputs / DAYS[0]).slice(0, 5), inputs / "top.parquet")
    return inputs


def test_a_partitioned_directory_is_scored_into_the_same_folders(bundle, nightly, run_config, capsys):
    cfg = run_config(bundle, nightly, progress=True)
    summary = score(cfg, echo=lambda line: None)
    out = Path(cfg.output)
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()) == sorted(
        ["_ledger.jsonl", "_rejects.parquet", "_summary.json", "top.parquet", *DAYS])
    for name in (*DAYS, "top.parquet"):  # each part as if it were scored alone
        alone = run_config(bundle, nightly / name)
        score(alone, echo=lambda line: None)
        assert pq.read_table(out / name) == pq.read_table(Path(alone.output) / Path(name).name), name
    rejects = pq.read_table(out / "_rejects.parquet").to_pylist()
    assert [(r["part"], r["row"], r["reason"]) for r in rejects] == [(day, 40, "empty_history") for day in DAYS]
    assert summary["users_scored"] == 85 and summary["parts"] == 3  # nothing of _temporary/ or .spark-staging/
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"part 1/3 {DAYS[0]}", f"part 2/3 {DAYS[1]}", "part 3/3 top.parquet"]


def test_a_partial_job_on_a_partitioned_directory_resumes_to_an_uninterrupted_runs_files(bundle, nightly,
                                                                                        run_config):
    """The second day is damaged inside: the job stops after the first day's part is committed (its rejects
    kept for the end), its half-written part removed. Written again, it and the part after it are all that
    --resume scores; the files are then an uninterrupted run's."""
    damage_last_row_group(nightly / DAYS[1])
    cfg = run_config(bundle, nightly)
    with pytest.raises(DataError, match=rf"input part '.*{DAYS[1]}' \| received a damaged file"):
        score(cfg, echo=lambda line: None)
    out = Path(cfg.output)
    done = [record.get("part") for record in map(json.loads, (out / LEDGER_FILE).read_text().splitlines()[1:])]
    assert done == [DAYS[0]] and not list(out.rglob(".*"))

    write_partitioned(nightly.parent / "again", days=2, users=40, seed=7)
    (nightly / DAYS[1]).write_bytes((nightly.parent / "again" / DAYS[1]).read_bytes())
    lines = []
    summary = score(run_config(bundle, nightly, output=cfg.output, resume=True), echo=lines.append)
    assert lines[:2] == ["resuming: 1 of 3 parts already scored, 2 to go", "input parts rewritten since the job "
                         f"began, not yet scored: {DAYS[1]} (scored from their new contents)"]
    uninterrupted = run_config(bundle, nightly)
    assert summary["users_scored"] == score(uninterrupted, echo=lambda line: None)["users_scored"] == 85
    assert read_dir(out) == read_dir(uninterrupted.output) and not list(out.rglob(".*"))
    assert [row["part"] for row in pq.read_table(out / "_rejects.parquet").to_pylist()] == list(DAYS)
