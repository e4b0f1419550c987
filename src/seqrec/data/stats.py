"""Summary counts of an interaction table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from seqrec.data.schema import group_codes, validate_interactions


def interaction_stats(table: pa.Table) -> dict[str, int | float]:
    """Users, items, interactions, sequence lengths and the share of repeated interactions.

    ``repeat_share`` is the share of interactions whose item already appeared earlier in the
    same user's sequence; it equals 1 - distinct (user, item) pairs / interactions, so it does
    not depend on the order. All values are plain Python numbers (JSON serialisable).
    """
    table = validate_interactions(table, source="interactions")
    users = group_codes(table.column("user_id"))
    items = group_codes(table.column("item_id"))
    lengths = np.bincount(users)
    n_items = int(items.max()) + 1
    pairs = np.unique(users * n_items + items).size
    total = table.num_rows
    return {
        "users": int(lengths.size),
        "items": n_items,
        "interactions": int(total),
        "mean_length": float(total / lengths.size),
        "max_length": int(lengths.max()),
        "min_length": int(lengths.min()),
        "repeat_share": float((total - pairs) / total),
    }
