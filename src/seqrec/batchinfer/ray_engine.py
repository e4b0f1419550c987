"""The Ray engine: work units -> ``map_batches(RayScorer)`` -> the driver, each part committed once complete.

- The work is cut into *units*, one per row group of each input part: (path, row group, the
  unit's first global sequence number). Each actor of the pool builds one ``BatchScorer`` (the
  model loaded once per actor), reads the row groups it is given (streamed in batches, never the
  whole file) and runs the same core as the local engine on them. With GPUs in the cluster each
  actor takes one (``num_gpus=1``), otherwise a fraction of a CPU (``num_cpus=0.5``: on a small
  machine actors holding whole CPUs starve Ray's other tasks and the job hangs) and one
  intra-op thread.
- A long interaction log is grouped into list-form files by a first stage of Ray tasks, one per part
  (the same streaming grouper as the local engine, since a user's rows may straddle two row groups),
  whose output is the grouped file's work units: Ray Data streams them into the actor pool, so a part
  is scored, and committed, while later parts are still being grouped. A part's row numbers start at
  the sum of the earlier parts' input rows (a bound on their users, known from the footers), and its
  size is read from its grouped file's footer when its first rows reach the driver.
- Every result row carries its global sequence number (``_seq``: input parts in order, rows in
  order). Ray does not keep rows in order, even with ``preserve_order`` (Ray 2.60 was seen to swap
  rows inside one output block when an actor batch spans blocks), so the driver does not rely on
  it: it takes Ray's result tables as they come (``iter_batches``), stages them on disk by input
  part (``StagedParts``), and as soon as a part has all its rows, reads only their ``_seq``, finds
  the runs of consecutive numbers, checks that they cover the part's rows exactly once, and streams
  the rows in input order through the same ``PartWriter`` as the local engine (duplicate users,
  layout, rejects, atomic renames, ledger), so both engines write the same files, and a killed or
  failed Ray job keeps every part committed before it stopped for ``--resume``.
- A unit that cannot be read (a damaged row group) is not an error in the actor: it returns the rows it
  scored, Ray goes on, every other part is committed, and the job then fails with the error of the first
  part left short, found by reading its first short unit again on the driver.
- Anything else that fails in an actor (an exception while scoring, an actor that dies: out of memory,
  ``ray stop``) stops the job at once with one ``ScoringFailedError`` naming the parts in flight and the
  cause; the parts committed before stay for ``--resume``. Actors are not restarted (Ray would retry the
  same unit on a new actor without end), and the actor's traceback goes to its Ray log, not the terminal
  (``SEQREC_DEBUG=1`` prints it and Ray's own log lines whole).
- Before the job writes anything, one actor placed as the pool's are opens the model (``check_actors_open``)
  and is let go: a bundle the workers cannot load is its one ExportError, with nothing in ``DIR``.

``--address`` joins an existing cluster (the model and the input must be readable by its
workers, and ``DIR`` shared with them); without it a local Ray is started and shut down after.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec.batchinfer.core import BatchScorer, result_schema
from seqrec.batchinfer.inputs import (LONG_FORM, InputPart, InputPlan, grouped_schema, plain_schema, read_part,
                                      readable)
from seqrec.batchinfer.ledger import STAGING_DIR
from seqrec.batchinfer.local import READ_BATCHES
from seqrec.batchinfer.model import open_model
from seqrec.batchinfer.writer import PartWriter, output_writes
from seqrec import errors
from seqrec.config import ScoreConfig
from seqrec.errors import ConfigError, DataError, ScoringFailedError, SeqrecError, received_expected
from seqrec.exporter.onnx_export import require_module
from seqrec.interrupts import handlers_restored

CPUS_PER_ACTOR = 0.5
CONNECT_SECONDS = 10  # for something to answer at --address before ray.init is asked to join it
DEFAULT_ACTORS = 2
GROUPED_ROWS = 8192  # input rows per batch (and row group) while a Ray task groups a long log
SEQUENCE = "_seq"  # global input order of a result row
ACTOR_SECONDS = "_actor_seconds"  # a result row's share of the seconds its actor spent reading and scoring its batch
UNIT_SCHEMA = pa.schema([("path", pa.string()), ("row_group", pa.int64()), ("first", pa.int64())])
UNIT_FAILURE_LOGGER = "ray.data._internal.execution.streaming_executor_state"  # logs the failed task that stops it
TRACE_LOGGER = "ray.data.exceptions"  # logs a dead actor's error as Ray's own bug, with ~40 lines of stack trace
_ACTOR_ERROR = re.compile(r"^seqrec\.errors\.(\w+): (.+)$", re.MULTILINE)  # in a Ray task's traceback text
_UNIT_IN_ERROR = re.compile(r" \(scoring '(.+)', row group (\d+)\)$")  # where an actor's ScoringFailedError arose
_OTHER_ERROR = re.compile(r"^([\w.]+(?:Error|Exception|Exit)\w*): (.+)$", re.MULTILINE)  # the last one is the raised one
DEBUG_VARIABLE = "SEQREC_DEBUG"  # set: Ray's full error and log lines are shown, not our one line


@dataclass(frozen=True)
class Run:
    """Consecutive sequence numbers [first, first + length) at ``offset`` in one Ray result file."""

    first: int
    length: int
    file: Path
    offset: int


class RayScorer:
    """A Ray Data actor: a table of work units in, their result rows (with ``_seq``) out.

    It raises nothing Ray would print whole: a model that does not load here (after ``check_actors_open``
    loaded it: another node, a file changed since) is raised at the first unit, since an actor dying in its
    constructor is retried by Ray with its traceback printed each time; any other failure is raised as one
    line naming the unit, its traceback going to the actor's own log."""

    def __init__(self, cfg: ScoreConfig, columns: list[str]) -> None:
        self.columns, self.batch_rows = columns, cfg.batch_size * READ_BATCHES
        self.scorer, self.failure = None, None
        try:
            self.scorer = BatchScorer(open_model(cfg), cfg.batch_size).__enter__()
        except Exception as err:
            self.failure = _as_one_line(err, "opening the model")

    def __call__(self, units: pa.Table) -> pa.Table:
        if self.failure is not None:
            raise self.failure
        return pa.concat_tables([self._score_or_fail(**unit) for unit in units.to_pylist()])

    def _score_or_fail(self, path: str, row_group: int, first: int) -> pa.Table:
        try:
            return self.score_unit(path, row_group, first)
        except Exception as err:
            raise _as_one_line(err, f"scoring '{path}', row group {row_group}") from err

    def score_unit(self, path: str, row_group: int, first: int) -> pa.Table:
        """The unit's result rows, each with its ``_seq`` and its share of the actor's seconds on its batch
        (reading included): the driver adds these up per part, since it cannot see when an actor works. A row
        group that cannot be read ends the unit with the rows scored so far: the driver finds its part short
        and reads the unit again for the error, once every other part is committed."""
        began = time.perf_counter()
        reader = pq.ParquetFile(path)
        results = []
        batches = reader.iter_batches(batch_size=self.batch_rows, row_groups=[row_group], columns=self.columns,
                                      use_threads=False)
        try:
            for batch in readable(batches, path, row_group):
                result = self.scorer.score(batch)
                numbers = pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64))
                ended = time.perf_counter()
                shares = pa.array(np.full(batch.num_rows, (ended - began) / batch.num_rows))  # (rows,) float64
                results.append(result.append_column(SEQUENCE, numbers).append_column(ACTOR_SECONDS, shares))
                first, began = first + batch.num_rows, ended
        except DataError:
            pass
        return pa.Table.from_batches(results, schema=self._result_schema(reader))

    def _result_schema(self, reader: pq.ParquetFile) -> pa.Schema:
        """What ``score_unit`` returns, also when its row group could not be read at all."""
        scored = result_schema(plain_schema(pa.schema([reader.schema_arrow.field(name) for name in self.columns])),
                               self.scorer.item_type)
        return scored.append(pa.field(SEQUENCE, pa.int64())).append(pa.field(ACTOR_SECONDS, pa.float64()))


