"""Losses against direct restatements on small random inputs."""

import torch
import torch.nn.functional as F

from seqrec.config import ModelConfig
from seqrec.models import build_model
from seqrec.models.heads import causal_histories
from seqrec.training.losses import draw_negatives, full_cross_entropy, sampled_softmax


def tiny(num_items=23):
    torch.manual_seed(0)
    return build_model(ModelConfig(num_items=num_items, dim=8, layers=1, max_length=6))


def test_full_cross_entropy_leaves_seen_items_out_but_never_the_target():
    model = tiny()
    hidden, targets = torch.randn(5, 8), torch.tensor([3, 7, 7, 1, 22])
    seen = torch.tensor([[0, 4, 5], [7, 2, 0], [0, 0, 0], [9, 9, 1], [21, 20, 19]])
    logits = hidden @ model.item_embedding.weight.T
    logits[:, 0] = float("-inf")
    for row, items in enumerate(seen.tolist()):
        for item in items:
            if item and item != targets[row]:
                logits[row, item] = float("-inf")
    expected = F.cross_entropy(logits, targets)
    raw = model.head.logits([hidden.unsqueeze(1)], torch.ones(5, 1, dtype=torch.long))  # (5, N+1)
    torch.testing.assert_close(full_cross_entropy(raw, targets, seen=seen), expected)
    assert full_cross_entropy(raw, targets).item() > expected.item()


def test_sampled_softmax_masks_accidental_hits_and_seen_negatives():
    model = tiny(num_items=5)  # 64 negatives over 5 items: every item is drawn, hits are certain
    hidden, targets = torch.randn(3, 8), torch.tensor([1, 2, 3])
    seen = torch.tensor([[2, 3], [0, 0], [1, 0]])
    gen = torch.Generator().manual_seed(0)
    drawn = draw_negatives(5, 64, "cpu", generator=gen)
    logits, columns = model.head.sampled_logits([hidden.unsqueeze(1)], None, None, targets, drawn)
    loss = sampled_softmax(logits, columns, targets, seen=seen)
    negatives = torch.randint(1, 6, (64,), generator=torch.Generator().manual_seed(0))
    weights = model.item_embedding.weight
    rows = []
    for row in range(3):
        allowed = [n for n in negatives.tolist() if n != targets[row] and n not in seen[row].tolist()]
        logits = torch.cat([hidden[row] @ weights[targets[row]].view(1, -1).T, hidden[row] @ weights[allowed].T])
        rows.append(-F.log_softmax(logits, 0)[0])
    torch.testing.assert_close(loss, torch.stack(rows).mean())


def test_prefix_histories_are_causal():
    inputs = torch.tensor([[0, 4, 5, 6]])
    assert causal_histories(inputs)[0].tolist() == [[0, 0, 0, 0], [0, 4, 0, 0], [0, 4, 5, 0], [0, 4, 5, 6]]
