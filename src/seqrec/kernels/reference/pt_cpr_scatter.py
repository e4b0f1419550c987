"""The softmax-CPR pointer/context scatter in plain PyTorch.

Each row's history slots carry an item id and a score; every distinct item id of the row gets
the mean of its slots' scores, which replaces that item's base logit. Id 0 is padding and never
written. The mean is taken over an (S, S) equality matrix per row, so no (M, N) buffer besides
the output is allocated; it is summed in float32 at least and reads only the slots of its own id,
so a non-finite value reaches its own id's column only (padding slots are never read). Only the
first occurrence of an id writes, so autograd gives each occurrence exactly 1/count of the
gradient at its item.

``pt_cpr_scatter_backward`` writes that gradient out by hand: it is what the opaque custom op
(``seqrec::cpr_scatter_opaque``) runs on the CPU, where there is no autograd graph to lean on.
"""

from __future__ import annotations

import torch


def pt_cpr_scatter(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """logits (M, N+1), ids (M, S) int64 in 0..N, values (M, S) -> logits with history items replaced."""
    same, counts = _occurrences(ids)  # (M, S, S), (M, S)
    means = occurrence_sums(same, values) / counts  # (M, S)
    earlier = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).tril(-1)  # (S, S): k < j
    first = (ids > 0) & ~(same & earlier).any(2)  # (M, S) first occurrence of each real id
    targets = ids.masked_fill(~first, 0)  # duplicates and padding write into column 0 ...
    out = logits.scatter(1, targets, means.to(logits.dtype))  # (M, N+1)
    out[:, 0] = logits[:, 0]  # ... which keeps its original value (in place: no (M, N) copy)
    return out


def pt_cpr_scatter_backward(grad: torch.Tensor, ids: torch.Tensor,
                            values_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """grad (M, N+1) of the output -> (d logits (M, N+1), d values (M, S)) of ``pt_cpr_scatter``.

    d logits is ``grad`` with every replaced item zeroed; d values_j is grad[row, ids_j] shared
    equally among the occurrences of ids_j, and 0 for padding.
    """
    _, counts = _occurrences(ids)  # (M, S)
    targets = ids.clamp_min(0)  # (M, S); ids below 1 are padding, as in the forward
    d_values = grad.gather(1, targets).to(values_dtype).masked_fill(targets == 0, 0) / counts  # (M, S)
    d_logits = grad.scatter(1, targets, 0.0)  # (M, N+1); padding zeroes column 0 ...
    d_logits[:, 0] = grad[:, 0]  # ... which the forward never replaced
    return d_logits, d_values


def occurrence_sums(same: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """same (M, S, S), values (M, S) -> (M, S) the sum of the values of each slot's occurrences, in
    float32 at least (float64 stays).

    A slot reads only the slots ``same`` marks: a product ``same @ values`` would add 0 * inf = NaN
    from every other slot (padding included), and an fp16 sum overflows where the mean does not.
    """
    spread = values.to(torch.promote_types(values.dtype, torch.float32)).unsqueeze(1)  # (M, 1, S)
    return torch.where(same, spread, 0).sum(2)  # (M, S, S) -> (M, S)


def _occurrences(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (M, S) -> equality of real ids (M, S, S) with [j, k] = ids_j == ids_k, occurrence counts (M, S)."""
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)) & (ids > 0).unsqueeze(1)  # (M, S, S)
    return same, same.sum(2).clamp_min(1)  # counts (M, S)