def _as_one_line(err: Exception, doing: str) -> SeqrecError:
    """``err`` as the one line the driver reads back from Ray's error text (a SeqrecError stays itself); any
    other exception's traceback is printed here, into the actor's log in Ray's session folder."""
    if isinstance(err, SeqrecError):
        return err
    traceback.print_exc()
    return ScoringFailedError(f"{_first_line(err)} ({doing})")


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}".rstrip(": ")


class _ModelProbe:
    """A plain Ray actor with the pool's resources that opens the model and says how that went (returned, not
    raised: nothing for Ray to print)."""

    def ready(self, cfg: ScoreConfig) -> SeqrecError | None:
        try:
            with BatchScorer(open_model(cfg), cfg.batch_size):
                return None
        except Exception as err:
            return _as_one_line(err, "opening the model")


def check_actors_open(cfg: ScoreConfig) -> None:
    """An actor placed as the pool's are (its resources) opens the model and is let go: called before the job
    writes anything, so a bundle the workers cannot load is its one error (the ExportError naming the file) and
    the command can be run again as it was. Costs one more model load. A pool actor that still fails to load
    (another node) raises at its first unit (``RayScorer``)."""
    ray = require_module("ray", "the ray engine", "pip install 'seqrec[ray]'")
    actor_cfg, resources = _actor_settings(ray, cfg)
    probe = ray.remote(_ModelProbe).options(**resources, max_restarts=0, scheduling_strategy="SPREAD")
    actors = [probe.remote()]  # one: the pool runs with the actors the cluster can place (one GPU each: a
    # single-GPU node runs --actors 2 as one), so waiting for all of them here hung where the job itself would run
    try:
        answers = ray.get([actor.ready.remote(actor_cfg) for actor in actors])
    except ray.exceptions.RayError as err:  # an actor died opening it (out of memory, a crash in the runtime)
        raise SeqrecError(received_expected(f"model '{cfg.model}' in a Ray actor", _ray_cause(ray, err),
                                            f"the actor to open it{_where_logs(ray)}")) from None
    finally:
        for actor in actors:
            ray.kill(actor)
    failure = answers[0]
    if isinstance(failure, ScoringFailedError):  # not the model's own error (an ExportError names the file)
        raise ScoringFailedError(received_expected(f"model '{cfg.model}' opened in a Ray actor", str(failure),
                                                   f"it to open there{_where_logs(ray)}"))
    if failure is not None:
        raise failure


