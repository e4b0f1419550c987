"""The scoring graph that gets exported: left-padded histories in, the top-K items out.

``items`` (B, L) int64 with the most recent item in the last slot; batch and length are dynamic.
Inside, every history is left padded or cut to the graph's window, so the encoder always sees a
fixed length (padding is nothing, so this changes no score) and no symbolic length reaches the
encoder. An id outside 0..N is read as padding: a static graph has no way to refuse it, and the
backends would otherwise each do their own thing with it (ONNX Runtime's Gather wraps negative ids
and fails on ids above N; TensorRT's reads out of bounds). Then the head's exact top-K runs (``SequentialRecommender.top_k``: for CPR the top-(k_R +
K + L) base candidates plus the history items, never a (B, N) scatter). Outputs: ``top_items``
(B, K) int64 and ``top_scores`` (B, K) float32, best first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.models import SequentialRecommender

OUTPUT_NAMES = ("top_items", "top_scores")


class ScoringGraph(nn.Module):
    def __init__(self, model: SequentialRecommender, top_k: int, exclude_seen: bool, length: int,
                 pointer_op: str = "standard") -> None:
        super().__init__()
        self.pointer_op = pointer_op
        self.model = model.eval()
        self.top_k = top_k
        self.exclude_seen = exclude_seen
        self.length = length
        self.eval()

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        items = fit_window(self.known_ids(items), self.length)  # (B, W)
        if timestamps is not None:
            timestamps = fit_window(timestamps, self.length)  # (B, W)
        scores, top_items = self.model.top_k(items, self.top_k, self.exclude_seen, timestamps, self.pointer_op)
        return top_items, scores.float()

    @torch.no_grad()
    def reference(self, items: torch.Tensor, timestamps: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same answer the slow way: full (B, N+1) logits and ``torch.topk``, in float32."""
        items = fit_window(self.known_ids(items), self.length)
        if timestamps is not None:
            timestamps = fit_window(timestamps, self.length)
        scores, top_items = self.model.top_k_reference(items, self.top_k, self.exclude_seen, timestamps)
        return top_items, scores.float()

    def known_ids(self, items: torch.Tensor) -> torch.Tensor:
        """items (B, L) with every id outside 0..N set to 0 (padding)."""
        return items.masked_fill((items < 0) | (items > self.model.cfg.num_items), 0)  # (B, L)


def fit_window(items: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) left padded -> (B, length): the most recent ``length`` slots, zero padded on the left."""
    return F.pad(items, (length, 0))[:, -length:]
