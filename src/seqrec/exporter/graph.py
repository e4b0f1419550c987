"""The scoring graph that gets exported: left-padded histories in, the top-K items out.

``items`` (B, L) int64 with the most recent item in the last slot; batch and length are dynamic.
First every slot that holds no known item (an id <= 0 or > N: padding, or an item newer than the
model, such as a brand-new catalogue item in the last slot) is removed and the remaining ids move
right, in their order, with their timestamps (``compact``): the answer is the one for the history
with those slots removed, as ``seqrec score`` gives after dropping unknown items, and right- or
middle-padded input ends up left padded. A static graph has no way to refuse such an id, and the
backends would otherwise each do their own thing with it (ONNX Runtime's Gather wraps negative ids
and fails on ids above N; TensorRT's reads out of bounds). Then every history is left padded or cut
to the graph's window, so the encoder always sees a fixed length (padding is nothing, so this
changes no score) and no symbolic length reaches the encoder. Then the head's exact top-K runs
(``SequentialRecommender.top_k``: for CPR the top-(k_R + K + L) base candidates plus the history
items, never a (B, N) scatter; an item table of more than ``catalog_block`` rows is scored that many
rows at a time, so the graph never holds (B, N) scores). Outputs: ``top_items`` (B, K) int64 and ``top_scores`` (B, K)
float32, best first.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import CATALOG_BLOCK
from seqrec.models import SequentialRecommender

OUTPUT_NAMES = ("top_items", "top_scores")


class ScoringGraph(nn.Module):
    def __init__(self, model: SequentialRecommender, top_k: int, exclude_seen: bool, length: int,
                 pointer_op: str = "standard", catalog_block: int = CATALOG_BLOCK) -> None:
        super().__init__()
        self.pointer_op = pointer_op
        self.model = model.eval()
        self.catalog_block = catalog_block
        export_table = getattr(model.head, "export_table", None)  # a constant of the graph, not a per-call step
        self.register_buffer("scored_table", export_table() if export_table else None, persistent=False)
        self.top_k = top_k
        self.exclude_seen = exclude_seen
        self.length = length
        self.eval()

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        items, timestamps = self.window_inputs(items, timestamps)  # (B, W) each
        fixed = self.model.head.scoring_table(self.scored_table) if self.scored_table is not None else nullcontext()
        with fixed:
            scores, top_items = self.model.top_k(items, self.top_k, self.exclude_seen, timestamps, self.pointer_op,
                                                 self.catalog_block)
        return top_items, scores.float()

    @torch.no_grad()
    def reference(self, items: torch.Tensor, timestamps: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same answer the slow way: full (B, N+1) logits and ``torch.topk``, in float32."""
        items, timestamps = self.window_inputs(items, timestamps)  # (B, W) each
        scores, top_items = self.model.top_k_reference(items, self.top_k, self.exclude_seen, timestamps)
        return top_items, scores.float()

    def window_inputs(self, items: torch.Tensor, timestamps: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L) inputs -> (B, W) what the encoder reads: known items only (``compact``), fit to the window."""
        items, timestamps = compact(items, timestamps, self.model.cfg.num_items)  # (B, L) each
        return fit_window(items, self.length), None if timestamps is None else fit_window(timestamps, self.length)


def compact(items: torch.Tensor, timestamps: torch.Tensor | None, num_items: int
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, L) -> (B, L) left padded: every slot whose id is not a known item (<= 0 or > ``num_items``) removed,
    the others moved right in their order, timestamps with them (0 in the padding).

    Static and without a sort (CumSum, ScatterElements): a known slot goes to column 1 + L - (known slots at or
    after it) of a (B, L+1) zero buffer, every other slot to column 0, which is dropped; an unknown id is set to 0
    first, so the repeated writes to column 0 are all equal and their order does not matter."""
    known = (items > 0) & (items <= num_items)  # (B, L)
    count = known.long()
    count_incl = count.sum(1, keepdim=True) - count.cumsum(1) + count  # (B, L): known slots at or after each
    destination = (items.shape[1] + 1 - count_incl).masked_fill(~known, 0)  # (B, L) in 0..L
    buffer = torch.zeros_like(F.pad(items, (1, 0)))  # (B, L+1)
    items = buffer.scatter(1, destination, items.masked_fill(~known, 0))[:, 1:]  # (B, L)
    if timestamps is not None:
        buffer = torch.zeros_like(F.pad(timestamps, (1, 0)))  # (B, L+1)
        timestamps = buffer.scatter(1, destination, timestamps.masked_fill(~known, 0))[:, 1:]  # (B, L)
    return items, timestamps


def fit_window(items: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) left padded -> (B, length): the most recent ``length`` slots, zero padded on the left."""
    return F.pad(items, (length, 0))[:, -length:]