def _actor_settings(ray, cfg: ScoreConfig) -> tuple[ScoreConfig, dict]:
    """The configuration an actor scores with and the resources it holds: one GPU each where the cluster
    has GPUs, else half a CPU and one intra-op thread (see the module docstring)."""
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    actor_cfg = ScoreConfig.from_dict({**cfg.to_dict(), "threads": cfg.threads or (None if gpus else 1)})
    return actor_cfg, {"num_gpus": 1} if gpus else {"num_cpus": CPUS_PER_ACTOR}


@contextmanager
def ray_cluster(cfg: ScoreConfig) -> Iterator[None]:
    """Ray for the job: the one already initialised in this process, else ``cfg.address`` joined (or a
    local one started) and shut down after. A cluster that cannot be reached is one ConfigError, raised
    before the job writes anything."""
    ray = require_module("ray", "the ray engine", "pip install 'seqrec[ray]'")
    started_here = not ray.is_initialized()
    if started_here:
        try:
            _check_reachable(cfg.address)
            with handlers_restored(signal.SIGTERM):  # ray.init installs sys.exit(15) for it; keep the CLI's
                ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"--address {cfg.address!r}" if cfg.address else "a local Ray cluster"
            raise ConfigError(received_expected(where, f"no cluster reached ({str(err).splitlines()[0]})",
                                                "a running Ray cluster (ray start --head) at that address, "
                                                "or no --address to start a local one")) from err
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def _check_reachable(address: str | None) -> None:
    """ConnectionError unless something answers at a HOST:PORT ``address`` (``ray://`` too) within
    ``CONNECT_SECONDS``: ray.init retries an unreachable cluster for minutes, logging, before it gives up.
    Other forms ("auto") are left to ray.init."""
    host, colon, port = (address or "").removeprefix("ray://").rpartition(":")
    if not (host and colon and port.isdigit()):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {host}:{port} within {CONNECT_SECONDS} s: {err}") from err


