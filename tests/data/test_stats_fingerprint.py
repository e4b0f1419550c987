"""Interaction statistics and table fingerprints."""

from __future__ import annotations

import json

import pyarrow as pa

from seqrec.data import interaction_stats, table_fingerprint


def test_stats_hand_case() -> None:
    table = pa.table({"user_id": ["a", "a", "a", "b", "b", "c"],
                      "item_id": [1, 2, 1, 3, 3, 1], "timestamp": [1, 2, 3, 1, 2, 1]})
    stats = interaction_stats(table)
    assert stats == {"users": 3, "items": 3, "interactions": 6, "mean_length": 2.0,
                     "max_length": 3, "min_length": 1, "repeat_share": 2 / 6}
    json.dumps(stats)


def test_fingerprint_depends_on_content_not_chunking() -> None:
    table = pa.table({"user_id": [1, 2, 3], "item_id": ["a", "b", "c"], "timestamp": [4, 5, 6]})
    rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=1))
    assert rechunked.column(0).num_chunks == 3
    digest = table_fingerprint(table)
    assert len(digest) == 64 and digest == table_fingerprint(rechunked)
    assert digest == table_fingerprint(table.replace_schema_metadata({"a": "b"}))
    changed = table.set_column(2, "timestamp", pa.array([4, 5, 7]))
    assert table_fingerprint(changed) != digest
    assert table_fingerprint(table.slice(0, 2)) != digest


def test_fingerprint_of_text_ids_does_not_depend_on_chunking() -> None:
    """Slices of a string column carry their parent's offsets: the hash must see the content only, at the
    batch size of the hash (65,536 rows) and around it."""
    rows = 70_000
    table = pa.table({"user_id": [f"u{row % 997}" for row in range(rows)], "item_id": list(range(rows)),
                      "timestamp": [row // 3 for row in range(rows)]})
    digest = table_fingerprint(table)
    for size in (2, 7, 65_535, 65_537):
        rechunked = pa.concat_tables([table.slice(start, size) for start in range(0, rows, size)])
        assert table_fingerprint(rechunked) == digest, size
    assert table_fingerprint(table.slice(1)) != digest
