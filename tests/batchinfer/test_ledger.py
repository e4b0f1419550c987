"""The ledger's resume rules on job lines alone: which differences a resume accepts, and what a refusal names."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec.batchinfer.inputs import plan_input
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


def write_plain(path, seed: int, users: int = 2000) -> None:
    """A part without compression, dictionary or statistics, 20 items a user: rewritten with other items, its
    size and Parquet footer stay the same (as ``samefoot.sh`` of the review found)."""
    items = np.random.default_rng(seed).integers(1, 500, 20 * users)
    offsets = pa.array(np.arange(0, 20 * users + 1, 20, dtype=np.int32))
    table = pa.table({"user_id": np.arange(users), "history": pa.ListArray.from_arrays(offsets, pa.array(items))})
    pq.write_table(table, path, compression="none", use_dictionary=False, write_statistics=False)


def real_job(inputs, footer_only: bool = False) -> dict:
    """The job line of the parts in ``inputs`` as they are now; ``footer_only``: with the fingerprints a ledger
    written before the content sample holds (``<size>:<footer digest>``)."""
    parts = [[part.name, part.path, part.rows, part.fingerprint] for part in plan_input(str(inputs), inputs.parent / "o",
                                                                                        False).parts]
    return job([[*part[:3], ":".join(part[3].split(":")[1:3]) if footer_only else part[3]] for part in parts])


def test_a_scored_part_rewritten_with_the_same_size_and_footer_is_refused(tmp_path):
    """The fingerprint was size and footer: a scored part rewritten with other items but the same footer passed,
    and the resume kept its stale output. A sample of its content now tells them apart."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, seed in (("a.parquet", 1), ("b.parquet", 2)):
        write_plain(inputs / name, seed)
    Ledger.open(tmp_path / "out", real_job(inputs), resume=False).record({"part": "a.parquet", "rows": 2000})
    before = real_job(inputs, footer_only=True)
    write_plain(inputs / "a.parquet", seed=3)
    assert real_job(inputs, footer_only=True) == before  # the old fingerprint sees no change
    with pytest.raises(ConfigError, match=r"differs in input parts a.parquet \(added, removed or rewritten\)\)"):
        Ledger.open(tmp_path / "out", real_job(inputs), resume=True)


def test_a_ledger_of_footer_only_fingerprints_resumes_and_still_sees_a_footer_change(tmp_path):
    """A job begun before the content sample is resumed after the upgrade: its parts are compared by the old
    fingerprint's own definition, not all found rewritten; the job line is restated with the new ones."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, seed in (("a.parquet", 1), ("b.parquet", 2)):
        write_plain(inputs / name, seed)
    for directory in (tmp_path / "old", tmp_path / "old_changed"):
        Ledger.open(directory, real_job(inputs, footer_only=True), resume=False).record({"part": "a.parquet",
                                                                                          "rows": 2000})
    ledger = Ledger.open(tmp_path / "old", real_job(inputs), resume=True)
    ledger.close()
    assert ledger.rewritten == [] and set(ledger.done) == {"a.parquet"}
    assert json.loads((tmp_path / "old" / LEDGER_FILE).read_text().splitlines()[-1]) == {"job": real_job(inputs)}
    write_plain(inputs / "a.parquet", seed=1, users=1999)
    with pytest.raises(ConfigError, match=r"differs in input parts a.parquet \(added, removed or rewritten\)\)"):
        Ledger.open(tmp_path / "old_changed", real_job(inputs), resume=True)
