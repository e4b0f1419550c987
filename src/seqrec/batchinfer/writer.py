"""The writer side every engine shares: result batches of a part in, committed parts and ledger lines out."""

from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

from seqrec.batchinfer.inputs import InputPart, InputPlan
from seqrec.batchinfer.ledger import Ledger
from seqrec.batchinfer.outputs import PartSink, temp_path
from seqrec.errors import OutputWriteError, received_expected


@contextmanager
def output_writes(target: Path | str, kept: Callable[[], str]) -> Iterator[None]:
    """An OSError while writing ``target`` (disk full, a file-size limit, permission lost) as one
    OutputWriteError naming the file, what the system said and what to do, instead of a traceback from
    inside Arrow. The job's state is consistent at that point (committed parts stay, the part in progress is
    removed by the engine's abort, ``target``'s temporary here), so a rerun with ``--resume`` goes on; ``kept()``
    says what it keeps."""
    try:
        yield
    except OSError as err:
        temp_path(Path(target)).unlink(missing_ok=True)
        raise OutputWriteError(received_expected(
            f"writing '{target}'", system_said(err),
            f"room and permission to write the output: free disk space (or raise the file-size limit, ulimit -f) "
            f"or fix the permissions, then run the same command with --resume ({kept()})")) from err


def system_said(err: OSError) -> str:
    """``File too large (EFBIG)``: the system's own words for ``err``, without Arrow's wrapping; its first
    line where it carries no errno."""
    if err.errno:
        return f"{os.strerror(err.errno)} ({errno.errorcode.get(err.errno, err.errno)})"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class PartWriter:
    """``handle(part, batch)`` writes a result batch of ``part``; ``handle(part, None)`` commits the part
    (output, then rejects, renamed into place) and records it in the ledger."""

    def __init__(self, directory: Path, plan: InputPlan, layout: str, item_type: pa.DataType, ledger: Ledger,
                 progress=None, log: Callable[[str], None] | None = None) -> None:
        self.directory, self.plan, self.layout, self.item_type = directory, plan, layout, item_type
        self.ledger = ledger
        self.progress = progress  # a tqdm bar counting users, or None
        self.log = log  # one line per committed part (logs of a job without a terminal), or None
        self.sink: PartSink | None = None
        self.part: InputPart | None = None
        self.started = 0.0
        self.ended: float | None = None  # when the last part was committed (a time.perf_counter() reading)
        self.users = 0  # users scored or rejected by this run

    def handle(self, part: InputPart, result: pa.RecordBatch | None, started: float | None = None,
               actor_seconds: float | None = None) -> None:
        """``started`` (a ``time.perf_counter()`` reading): when the engine began the part's work (reading its
        first batch); without it, when its first result reaches the writer. The part's clock starts then, or
        when the previous part was committed if that is later: the engines read and score ahead while the
        writer finishes a part, so this keeps each part's seconds its own and they add up to the job's.
        ``actor_seconds`` (with the commit, Ray only): the seconds Ray's actors spent reading and scoring the
        part, side by side with other parts; recorded beside ``seconds``, and the part's line shows it.
        A write that fails is one OutputWriteError naming the output part (``output_writes``)."""
        with output_writes(self.directory / part.name, self.kept):
            self._handle(part, result, started, actor_seconds)

    def kept(self) -> str:
        """What a failed job leaves for ``--resume``, for its error message."""
        return f"the {len(self.ledger.entries)} of {len(self.plan.parts)} parts committed are kept"

    def _handle(self, part: InputPart, result: pa.RecordBatch | None, started: float | None,
                actor_seconds: float | None) -> None:
        if self.part != part:
            self.abort()
            began = time.perf_counter() if started is None else started
            self.part, self.started = part, began if self.ended is None else max(began, self.ended)
            self.sink = PartSink(self.directory, part.name, self.layout, self.plan.user_type, self.item_type)
        if result is None:
            counts = self.sink.commit()
            self.ended = time.perf_counter()
            seconds = self.ended - self.started
            actors = {} if actor_seconds is None else {"actor_seconds": round(actor_seconds, 3)}
            with output_writes(self.ledger.path, self.kept):  # the ledger's own line, named as such
                self.ledger.record({"part": part.name, "input": part.path, "rows": part.rows, **counts,
                                    "seconds": round(seconds, 3), **actors})
            if self.log is not None:
                self.log(part_line(len(self.ledger.entries), len(self.plan.parts), part.name, counts, seconds,
                                   actor_seconds))
            self.sink = self.part = None
            return
        self.sink.write(result)
        self.users += result.num_rows
        if self.progress is not None:
            self.progress.update(result.num_rows)

    def abort(self) -> None:
        """Close a part left open and remove its half-written files."""
        if self.sink is not None:
            self.sink.abort()
        self.sink = self.part = None


def part_line(done: int, parts: int, name: str, counts: dict, seconds: float,
              actor_seconds: float | None = None) -> str:
    """``part 3/30 a.parquet: 1,000 scored, 2 rejected in 5.1 s (196 users/s)``; under Ray, whose actors score
    parts side by side (so parts finishing together take about 0 s of the job's time each), the actors' time:
    ``... rejected in 5.1 actor-seconds (196 users/s per actor)``."""
    users = counts["users_scored"] + sum(counts["rejected"].values())
    spent, unit, per = (seconds, "s", "") if actor_seconds is None else (actor_seconds, "actor-seconds", " per actor")
    rate = users / spent if spent > 0 else 0.0
    return (f"part {done}/{parts} {name}: {counts['users_scored']:,} scored, {sum(counts['rejected'].values()):,} "
            f"rejected in {spent:.1f} {unit} ({rate:,.0f} users/s{per})")
