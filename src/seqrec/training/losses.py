"""Training losses over the real (non-padding) positions of a packed causal pass.

Both take logits the head produced (``SequentialRecommender.head``), so any head trains with either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the whole catalog. logits (M, N+1), targets (M,) in 1..N.

    ``seen`` (M, S) item ids (0 = none) are left out of each row's softmax, except the target.
    """
    if seen is not None:
        logits = logits.scatter(1, _not_target(seen, targets), float("-inf"))
    return F.cross_entropy(logits.float(), targets)  # softmax in fp32 even under autocast


def sampled_softmax(logits: torch.Tensor, columns: torch.Tensor, targets: torch.Tensor,
                    seen: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over a few columns per row; column 0 holds the target. logits, columns (M, C).

    ``columns`` are the item ids the columns score (0 = void column, already -inf). A column other
    than 0 that repeats the row's target (an accidental hit) or an item in ``seen`` (M, S) is left
    out. Uniform negatives need no log-Q correction: it shifts every negative logit alike.
    """
    void = columns == targets.unsqueeze(1)  # (M, C)
    if seen is not None:
        void |= (columns.unsqueeze(-1) == seen.unsqueeze(1)).any(-1) & (columns > 0)  # (M, C)
    void[:, 0] = False
    logits = logits.masked_fill(void, float("-inf"))
    labels = torch.zeros(len(targets), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), labels)


def draw_negatives(num_items: int, count: int, device: torch.device | str,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` items drawn uniformly from 1..N with replacement, shared by the batch: (S,)."""
    return torch.randint(1, num_items + 1, (count,), device=device, generator=generator)


def _not_target(seen: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Seen ids with the row's own target replaced by 0 (padding, already -inf)."""
    return seen.masked_fill(seen == targets.unsqueeze(1), 0)  # (M, S)
