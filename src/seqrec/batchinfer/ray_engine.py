"""The Ray engine: work units -> ``map_batches(RayScorer)`` -> ``write_parquet``, then the parts committed.

- The work is cut into *units*, one per row group of each input part: (path, row group, the
  unit's first global sequence number). Each actor of the pool builds one ``BatchScorer`` (the
  model loaded once per actor), reads the row groups it is given (streamed in batches, never the
  whole file) and runs the same core as the local engine on them. With GPUs in the cluster each
  actor takes one (``num_gpus=1``), otherwise a fraction of a CPU (``num_cpus=0.5``: on a small
  machine actors holding whole CPUs starve Ray's other tasks and the job hangs) and one
  intra-op thread.
- A long interaction log is first grouped into list-form files by one Ray task per part (the
  same streaming grouper as the local engine), since a user's rows may straddle two row groups.
- Every result row carries its global sequence number (``_seq``: input parts in order, rows in
  order). Ray does not keep rows in order, even with ``preserve_order`` (Ray 2.60 was seen to swap
  rows inside one output block when an actor batch spans blocks), so the driver does not rely on
  it: it reads only ``_seq`` of Ray's result files, finds their runs of consecutive numbers, sorts
  the runs, checks that they cover every row exactly once, and streams the rows in input order
  through the same ``PartWriter`` as the local engine (duplicate users, layout, rejects, atomic
  renames, ledger), so both engines write the same files.

``--address`` joins an existing cluster (the model and the input must be readable by its
workers, and ``DIR`` shared with them); without it a local Ray is started and shut down after.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec.batchinfer.core import BatchScorer
from seqrec.batchinfer.inputs import LONG_FORM, InputPart, InputPlan, grouped_schema, read_part
from seqrec.batchinfer.ledger import STAGING_DIR
from seqrec.batchinfer.local import READ_BATCHES
from seqrec.batchinfer.model import open_model
from seqrec.batchinfer.writer import PartWriter
from seqrec.config import ScoreConfig
from seqrec.errors import ConfigError, SeqrecError, received_expected
from seqrec.exporter.onnx_export import require_module

CPUS_PER_ACTOR = 0.5
DEFAULT_ACTORS = 2
GROUPED_ROWS = 8192  # input rows per batch (and row group) while a Ray task groups a long log
SEQUENCE = "_seq"  # global input order of a result row


@dataclass(frozen=True)
class Run:
    """Consecutive sequence numbers [first, first + length) at ``offset`` in one Ray result file."""

    first: int
    length: int
    file: Path
    offset: int


class RayScorer:
    """A Ray Data actor: a table of work units in, their result rows (with ``_seq``) out."""

    def __init__(self, cfg: ScoreConfig, columns: list[str]) -> None:
        self.scorer = BatchScorer(open_model(cfg), cfg.batch_size).__enter__()
        self.columns, self.batch_rows = columns, cfg.batch_size * READ_BATCHES

    def __call__(self, units: pa.Table) -> pa.Table:
        return pa.concat_tables([self.score_unit(**unit) for unit in units.to_pylist()])

    def score_unit(self, path: str, row_group: int, first: int) -> pa.Table:
        reader = pq.ParquetFile(path)
        results = []  # a unit has rows: row groups without any are not units
        for batch in reader.iter_batches(batch_size=self.batch_rows, row_groups=[row_group], columns=self.columns,
                                         use_threads=False):
            result = self.scorer.score(batch)
            numbers = pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64))
            results.append(result.append_column(SEQUENCE, numbers))
            first += batch.num_rows
        return pa.Table.from_batches(results)


@contextmanager
def ray_cluster(cfg: ScoreConfig) -> Iterator[None]:
    """Ray for the job: the one already initialised in this process, else ``cfg.address`` joined (or a
    local one started) and shut down after. A cluster that cannot be reached is one ConfigError, raised
    before the job writes anything."""
    ray = require_module("ray", "the ray engine", "pip install 'seqrec[ray]'")
    started_here = not ray.is_initialized()
    if started_here:
        try:
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


def run_ray(cfg: ScoreConfig, plan: InputPlan, todo: list[InputPart], writer: PartWriter) -> None:
    """Score ``todo`` on the Ray of ``ray_cluster`` (entered by the caller) and write it through ``writer``."""
    ray = require_module("ray", "the ray engine", "pip install 'seqrec[ray]'")
    staging = Path(cfg.output) / STAGING_DIR
    try:
        shutil.rmtree(staging, ignore_errors=True)
        paths = (_group_long_parts(ray, plan, todo, staging / "grouped") if plan.form == LONG_FORM
                 else [part.path for part in todo])
        units, sizes = _work_units(paths)
        _score_to(ray, cfg, plan, units, staging / "results")
        for part, batch in _ordered_results(staging / "results", todo, sizes):
            writer.handle(part, batch)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _work_units(paths: list[str]) -> tuple[list[dict], list[int]]:
    """One unit per row group of every path, numbered in input order; and the rows of each path."""
    units, sizes, first = [], [], 0
    for path in paths:
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if rows:
                units.append({"path": path, "row_group": group, "first": first})
            first += rows
        sizes.append(metadata.num_rows)
    return units, sizes


def _score_to(ray, cfg: ScoreConfig, plan: InputPlan, units: list[dict], directory: Path) -> None:
    if not units:
        return
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = cfg.progress
    try:
        columns = ["user_id", "history"] + (["timestamps"] if plan.timestamps else []) + (
            ["row"] if plan.form == LONG_FORM else [])
        gpus = ray.cluster_resources().get("GPU", 0) >= 1
        actor_cfg = ScoreConfig.from_dict({**cfg.to_dict(), "threads": cfg.threads or (None if gpus else 1)})
        resources = {"num_gpus": 1} if gpus else {"num_cpus": CPUS_PER_ACTOR}
        dataset = ray.data.from_items(units, override_num_blocks=len(units))
        dataset = dataset.map_batches(RayScorer, fn_constructor_kwargs={"cfg": actor_cfg, "columns": columns},
                                      batch_format="pyarrow", batch_size=1,
                                      compute=ray.data.ActorPoolStrategy(size=cfg.actors or DEFAULT_ACTORS), **resources)
        dataset.write_parquet(str(directory))
    finally:
        context.enable_progress_bars = saved


def _group_long_parts(ray, plan: InputPlan, todo: list[InputPart], directory: Path) -> list[str]:
    """One Ray task per part writes its list form to ``directory`` under the part's name; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=CPUS_PER_ACTOR)(_write_grouped)
    targets = [str(directory / part.name) for part in todo]
    ray.get([task.remote(part, plan, target) for part, target in zip(todo, targets)])
    return targets


