"""Training losses over the real (non-padding) positions of a packed causal pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqrec.models import SequentialRecommender


def full_cross_entropy(model: SequentialRecommender, hidden: torch.Tensor, targets: torch.Tensor,
                       seen: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the whole catalog. hidden (M, D), targets (M,) in 1..N.

    ``seen`` (M, S) item ids (0 = none) are left out of each row's softmax, except the target.
    """
    logits = model.head(hidden)  # (M, N+1)
    if seen is not None:
        logits = logits.scatter(1, _not_target(seen, targets), float("-inf"))
    return F.cross_entropy(logits.float(), targets)  # softmax in fp32 even under autocast


def sampled_softmax(
    model: SequentialRecommender,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    negatives: int,
    temperature: float,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the positive and ``negatives`` uniformly drawn items shared by the batch.

    A negative that equals a row's positive (an accidental hit) is masked out of that row.
    Uniform sampling needs no log-Q correction: it shifts every negative logit by the same amount.
    """
    num_items = model.cfg.num_items
    negative_items = torch.randint(1, num_items + 1, (negatives,), device=hidden.device, generator=generator)  # (S,)
    positive_logits = model.head.score_items(hidden, targets).unsqueeze(1)  # (M, 1)
    negative_logits = model.head.score_shared(hidden, negative_items)  # (M, S)
    accidental = negative_items.unsqueeze(0) == targets.unsqueeze(1)  # (M, S)
    if seen is not None:  # a negative the row has already seen is left out too
        accidental |= (negative_items.view(1, 1, -1) == seen.unsqueeze(-1)).any(1)  # (M, S)
    negative_logits = negative_logits.masked_fill(accidental, float("-inf"))
    logits = torch.cat([positive_logits, negative_logits], dim=1) / temperature  # (M, 1+S)
    labels = torch.zeros(len(targets), dtype=torch.long, device=hidden.device)
    return F.cross_entropy(logits.float(), labels)


def _not_target(seen: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Seen ids with the row's own target replaced by 0 (padding, already -inf)."""
    return seen.masked_fill(seen == targets.unsqueeze(1), 0)  # (M, S)
