"""Public op: the softmax-CPR pointer/context scatter onto item ids.

``cpr_scatter(logits, ids, values)`` returns ``logits`` with, in every row, the logit of each
distinct non-zero id in ``ids`` replaced by the mean of that id's ``values`` (DESIGN.md,
softmax-CPR). It validates its inputs and dispatches on ``kernel``.
"""

from __future__ import annotations

import torch

from seqrec.errors import ConfigError, received_expected
from seqrec.kernels.reference import pt_cpr_scatter

KERNELS = ("pytorch",)


def cpr_scatter(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor,
                kernel: str = "pytorch") -> torch.Tensor:
    """logits (M, N+1) float, ids (M, S) int64 in 0..N (0 = padding), values (M, S) -> (M, N+1)."""
    _check_inputs(logits, ids, values)
    if kernel not in KERNELS:
        raise ConfigError(received_expected("cpr_scatter kernel", repr(kernel), f"one of {', '.join(KERNELS)}"))
    return pt_cpr_scatter(logits, ids, values)


def _check_inputs(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> None:
    if logits.dim() != 2 or ids.dim() != 2 or values.shape != ids.shape or ids.shape[0] != logits.shape[0]:
        raise ValueError(received_expected("cpr_scatter shapes", f"logits {tuple(logits.shape)}, ids "
                                           f"{tuple(ids.shape)}, values {tuple(values.shape)}",
                                           "logits (M, N+1), ids (M, S), values (M, S)"))
    if ids.dtype != torch.int64:
        raise TypeError(received_expected("cpr_scatter ids dtype", ids.dtype, "torch.int64"))