def _write_grouped(part: InputPart, plan: InputPlan, target: str) -> None:
    with pq.ParquetWriter(target, grouped_schema(part, plan)) as writer:
        for batch in read_part(part, plan, GROUPED_ROWS):
            writer.write_batch(batch)


def _ordered_results(directory: Path, todo: list[InputPart],
                     sizes: list[int]) -> Iterator[tuple[InputPart, pa.RecordBatch | None]]:
    """Ray's result rows in input order, as (part, batch), and (part, None) when a part ends."""
    runs = iter(_covering_runs(directory, sum(sizes)))
    files = _LastFile()
    run, done = next(runs, None), 0  # the run being read, and how many of its rows are out
    for part, size in zip(todo, sizes):
        left = size
        while left:
            take = min(left, run.length - done)
            yield part, files.rows(run.file, run.offset + done, take)
            done, left = done + take, left - take
            if done == run.length:
                run, done = next(runs, None), 0
        yield part, None


def _covering_runs(directory: Path, total: int) -> list[Run]:
    """The runs of consecutive sequence numbers in Ray's result files, sorted; SeqrecError unless they
    cover 0 .. total - 1 exactly once (a lost or doubled row must not reach the output)."""
    runs = sorted((run for path in sorted(directory.glob("*.parquet")) for run in _file_runs(path)),
                  key=lambda run: run.first)
    expected = 0
    for run in runs + [Run(total, 0, directory, 0)]:
        if run.first != expected:
            found = f"rows {expected}..{run.first - 1} missing" if run.first > expected else f"row {run.first} twice"
            raise SeqrecError(received_expected(f"Ray results in '{directory}'", found,
                                                f"each of the {total} input rows exactly once"))
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
        return self.table.slice(offset, count).drop_columns([SEQUENCE]).combine_chunks().to_batches()[0]
