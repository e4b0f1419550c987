"""Catalog top-k in plain PyTorch: every score, then ``torch.topk``. The ground truth.

``pt_catalog_topk(queries, items_table, k, exclude)`` scores every user against every item of
the table (a (B, N+1) matrix), sets column 0 (the padding item) and each row's excluded items to
-inf, and keeps the k best. Slots that hold -inf (a row with fewer than k eligible items) get
id 0, the padding item, so every implementation returns the same ids there.

``pt_catalog_topk_in_blocks`` gives the same answer a block of users at a time, so that the
score matrix stays (block, N+1) whatever B is: the public op runs the reference through it.

NaN: ``torch.topk`` ranks a NaN score above every number, +inf included; so do the other paths.

Ties: ``torch.topk`` does not say which of several equal scores it keeps or in what order; neither
does this op (the Triton kernel happens to prefer the smaller id).
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def pt_catalog_topk(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                    exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (B, D), items_table (N+1, D), exclude (B, S) int64 or None -> scores (B, k), ids (B, k) int64."""
    queries, items_table = common_dtype(queries, items_table)
    scores = queries @ items_table.T  # [B, D] x [D, N+1] -> [B, N+1]
    scores[:, 0] = NEG_INF
    if exclude is not None:
        scores.scatter_(1, eligible_exclusions(exclude, items_table.shape[0]), NEG_INF)
    best = scores.topk(k, dim=1)  # (B, k)
    return best.values, padding_where_ineligible(best.values, best.indices)


def pt_catalog_topk_in_blocks(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                              exclude: torch.Tensor | None, users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pt_catalog_topk`` on ``users`` query rows at a time: the same answer (each row is scored
    alone), with a (users, N+1) score matrix instead of (B, N+1)."""
    if queries.shape[0] <= users:
        return pt_catalog_topk(queries, items_table, k, exclude)
    parts = [pt_catalog_topk(queries[first : first + users], items_table, k,
                             None if exclude is None else exclude[first : first + users])
             for first in range(0, queries.shape[0], users)]
    return torch.cat([scores for scores, _ in parts]), torch.cat([ids for _, ids in parts])  # (B, k) each


def common_dtype(queries: torch.Tensor, items_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides in the dtype torch promotes them to: the dtype the scores are computed and returned in."""
    dtype = torch.promote_types(queries.dtype, items_table.dtype)
    return queries.to(dtype), items_table.to(dtype)


def eligible_exclusions(exclude: torch.Tensor, rows: int) -> torch.Tensor:
    """exclude (B, S) with every id outside 1..N (padding, out of range) turned into 0, the padding item."""
    return exclude.masked_fill((exclude < 0) | (exclude >= rows), 0)


def padding_where_ineligible(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, k) with id 0 wherever the score is -inf: no eligible item was left for that slot."""
    return ids.masked_fill(scores == NEG_INF, 0)
