"""Output heads: turn the encoder's per-layer hidden states into item logits.

Every head scores chosen *prediction points* of a batch of left-padded histories:

- ``logits(layers, items, rows)`` gives full-catalog logits (M, N + 1), column 0 (padding) -inf.
  ``rows`` (B, L) bool picks the slots to predict after (training: every real slot of a packed
  causal pass); ``None`` means the last slot of every row (evaluation, export, scoring).
- ``top_k(layers, items, k, exclude_seen)`` gives the k best items (B, k) and their logits at the
  last slot, exactly as ``logits`` + ``topk`` would, without any (B, N) scatter: what the exported
  scoring graph and batch scoring run.
- ``sampled_logits(layers, items, rows, targets, negatives)`` gives the logits of a small set of
  columns per row for sampled softmax: column 0 is the target, then the shared negatives, then any
  head-specific extra columns. It also returns the item id of every column, 0 where a column is
  void (its logit is then -inf), so the loss can mask accidental hits and seen items generically.

Heads are tied to the input item embedding (one (N + 1, D) matrix whose padding row is zero).
With ``ModelConfig.l2_normalize`` the softmax head scores the cosine of the hidden state and the item
embedding (HSTU's recipe, used with a small training temperature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxHead(nn.Module):
    """logits = h E^T over the whole catalog, h the top layer's state at the prediction point."""

    def __init__(self, item_embedding: nn.Embedding, mixed_layers: int = 1, cfg=None, **_: object) -> None:
        super().__init__()
        self.item_embedding = item_embedding
        self.l2_normalize = bool(cfg is not None and cfg.l2_normalize)

    def logits(self, layers: list[torch.Tensor], items: torch.Tensor,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self._unit(select_rows(layers[-1], rows))  # (M, D)
        return mask_padding(hidden @ self._unit(self.item_embedding.weight).T)  # [M, D] x [D, N+1] -> [M, N+1]

    def top_k(self, layers: list[torch.Tensor], items: torch.Tensor, k: int, exclude_seen: bool = False,
              pointer_op: str = "standard") -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(layers, items)  # (B, N+1)
        if exclude_seen:
            logits = logits.scatter(1, items, float("-inf"))
        return logits.topk(k, dim=1)  # (B, K) scores, (B, K) items

    def sampled_logits(self, layers: list[torch.Tensor], items: torch.Tensor, rows: torch.Tensor | None,
                       targets: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self._unit(select_rows(layers[-1], rows))  # (M, D)
        positive = (hidden * self._unit(self.item_embedding(targets))).sum(-1, keepdim=True)  # (M, 1)
        negative = hidden @ self._unit(self.item_embedding(negatives)).T  # [M, D] x [D, S] -> [M, S]
        columns = torch.cat([targets.unsqueeze(1), negatives.expand(len(targets), -1)], dim=1)  # (M, 1+S)
        return torch.cat([positive, negative], dim=1), columns

    def _unit(self, vectors: torch.Tensor) -> torch.Tensor:
        """Unit rows with ``l2_normalize`` (a zero row stays zero), else unchanged."""
        return F.normalize(vectors, dim=-1) if self.l2_normalize else vectors


def select_rows(per_slot: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """(B, L, ...) -> (M, ...): the chosen prediction points, or the last slot of every row."""
    return per_slot[:, -1] if rows is None else per_slot[rows]


def causal_histories(items: torch.Tensor) -> torch.Tensor:
    """For every slot t, the items of slots <= t (later slots zeroed): (B, L) -> (B, L, L)."""
    steps = torch.arange(items.shape[1], device=items.device)
    upto = steps.view(1, -1) <= steps.view(-1, 1)  # (L, L): [t, s] = s <= t
    return items.unsqueeze(1) * upto  # (B, L, L)


def mask_padding(logits: torch.Tensor) -> torch.Tensor:
    """Item 0 is padding and never a result: its column becomes -inf (in place: callers pass
    fresh products, and no backward needs the value it overwrites)."""
    zero = torch.zeros(1, dtype=torch.long, device=logits.device)
    return logits.index_fill_(-1, zero, float("-inf"))
