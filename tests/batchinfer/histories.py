"""Histories Parquet for batch-scoring tests: random users over the tiny checkpoints' catalog.

The catalog is raw item ids 1000..1299 with a window of 12: histories run up to 20 items so
truncation happens, and about 1 item in 20 is unknown to the vocabulary.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FIRST_ITEM, ITEMS = 1000, 300
UNKNOWN = 5  # an item id the vocabulary does not know


def random_histories(users: int, seed: int, longest: int = 20) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    histories = []
    for _ in range(users):
        items = rng.integers(FIRST_ITEM, FIRST_ITEM + ITEMS, rng.integers(1, longest + 1))
        items[rng.random(len(items)) < 0.05] = UNKNOWN
        items[-1] = rng.integers(FIRST_ITEM, FIRST_ITEM + ITEMS)  # at least one known item
        histories.append(items.tolist())
    return histories


def write_parts(directory: Path, parts: int, users: int, seed: int = 0, row_group: int = 40) -> Path:
    """``parts`` list-form parts of ``users`` users each (ids unique across parts), several row groups each."""
    directory.mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        ids = np.arange(users) + part * 100_000
        table = pa.table({"user_id": ids, "history": random_histories(users, seed + part)})
        pq.write_table(table, directory / f"part-{part:03d}.parquet", row_group_size=row_group)
    return directory


def write_partitioned(directory: Path, days: int, users: int, seed: int = 0, row_group: int = 10) -> Path:
    """A nightly history as Spark writes it: ``dt=2026-12-0N/part-00000.parquet``, one file name in every
    folder, each part's users (ids unique across days) followed by one with an empty history (a reject); and
    beside them what a reader skips: ``_SUCCESS``, a ``_temporary/`` attempt, a ``.spark-staging`` folder and
    a ``.crc`` checksum, whose parts, read, would add users."""
    for day in range(days):
        folder = directory / f"dt=2026-12-{day + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        ids = np.arange(users + 1) + day * 100_000
        table = pa.table({"user_id": ids, "history": random_histories(users, seed + day) + [[]]})
        pq.write_table(table, folder / "part-00000.parquet", row_group_size=row_group)
        (folder / ".part-00000.parquet.crc").write_bytes(b"checksum")
    for hidden in ("_temporary/0/task_0", ".spark-staging"):
        (directory / hidden).mkdir(parents=True)
        stray = pa.table({"user_id": [-1], "history": [[FIRST_ITEM]]})
        pq.write_table(stray, directory / hidden / "part-00000.parquet")
    (directory / "_SUCCESS").write_bytes(b"")
    return directory


def as_long_log(table: pa.Table) -> pa.Table:
    """The interaction log of a list-form table: one row per (user, item), rows of a user together."""
    lengths = np.array([len(h) for h in table.column("history").to_pylist()])
    return pa.table({"user_id": np.repeat(table.column("user_id").to_numpy(), lengths),
                     "item_id": pa.concat_arrays([c.flatten() for c in table.column("history").chunks])})


def read_dir(directory: Path) -> dict[str, pa.Table]:
    """The output parts (and the rejects) of a scored directory at any depth, by path under it (a top-level
    part's file name)."""
    return {path.relative_to(directory).as_posix(): pq.read_table(path)
            for path in sorted(Path(directory).rglob("*.parquet"))}


def damage_last_row_group(path: Path, column_name: str = "history") -> None:
    """Junk over the page header of the last row group's ``column_name`` column: the footer (all that
    planning reads) stays intact, and reading that row group fails, as a file damaged in transfer would."""
    metadata = pq.ParquetFile(path).metadata
    group = metadata.row_group(metadata.num_row_groups - 1)
    column = next(group.column(index) for index in range(group.num_columns)
                  if group.column(index).path_in_schema.split(".")[0] == column_name)
    with open(path, "r+b") as handle:
        handle.seek(column.data_page_offset)
        handle.write(b"\xff" * 32)
