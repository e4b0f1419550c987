"""The ledger's resume rules on job lines alone: which differences a resume accepts, and what a refusal names."""

from __future__ import annotations

import json

import pytest

from seqrec.batchinfer.ledger import LEDGER_FILE, Ledger
from seqrec.errors import ConfigError

PARTS = [["a.parquet", 10, 100, "d-a"], ["b.parquet", 20, 200, "d-b"]]


def job(parts=PARTS, top_k=10) -> dict:
    return {"model": "m", "top_k": top_k, "parts": parts}


def begun(directory, finished_parts=()) -> None:
    """A job whose ledger holds ``finished_parts``, its lock released as after a kill."""
    ledger = Ledger.open(directory, job(), resume=False)
    for name in finished_parts:
        ledger.record({"part": name, "rows": 10})
    ledger.close()


def rewritten(name: str) -> list:
    return [[part[0], part[1], part[2], "new"] if part[0] == name else part for part in PARTS]


def test_a_part_rewritten_before_it_was_scored_is_accepted_and_restated(tmp_path):
    begun(tmp_path, ["a.parquet"])
    ledger = Ledger.open(tmp_path, job(rewritten("b.parquet")), resume=True)
    ledger.close()
    assert ledger.rewritten == ["b.parquet"] and ledger.job == job(rewritten("b.parquet"))
    lines = [json.loads(line) for line in (tmp_path / LEDGER_FILE).read_text().splitlines()]
    assert lines[-1] == {"job": job(rewritten("b.parquet"))}  # later resumes are held to it


def test_a_finished_part_rewritten_is_refused_by_name(tmp_path):
    begun(tmp_path, ["a.parquet"])
    with pytest.raises(ConfigError, match=r"differs in input parts a.parquet \(added, removed or rewritten\)\)"):
        Ledger.open(tmp_path, job(rewritten("a.parquet")), resume=True)


def test_a_refusal_for_another_reason_says_an_unscored_rewrite_is_allowed(tmp_path):
    """Another top-k is the reason; the rewritten, unscored part is named as acceptable on its own, so the
    user does not rewrite it back in vain."""
    begun(tmp_path, ["a.parquet"])
    with pytest.raises(ConfigError, match=r"differs in input parts b.parquet \(rewritten before being scored: "
                                          r"allowed on its own\); top_k\)"):
        Ledger.open(tmp_path, job(rewritten("b.parquet"), top_k=20), resume=True)


def test_a_part_added_is_refused_even_if_none_is_scored(tmp_path):
    begun(tmp_path)
    more = PARTS + [["c.parquet", 5, 50, "d-c"]]
    with pytest.raises(ConfigError, match=r"differs in input parts c.parquet \(added, removed or rewritten\)\)"):
        Ledger.open(tmp_path, job(more), resume=True)


def moved(parts=PARTS) -> list:
    return [[part[0], f"/elsewhere/{part[0]}", *part[2:]] for part in parts]


def test_an_input_moved_to_another_folder_is_the_same_job(tmp_path):
    """Each part's path is in the job line: a moved input, its parts unchanged, was refused as 'added, removed
    or rewritten'. It resumes now, the job line restated with the new paths."""
    begun(tmp_path, ["a.parquet"])
    ledger = Ledger.open(tmp_path, job(moved()), resume=True)
    ledger.close()
    assert ledger.job == job(moved()) and ledger.rewritten == [] and set(ledger.done) == {"a.parquet"}
    last = json.loads((tmp_path / LEDGER_FILE).read_text().splitlines()[-1])
    assert last == {"job": job(moved())}


def test_a_finished_job_moved_is_still_complete(tmp_path):
    ledger = Ledger.open(tmp_path, job(), resume=False)
    for part in PARTS:
        ledger.record({"part": part[0], "rows": 10})
    ledger.finish()
    ledger.close()
    resumed = Ledger.open(tmp_path, job(moved()), resume=True)
    resumed.close()
    assert resumed.finished


def test_a_refusal_for_another_reason_says_a_moved_input_is_allowed(tmp_path):
    begun(tmp_path, ["a.parquet"])
    with pytest.raises(ConfigError, match=r"differs in the input's folder \(its parts unchanged: allowed on its "
                                          r"own\); top_k\)"):
        Ledger.open(tmp_path, job(moved(), top_k=20), resume=True)
    with pytest.raises(ConfigError, match=r"differs in input parts b.parquet \(rewritten before being scored: "
                                          r"allowed on its own\); top_k\)"):
        Ledger.open(tmp_path, job(moved(rewritten("b.parquet")), top_k=20), resume=True)


def test_a_resume_removes_what_a_kill_left_half_written_at_any_depth(tmp_path):
    """Parts of a partitioned input are written in subfolders, their rejects too."""
    begun(tmp_path, ["a.parquet"])
    leftovers = [".b.parquet.inprogress", "dt=1/.part-0.parquet.inprogress",
                 "_rejects.parts/dt=1/.part-0.parquet.inprogress"]
    for leftover in leftovers:
        (tmp_path / leftover).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / leftover).write_bytes(b"half a part")
    Ledger.open(tmp_path, job(), resume=True).close()
    assert [leftover for leftover in leftovers if (tmp_path / leftover).exists()] == []
