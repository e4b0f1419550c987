"""kill -9 at any moment, restart with --resume: every user exactly once, output as if never killed."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import seqrec
from seqrec.batchinfer import score
from seqrec.batchinfer.ledger import LEDGER_FILE

from histories import read_dir, write_parts

PARTS, USERS = 8, 800


def start(bundle: Path, inputs: Path, out: Path, resume: bool, file_size_limit: int | None = None) -> subprocess.Popen:
    """The CLI job in a process of its own; ``file_size_limit``: bytes any file it writes may reach (RLIMIT_FSIZE)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(seqrec.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "seqrec.cli", "score", str(bundle), "--input", str(inputs), "--output", str(out),
               "--batch-size", "16", "--threads", "1", "--quiet"] + (["--resume"] if resume else [])
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: _default_ctrl_c(file_size_limit))


def _default_ctrl_c(file_size_limit: int | None = None) -> None:
    """The job takes Ctrl-C as a terminal's job does, even when this test runs in a background job (`cmd &`
    in a script): there SIGINT is ignored, the job inherits that, Python then installs no KeyboardInterrupt
    handler, and the Ctrl-C test saw the job finish with status 0. With ``file_size_limit`` a write beyond it
    fails with EFBIG, as on a full disk: Python ignores SIGXFSZ (at its start, and the ignoring survives exec),
    so the write returns the error instead of the signal killing the process."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if file_size_limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def kill_when(process: subprocess.Popen, ready, timeout: float = 180.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()``; fail if it ends first (the kill must land mid-job)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the job ended before the kill: {process.stdout.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()


def parts_done(out: Path) -> list[str]:
    path = out / LEDGER_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["part"] for line in lines[1:] if line.endswith("}") and '"part"' in line]


@pytest.mark.slow
def test_killed_twice_then_resumed_equals_an_uninterrupted_run(bundle, run_config, tmp_path):
    inputs = write_parts(tmp_path / "in", PARTS, USERS, seed=3, row_group=100)
    reference = run_config(bundle, inputs, batch_size=16)
    score(reference, echo=lambda line: None)

    out = tmp_path / "out"
    kill_when(start(bundle, inputs, out, resume=False), lambda: len(parts_done(out)) >= 1)  # after a commit
    first = parts_done(out)
    assert 1 <= len(first) < PARTS

    def mid_part() -> bool:  # a part not in the ledger is half written
        done = parts_done(out)
        return len(done) > len(first) and any(p.name[1:].split(".inprogress")[0] not in done
                                              for p in out.glob(".part-*.inprogress"))

    kill_when(start(bundle, inputs, out, resume=True), mid_part)
    assert len(parts_done(out)) < PARTS and list(out.glob(".*.inprogress"))

    finish = start(bundle, inputs, out, resume=True)
    assert finish.wait(timeout=300) == 0, finish.stdout.read().decode()
    assert read_dir(out) == read_dir(reference.output)
    users = np.concatenate([pq.read_table(path).column("user_id").to_numpy()
                            for path in sorted(out.glob("part-*.parquet"))])
    assert len(users) == len(np.unique(users)) == PARTS * USERS
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["users_scored"] == PARTS * USERS and summary["parts"] == PARTS
    assert not list(out.glob(".*")) and sorted(parts_done(out)) == sorted(p.name for p in inputs.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("sent, status, word", [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated")])
def test_ctrl_c_or_sigterm_says_what_is_finished_and_how_to_go_on(bundle, tmp_path, sent, status, word):
    """Ctrl-C, and SIGTERM as `timeout` or a scheduler sends it, stop the job the same clean way."""
    inputs = write_parts(tmp_path / "in", PARTS, USERS, seed=4, row_group=100)
    out = tmp_path / "out"
    process = start(bundle, inputs, out, resume=False)
    deadline = time.monotonic() + 180
    while not parts_done(out):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()[-2000:]
        time.sleep(0.002)
    process.send_signal(sent)
    assert process.wait(timeout=60) == status
    message = process.stdout.read().decode().strip().splitlines()[-1]
    done = len(parts_done(out))
    assert 1 <= done < PARTS, message
    assert not list(out.glob(".*.inprogress")), "the half-written part is removed"
    assert message == (f"{word}: {done} of {PARTS} parts are finished in '{out}'; run the same command "
                       "with --resume to score the rest")
    assert "Traceback" not in message


def test_a_write_failure_is_one_error_line_and_resume_finishes_the_job(bundle, run_config, tmp_path):
    """A disk that fills part way (here a file-size limit: EFBIG) ended in a 50-line traceback from inside
    Arrow. It is one line naming the output part, the system's words and what to do; the parts committed
    stay, nothing half written is left, and the same command with --resume ends as an uninterrupted run."""
    inputs = write_parts(tmp_path / "in", parts=1, users=40, seed=5)
    write_parts(tmp_path / "big", parts=2, users=3000, seed=6, row_group=500)
    (tmp_path / "big" / "part-001.parquet").rename(inputs / "part-001.parquet")  # its output outgrows the limit
    out = tmp_path / "out"
    job = start(bundle, inputs, out, resume=False, file_size_limit=64 * 1024)
    lines = job.communicate(timeout=180)[0].decode().strip().splitlines()
    assert job.returncode == 1 and lines == [
        f"Error: writing '{out / 'part-001.parquet'}' | received File too large (EFBIG), expected room and permission "
        "to write the output: free disk space (or raise the file-size limit, ulimit -f) or fix the permissions, then "
        "run the same command with --resume (the 1 of 2 parts committed are kept)"]
    assert parts_done(out) == ["part-000.parquet"] and not list(out.rglob("*.inprogress"))
    reference = run_config(bundle, inputs, batch_size=16)
    score(reference, echo=lambda line: None)
    score(run_config(bundle, inputs, batch_size=16, output=str(out), resume=True), echo=lambda line: None)
    assert read_dir(out) == read_dir(reference.output)


def test_a_ledger_that_cannot_grow_is_named_as_such(bundle, run_config, tmp_path):
    """The ledger's line was written inside the part's error context, so a ledger that hit the limit was
    reported as the part that had just been committed (and the summary's as the ledger's end)."""
    inputs = write_parts(tmp_path / "in", parts=30, users=2, seed=7)
    out = tmp_path / "out"
    job = start(bundle, inputs, out, resume=False, file_size_limit=8192)  # parts of ~2 KB and the job line fit, 30 part lines do not
    lines = job.communicate(timeout=180)[0].decode().strip().splitlines()
    assert job.returncode == 1 and len(lines) == 1 and lines[0].startswith(
        f"Error: writing '{out / LEDGER_FILE}' | received File too large (EFBIG)"), lines
    score(run_config(bundle, inputs, output=str(out), resume=True), echo=lambda line: None)  # a torn line is dropped
    reference = run_config(bundle, inputs)
    score(reference, echo=lambda line: None)
    assert read_dir(out) == read_dir(reference.output)
