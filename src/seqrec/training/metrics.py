"""Full-ranking metrics from the rank of each target among all catalog items.

Rank is 0-based and pessimistic under ties: every other item whose score is greater than or equal
to the target's counts ahead of it, so a model that scores everything alike gains nothing. A target
whose score is -inf (excluded as a history item) is always a miss. NaN scores never help: a NaN target
is a miss and a NaN item counts ahead of the target, so a model that broke cannot look good.
"""

from __future__ import annotations

import numpy as np
import torch

CUTOFFS = (1, 5, 10, 20, 50)
MISS = 2**62  # the rank of a target the model cannot score or has excluded: beyond every cutoff, whatever N


def target_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, N+1), targets (B,) -> 0-based pessimistic rank (B,)."""
    target_scores = logits.gather(1, targets.unsqueeze(1))  # (B, 1)
    ahead = ((logits >= target_scores) | logits.isnan()).sum(1) - 1  # (B,) other items at least as high
    missed = (target_scores.isneginf() | target_scores.isnan()).squeeze(1)  # (B,)
    return ahead.masked_fill(missed, MISS)  # not N: with fewer than 50 items that counted as a hit at @50


def ranking_metrics(ranks: np.ndarray, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """NDCG@K, HR@K and MRR@K averaged over users, from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        return {f"{name}@{k}": 0.0 for k in cutoffs for name in ("ndcg", "hr", "mrr")}
    metrics: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks < k
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
        metrics[f"hr@{k}"] = float(hit.mean())
        metrics[f"mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean())
    return metrics