def run_ray(cfg: ScoreConfig, plan: InputPlan, todo: list[InputPart], writer: PartWriter) -> None:
    """Score ``todo`` on the Ray of ``ray_cluster`` (entered by the caller) and write it through ``writer``,
    committing each part as soon as Ray has returned all its rows. A part that fails (a damaged input file)
    does not stop the others: every other part is scored and committed, then the first failure is raised."""
    ray = require_module("ray", "the ray engine", "pip install 'seqrec[ray]'")
    began = time.perf_counter()
    staging = Path(cfg.output) / STAGING_DIR
    try:
        shutil.rmtree(staging, ignore_errors=True)
        work = _long_form_work if plan.form == LONG_FORM else _list_form_work
        paths, staged, units = work(ray, plan, todo, staging)

        def commit(index: int) -> None:
            _commit(staged, index, todo[index], writer, began)
            if plan.form == LONG_FORM:
                Path(paths[index]).unlink(missing_ok=True)  # the grouped copy, staged only until its part is done

        for index in staged.complete_at_start():  # parts without rows
            commit(index)
        try:
            for table in _scored(ray, cfg, plan, units):
                with output_writes(staging, writer.kept):  # Ray's results are staged in the output directory
                    completed = staged.add(table)
                for index in completed:
                    commit(index)
        except ray.exceptions.RayError as err:
            raise _stopped(ray, err, staged, paths, todo) from None
        for index in staged.unseen():  # long form: no row came back; a grouped part without users is complete
            if _rows_in(paths[index]) == 0:
                staged.sizes[index] = 0
                commit(index)
        failure = _scoring_failure(staged, paths, todo, plan)
        if failure is not None:
            raise failure
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _list_form_work(ray, plan: InputPlan, todo: list[InputPart], staging: Path):
    """The parts' paths, the staging of results, and the dataset of their work units (None: there are none)."""
    paths = [part.path for part in todo]
    units, sizes = _work_units(paths)
    dataset = (lambda: ray.data.from_items(units, override_num_blocks=len(units))) if units else None
    return paths, StagedParts(staging / "results", sizes), dataset


def _long_form_work(ray, plan: InputPlan, todo: list[InputPart], staging: Path):
    """The grouped files' paths, the staging of results (sizes read from the grouped files' footers) and the
    dataset of work units (a grouping stage, one task per part, that emits each grouped file's units)."""
    directory = staging / "grouped"
    directory.mkdir(parents=True, exist_ok=True)
    paths = [str(directory / f"{index:06d}.parquet") for index in range(len(todo))]  # by index: part names hold folders
    bounds = [part.rows for part in todo]  # interactions: at least as many as the part's users
    staged = StagedParts(staging / "results", [None] * len(todo), bounds, size_of=lambda index: _rows_in(paths[index]))
    items = [{"index": index, "first": int(staged.starts[index])} for index in range(len(todo))]

    def units():
        parts = ray.data.from_items(items, override_num_blocks=len(items))
        return parts.map_batches(_grouped_units, fn_kwargs={"todo": todo, "plan": plan, "paths": paths},
                                 batch_format="pyarrow", batch_size=1, num_cpus=CPUS_PER_ACTOR)

    return paths, staged, units if items else None


def _grouped_units(parts: pa.Table, todo: list[InputPart], plan: InputPlan, paths: list[str]) -> pa.Table:
    """The grouping stage: each given part written in list form to its path, and the work units of that file."""
    units = []
    for item in parts.to_pylist():
        try:
            _write_grouped(todo[item["index"]], plan, paths[item["index"]])
        except DataError:  # a damaged part: no units, its grouped file absent; the driver reads it again after
            continue
        except Exception as err:
            raise _as_one_line(err, f"grouping '{todo[item['index']].path}'") from err
        units += _units_of(paths[item["index"]], item["first"])[0]
    return pa.Table.from_pylist(units, schema=UNIT_SCHEMA)


