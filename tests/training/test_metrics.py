"""Metrics against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from seqrec.training.metrics import MISS, ranking_metrics, target_ranks


def test_ranks_are_pessimistic_and_skip_nothing():
    logits = torch.tensor([[float("-inf"), 0.1, 0.9, 0.5, 0.5],
                           [float("-inf"), 2.0, 1.0, 0.0, -1.0],
                           [float("-inf"), 1.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([3, 1, 2])
    # row 0: item 2 (0.9) above, item 4 ties -> rank 2; row 1: best -> 0; row 2: 3 ties -> 3
    assert target_ranks(logits, targets).tolist() == [2, 0, 3]


def test_excluded_target_is_a_miss():
    logits = torch.tensor([[float("-inf"), float("-inf"), 0.3, 0.1]])
    assert target_ranks(logits, torch.tensor([1])).item() == MISS


def test_a_miss_is_no_hit_at_cutoffs_beyond_a_small_catalog():
    """A missed target once ranked N, which a 3-item catalog counted as a hit at @5 and @50."""
    logits = torch.tensor([[float("-inf"), float("-inf"), 0.3, 0.1]])
    metrics = ranking_metrics(target_ranks(logits, torch.tensor([1])).numpy())
    assert metrics["hr@50"] == metrics["ndcg@5"] == metrics["mrr@50"] == 0.0


def test_nan_scores_never_help_the_target():
    nan = float("nan")
    logits = torch.tensor([[float("-inf"), nan, nan, nan],  # a broken model: the target is a miss
                           [float("-inf"), 0.5, nan, 0.1]])  # a NaN item counts ahead of the target
    assert target_ranks(logits, torch.tensor([2, 1])).tolist() == [MISS, 1]


def test_metrics_by_hand():
    m = ranking_metrics(np.array([0, 1, 4, 9, 10, 60]))
    assert m["hr@1"] == pytest.approx(1 / 6)
    assert m["hr@10"] == pytest.approx(4 / 6)
    assert m["hr@50"] == pytest.approx(5 / 6)
    ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert m["ndcg@10"] == pytest.approx(ndcg10)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 6)
    assert m["ndcg@1"] == pytest.approx(1 / 6)
