"""The softmax-CPR pointer/context scatter in plain PyTorch.

Each row's history slots carry an item id and a score; every distinct item id of the row gets
the mean of its slots' scores, which replaces that item's base logit. Id 0 is padding and never
written. The mean is taken over an (S, S) equality matrix per row, so no (M, N) buffer besides
the output is allocated; only the first occurrence of an id writes, so autograd gives each
occurrence exactly 1/count of the gradient at its item.
"""

from __future__ import annotations

import torch


def pt_cpr_scatter(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """logits (M, N+1), ids (M, S) int64 in 0..N, values (M, S) -> logits with history items replaced."""
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)) & (ids > 0).unsqueeze(1)  # (M, S, S): [j, k] = ids_j == ids_k
    counts = same.sum(2).clamp_min(1)  # (M, S)
    means = (same.to(values.dtype) @ values.unsqueeze(2)).squeeze(2) / counts  # (M, S)
    earlier = torch.ones_like(same[0]).tril(-1)  # (S, S): k < j
    first = (ids > 0) & ~(same & earlier).any(2)  # (M, S) first occurrence of each real id
    targets = ids.masked_fill(~first, 0)  # duplicates and padding write into column 0 ...
    out = logits.scatter(1, targets, means.to(logits.dtype))  # (M, N+1)
    out[:, 0] = logits[:, 0]  # ... which keeps its original value
    return out
