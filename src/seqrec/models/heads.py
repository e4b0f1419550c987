"""Output heads: turn encoder hidden states into item logits.

The softmax head ties its output embedding to the input item embedding (one (N + 1, D) matrix),
so index 0, the padding row, is exactly zero and its logit is forced to -inf: item 0 is never a
result.
"""

from __future__ import annotations

import torch
from torch import nn


class SoftmaxHead(nn.Module):
    """logits = h E^T over the whole catalog, item 0 masked out."""

    def __init__(self, item_embedding: nn.Embedding) -> None:
        super().__init__()
        self.item_embedding = item_embedding

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., N + 1) logits; column 0 is -inf."""
        logits = hidden @ self.item_embedding.weight.T  # [.., D] x [D, N+1] -> [.., N+1]
        return logits.index_fill(-1, _zero_index(logits.device), float("-inf"))

    def score_items(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of chosen items only: hidden (M, D), items (M,) or (M, S) -> (M,) or (M, S)."""
        item_vectors = self.item_embedding(items)  # (M, D) or (M, S, D)
        if items.dim() == 1:
            return (hidden * item_vectors).sum(-1)  # (M,)
        return torch.einsum("md,msd->ms", hidden, item_vectors)  # (M, S)

    def score_shared(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of one shared item set for every row: hidden (M, D), items (S,) -> (M, S)."""
        return hidden @ self.item_embedding(items).T  # [M, D] x [D, S] -> [M, S]


def _zero_index(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.long, device=device)
