"""The Ray engine: ``read_parquet -> map_batches(RayScorer) -> write_parquet``, then the parts committed.

- Each actor of the pool builds one ``BatchScorer`` (the model loaded once per actor) and runs the
  same core as the local engine on the blocks it receives; with GPUs in the cluster each actor
  takes one (``num_gpus=1``), otherwise a fraction of a CPU (``num_cpus=0.5``: on a small machine
  actors holding whole CPUs starve the read tasks and the job hangs) and one intra-op thread.
- A long interaction log is first grouped into list-form files by one Ray task per part (the
  same streaming grouper as the local engine), since Ray may cut a file into blocks between two
  rows of one user.
- Ray writes the results, in input order (``preserve_order``), to ``DIR/_staging``; the driver
  then streams them part by part through the same ``PartWriter`` as the local engine (duplicate
  users, layout, rejects, atomic renames, ledger), so both engines write the same files.

``--address`` joins an existing cluster (the model and the input must be readable by its
workers, and ``DIR`` shared with them); without it a local Ray is started and shut down after.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from seqrec.batchinfer.core import BatchScorer
from seqrec.batchinfer.inputs import LONG_FORM, InputPart, InputPlan, group_starts, grouped_schema, read_part
from seqrec.batchinfer.ledger import STAGING_DIR
from seqrec.batchinfer.local import READ_BATCHES
from seqrec.batchinfer.model import open_model
from seqrec.batchinfer.writer import PartWriter
from seqrec.config import ScoreConfig
from seqrec.errors import SeqrecError, received_expected
from seqrec.exporter.onnx_export import require_module

CPUS_PER_ACTOR = 0.5
GROUPED_ROWS = 8192  # input rows per batch while a Ray task groups a long log
STAGED_NAME = re.compile(r"_(\d+)-(\d+)\.parquet$")  # Ray's {dataset}_{write}_{task index}-{file}.parquet


class RayScorer:
    """A Ray Data actor: one model, ``__call__(pyarrow.Table) -> pyarrow.Table`` (one row per input row)."""

    def __init__(self, cfg: ScoreConfig) -> None:
        self.scorer = BatchScorer(open_model(cfg), cfg.batch_size).__enter__()

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.scorer.score_table(table)


def run_ray(cfg: ScoreConfig, plan: InputPlan, todo: list[InputPart], writer: PartWriter) -> None:
    ray = require_module("ray", "the ray engine", "pip install 'seqrec[ray]'")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False)
    staging = Path(cfg.output) / STAGING_DIR
    try:
        shutil.rmtree(staging, ignore_errors=True)
        paths = (_group_long_parts(ray, plan, todo, staging / "grouped") if plan.form == LONG_FORM
                 else [part.path for part in todo])
        _score_to(ray, cfg, plan, paths, staging / "results")
        for part, batch in _staged_results(staging / "results", todo):
            writer.handle(part, batch)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if started_here:
            ray.shutdown()


def _score_to(ray, cfg: ScoreConfig, plan: InputPlan, paths: list[str], directory: Path) -> None:
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True  # results in input order, as the local engine writes them
    context.enable_progress_bars = cfg.progress
    try:
        _execute(ray, cfg, plan, paths, directory)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved


def _execute(ray, cfg: ScoreConfig, plan: InputPlan, paths: list[str], directory: Path) -> None:
    columns = ["user_id", "history"] + (["timestamps"] if plan.timestamps else []) + (
        ["row"] if plan.form == LONG_FORM else [])
    with warnings.catch_warnings():  # columns= is deprecated for select_columns(), whose file listing in Ray 2.60
        warnings.simplefilter("ignore", DeprecationWarning)  # needs fsspec's HTTP support (aiohttp) even for local files
        dataset = ray.data.read_parquet(paths, columns=columns, include_paths=True)
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    actor_cfg = ScoreConfig.from_dict({**cfg.to_dict(), "threads": cfg.threads or (None if gpus else 1)})
    resources = {"num_gpus": 1} if gpus else {"num_cpus": CPUS_PER_ACTOR}
    dataset = dataset.map_batches(RayScorer, fn_constructor_kwargs={"cfg": actor_cfg}, batch_format="pyarrow",
                                  batch_size=cfg.batch_size * READ_BATCHES,
                                  compute=ray.data.ActorPoolStrategy(size=cfg.actors), **resources)
    dataset.write_parquet(str(directory))


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


def _staged_results(directory: Path, todo: list[InputPart]) -> Iterator[tuple[InputPart, pa.RecordBatch | None]]:
    """Ray's result files in write order -> (part, batch) and (part, None) when a part ends.

    Each part's rows must come as one run in input order (what ``preserve_order`` gives); anything
    else is an error rather than a silently reordered output.
    """
    files = sorted(directory.glob("*.parquet"), key=_write_order) if directory.is_dir() else []
    by_name = {part.name: part for part in todo}  # grouped long-form files keep the part's name too
    finished: set[str] = set()
    current: InputPart | None = None
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches():
            for source, rows in _runs(batch.column("path")):
                part = by_name[Path(source).name]
                if part is not current:
                    if current is not None:
                        finished.add(current.name)
                        yield current, None
                    if part.name in finished:
                        raise SeqrecError(received_expected(f"Ray results of part {part.name}", "rows out of order",
                                                            "each part's rows in one run (preserve_order)"))
                    current = part
                yield part, batch.slice(rows[0], rows[1] - rows[0]).drop_columns(["path"])
    if current is not None:
        finished.add(current.name)
        yield current, None
    for part in todo:  # parts without a row (Ray writes nothing for them)
        if part.name not in finished:
            yield part, None


def _runs(paths: pa.Array) -> Iterator[tuple[str, tuple[int, int]]]:
    """(value, (start, stop)) for each run of equal values."""
    starts = list(group_starts(paths)) + [len(paths)]
    for start, stop in zip(starts[:-1], starts[1:]):
        yield paths[int(start)].as_py(), (int(start), int(stop))


def _write_order(path: Path) -> tuple[int, int]:
    match = STAGED_NAME.search(path.name)
    if match is None:
        raise SeqrecError(received_expected("Ray result file name", path.name, "<uuid>_<task>-<n>.parquet"))
    return int(match[1]), int(match[2])