def _rows_in(path: str) -> int | None:
    """The rows of a (grouped) Parquet file from its footer; None where there is no complete file."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowInvalid):
        return None


def _commit(staged: StagedParts, index: int, part: InputPart, writer: PartWriter, began: float) -> None:
    """The rows of part ``index`` in input order through ``writer``, then the part committed. ``began``: when
    the job's work began. The actors read and score a part side by side with others, out of the driver's
    sight (its first rows reach the driver only once they are scored), so the part's clock starts when the
    previous part was committed (the writer's rule), the first part's when the work began. Parts that finish
    together so get about 0 s each; the seconds the actors spent on the part go with it as ``actor_seconds``."""
    for batch in staged.rows(index):
        writer.handle(part, batch, started=began)
    writer.handle(part, None, started=began, actor_seconds=float(staged.actor_seconds[index]))
    staged.drop(index)


def _work_units(paths: list[str]) -> tuple[list[dict], list[int]]:
    """One unit per row group of every path, numbered in input order; and the rows of each path."""
    units, sizes, first = [], [], 0
    for path in paths:
        found, rows = _units_of(path, first)  # one footer read per part
        units, first = units + found, first + rows
        sizes.append(rows)
    return units, sizes


def _units_of(path: str, first: int) -> tuple[list[dict], int]:
    """The work units of one file, its rows numbered from ``first`` (one per row group with rows), and its rows."""
    metadata, units = pq.ParquetFile(path).metadata, []
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if rows:
            units.append({"path": path, "row_group": group, "first": first})
        first += rows
    return units, metadata.num_rows


def _scored(ray, cfg: ScoreConfig, plan: InputPlan, units) -> Iterator[pa.Table]:
    """Ray's result tables (rows with ``_seq``) as the actor pool returns them, in no particular order;
    ``units`` makes the dataset of work units (None: there are none)."""
    if units is None:
        return
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.max_errored_blocks
    context.enable_progress_bars = cfg.progress
    context.max_errored_blocks = 0  # a failing unit stops the job (a damaged one fails in no actor: see score_unit).
    # Both are read when the dataset is made (it keeps a copy of the context), so they are set before.
    try:
        columns = ["user_id", "history"] + (["timestamps"] if plan.carries_times else []) + (
            ["row"] if plan.form == LONG_FORM else [])
        actor_cfg, resources = _actor_settings(ray, cfg)
        with warnings.catch_warnings():  # max_restarts has no named parameter of map_batches in Ray 2.60
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = units().map_batches(RayScorer, fn_constructor_kwargs={"cfg": actor_cfg, "columns": columns},
                                          batch_format="pyarrow", batch_size=1, max_restarts=0,
                                          compute=ray.data.ActorPoolStrategy(size=cfg.actors or DEFAULT_ACTORS),
                                          **resources)
        with _failures_in_one_line():
            yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        context.enable_progress_bars, context.max_errored_blocks = saved


class _OneLineTaskFailure(logging.Filter):
    """Ray Data logs the failed task that stops the job with its whole traceback (Ray's, the worker's and
    ours) where an actor died; the job's own error follows, so the log says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = "a Ray task failed (%s); the job stops"
            record.args, record.exc_info, record.exc_text = ((str(record.exc_info[1]).strip().splitlines() or [""])[0],), None, None
        return True


@contextmanager
def _failures_in_one_line() -> Iterator[None]:
    """Ray Data's log of a failed task in one line, unless ``SEQREC_DEBUG`` asks for all of it."""
    if os.environ.get(DEBUG_VARIABLE):
        yield
        return
    logger, one_line = logging.getLogger(UNIT_FAILURE_LOGGER), _OneLineTaskFailure()
    traces, silenced = logging.getLogger(TRACE_LOGGER), _Silenced()
    logger.addFilter(one_line)
    traces.addFilter(silenced)  # the job's own error says what stopped it, and where Ray's logs are
    try:
        yield
    finally:
        logger.removeFilter(one_line)
        traces.removeFilter(silenced)


class _Silenced(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _stopped(ray, err: Exception, staged: StagedParts, paths: list[str], parts: list[InputPart]) -> ScoringFailedError:
    """The one error of a job Ray stopped: the parts in flight, the cause in one line, and what to do. Ray's
    whole error goes to stderr with ``SEQREC_DEBUG`` set."""
    if os.environ.get(DEBUG_VARIABLE):
        print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
    cause = _ray_cause(ray, err)
    located = _UNIT_IN_ERROR.search(cause)
    failed = paths.index(located[1]) if located and located[1] in paths else None
    return ScoringFailedError(received_expected(
        f"Ray scoring of {_in_flight(staged, parts, failed)}", cause[: located.start()] if located else cause,
        f"every unit scored: the {len(staged.committed)} of {len(parts)} parts committed in this run are kept; "
        f"fix the cause and run the same command with --resume to score the rest{_where_logs(ray)}"))


def _in_flight(staged: StagedParts, parts: list[InputPart], failed: int | None) -> str:
    """The parts a stopped job was scoring, as far as the driver saw: those with rows back but not all, and
    the one whose unit failed (``failed``); the count of those not committed where it saw none."""
    indices = sorted(set(staged.first_seen) - staged.committed | ({failed} if failed is not None else set()))
    if not indices:
        return f"the {len(parts) - len(staged.committed)} parts not yet committed"
    named = ", ".join(f"'{parts[index].name}'" for index in indices[:5]) + (" ..." if len(indices) > 5 else "")
    return f"input part{'s' if len(indices) > 1 else ''} {named} (in flight)"


def _ray_cause(ray, err: Exception) -> str:
    """What stopped a Ray task, in one line: the SeqrecError an actor raised (its traceback text), that an
    actor died and why where Ray says so, else the last exception line of Ray's error text."""
    raised = _seqrec_error_in(err)
    if raised is not None:  # an actor's own ScoringFailedError already names the exception it stands for
        return str(raised) if isinstance(raised, ScoringFailedError) else f"{type(raised).__name__}: {raised}"
    text = str(err)
    if isinstance(err, getattr(ray.exceptions, "OutOfMemoryError", ())) or "low on memory" in text:
        return "a Ray actor was killed for memory (Ray's memory monitor: the node ran low on memory)"
    if isinstance(err, ray.exceptions.RayActorError):
        likely = (": Ray names as likely causes the OOM killer (out of memory), ray stop, or a crash"
                  if "OOM killer" in text else "")
        return f"a Ray actor died (its worker process exited unexpectedly{likely})"
    found = _OTHER_ERROR.findall(text)
    return ": ".join(found[-1]) if found else _first_line(err)


def _where_logs(ray) -> str:
    """Where Ray's logs are (the actors' tracebacks are in them), for an error message; '' where unknown."""
    try:
        folder = ray._private.worker._global_node.get_logs_dir_path()  # no public API names it (Ray 2.60)
    except AttributeError:
        return f"; the full error: {DEBUG_VARIABLE}=1"
    return f"; the full error: {DEBUG_VARIABLE}=1, the actors' tracebacks: Ray's logs in {folder} (on each node)"


def _seqrec_error_in(err: Exception) -> SeqrecError | None:
    """The SeqrecError an actor raised, rebuilt from the traceback text Ray hands the driver (Ray Data
    wraps it in a UserCodeException and drops the original), or None for any other failure."""
    match = _ACTOR_ERROR.search(str(err))
    if match is None:
        return None
    kind = getattr(errors, match[1], None)
    return (kind if isinstance(kind, type) and issubclass(kind, SeqrecError) else SeqrecError)(match[2])


def _write_grouped(part: InputPart, plan: InputPlan, target: str) -> None:
    """The part in list form at ``target``, which exists only once it is whole: a failure part way (a damaged
    part) closes the writer, footer and all, so a file at ``target`` would pass for the part's first users."""
    partial = f"{target}.inprogress"
    with pq.ParquetWriter(partial, grouped_schema(part, plan)) as writer:
        for batch in read_part(part, plan, GROUPED_ROWS):
            writer.write_batch(batch)
    os.replace(partial, target)


class StagedParts:
    """Ray's result rows staged on disk by input part, until a part has all its rows.

    ``add(table)`` splits a result table by part (by ``_seq``: parts in order, rows in order), writes
    each piece under ``directory/<part index>/`` and returns the parts that have just received their
    last row; ``rows(index)`` then streams that part's rows in input order. So the driver holds one
    result table at a time, and a part is committed while later ones are still being scored.
    """

    def __init__(self, directory: Path, sizes: list[int | None], bounds: list[int] | None = None,
                 size_of: Callable[[int], int | None] | None = None) -> None:
        """``sizes``: each part's rows, or None where only ``size_of(index)`` can tell, once rows of it come
        back (a grouped long-form part); ``bounds``: at least each part's rows (default: ``sizes``), which
        number the parts' rows."""
        self.directory, self.sizes, self.size_of = directory, list(sizes), size_of
        self.starts = np.concatenate([[0], np.cumsum(sizes if bounds is None else bounds, dtype=np.int64)])  # (P + 1,)
        self.received = np.zeros(len(sizes), dtype=np.int64)  # (P,)
        self.actor_seconds = np.zeros(len(sizes))  # (P,) the actors' seconds on each part's rows so far
        self.first_seen: dict[int, float] = {}  # part index -> when its first row reached the driver
        self.committed: set[int] = set()
        self.pieces = 0

    def complete_at_start(self) -> list[int]:
        return [index for index, size in enumerate(self.sizes) if size == 0]

    def add(self, table: pa.Table) -> list[int]:
        numbers = table.column(SEQUENCE).to_numpy()  # (R,)
        owners = np.searchsorted(self.starts, numbers, side="right") - 1  # (R,) part index of every row
        if len(numbers) and (numbers.min() < 0 or numbers.max() >= self.starts[-1]):
            raise SeqrecError(received_expected(f"Ray results in '{self.directory}'",
                                                f"row numbers {numbers.min()}..{numbers.max()}",
                                                f"row numbers 0..{self.starts[-1] - 1}, one per input row"))
        completed = []
        for index in np.unique(owners).tolist():
            if index in self.committed:
                raise SeqrecError(received_expected(f"Ray results for part {index}", "rows after all its rows came "
                                                    "back (doubled rows)", "each input row exactly once"))
            piece = table.filter(pa.array(owners == index))
            folder = self.directory / f"{index:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(piece, folder / f"{self.pieces:08d}.parquet")
            self.pieces += 1
            self.first_seen.setdefault(index, time.perf_counter())
            if ACTOR_SECONDS in piece.column_names:
                self.actor_seconds[index] += pc.sum(piece.column(ACTOR_SECONDS)).as_py() or 0.0
            before, self.received[index] = self.received[index], self.received[index] + piece.num_rows
            if self.sizes[index] is None:
                self.sizes[index] = self.size_of(index)
            if self.sizes[index] is not None and before < self.sizes[index] <= self.received[index]:
                completed.append(index)
        return completed

    def rows(self, index: int) -> Iterator[pa.RecordBatch]:
        """Part ``index``'s rows in input order (without ``_seq``); SeqrecError on a lost or doubled row."""
        files = _LastFile()
        for run in _covering_runs(self.directory / f"{index:06d}", int(self.starts[index]), self.sizes[index]):
            yield files.rows(run.file, run.offset, run.length)

    def drop(self, index: int) -> None:
        """Part ``index`` is committed: its staged rows go, and any row of it that comes after is an error."""
        shutil.rmtree(self.directory / f"{index:06d}", ignore_errors=True)
        self.committed.add(index)

    def unseen(self) -> list[int]:
        """The parts of unknown size none of whose rows came back."""
        return [index for index, size in enumerate(self.sizes) if size is None and index not in self.first_seen]

    def incomplete(self) -> list[int]:
        """After Ray's last table: the parts still short of rows, or of unknown size (a Ray task failed on them)."""
        return [index for index, size in enumerate(self.sizes) if size is None or self.received[index] < size]

    def returned(self, index: int) -> np.ndarray:
        """(R,) the sorted row numbers of part ``index`` that came back."""
        tables = [pq.read_table(path, columns=[SEQUENCE]) for path in (self.directory / f"{index:06d}").glob("*.parquet")]
        return np.sort(np.concatenate([table.column(0).to_numpy() for table in tables] or [np.zeros(0, np.int64)]))


def _scoring_failure(staged: StagedParts, paths: list[str], parts: list[InputPart],
                     plan: InputPlan) -> SeqrecError | None:
    """The error for the parts Ray did not return whole, or None. The first such part is read again here, from
    its first unit whose rows are missing (or whole, where it was never grouped): a damaged file gives its
    DataError, naming the part (and row group); else an error naming them, whose cause is in Ray's log (Ray
    Data logs a failed task and goes on without its rows)."""
    incomplete = staged.incomplete()
    if not incomplete:
        return None
    index = incomplete[0]
    more = f" ({len(incomplete) - 1} more parts are incomplete)" if len(incomplete) > 1 else ""
    if staged.sizes[index] is None:  # its grouping task failed
        return _grouping_failure(parts[index], plan, more)
    first = int(staged.starts[index])
    unit = _first_short_unit(staged.returned(index), _units_of(paths[index], first)[0], first, staged.sizes[index])
    reader = pq.ParquetFile(unit["path"])
    columns = [name for name in ("user_id", "history", "timestamps", "row") if name in reader.schema_arrow.names]
    try:
        for _ in readable(reader.iter_batches(row_groups=[unit["row_group"]], columns=columns, use_threads=False),
                          parts[index].path, unit["row_group"]):
            pass
    except DataError as err:
        return type(err)(f"{err}{more}")
    return SeqrecError(received_expected(
        f"input part '{parts[index].path}'", f"row group {unit['row_group']} not scored: a Ray task failed on it "
        f"(its error is in Ray's log above){more}", "every row group scored (run the same command with --resume)"))


def _grouping_failure(part: InputPart, plan: InputPlan, more: str) -> SeqrecError:
    """The error of a long-form part whose grouping task failed: the part read again here."""
    try:
        for _ in read_part(part, plan, GROUPED_ROWS):
            pass
    except DataError as err:
        return type(err)(f"{err}{more}")
    return SeqrecError(received_expected(
        f"input part '{part.path}'", f"not grouped: a Ray task failed on it (its error is in Ray's log above){more}",
        "every part grouped and scored (run the same command with --resume)"))


def _first_short_unit(returned: np.ndarray, units: list[dict], first: int, size: int) -> dict:
    """The work unit holding the first row of [first, first + size) missing from the sorted ``returned``."""
    expected = first + np.arange(len(returned))  # (R,) the row numbers of a part returned in full, so far
    gaps = np.flatnonzero(returned != expected)
    missing = int(expected[gaps[0]]) if len(gaps) else first + len(returned)
    return units[bisect.bisect_right([unit["first"] for unit in units], missing) - 1]


def _covering_runs(directory: Path, first: int, total: int) -> list[Run]:
    """The runs of consecutive sequence numbers in the result files of ``directory``, sorted; SeqrecError
    unless they cover first .. first + total - 1 exactly once (a lost or doubled row must not reach the output)."""
    runs = sorted((run for path in sorted(directory.glob("*.parquet")) for run in _file_runs(path)),
                  key=lambda run: run.first)
    expected = first
    for run in runs + [Run(first + total, 0, directory, 0)]:
        if run.first != expected:
            found = f"rows {expected}..{run.first - 1} missing" if run.first > expected else f"row {run.first} twice"
            raise SeqrecError(received_expected(f"Ray results in '{directory}'", found,
                                                f"each of the input rows {first}..{first + total - 1} exactly once"))
        expected += run.length
    return runs


def _file_runs(path: Path) -> list[Run]:
    numbers = pq.read_table(path, columns=[SEQUENCE]).column(0).to_numpy()  # (R,)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(numbers) != 1) + 1, [len(numbers)]])
    return [Run(int(numbers[start]), int(stop - start), path, int(start))
            for start, stop in zip(starts[:-1], starts[1:]) if stop > start]


class _LastFile:
    """Rows of Ray's result files, keeping the last file read open (runs mostly follow one another)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.table: pa.Table | None = None

    def rows(self, path: Path, offset: int, count: int) -> pa.RecordBatch:
        if path != self.path:
            self.path, self.table = path, pq.read_table(path, memory_map=True)
        extra = [name for name in (SEQUENCE, ACTOR_SECONDS) if name in self.table.column_names]
        return self.table.slice(offset, count).drop_columns(extra).combine_chunks().to_batches()[0]
